"""``zmqcomm broker`` and ``zmqcomm broker stats`` as an operator runs them: real processes.

Every broker here is a subprocess on an ipc endpoint in a short directory under /tmp (the ipc
path limit is 107 bytes), bounded by timeouts and killed at the end of its test whatever
happened. Agents are :class:`Node` objects in the test process, keyed by ``layout.create``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmqcomm.broker.server import Broker
from zmqcomm.cli import broker as cli_broker
from zmqcomm.cli.main import main
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ReceiveTimeout, ZmqCommError
from zmqcomm.node import Incoming, Node
from zmqcomm.swarm import layout
from zmqcomm.wire import MessageType
from zmqcomm.wire.header import pack_header

COMMAND = (sys.executable, "-m", "zmqcomm")
#: Generous: a loaded CI machine may take seconds to import and bind.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def zmqcomm(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``zmqcomm ARGS`` to completion (bounded by ``timeout``)."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Setup:
    """A broker identity, two agents, trust stores and a policy under a short directory."""

    directory: Path
    broker: Identity
    agents: list[Identity]

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.directory}/b.sock"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def audit(self) -> Path:
        return self.directory / "audit.jsonl"

    def broker_args(self) -> list[str]:
        return [
            "--bind", self.endpoint,
            "--keys", str(self.directory / "keys"),
            "--trust", str(self.directory / "trust" / "broker"),
            "--data", str(self.data),
            "--audit", str(self.audit),
        ]  # fmt: skip

    def node(self, index: int, *, connect_timeout: float = 10.0) -> Node:
        """Agent ``index`` connected to the broker (its hop handshake done on return)."""
        trust = TrustStore(self.directory / "trust" / "agents")
        return Node(
            self.agents[index], trust, broker=self.endpoint, connect_timeout=connect_timeout
        )


@dataclass
class Running:
    """A broker subprocess and the files its stdout and stderr go to."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    data: Path

    def err(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stats(self) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads((self.data / "stats.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return loaded

    def wait_stats(
        self, condition: Callable[[dict[str, Any]], bool], *, timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """Poll ``stats.json`` until this process wrote one that satisfies ``condition``."""
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                pytest.fail(f"broker exited with {self.process.returncode}:\n{self.err()}")
            stats = self.stats()
            if stats is not None and stats.get("pid") == self.process.pid and condition(stats):
                return stats
            time.sleep(0.05)
        pytest.fail(f"broker stats never matched within {timeout} s; last: {stats}\n{self.err()}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def log_events(self) -> list[dict[str, Any]]:
        """stderr, every line of which must be one JSON object."""
        return [json.loads(line) for line in self.err().splitlines() if line.strip()]


@pytest.fixture
def setup() -> Iterator[Setup]:
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    try:
        broker, agents = layout.create(directory, 2)
        yield Setup(directory, broker, agents)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_broker(setup: Setup) -> Iterator[Callable[..., Running]]:
    """Start ``zmqcomm broker`` with the setup's settings (plus ``extra``) and wait until it
    has written its first statistics. Every broker started is killed at teardown."""
    started: list[Running] = []

    def start(*extra: str, args: list[str] | None = None) -> Running:
        number = len(started)
        out, err = setup.directory / f"broker{number}.out", setup.directory / f"broker{number}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [*COMMAND, "broker", *(setup.broker_args() if args is None else args), *extra],
                stdout=stdout,
                stderr=stderr,
            )
        running = Running(process, out, err, setup.data)
        started.append(running)
        running.wait_stats(lambda stats: True)
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.alive():
                running.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
                running.process.wait(timeout=STOP_TIMEOUT)


def _close(*nodes: Node | None) -> None:
    for node in nodes:
        if node is not None:
            node.close(timeout=0)


# -- help and bad usage ----------------------------------------------------------------------


def test_broker_help_shows_examples() -> None:
    result = zmqcomm("broker", "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout
    assert "zmqcomm broker --bind tcp://127.0.0.1:5555" in result.stdout
    assert "zmqcomm broker stats --data data" in result.stdout
    assert "SIGTERM" in result.stdout


def test_top_level_help_lists_broker() -> None:
    result = zmqcomm("--help")
    assert result.returncode == 0
    assert "broker" in result.stdout and "swarm" in result.stdout


def _bad_usage_cases(setup: Setup) -> dict[str, tuple[list[str], str]]:
    keys = str(setup.directory / "keys")
    trust = str(setup.directory / "trust" / "broker")
    config = setup.directory / "broker.toml"
    config.write_text(f'bind = "{setup.endpoint}"\ncolour = "red"\n', encoding="utf-8")
    broken = setup.directory / "broken.toml"
    broken.write_text("bind = [unclosed\n", encoding="utf-8")
    bind, missing = ["--bind", setup.endpoint], str(setup.directory / "none.toml")
    wrong_type = setup.directory / "wrong-type.toml"
    wrong_type.write_text(f'bind = "{setup.endpoint}"\nkeys = 5\n', encoding="utf-8")
    wrong_bind = setup.directory / "wrong-bind.toml"
    wrong_bind.write_text("bind = [1]\n", encoding="utf-8")
    wrong_limit = setup.directory / "wrong-limit.toml"
    wrong_limit.write_text('max_subscriptions = "64"\n', encoding="utf-8")
    return {
        "no --bind": (["--keys", keys, "--trust", trust], "--bind is required"),
        "no --keys": ([*bind, "--trust", trust], "--keys is required"),
        "no --trust": ([*bind, "--keys", keys], "--trust is required"),
        "unknown config key": (["--config", str(config)], "unknown setting(s) colour"),
        "config not TOML": (["--config", str(broken)], "is not valid TOML"),
        "config missing": (["--config", missing], f"cannot read {missing}"),
        "config value of a wrong type": (
            ["--config", str(wrong_type), "--trust", trust],
            "keys must be a string, got int",
        ),
        "config bind of a wrong type": (
            ["--config", str(wrong_bind), "--keys", keys, "--trust", trust],
            "bind must be a string or a list of strings, got list",
        ),
        "config limit of a wrong type": (
            ["--config", str(wrong_limit), *bind, "--keys", keys, "--trust", trust],
            "max_subscriptions must be a whole number from 1 to 2**63-1, got '64'",
        ),
        "limit out of range": (
            [*bind, "--keys", keys, "--trust", trust, "--mail-ttl=0"],
            "--mail-ttl must be a finite number of seconds > 0, got 0.0",
        ),
        "no key dir": (
            [*bind, "--keys", str(setup.directory / "nokeys"), "--trust", trust],
            "no identity at",
        ),
        "missing policy": (
            [*bind, "--keys", keys, "--trust", trust, "--policy", missing],
            "cannot read policy file",
        ),
        "stats without --data": (["stats"], "needs --data"),
        "misspelt trust directory": (
            [*bind, "--keys", keys, "--trust", str(setup.directory / "trust" / "brokr")],
            "trust directory",
        ),
    }


BAD_USAGE = [
    "no --bind",
    "no --keys",
    "no --trust",
    "unknown config key",
    "config not TOML",
    "config missing",
    "config value of a wrong type",
    "config bind of a wrong type",
    "config limit of a wrong type",
    "limit out of range",
    "no key dir",
    "missing policy",
    "stats without --data",
    "misspelt trust directory",
]


@pytest.mark.parametrize("case", BAD_USAGE)
def test_bad_usage_exits_2_with_one_clear_line(setup: Setup, case: str) -> None:
    arguments, expected = _bad_usage_cases(setup)[case]
    result = zmqcomm("broker", *arguments, timeout=20.0)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("zmqcomm broker: error: ")
    assert expected in result.stderr
    assert result.stdout == ""
    # Nothing was started: no socket, no data directory.
    assert not (setup.directory / "b.sock").exists()
    assert not setup.data.exists()


@pytest.mark.parametrize(
    ("arguments", "config", "expected"),
    [
        (["--max-subscriptions", "0"], "", "--max-subscriptions must be a whole number from 1"),
        (["--max-bytes-per-agent", "lots"], "", "--max-bytes-per-agent must be a whole number"),
        (["--max-blob-size", "1.5"], "", "--max-blob-size must be a whole number"),
        (["--mail-ttl=-5"], "", "--mail-ttl must be a finite number of seconds > 0, got -5.0"),
        (["--mail-ttl", "nan"], "", "--mail-ttl must be a finite number of seconds > 0"),
        ([], "max_total_bytes = 1.5", "max_total_bytes must be a whole number from 1"),
        ([], "max_messages_per_sender = 0", "max_messages_per_sender must be a whole number"),
        ([], "max_bytes_per_sender = true", "max_bytes_per_sender must be a whole number"),
        ([], "mail_ttl = true", "mail_ttl must be a finite number of seconds > 0, got True"),
        ([], "mail_ttl = inf", "mail_ttl must be a finite number of seconds > 0, got inf"),
    ],
)
def test_a_bad_limit_is_one_clear_line_before_anything_starts(
    setup: Setup,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    config: str,
    expected: str,
) -> None:
    toml = setup.directory / "broker.toml"
    toml.write_text(config + "\n", encoding="utf-8")
    args = [*setup.broker_args(), "--config", str(toml), *arguments]
    assert main(["broker", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (setup.directory / "b.sock").exists() and not setup.data.exists()


def test_limits_from_the_config_file_and_command_line_reach_the_broker(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Broker] = []

    class Recorded(Broker):
        def __init__(self, *args: Any, **options: Any) -> None:
            super().__init__(*args, **options)
            made.append(self)

        def serve(self, until: Callable[[], bool] | None = None) -> None:
            return  # made and closed, never run

    monkeypatch.setattr(cli_broker, "Broker", Recorded)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # not this test process's handlers
    toml = setup.directory / "broker.toml"
    toml.write_text(
        "max_subscriptions = 8\nmail_ttl = 3600\nmax_messages_per_agent = 5\n",
        encoding="utf-8",
    )
    arguments = ["--config", str(toml), "--max-messages-per-agent", "7"]
    arguments += ["--max-bytes-per-sender", "1000"]
    try:
        assert main(["broker", *setup.broker_args(), *arguments]) == 0
    finally:
        logging.getLogger("zmqcomm.broker").handlers.clear()  # bound to pytest's stderr
    (broker,) = made
    assert broker.core.max_subscriptions == 8 and broker.mail_ttl == 3600.0
    mailbox = broker.mailbox
    assert mailbox is not None
    assert mailbox.max_messages_per_agent == 7  # the command line wins
    assert mailbox.max_bytes_per_sender == 1000
    assert mailbox.max_messages_per_sender == 10_000  # not set: the default


def test_argparse_errors_exit_2_without_traceback() -> None:
    result = zmqcomm("broker", "frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_stats_without_a_broker_fails_with_exit_1(setup: Setup) -> None:
    result = zmqcomm("broker", "stats", "--data", str(setup.data))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "is a broker running" in result.stderr


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_stats_from_a_corrupt_file_fail_with_one_clear_line(setup: Setup, content: bytes) -> None:
    setup.data.mkdir()
    (setup.data / "stats.json").write_bytes(content)
    result = zmqcomm("broker", "stats", "--data", str(setup.data))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "stats.json is not broker statistics" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"updated": "x"}, "updated must be a number, got str"),
        ({"uptime": None}, "uptime must be a number, got NoneType"),
        ({"updated": True}, "updated must be a number, got bool"),
        ({"endpoints": "ipc://x"}, "endpoints must be a list of strings, got str"),
        ({"rates_per_s": [1]}, "rates_per_s must be an object of numbers, got list"),
        ({"rates_per_s": {"in": "fast"}}, "rates_per_s must be an object of numbers, got dict"),
        ({"rejected": [1]}, "rejected must be an object, got list"),
        ({"rejected_sessions": 3}, "rejected_sessions must be an object, got int"),
    ],
)
def test_stats_with_fields_of_a_wrong_type_fail_with_one_clear_line(
    setup: Setup, content: dict[str, Any], expected: str
) -> None:
    setup.data.mkdir()
    (setup.data / "stats.json").write_text(json.dumps(content), encoding="utf-8")
    result = zmqcomm("broker", "stats", "--data", str(setup.data))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and result.stdout == ""


# -- running ---------------------------------------------------------------------------------


def test_broker_reports_stats_and_stops_on_sigterm(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    broker = start_broker()
    first = broker.wait_stats(lambda stats: stats["agents"] == 0)
    assert first["endpoints"] == [setup.endpoint]

    text = zmqcomm("broker", "stats", "--data", str(setup.data))
    assert text.returncode == 0, text.stderr
    assert f"broker pid {broker.process.pid}" in text.stdout
    assert "agents connected 0" in text.stdout
    assert "ERRORs dropped   0" in text.stdout
    assert setup.endpoint in text.stdout
    as_json = zmqcomm("broker", "stats", "--data", str(setup.data), "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["agents"] == 0 and report["pid"] == broker.process.pid
    assert report["error_answers_dropped"] == 0

    node = setup.node(0)
    try:
        broker.wait_stats(lambda stats: stats["agents"] == 1)
        as_json = zmqcomm("broker", "stats", "--data", str(setup.data), "--json")
        report = json.loads(as_json.stdout)
        assert report["agents"] == 1
        assert report["handshakes"] >= 1
        text = zmqcomm("broker", "stats", "--data", str(setup.data))
        assert "agents connected 1" in text.stdout
    finally:
        _close(node)

    socket_file = Path(setup.endpoint.removeprefix("ipc://"))
    assert socket_file.is_socket()
    assert broker.stop(signal.SIGTERM) == 0
    assert not socket_file.exists()  # a stopped broker's file looked like a running one
    # Its last figures say it stopped (it used to look alive for 5 s, then "still running?").
    after = zmqcomm("broker", "stats", "--data", str(setup.data))
    assert after.returncode == 0 and re.search(r"stopped \d+ s ago", after.stdout), after.stdout
    assert json.loads((setup.data / "stats.json").read_text())["running"] is False
    events = broker.log_events()  # every stderr line is JSON
    assert events[0]["event"] == "started"
    assert events[0]["agent_id"] == setup.broker.agent_id
    assert events[0]["endpoints"] == [setup.endpoint]
    assert events[-1]["event"] == "stopped"
    assert events[-1]["handshakes"] >= 1
    assert broker.stdout.read_text() == ""
    assert setup.audit.exists()


def test_broker_stops_cleanly_on_sigint(start_broker: Callable[..., Running]) -> None:
    broker = start_broker()
    assert broker.stop(signal.SIGINT) == 0
    assert broker.log_events()[-1]["event"] == "stopped"


def test_config_file_settings_and_command_line_wins(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    config = setup.directory / "broker.toml"
    config.write_text(
        f'bind = "{setup.endpoint}"\n'
        f'keys = "{setup.directory / "keys"}"\n'
        f'trust = "{setup.directory / "trust" / "broker"}"\n'
        f'data = "{setup.directory / "ignored"}"\n',
        encoding="utf-8",
    )
    broker = start_broker(args=["--config", str(config), "--data", str(setup.data)])
    assert broker.wait_stats(lambda stats: True)["endpoints"] == [setup.endpoint]
    assert not (setup.directory / "ignored").exists()
    assert broker.stop() == 0


def _receive_all(node: Node, *, expected: int, timeout: float, quiet: float) -> list[Incoming]:
    """Messages until ``expected`` arrived (or ``timeout``), then any more for ``quiet`` s."""
    got: list[Incoming] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        try:
            got.append(node.receive(timeout=max(0.01, deadline - time.monotonic())))
        except ReceiveTimeout:
            break
    got.extend(node.messages(timeout=quiet))
    return got


def test_mail_survives_sigkill_and_restart(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    count = 30
    alice_id, bob_id = setup.agents[0].agent_id, setup.agents[1].agent_id
    first = start_broker()
    alice = bob = None
    try:
        alice = setup.node(0)
        for number in range(count):
            alice.send(bob_id, {"n": number})
        # Bob is offline: the broker answers UNREACHABLE and Alice turns the queue into mail.
        # ``stored`` counts puts that returned, i.e. were committed to SQLite.
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            alice.pump(0.05)
            stats = first.stats() or {}
            if stats.get("stored", 0) >= count:
                break
        else:
            pytest.fail(f"mail not stored: {first.stats()}, alice {alice.statistics()}")
        assert alice.statistics()["mailed"] == count
        assert stats["mail_waiting"] == count
        _close(alice)
        alice = None

        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=STOP_TIMEOUT) == -signal.SIGKILL

        second = start_broker()  # same --data; waits for stats.json written by the new pid
        assert second.wait_stats(lambda stats: True)["mail_waiting"] == count

        bob = setup.node(1)
        got = _receive_all(bob, expected=count, timeout=15.0, quiet=0.5)
        assert [message.via for message in got] == ["mail"] * len(got)
        assert {message.sender for message in got} == {alice_id}
        numbers = [message.payload["n"] for message in got]
        assert sorted(numbers) == list(range(count)), numbers  # all of them, no duplicates

        # Bob's acknowledgements empty the mailbox (he must keep pumping to send them).
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            bob.pump(0.05)
            if (second.stats() or {}).get("mail_waiting") == 0:
                break
        else:
            pytest.fail(f"mail never acknowledged: {second.stats()}")
    finally:
        _close(alice, bob)


def _garbage(rng: random.Random) -> Iterator[list[bytes]]:
    """Random frames, and frames that get further into the parser before they are wrong."""
    for size in (0, 1, 2, 5, 43, 44, 45, 100, 1000, 70_000):
        yield [rng.randbytes(size)]
    for _ in range(50):
        yield [rng.randbytes(rng.randrange(1, 300)) for _ in range(rng.randrange(1, 5))]
    for msg_type in (*MessageType, 0xFF):
        for flags in (0, 1, 2, 4, 8, 15):
            body = rng.randbytes(rng.randrange(0, 200))
            header = pack_header(msg_type, flags, b"", len(body), sender=rng.randbytes(16))
            yield [header + body]
            yield [header + body[: len(body) // 2]]  # truncated
            yield [header, body]
    # A header claiming a 4 GiB body, and one with a topic that is not UTF-8.
    yield [pack_header(MessageType.HANDSHAKE_INIT, 0, b"", 2**32 - 1)]
    yield [pack_header(MessageType.FORWARD, 0, b"\xff\xfe", 0)]


def test_garbage_does_not_crash_the_broker(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    broker = start_broker()
    context = zmq.Context()
    sockets = []
    try:
        rng = random.Random(20240601)
        for index in range(3):  # several connections, one of them with a chosen routing id
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 2000)
            if index == 2:
                sock.setsockopt(zmq.ROUTING_ID, setup.agents[0].agent_id.encode())
            sock.connect(setup.endpoint)
            sockets.append(sock)
        for number, frames in enumerate(_garbage(rng)):
            sockets[number % len(sockets)].send_multipart(frames)
        sent_at = time.time()
        # Still running, and still serving: stats written after the garbage, a real agent
        # can connect, and nothing was taken for an agent.
        stats = broker.wait_stats(lambda stats: stats["updated"] > sent_at + 1.0)
        assert stats["agents"] == 0
        node = setup.node(1)
        try:
            broker.wait_stats(lambda stats: stats["agents"] == 1)
        finally:
            _close(node)
        result = zmqcomm("broker", "stats", "--data", str(setup.data), "--json")
        assert result.returncode == 0
        assert json.loads(result.stdout)["pid"] == broker.process.pid
        assert broker.alive()
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
    assert broker.stop() == 0
    assert "Traceback" not in broker.err()


# -- expiry, audit times, leaving agents ---------------------------------------------


def test_agent_whose_trust_expired_is_refused(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    broker_trust = TrustStore(setup.directory / "trust" / "broker")
    broker_trust.add(setup.agents[0].public, roles=["agent"], expires="2020-01-01T00:00:00Z")
    broker = start_broker()
    node = None
    try:
        with pytest.raises(ZmqCommError):
            node = setup.node(0, connect_timeout=3.0)
    finally:
        _close(node)
    assert broker.wait_stats(lambda stats: True)["agents"] == 0


def test_audit_trail_is_stamped_with_the_wall_clock(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    began = time.time()
    broker = start_broker()
    _close(setup.node(0))
    assert broker.stop() == 0
    lines = [json.loads(line) for line in setup.audit.read_text().splitlines()]
    assert any(line["event"] == "handshake" for line in lines)
    for line in lines:
        assert began - 60 <= line["ts"] <= time.time() + 60, line


def test_agents_count_drops_when_an_agent_leaves(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    broker = start_broker()
    node = setup.node(0)
    try:
        broker.wait_stats(lambda stats: stats["agents"] == 1)
    finally:
        _close(node)
    broker.wait_stats(lambda stats: stats["agents"] == 0, timeout=4.0)


# -- policy reload -----------------------------------------------------------------------------

ALLOW_ALL = '[roles.agent]\nsend = ["*"]\npublish = ["*"]\nsubscribe = ["*"]\n'
NO_FORWARDING = '[roles.agent]\nsend = ["MAIL"]\n'


def _next_message(receiver: Node, sender: Node) -> Incoming:
    """Pump both (the tunnel's handshake needs the sender too) until one message is in."""
    deadline = time.monotonic() + START_TIMEOUT
    while not receiver.inbox:
        assert time.monotonic() < deadline, "nothing arrived"
        sender.pump(0.01)
        receiver.pump(0.01)
    return receiver.receive(timeout=0)


def _wait_log(broker: Running, event: str) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = [line for line in broker.log_events() if line["event"] == event]
        if found:
            return found[-1]
        time.sleep(0.05)
    pytest.fail(f"no {event} in the broker's log:\n{broker.err()}")


def test_sighup_reloads_the_policy_and_a_file_that_does_not_load_keeps_the_old(
    setup: Setup, start_broker: Callable[..., Running]
) -> None:
    policy = setup.directory / "reload.toml"
    policy.write_text(ALLOW_ALL)
    broker = start_broker("--policy", str(policy))
    alice, bob = setup.node(0), setup.node(1)
    try:
        alice.send(bob.agent_id, "before")
        assert _next_message(bob, alice).payload == "before"

        policy.write_text("[roles.agent\nsend = oops")
        broker.process.send_signal(signal.SIGHUP)
        failed = _wait_log(broker, "policy_reload_failed")
        assert "not valid TOML" in failed["error"]
        alice.send(bob.agent_id, "old policy still in force")
        assert _next_message(bob, alice).payload == "old policy still in force"

        policy.write_text(NO_FORWARDING)
        broker.process.send_signal(signal.SIGHUP)
        _wait_log(broker, "policy_reloaded")
        alice.send(bob.agent_id, "refused")
        alice.pump(0.1)
        broker.wait_stats(lambda stats: stats["rejected"].get("denied", 0) >= 1)
        bob.pump(0.1)
        assert not bob.inbox
    finally:
        _close(alice, bob)
    assert broker.stop() == 0
