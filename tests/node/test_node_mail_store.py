"""A node with a mail store, through a real broker: held mail and seen mail ids outlive a
close, a SIGKILL and a failed write, and a broker replaying delivered mail after a restart
is refused. Without a store the memory-only behaviour stays as it was.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.crypto.key_files import save_identity
from zmqcomm.errors import ConnectError, StoreError, UsageError
from zmqcomm.node import Node
from zmqcomm.node.tunnel import HopMessage
from zmqcomm.wire import MessageType

from .conftest import Bus
from .support import BrokerThread, pump_until, settle
from .test_mail_changes import RaisingAudit

MakeNode = Callable[..., Node]


def mail_waiting(broker: BrokerThread, recipient: str | None = None) -> int:
    def count(b: Any) -> int:
        return int(b.mailbox.count(recipient))

    return broker.call(count)


def mail_from_a_stranger(bus: Bus, broker: BrokerThread, make_node: MakeNode, text: str) -> None:
    """Alice mails offline dave, who does not trust her (yet)."""
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    alice.send(bus.id("dave"), text)
    pump_until([alice], lambda: mail_waiting(broker, bus.id("dave")) == 1, what="stored mail")
    assert bus.trust("dave").remove(bus.id("alice"))


def dave_holds_mail_from_a_stranger(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, store: Path, text: str, **options: Any
) -> Node:
    """Alice mails ``text`` to dave, who does not trust her; dave starts on ``store`` and
    acknowledges and holds it. Returns dave."""
    mail_from_a_stranger(bus, broker, make_node, text)
    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store, **options
    )
    pump_until(
        [dave],
        lambda: mail_waiting(broker) == 0 and dave.statistics()["mail_held"] == 1,
        what="mail acknowledged and held",
    )
    return dave


def deliver_once_trusted(bus: Bus, dave: Node) -> list[object]:
    """Dave comes to trust alice: what he held opens. Returns the payloads delivered."""
    bus.trust("dave").add(bus.agents["alice"].public, roles=["agent"])
    pump_until([dave], lambda: bool(dave.inbox), what="held mail delivered")
    settle([dave], 0.1)
    return [(m.payload, m.via) for m in dave.inbox]


def restarted_dave_gets(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, store: Path
) -> list[object]:
    """Dave started again on ``store``: the payloads he gets once the broker holds nothing
    more for anyone (each at most once: the settle after it would show a second copy)."""
    again = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    pump_until(
        [again],
        lambda: bool(again.inbox) and mail_waiting(broker) == 0,
        what="the mail after the restart",
    )
    settle([again], 0.1)
    return [m.payload for m in again.inbox]


def test_held_mail_survives_a_close_and_is_delivered_once_after_the_restart(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    store = tmp_path / "dave" / "mail.sqlite3"
    dave = dave_holds_mail_from_a_stranger(bus, broker, make_node, store, "kept across a restart")
    dave.close()
    assert dave.statistics()["dropped"] == {}  # not lost at close: it is in the store

    again = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    stats = again.statistics()
    assert (stats["mail_held"], stats["mail_restored"]) == (1, 1)
    assert deliver_once_trusted(bus, again) == [("kept across a restart", "mail")]
    stats = again.statistics()
    assert (stats["mail_held"], stats["mail_released"], stats["received"]) == (0, 1, 1)
    again.close()
    # Delivered, so gone from the file: a third start holds nothing.
    third = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    assert third.statistics()["mail_held"] == 0
    settle([third], 0.1)
    assert not third.inbox


_HOLD_THEN_WAIT = """
import sys, time
from zmqcomm.crypto.key_files import load_identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Node
key, trust, broker, store = sys.argv[1:]
node = Node(load_identity(key), TrustStore(trust), broker=broker, mail_store=store)
deadline = time.monotonic() + 20
while node.statistics()["mail_held"] < 1 and time.monotonic() < deadline:
    node.pump(0.01)
print(node.statistics()["mail_held"], flush=True)
while True:
    node.pump(0.1)
