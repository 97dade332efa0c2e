"""``zmqcomm send``, ``request``, ``pub`` and ``sub`` as a user runs them: real processes.

The broker runs in a thread of the test process (with or without a mailbox) and the peer
agent is a :class:`Node` here; each command is a subprocess with its own identity, as it
would be on an agent's machine. Everything is on ipc in a short directory under /tmp.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zmqcomm.access import Policy
from zmqcomm.broker.server import Broker
from zmqcomm.cli.main import EXIT_FAILED, main
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Incoming, Node
from zmqcomm.swarm import layout

COMMAND = (sys.executable, "-m", "zmqcomm")
#: Generous: a loaded CI machine may take seconds to start a Python process.
TIMEOUT = 30.0


@dataclass
class Swarm:
    directory: Path
    endpoint: str
    agents: list[Identity]

    def args(self, name: str = "agent-0") -> list[str]:
        """The connection options of ``zmqcomm send/request/pub/sub`` for agent ``name``."""
        return [
            "--broker", self.endpoint,
            "--keys", str(self.directory / "keys"),
            "--name", name,
            "--trust", str(self.directory / "trust" / "agents"),
        ]  # fmt: skip

    def node(self, index: int) -> Node:
        trust = TrustStore(self.directory / "trust" / "agents")
        return Node(self.agents[index], trust, broker=self.endpoint, connect_timeout=10.0)


def _start(
    swarm_dir: Path, *, mailbox: bool, policy: bool = False, policy_text: str | None = None
) -> Iterator[Swarm]:
    broker_identity, agents = layout.create(swarm_dir, 2)
    if policy_text is not None:
        (swarm_dir / "policy.toml").write_text(policy_text, encoding="utf-8")
    endpoint = f"ipc://{swarm_dir}/b.sock"
    stop = threading.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            broker = Broker(
                [endpoint],
                identity=broker_identity,
                trust=TrustStore(swarm_dir / "trust" / "broker"),
                data=swarm_dir / "data" if mailbox else None,
                policy=Policy.load(swarm_dir / "policy.toml") if policy else None,
            )
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            raise
        ready.set()
        try:
            broker.serve(until=stop.is_set)
        finally:
            broker.close()

    thread = threading.Thread(target=serve, name="broker", daemon=True)
    thread.start()
    ready.wait(TIMEOUT)
    if failure:
        raise failure[0]
    try:
        yield Swarm(swarm_dir, endpoint, agents)
    finally:
        stop.set()
        thread.join(TIMEOUT)


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def swarm(directory: Path) -> Iterator[Swarm]:
    yield from _start(directory, mailbox=True)


@pytest.fixture
def swarm_without_mail(directory: Path) -> Iterator[Swarm]:
    yield from _start(directory, mailbox=False)


@pytest.fixture
def swarm_with_policy(directory: Path) -> Iterator[Swarm]:
    """The broker enforces the swarm's policy: agents may use swarm/* topics only."""
    yield from _start(directory, mailbox=True, policy=True)


@pytest.fixture
def swarm_that_may_not_send(directory: Path) -> Iterator[Swarm]:
    """The broker's policy lets agents use topics but not send to each other."""
    no_forward = layout.POLICY.replace('"FORWARD", "MAIL", ', "")
    assert no_forward != layout.POLICY
    yield from _start(directory, mailbox=True, policy=True, policy_text=no_forward)


