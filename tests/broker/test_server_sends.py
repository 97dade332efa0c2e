"""The broker's serve loop when a send to one agent fails: that send is dropped, counted and
audited, and the broker goes on serving everyone else (never raises out of ``step``). Also
what one step does with events of two connections of the same agent."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.access import Policy
from zmqcomm.broker.mailbox import Mailbox
from zmqcomm.broker.server import Broker, read_stats
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import AddressInUseError, LocalProtocolError, SendTimeout, UsageError
from zmqcomm.secure import SecureDealer
from zmqcomm.wire import MessageType
from zmqcomm.wire.limits import DEFAULT_LIMITS

DAY = 24 * 3600.0


@dataclass
class Setup:
    broker: Broker
    audit: MemoryAuditLog
    alice: SecureDealer
    bob: SecureDealer
    agents: dict[str, Identity]
    agent_trust: TrustStore


def _connect(broker: Broker, identity: Identity, trust: TrustStore) -> SecureDealer:
    # The handshake needs the broker stepping while the dealer waits for it.
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            broker.step(0.005)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        return SecureDealer(broker.endpoints[0], identity=identity, trust=trust, connect_timeout=5)
    finally:
        stop.set()
        thread.join()


def _step_until(broker: Broker, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the broker did not get there within 5 s"
        broker.step(0.01)


@pytest.fixture
def setup() -> Iterator[Setup]:
    directory = Path(tempfile.mkdtemp(prefix="zc-bs-", dir="/tmp"))  # short ipc paths
    broker_identity = Identity.generate("broker")
    agents = {name: Identity.generate(name) for name in ("alice", "bob")}
    broker_trust = TrustStore(directory / "trust-broker")
    for agent in agents.values():
        broker_trust.add(agent.public, roles=["agent"])
    agent_trust = TrustStore(directory / "trust-agents")
    agent_trust.add(broker_identity.public, roles=["broker"])
    audit = MemoryAuditLog()
    broker = Broker(
        [f"ipc://{directory}/b.sock"],
        identity=broker_identity,
        trust=broker_trust,
        audit=audit,
        data=directory / "data",
    )
    alice = _connect(broker, agents["alice"], agent_trust)
    bob = _connect(broker, agents["bob"], agent_trust)
    try:
        _step_until(broker, lambda: len(broker.core.agents) == 2)
        bob.send(None, msg_type=MessageType.SUBSCRIBE, topic="t")
        bob_id = agents["bob"].agent_id
        _step_until(broker, lambda: bool(broker.core.agents[bob_id].subscriptions))
        yield Setup(broker, audit, alice, bob, agents, agent_trust)
    finally:
        alice.close()
        bob.close()
        broker.close()
        shutil.rmtree(directory, ignore_errors=True)


def _still_serves(setup: Setup) -> None:
    setup.bob.send("still here", msg_type=MessageType.PUBLISH, topic="t")
    setup.alice.send(None, msg_type=MessageType.PING)
    handled = 0
    for _ in range(20):
        handled += setup.broker.step(0.01)
    assert handled >= 2


def test_a_publication_too_big_once_wrapped_is_dropped_counted_and_audited(setup: Setup) -> None:
    # Accepted as it came in (exactly the body limit); the broker's wrapper adds a few bytes.
    big = bytes(DEFAULT_LIMITS.max_body_size - 5)
    setup.alice.send(big, msg_type=MessageType.PUBLISH, topic="t")
    _step_until(setup.broker, lambda: setup.broker.core.rejected["unsendable"] == 1)
    assert setup.audit.events("reject", reason="unsendable")
    _still_serves(setup)


def test_a_subscriber_that_never_answers_a_rekey_is_dropped_not_fatal(setup: Setup) -> None:
    # Shrunk limits stand in for 2,000,000 messages: bob never pumps, so never rekeys.
    table = setup.broker.router.table
    to_bob = table.channel_to(setup.bob.table.identity.agent_id)
    assert to_bob is not None and to_bob.session is not None
    to_bob.session.policy = RekeyPolicy(max_messages=5, hard_max_messages=10, jitter=0.0)
    for index in range(20):
        setup.alice.send(index, msg_type=MessageType.PUBLISH, topic="t")
        setup.alice.pump(0)
        setup.broker.step(0.01)
    assert setup.broker.core.rejected["recipient_gone"] >= 1
    assert setup.audit.events("reject", reason="recipient_gone")


_FULL_QUEUE = SendTimeout("the high-water mark (as ZeroMQ's EAGAIN becomes)")


def _refuse_sends(
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
    msg_type: int,
    error: Exception,
    *,
    times: int | None = None,
) -> None:
    """The broker's sends of ``msg_type`` fail with ``error`` (the first ``times`` only, if
    given), as a full queue or an oversized wrap would make them; the rest go out."""
    real_send = setup.broker.router.send
    refused: list[object] = []

    def send(agent_id: str, payload: object, **options: Any) -> None:
        if options.get("msg_type") == msg_type and (times is None or len(refused) < times):
            refused.append(payload)
            raise error
        real_send(agent_id, payload, **options)

    monkeypatch.setattr(setup.broker.router, "send", send)


def test_a_slow_consumer_drop_is_audited(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_sends(setup, monkeypatch, MessageType.PUBLISH, _FULL_QUEUE)
    setup.alice.send("x", msg_type=MessageType.PUBLISH, topic="t")
    _step_until(setup.broker, lambda: setup.broker.core.rejected["slow_consumer"] == 1)
    assert setup.audit.events("reject", reason="slow_consumer")


def test_a_refusal_answer_that_finds_the_queue_full_is_counted_not_audited(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice may no longer publish; her queue is full, so the ERROR telling her cannot go.
    setup.broker.set_policy(Policy.from_toml('[roles.agent]\nsend = ["DATA"]\n'))
    _refuse_sends(setup, monkeypatch, MessageType.ERROR, _FULL_QUEUE)
    for _ in range(3):
        setup.alice.send("x", msg_type=MessageType.PUBLISH, topic="t")
    _step_until(setup.broker, lambda: setup.broker.core.rejected["denied"] == 3)
    assert setup.broker.statistics()["error_answers_dropped"] == 3
    # The refusals are audited; the answers let go are not (one line each would let an agent
    # that does not read cost the broker a line per refused message).
    alice_id = setup.agents["alice"].agent_id
    about_alice = [e["reason"] for e in setup.audit.events("reject") if e["peer"] == alice_id]
    assert about_alice == ["denied"] * 3
    setup.broker.write_stats()
    assert setup.broker.data is not None
    assert read_stats(setup.broker.data)["error_answers_dropped"] == 3


def test_mail_a_full_queue_refused_is_handed_over_once_there_is_room(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_sends(setup, monkeypatch, MessageType.MAIL_DELIVER, _FULL_QUEUE, times=1)
    bob_id = setup.agents["bob"].agent_id
    setup.alice.send(b"sealed", msg_type=MessageType.MAIL, topic=bob_id)
    _step_until(setup.broker, lambda: setup.broker.core.rejected["slow_consumer"] == 1)

    def bob_has_mail() -> bool:
        setup.bob.pump(0)
        return any(d.message.header.type == MessageType.MAIL_DELIVER for d in setup.bob.inbox)

    _step_until(setup.broker, bob_has_mail)  # bob stays connected all along


def test_mail_too_big_once_wrapped_is_deleted_not_left_in_flight(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_big = LocalProtocolError("stands in for a body over the hop's limit once wrapped")
    _refuse_sends(setup, monkeypatch, MessageType.MAIL_DELIVER, too_big)
    bob_id = setup.agents["bob"].agent_id
    setup.alice.send(b"sealed", msg_type=MessageType.MAIL, topic=bob_id)
    _step_until(setup.broker, lambda: setup.broker.core.rejected["unsendable"] == 1)
    assert setup.audit.events("reject", reason="unsendable")
    assert setup.broker.mailbox is not None and setup.broker.mailbox.count() == 0
    assert not setup.broker.core.agents[bob_id].mail_in_flight


def test_a_broker_that_cannot_bind_closes_its_mailbox(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-bs-", dir="/tmp"))
    closed: list[Mailbox] = []
    real_close = Mailbox.close

    def tracked_close(self: Mailbox) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Mailbox, "close", tracked_close)
    identity = Identity.generate("broker")
    trust = TrustStore(directory / "trust")
    try:
        with Broker(["tcp://127.0.0.1:0"], identity=identity, trust=trust) as first:
            with pytest.raises(AddressInUseError):
                Broker(first.endpoints, identity=identity, trust=trust, data=directory / "data")
            assert len(closed) == 1  # the second broker's, before the first one closes
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("setting", [{"idle_timeout": float("nan")}, {"idle_timeout": -1.0}])
def test_a_bad_duration_is_refused_before_anything_is_bound(setting: dict[str, Any]) -> None:
    identity = Identity.generate("broker")
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    try:
        with pytest.raises(UsageError, match="idle_timeout"):
            Broker(
                [f"ipc://{directory}/b.sock"],
                identity=identity,
                trust=TrustStore(directory / "trust"),
                **setting,
            )
        assert not (directory / "b.sock").exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_bye_from_a_replaced_connection_keeps_the_new_session(setup: Setup) -> None:
    broker, alice_id = setup.broker, setup.agents["alice"].agent_id
    again = SecureDealer(
        broker.endpoints[0],
        identity=setup.agents["alice"],
        trust=setup.agent_trust,
        connect_timeout=None,  # its handshake runs below, by hand
    )
    try:
        setup.alice.send(None, msg_type=MessageType.BYE)  # the old connection leaves
        # Pump the router only, so that one step of the broker meets both: the old
        # connection's BYE and the new connection's session.
        deadline = time.monotonic() + 5
        while not (broker.router.inbox and broker.router.joined):
            assert time.monotonic() < deadline, "the BYE and the new session never arrived"
            broker.router.pump(0.01)
            again.pump(0)
        broker.step(0)
        assert alice_id in broker.core.agents
        assert broker.router.table.route_of(alice_id) is not None
    finally:
        again.close()


def test_the_broker_expires_mail_older_than_a_week() -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-bs-", dir="/tmp"))
    identity = Identity.generate("broker")
    alice, bob_identity = (Identity.generate(name) for name in ("alice", "bob"))
    bob = bob_identity.agent_id
    trust = TrustStore(directory / "trust")
    trust.add(bob_identity.public, roles=["agent"])  # mail for an untrusted id would be swept
    clock = [1_800_000_000.0]
    try:
        with Broker(
            [f"ipc://{directory}/b.sock"],
            identity=identity,
            trust=trust,
            data=directory / "data",
            clock=lambda: clock[0],
            wall_clock=lambda: clock[0],
        ) as broker:
            mailbox = broker.mailbox
            assert mailbox is not None
            mailbox.put(bob, alice.agent_id, b"sealed", now=clock[0])
            mailbox.put(bob, alice.agent_id, b"sealed later", now=clock[0] + 2 * DAY)
            broker.step(0)
            assert mailbox.count(bob) == 2
            clock[0] += 8 * DAY  # the first is past the default TTL, the second is not
            broker.step(0)
            assert [m.blob for m in mailbox.pending(bob)] == [b"sealed later"]
            assert broker.statistics()["mail_expired"] == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_broker_takes_mail_only_for_agents_its_trust_store_lets_in() -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-bs-", dir="/tmp"))
    now = 1_800_000_000.0
    names = ("alice", "bob", "revoked", "expired", "stranger")
    alice, bob, revoked, expired, stranger = (Identity.generate(name) for name in names)
    trust = TrustStore(directory / "trust")
    for agent in (alice, bob, revoked):
        trust.add(agent.public, roles=["agent"])
    trust.add(expired.public, roles=["agent"], expires=now - 1)
    trust.revoke(revoked.agent_id)
    try:
        with Broker(
            [f"ipc://{directory}/b.sock"],
            identity=Identity.generate("broker"),
            trust=trust,
            data=directory / "data",
            wall_clock=lambda: now,
        ) as broker:
            broker.core.connected(alice.agent_id, ["agent"], now=now)
            answers = {
                agent.public.name: broker.core.handle(
                    alice.agent_id, MessageType.MAIL, agent.agent_id, b"sealed", now=now
                )[0].msg_type
                for agent in (bob, revoked, expired, stranger)
            }
            assert answers == {
                "bob": MessageType.MAIL_ACCEPTED,
                "revoked": MessageType.UNREACHABLE,
                "expired": MessageType.UNREACHABLE,
                "stranger": MessageType.UNREACHABLE,
            }
            assert broker.core.rejected["unknown_recipient"] == 3
            assert broker.mailbox is not None and broker.mailbox.count() == 1
            # Under trust on first use a stranger may yet come (and be pinned); never a
            # revoked agent.
            trust.tofu = True
            for agent, answer in (
                (stranger, MessageType.MAIL_ACCEPTED),
                (revoked, MessageType.UNREACHABLE),
            ):
                sends = broker.core.handle(
                    alice.agent_id, MessageType.MAIL, agent.agent_id, b"sealed", now=now
                )
                assert sends[0].msg_type == answer
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_mail_sweep_deletes_only_for_a_revocation_not_a_key_file_caught_mid_write() -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-bs-", dir="/tmp"))
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    trust = TrustStore(directory / "trust", watch_interval=0.0)
    trust.add(alice.public, roles=["agent"])
    trust.add(bob.public, roles=["agent"])
    now = 1_800_000_000.0
    try:
        with Broker(
            [f"ipc://{directory}/b.sock"],
            identity=Identity.generate("broker"),
            trust=trust,
            data=directory / "data",
        ) as broker:
            mailbox = broker.mailbox
            assert mailbox is not None
            for recipient in (alice, bob):
                mailbox.put(recipient.agent_id, bob.agent_id, b"sealed", now=now)
            path = trust.lookup(alice.agent_id, now=now).path
            whole = path.read_bytes()
            path.write_bytes(whole[: len(whole) // 2])  # an editor's save, caught half way
            trust.revoke(bob.agent_id)
            broker.core.expire_mail(now=now + 10, max_age=7 * DAY)
            path.write_bytes(whole)
            assert mailbox.count(alice.agent_id) == 1  # absent for a moment: kept
            assert mailbox.count(bob.agent_id) == 0  # revoked: gone
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_two_brokers_cannot_share_a_data_directory(tmp_path: Path) -> None:
    """They would share one mailbox and overwrite each other's stats.json."""
    directory = Path(tempfile.mkdtemp(prefix="zc-lock-", dir="/tmp"))  # short ipc paths
    identity = Identity.generate("broker")
    trust = TrustStore(tmp_path / "trust")
    data = tmp_path / "data"
    try:
        first = Broker([f"ipc://{directory}/1.sock"], identity=identity, trust=trust, data=data)
        with pytest.raises(UsageError, match="in use by another broker"):
            Broker([f"ipc://{directory}/2.sock"], identity=identity, trust=trust, data=data)
        first.close()
        with Broker([f"ipc://{directory}/2.sock"], identity=identity, trust=trust, data=data):
            pass  # free again once the first is closed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_batch_of_refused_payloads_gets_one_answer(tmp_path: Path) -> None:
    """Each refused payload of a batch was answered with its own ERROR: one small frame of
    2000 denied payloads came back as 2000 frames (found by the final review)."""
    directory = Path(tempfile.mkdtemp(prefix="zc-err-", dir="/tmp"))
    broker_identity, alice = Identity.generate("broker"), Identity.generate("alice")
    broker_trust = TrustStore(tmp_path / "broker-trust")
    broker_trust.add(alice.public, roles=["observer"])
    alice_trust = TrustStore(tmp_path / "alice-trust")
    alice_trust.add(broker_identity.public, roles=["broker"])
    policy = Policy.from_toml('[roles.observer]\nsend = ["DATA"]\n')
    broker = Broker(
        [f"ipc://{directory}/b.sock"], identity=broker_identity, trust=broker_trust, policy=policy
    )
    try:
        dealer = _connect(broker, alice, alice_trust)
        try:
            dealer.send_many([None] * 50, msg_type=MessageType.PUBLISH, topic="t")
            _step_until(broker, lambda: broker.core.rejected["denied"] == 50)
            answers = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                broker.step(0.01)
                dealer.pump(0.01)
                answers += [d.message.header.type for d in dealer.inbox]
                dealer.inbox.clear()
            assert answers == [MessageType.ERROR]
        finally:
            dealer.close()
    finally:
        broker.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_close_whose_last_stats_write_fails_still_lets_everything_go(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="zc-close-", dir="/tmp"))
    identity = Identity.generate("broker")
    trust = TrustStore(tmp_path / "trust")
    data = tmp_path / "data"
    try:
        broker = Broker([f"ipc://{directory}/1.sock"], identity=identity, trust=trust, data=data)
        blocker = data / f".stats.json.{os.getpid()}"  # where the last stats write goes
        blocker.mkdir()
        with pytest.raises(OSError):
            broker.close()
        blocker.rmdir()
        assert broker.router.closed
        with Broker([f"ipc://{directory}/2.sock"], identity=identity, trust=trust, data=data):
            pass  # the data directory's lock was let go
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_closed_broker_removes_the_socket_file_of_every_ipc_endpoint() -> None:
    """libzmq leaves them; a stopped broker's files looked like a running broker's."""
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    try:
        files = [directory / "first.sock", directory / "second.sock"]
        with Broker(
            [f"ipc://{path}" for path in files] + ["tcp://127.0.0.1:0"],
            identity=Identity.generate("broker"),
            trust=TrustStore(directory / "trust"),
        ) as broker:
            assert len(broker.endpoints) == 3
            assert all(path.is_socket() for path in files)
        assert not any(path.exists() for path in files)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_broker_that_cannot_bind_leaves_no_new_data_directory() -> None:
    """Found by a walkthrough: the port was taken, the error was clear, and yet data/ with
    a lock file and an empty mailbox was left, as if a broker had run there. A directory
    that was there before stays."""
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    identity = Identity.generate("broker")
    trust = TrustStore(directory / "trust")
    try:
        with Broker(["tcp://127.0.0.1:0"], identity=identity, trust=trust) as first:
            taken = first.endpoints[0]
            with pytest.raises(AddressInUseError):
                Broker([taken], identity=identity, trust=trust, data=directory / "new")
            assert not (directory / "new").exists()
            (directory / "old").mkdir()
            with pytest.raises(AddressInUseError):
                Broker([taken], identity=identity, trust=trust, data=directory / "old")
            assert (directory / "old").is_dir()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