"""


def test_held_mail_survives_a_sigkill(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    store = tmp_path / "dave" / "mail.sqlite3"
    mail_from_a_stranger(bus, broker, make_node, "kept across a SIGKILL")
    key = save_identity(bus.agents["dave"], tmp_path / "keys").secret
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLD_THEN_WAIT,
            str(key),
            str(bus.trust("dave").directory),
            broker.endpoint,
            str(store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "1"  # held, and so acknowledged
        pump_until([], lambda: mail_waiting(broker) == 0, what="the broker deleting it")
    finally:
        child.send_signal(signal.SIGKILL)  # no close(), no goodbye
        child.wait(10)
    assert child.returncode == -signal.SIGKILL

    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    assert dave.statistics()["mail_restored"] == 1
    assert deliver_once_trusted(bus, dave) == [("kept across a SIGKILL", "mail")]


def drop_mail_acks(node: Node) -> None:
    """Make ``node`` lose its mail acknowledgements, as if it died just before sending them."""
    path = node._broker_path
    assert path is not None
    send = path.to_broker_quietly

    def without_acks(messages: list[HopMessage]) -> None:
        send([m for m in messages if m.msg_type != MessageType.MAIL_ACK])

    path.to_broker_quietly = without_acks  # type: ignore[method-assign]


def test_mail_delivered_just_before_a_crash_is_not_delivered_again(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    """The crash window after the write and before the ack: the broker hands the mail over
    again, and the restarted node knows it (at most once)."""
    store = tmp_path / "mail.sqlite3"
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    alice.send(bus.id("dave"), "exactly once")
    pump_until([alice], lambda: mail_waiting(broker) == 1, what="stored mail")
    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    drop_mail_acks(dave)
    pump_until([dave], lambda: bool(dave.inbox), what="the mail")
    dave.inbox.clear()  # the application took it
    dave.close()
    assert mail_waiting(broker) == 1  # never acknowledged

    again = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    pump_until([again], lambda: mail_waiting(broker) == 0, what="the copy acknowledged")
    settle([again], 0.1)
    assert not again.inbox and again.statistics()["mail_repeats"] == 1


def test_mail_held_just_before_a_crash_is_held_once_and_delivered_once(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    store = tmp_path / "mail.sqlite3"
    mail_from_a_stranger(bus, broker, make_node, "held once")
    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    drop_mail_acks(dave)
    pump_until([dave], lambda: dave.statistics()["mail_held"] == 1, what="mail held")
    dave.close()
    assert mail_waiting(broker) == 1  # never acknowledged

    again = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    pump_until([again], lambda: mail_waiting(broker) == 0, what="the copy acknowledged")
    stats = again.statistics()
    assert (stats["mail_restored"], stats["mail_held"], stats["mail_held_total"]) == (1, 1, 0)
    assert deliver_once_trusted(bus, again) == [("held once", "mail")]


def test_a_node_that_cannot_reach_its_broker_releases_its_store(
    bus: Bus, tmp_path: Path, ipc_endpoint: Callable[[str], str]
) -> None:
    store = tmp_path / "mail.sqlite3"
    for _ in range(2):  # the second attempt is not refused as "in use"
        with pytest.raises(ConnectError):
            Node(
                bus.agents["dave"],
                bus.trust("dave"),
                broker=ipc_endpoint("nobody"),
                mail_store=store,
                connect_timeout=0.2,
            )


def replay_after_restart(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, **options: Any
) -> Node:
    """Dave gets alice's mail, stops; the broker hands the same mail to the restarted dave."""
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "delivered before the restart")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    [stored] = broker.call(lambda b: b.mailbox.pending(dave_id))
    dave = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, **options)
    pump_until([dave], lambda: bool(dave.inbox) and mail_waiting(broker) == 0, what="the mail")
    assert [m.payload for m in dave.inbox] == ["delivered before the restart"]
    dave.close()
    # A broker (or whoever holds a copy of its database) hands the same mail over again.
    broker.call(lambda b: b.mailbox.put(dave_id, stored.sender, stored.blob, now=time.time()))
    again = make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, **options)
    pump_until([again], lambda: mail_waiting(broker) == 0, what="the replay acknowledged")
    settle([again], 0.1)
    return again