def zmqcomm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _while_pumping(
    node: Node, command: list[str], answer: Callable[[Incoming], object] | None = None
) -> tuple[int, str, str, list[Incoming]]:
    """Run a command while ``node`` keeps pumping, collecting what reaches it and answering
    requests with ``answer`` (when given)."""
    process = subprocess.Popen(
        [*COMMAND, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    got: list[Incoming] = []
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        for message in node.messages(timeout=0.02):
            got.append(message)
            if answer is not None and message.is_request:
                node.reply(message, answer(message))
    if process.poll() is None:
        process.kill()
    out, err = process.communicate(timeout=TIMEOUT)
    got.extend(node.messages(timeout=0.5))
    return process.returncode, out, err, got


def _agent_id(swarm: Swarm, index: int) -> str:
    return swarm.agents[index].agent_id


def test_send_reaches_an_online_agent_by_name_of_its_key(swarm: Swarm) -> None:
    with swarm.node(1) as bob:
        code, out, err, got = _while_pumping(bob, ["send", "agent-1", '{"task": 7}', *swarm.args()])
    assert code == 0, err
    assert [(m.sender, m.payload, m.via) for m in got] == [
        (_agent_id(swarm, 0), {"task": 7}, "session")
    ]
    assert out == "sent to agent-1 over an end-to-end session\n"


def test_send_to_an_offline_agent_is_kept_as_mail(swarm: Swarm) -> None:
    result = zmqcomm("send", _agent_id(swarm, 1), "hello", *swarm.args())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{_agent_id(swarm, 1)} is offline: the broker keeps")
    with swarm.node(1) as bob:
        got = list(bob.messages(timeout=3.0))
    assert [(m.payload, m.via) for m in got] == [("hello", "mail")]


def test_send_to_an_offline_agent_through_a_broker_without_mail_fails(
    swarm_without_mail: Swarm,
) -> None:
    # It used to exit 0: the broker's "no mailbox" came back after the command had left.
    result = zmqcomm("send", "agent-1", "lost", *swarm_without_mail.args())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    agent_id = swarm_without_mail.agents[1].agent_id  # named as typed, with its id
    assert f"agent-1 ({agent_id}) is offline and the message was not kept" in result.stderr
    assert "no mailbox" in result.stderr
    assert "started with --data" in result.stderr  # the one case where it helps


def test_a_peer_missing_from_our_own_trust_store_is_named_as_the_problem(swarm: Swarm) -> None:
    """It used to fail later with a wrong guess: 'offline ... use a broker started with
    --data' (the broker had --data) or 'is the peer known?'."""
    stranger = Identity.generate("stranger").agent_id
    result = zmqcomm("send", stranger, "hello", *swarm.args())
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{stranger} is not in the trust store" in result.stderr
    assert "--data" not in result.stderr


def test_request_prints_the_reply(swarm: Swarm) -> None:
    with swarm.node(1) as bob:
        code, out, err, _ = _while_pumping(
            bob,
            ["request", "agent-1", '{"op": "status"}', *swarm.args(), "--timeout", "10"],
            answer=lambda message: {"echo": message.payload, "by": "bob"},
        )
    assert code == 0, err
    assert json.loads(out) == {"echo": {"op": "status"}, "by": "bob"}


def test_request_without_an_answer_exits_1(swarm: Swarm) -> None:
    with swarm.node(1) as bob:  # online, but it never answers requests
        code, out, err, _ = _while_pumping(
            bob, ["request", "agent-1", "hi", *swarm.args(), "--timeout", "1"]
        )
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert out == ""


def test_a_request_to_an_offline_agent_says_it_was_kept_as_mail(swarm: Swarm) -> None:
    result = zmqcomm("request", "agent-1", "hi", *swarm.args(), "--timeout", "1")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "is offline, and the broker keeps the request as mail" in result.stderr
    with swarm.node(1) as bob:
        assert [m.payload for m in bob.messages(timeout=3.0)] == ["hi"]


@pytest.mark.parametrize("timeout", ["20", "0"])  # 0: never stop for quiet
def test_sub_prints_what_pub_publishes(swarm: Swarm, timeout: str) -> None:
    subscriber = subprocess.Popen(
        [*COMMAND, "sub", "news/*", *swarm.args("agent-1"), "--count", "1", "--timeout", timeout],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if timeout == "0":
            time.sleep(2.0)  # quiet: a sub that took 0 as "no wait" would have left by now
            assert subscriber.poll() is None, subscriber.communicate()
        # Publish until the subscriber has joined and taken one (it may start after us).
        deadline = time.monotonic() + TIMEOUT
        while subscriber.poll() is None and time.monotonic() < deadline:
            published = zmqcomm("pub", "news/today", '{"alert": 1}', *swarm.args())
            assert published.returncode == 0, published.stderr
        out, err = subscriber.communicate(timeout=TIMEOUT)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.communicate()
    assert subscriber.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 1
    assert lines[0]["from"] == _agent_id(swarm, 0)
    assert (lines[0]["topic"], lines[0]["payload"]) == ("news/today", {"alert": 1})


def _bad_usage(swarm: Swarm) -> dict[str, tuple[list[str], str]]:
    args = swarm.args()
    misspelt = [*args[:-1], str(swarm.directory / "trust" / "agnets")]
    return {
        "misspelt trust directory": (
            ["send", "agent-1", "x", *misspelt],
            "trust directory",
        ),
        "unknown peer name": (["send", "carol", "x", *args], "neither an agent id nor a name"),
        "zero timeout": (["request", "agent-1", "x", *args, "--timeout", "0"], "--timeout"),
        "zero count": (["sub", "t", *args, "--count", "0"], "--count"),
        "no key": (["pub", "t", "x", *swarm.args("nobody")], "holds: agent-0, agent-1"),
    }


@pytest.mark.parametrize(
    "case",
    ["misspelt trust directory", "unknown peer name", "zero timeout", "zero count", "no key"],
)
def test_bad_usage_exits_2_with_one_clear_line(swarm: Swarm, case: str) -> None:
    arguments, expected = _bad_usage(swarm)[case]
    result = zmqcomm(*arguments)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert not (swarm.directory / "trust" / "agnets").exists()


def _help(command: str) -> str:
    result = zmqcomm(command, "--help")
    assert result.returncode == 0
    return result.stdout


@pytest.mark.parametrize("command", ["send", "request", "pub", "sub"])
def test_help_explains_the_options_and_shows_an_example(command: str) -> None:
    text = _help(command)
    for option in ("--broker", "--keys", "--name", "--trust", "--timeout"):
        assert option in text
    explained = {
        "send": "an agent id, or the name",
        "request": "seconds to wait for the reply",
        "pub": "JSON if it parses as JSON",
        "sub": "prefix ending in *",
    }
    assert explained[command] in text
    assert "encrypted end to end" in text
    assert f"zmqcomm {command} " in text  # an example line


@pytest.mark.parametrize(
    ("command", "refused"),
    [
        (["sub", "other/*", "--timeout", "10"], "SUBSCRIBE 'other/*': denied"),
        (["pub", "other/news", "hi"], "PUBLISH 'other/news': denied"),
    ],
)
def test_what_the_brokers_policy_refuses_is_said_and_exits_1(
    swarm_with_policy: Swarm, command: list[str], refused: str
) -> None:
    """Both used to exit 0 and print nothing: the refusal showed only in the broker's
    statistics and audit trail."""
    result = zmqcomm(*command, *swarm_with_policy.args())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"the broker refused {refused}" in result.stderr
    assert "--policy" in result.stderr
    assert result.stdout == ""


def test_what_the_policy_allows_still_exits_0(swarm_with_policy: Swarm) -> None:
    result = zmqcomm("pub", "swarm/news", "hi", *swarm_with_policy.args())
    assert result.returncode == 0, result.stderr


def test_a_send_the_brokers_policy_refuses_is_said_at_once(
    swarm_that_may_not_send: Swarm,
) -> None:
    """It used to wait out the whole --timeout and then guess: 'could not deliver within
    5.0 s: is the peer known?'."""
    with swarm_that_may_not_send.node(1):  # bob is online: the handshake goes to him
        result = zmqcomm(
            "send", "agent-1", "hello", *swarm_that_may_not_send.args(), "--timeout", "30"
        )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "the broker refused FORWARD" in result.stderr, result.stderr
    assert "--policy" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_send_nobody_answers_names_the_likely_cause(swarm: Swarm) -> None:
    """Bob is online but does not trust alice: her handshake goes unanswered."""
    bobs_trust = swarm.directory / "trust" / "bob-alone"
    shutil.copytree(swarm.directory / "trust" / "agents", bobs_trust)
    (bobs_trust / f"{_agent_id(swarm, 0)}.pub").unlink()
    with Node(swarm.agents[1], TrustStore(bobs_trust), broker=swarm.endpoint) as bob:
        code, out, err, got = _while_pumping(
            bob, ["send", "agent-1", "hello", *swarm.args(), "--timeout", "2"]
        )
    assert code == 1 and got == [], (out, err)
    assert "no end-to-end session with" in err, err
    assert "trust store hold this identity's .pub" in err


def test_a_send_reported_as_failed_is_dropped_not_flushed_on_close(
    swarm: Swarm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Closing flushes what is queued for up to 2 s: the message the command had just said
    was not sent could still go out then (had the peer come to trust us), and the command
    took 2 s longer than --timeout to say so. Run in this process to see how it closes."""
    closes: list[tuple[Node, float]] = []
    real_close = Node.close

    def close(node: Node, *, timeout: float = 2.0) -> None:
        closes.append((node, timeout))
        real_close(node, timeout=timeout)

    monkeypatch.setattr(Node, "close", close)
    bobs_trust = swarm.directory / "trust" / "bob-alone"
    shutil.copytree(swarm.directory / "trust" / "agents", bobs_trust)
    (bobs_trust / f"{_agent_id(swarm, 0)}.pub").unlink()
    done = threading.Event()
    got: list[Incoming] = []
    with Node(swarm.agents[1], TrustStore(bobs_trust), broker=swarm.endpoint) as bob:

        def pump() -> None:
            while not done.is_set():
                got.extend(bob.messages(timeout=0.02))

        pumping = threading.Thread(target=pump)
        pumping.start()
        try:
            code = main(["send", "agent-1", "hello", *swarm.args(), "--timeout", "1"])
        finally:
            done.set()
            pumping.join()
    assert code == EXIT_FAILED and got == []
    assert "no end-to-end session with" in capsys.readouterr().err
    assert [timeout for node, timeout in closes if node is not bob] == [0]


def test_a_message_meant_as_json_that_does_not_parse_goes_as_a_string_with_a_warning(
    swarm: Swarm,
) -> None:
    """It went as a string without a word, so a typo in the JSON went unnoticed."""
    result = zmqcomm("send", _agent_id(swarm, 1), '{"task":', *swarm.args())
    assert result.returncode == 0, result.stderr
    assert "MESSAGE is not valid JSON" in result.stderr and "goes as a string" in result.stderr
    with swarm.node(1) as bob:
        got = list(bob.messages(timeout=3.0))
    assert [m.payload for m in got] == ['{"task":']
    plain = zmqcomm("send", _agent_id(swarm, 1), "just words", *swarm.args())
    assert plain.returncode == 0 and "JSON" not in plain.stderr