def test_mail_delivered_before_a_restart_is_refused_after_it(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    again = replay_after_restart(bus, broker, make_node, mail_store=tmp_path / "mail.sqlite3")
    assert not again.inbox
    stats = again.statistics()
    assert (stats["received"], stats["mail_repeats"], stats["rejected"]) == (0, 1, {})


def test_without_a_store_a_restarted_node_forgets_what_it_delivered(
    bus: Bus, broker: BrokerThread, make_node: MakeNode
) -> None:
    # The memory-only default, unchanged (mail_max_age bounds how old such a replay can be).
    again = replay_after_restart(bus, broker, make_node)
    assert [m.payload for m in again.inbox] == ["delivered before the restart"]


def test_a_failed_write_stops_the_node_before_it_acknowledges_or_delivers(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    store = tmp_path / "mail.sqlite3"
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "not lost to a full disk")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    assert dave._broker_path is not None and dave._broker_path.mail_store is not None
    db = dave._broker_path.mail_store._db
    assert db is not None
    db.execute("PRAGMA query_only = ON")  # every write now fails, as on a full disk
    with pytest.raises(StoreError, match="restart the node"):
        pump_until([dave], lambda: False, timeout=5.0)
    # Neither delivered nor acknowledged: the broker still has it ...
    settle([alice], 0.1)
    assert not dave.inbox and mail_waiting(broker, dave_id) == 1
    with pytest.raises(StoreError):  # ... and the node refuses to go on
        dave.pump(0.05)
    dave.close()
    # Restarted, it gets the mail again, once.
    assert restarted_dave_gets(bus, broker, make_node, store) == ["not lost to a full disk"]


def test_two_nodes_cannot_share_a_store_and_a_store_needs_a_broker(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path, unique: Any
) -> None:
    store = tmp_path / "mail.sqlite3"
    make_node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store)
    with pytest.raises(UsageError, match="in use by another node"):
        Node(bus.agents["bob"], bus.trust("bob"), broker=broker.endpoint, mail_store=store)
    with pytest.raises(UsageError, match="give broker="):
        Node(bus.agents["bob"], bus.trust("bob"), bind=unique("b"), mail_store=tmp_path / "b")


def test_a_corrupt_store_stops_the_node_at_start_with_what_to_do(
    bus: Bus, broker: BrokerThread, tmp_path: Path
) -> None:
    store = tmp_path / "mail.sqlite3"
    store.write_bytes(b"not a database at all, whatever the name says" * 50)
    with pytest.raises(UsageError, match=r"not a usable zmqcomm node mail store.*move the file"):
        Node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store)
    # The lock went with the refusal: a good file next time starts.
    store.unlink()
    Node(bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store).close()


def test_a_failed_write_while_held_mail_opens_delivers_nothing_and_keeps_it_for_the_restart(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    """The timer path (held mail opening later): written before it is delivered."""
    store = tmp_path / "dave" / "mail.sqlite3"
    dave = dave_holds_mail_from_a_stranger(bus, broker, make_node, store, "opens on a full disk")
    assert dave._broker_path is not None and dave._broker_path.mail_store is not None
    db = dave._broker_path.mail_store._db
    assert db is not None
    db.execute("PRAGMA query_only = ON")  # every write now fails, as on a full disk
    bus.trust("dave").add(bus.agents["alice"].public, roles=["agent"])
    with pytest.raises(StoreError):
        pump_until([dave], lambda: False, timeout=5.0)
    assert not dave.inbox  # not handed over: it would be delivered again after the restart
    dave.close()
    assert restarted_dave_gets(bus, broker, make_node, store) == ["opens on a full disk"]


def test_close_after_a_failed_write_does_not_raise_and_counts_what_it_gave_up(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    """The advice is "close it and start it again": close() must not raise StoreError
    again (inside a ``with``, it would replace the error that got there)."""
    dave = make_node(
        bus.agents["dave"],
        bus.trust("dave"),
        broker=broker.endpoint,
        mail_store=tmp_path / "mail.sqlite3",
    )
    assert dave._broker_path is not None and dave._broker_path.mail_store is not None
    dave.send(bus.id("alice"), "waits for a session that never comes")  # alice is offline
    assert dave.unsent() == 1
    dave._broker_path.mail_store.lose("a write failed (simulated)")
    with pytest.raises(StoreError):
        dave.pump(0.01)
    # What the application does then: its own error, in a with block, must come out.
    with pytest.raises(KeyError, match="the application's own error"), dave:
        raise KeyError("the application's own error")
    assert dave.closed
    assert dave.statistics()["dropped"]["unsent_at_close"] == 1


def test_aclose_after_a_failed_write_does_not_raise_either(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    dave = make_node(
        bus.agents["dave"],
        bus.trust("dave"),
        broker=broker.endpoint,
        mail_store=tmp_path / "mail.sqlite3",
    )
    assert dave._broker_path is not None and dave._broker_path.mail_store is not None
    dave.send(bus.id("alice"), "waits for a session that never comes")
    dave._broker_path.mail_store.lose("a write failed (simulated)")
    asyncio.run(dave.aclose(timeout=1.0))
    assert dave.closed
    assert dave.statistics()["dropped"]["unsent_at_close"] == 1


def test_an_exception_while_held_mail_opens_stops_the_node_and_loses_nothing(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    """An audit sink raising after held mail opened, before it was written: the store is
    lost (nothing of that round is written), and the restart delivers the mail."""
    store = tmp_path / "dave" / "mail.sqlite3"
    dave = dave_holds_mail_from_a_stranger(
        bus,
        broker,
        make_node,
        store,
        "not lost to a raising audit sink",
        audit=RaisingAudit("mail_released"),
    )
    bus.trust("dave").add(bus.agents["alice"].public, roles=["agent"])
    with pytest.raises(RuntimeError, match="audit sink down"):
        pump_until([dave], lambda: False, timeout=5.0)
    with pytest.raises(StoreError, match="restart the node"):
        dave.pump(0.01)
    assert not dave.inbox
    dave.close()
    assert restarted_dave_gets(bus, broker, make_node, store) == [
        "not lost to a raising audit sink"
    ]


def test_an_interrupt_between_opening_mail_and_writing_it_loses_the_store(
    bus: Bus, broker: BrokerThread, make_node: MakeNode, tmp_path: Path
) -> None:
    """Mail opened (its id marked seen in memory), then an interrupt before the write: the
    store used to stay usable, and the next write put the id on disk although the mail was
    never delivered nor acknowledged; handed over again, it was dropped as a repeat."""
    store = tmp_path / "mail.sqlite3"
    alice = make_node(bus.agents["alice"], bus.trust("alice"), broker=broker.endpoint)
    dave_id = bus.id("dave")
    alice.send(dave_id, "not lost to an interrupt")
    pump_until([alice], lambda: mail_waiting(broker, dave_id) == 1, what="stored mail")
    dave = make_node(
        bus.agents["dave"], bus.trust("dave"), broker=broker.endpoint, mail_store=store
    )
    assert dave._broker_path is not None
    tunnels = dave._broker_path.tunnels
    take = tunnels.mailroom.take_changes

    def interrupted() -> list[object]:
        if not tunnels.mailroom.book._changes:  # a hop message that changed nothing
            return take()
        tunnels.mailroom.take_changes = take  # type: ignore[method-assign]
        raise KeyboardInterrupt  # the mail opened: its id is marked seen in memory

    tunnels.mailroom.take_changes = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        pump_until([dave], lambda: False, timeout=5.0)
    with pytest.raises(StoreError, match="restart the node"):
        dave.pump(0.05)
    assert not dave.inbox and mail_waiting(broker, dave_id) == 1
    dave.close()
    assert restarted_dave_gets(bus, broker, make_node, store) == ["not lost to an interrupt"]
