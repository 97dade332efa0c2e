"""The channel table: guards before any DH, rate limits, bounded pending handshakes, audit lines,
routes that follow the authenticated agent, timers (pure, fake time)."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zmqcomm.crypto import handshake as handshake_module
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.channel import Delivered, Established, Event, SecureChannel, Transmit
from zmqcomm.crypto.channel_table import ChannelTable, HandshakeLimits
from zmqcomm.crypto.handshake import Handshake, RandomBytes
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import UsageError
from zmqcomm.wire import MessageType, WireCodec
from zmqcomm.wire.payload import Buffer

T0 = 1_800_000_000.0
CODEC = WireCodec()
Receive = Callable[[Sequence[Buffer]], list[Event]]


def _rng(seed: int) -> RandomBytes:
    return random.Random(seed).randbytes


@dataclass
class World:
    server: Identity
    alice: Identity
    carol: Identity
    #: The server trusts alice (worker) and carol (sensor); both clients trust the server.
    server_trust: TrustStore
    client_trust: TrustStore
    audit: MemoryAuditLog = field(default_factory=MemoryAuditLog)
    seeds: int = 100

    def table(
        self,
        *,
        limits: HandshakeLimits | None = None,
        policy: RekeyPolicy | None = None,
        max_failures: int = 16,
    ) -> ChannelTable:
        return ChannelTable(
            identity=self.server,
            trust=self.server_trust,
            random_bytes=_rng(2),
            now=T0,
            audit=self.audit,
            limits=limits,
            policy=policy,
            max_failures=max_failures,
        )

    def client(self, identity: Identity | None = None) -> SecureChannel:
        self.seeds += 1
        return SecureChannel(
            identity=identity or self.alice,
            trust=self.client_trust,
            random_bytes=_rng(self.seeds),
        )

    def rejects(self) -> list[dict[str, object]]:
        return self.audit.events("reject")


@pytest.fixture
def world(tmp_path: Path) -> World:
    server = Identity.generate("server")
    alice, carol = Identity.generate("alice"), Identity.generate("carol")
    server_trust = TrustStore(tmp_path / "server-trust")
    server_trust.add(alice.public, ["worker"])
    server_trust.add(carol.public, ["sensor"])
    client_trust = TrustStore(tmp_path / "client-trust")
    client_trust.add(server.public, ["server"])
    return World(server, alice, carol, server_trust, client_trust)


@pytest.fixture
def respond_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the responder's first DH step (Handshake.respond) across all channels."""
    calls: list[int] = []
    original = Handshake.respond

    def counting(self: Handshake, init: bytes, *, now: float) -> bytes:
        calls.append(1)
        return original(self, init, now=now)

    monkeypatch.setattr(handshake_module.Handshake, "respond", counting)
    return calls


@dataclass
class Duplex:
    """In-order pipes between a client (left) and the table on one route (right)."""

    left: Receive
    right: Receive
    to_left: list[Sequence[Buffer]] = field(default_factory=list)
    to_right: list[Sequence[Buffer]] = field(default_factory=list)

    def pump(self) -> tuple[list[Event], list[Event]]:
        got_left: list[Event] = []
        got_right: list[Event] = []
        while self.to_left or self.to_right:
            while self.to_right:
                got_right += self._split(self.right(self.to_right.pop(0)), self.to_left)
            while self.to_left:
                got_left += self._split(self.left(self.to_left.pop(0)), self.to_right)
        return got_left, got_right

    @staticmethod
    def _split(events: list[Event], outgoing: list[Sequence[Buffer]]) -> list[Event]:
        rest: list[Event] = []
        for event in events:
            if isinstance(event, Transmit):
                outgoing.append(event.frames)
            else:
                rest.append(event)
        return rest


def _duplex(table: ChannelTable, route: bytes, client: SecureChannel, now: float) -> Duplex:
    return Duplex(
        left=lambda frames: client.receive(frames, now=now),
        right=lambda frames: table.receive(route, frames, now=now),
    )


def _handshake(
    table: ChannelTable, route: bytes, client: SecureChannel, now: float = T0
) -> tuple[list[Event], list[Event]]:
    link = _duplex(table, route, client, now)
    link.to_right.append(client.connect(now=now))
    return link.pump()


def _epochs(events: list[Event]) -> list[int]:
    return [event.epoch for event in events if isinstance(event, Established)]


def _rekey_from_the_client(link: Duplex, client: SecureChannel, *, epochs: Iterable[int]) -> None:
    """For each epoch: one message that hits the client's rekey count, its INIT, and the
    rekey run to the end (both sides reach that epoch)."""
    for epoch in epochs:
        link.to_right.append(client.seal(MessageType.DATA, epoch, now=T0))
        (start,) = client.on_timer(now=T0)
        assert isinstance(start, Transmit)
        link.to_right.append(start.frames)
        got_client, got_table = link.pump()
        assert _epochs(got_client) == _epochs(got_table) == [epoch]


def _payloads(events: list[Event]) -> list[object]:
    return [event.message.payload for event in events if isinstance(event, Delivered)]


def _tampered(frames: Sequence[Buffer]) -> list[Buffer]:
    first = bytearray(frames[0])
    first[-1] ^= 0x01
    return [bytes(first), *frames[1:]]


# -- the happy path ---------------------------------------------------------------------------


def test_a_handshake_registers_the_authenticated_agent_under_its_route(world: World) -> None:
    table = world.table()
    client = world.client()
    got_client, got_table = _handshake(table, b"r-alice", client)
    assert _epochs(got_client) == _epochs(got_table) == [0]
    (event,) = [e for e in got_table if isinstance(e, Established)]
    assert event.agent_id == world.alice.agent_id and event.roles == frozenset({"worker"})
    assert table.route_of(world.alice.agent_id) == b"r-alice"
    assert table.route_of(world.carol.agent_id) is None
    assert table.peers == [world.alice.agent_id] and len(table) == 1
    channel = table.channel_to(world.alice.agent_id)
    assert channel is table.channels[b"r-alice"] and channel.established
    assert table.handshakes == 1 and table.rekeys == 0 and not table.rejected
    (line,) = world.audit.events("handshake")
    assert line["peer"] == world.alice.agent_id and line["route"] == b"r-alice".hex()
    assert line["session"] == event.session_id
    # Data both ways.
    frames = client.seal(MessageType.DATA, {"n": 1}, now=T0)
    (delivered,) = table.receive(b"r-alice", frames, now=T0)
    assert isinstance(delivered, Delivered) and delivered.agent_id == world.alice.agent_id
    assert delivered.message.payload == {"n": 1}
    back = channel.seal(MessageType.REPLY, "ok", now=T0)
    assert _payloads(client.receive(back, now=T0)) == ["ok"]
    assert world.rejects() == []


def test_two_tables_connect_through_connect_and_receive(world: World) -> None:
    server = world.table()
    client = ChannelTable(
        identity=world.alice, trust=world.client_trust, random_bytes=_rng(7), now=T0
    )
    link = Duplex(
        left=lambda frames: client.receive(b"to-server", frames, now=T0),
        right=lambda frames: server.receive(b"to-alice", frames, now=T0),
    )
    link.to_right.append(client.connect(b"to-server", now=T0, expect_peer=world.server.agent_id))
    got_client, got_server = link.pump()
    assert _epochs(got_client) == _epochs(got_server) == [0]
    assert client.route_of(world.server.agent_id) == b"to-server"
    assert server.route_of(world.alice.agent_id) == b"to-alice"
    assert not client.rejected and not server.rejected


def test_a_forged_reply_to_our_init_leaves_the_handshake_ready_for_the_real_one(
    world: World,
) -> None:
    # Whoever sees an INIT (it travels in the clear) can answer it with its own, untrusted
    # key. The initiator used to commit the Noise read before checking the certificate: the
    # real REPLY then raised out of receive() and the session never came up.
    server = world.table()
    client = ChannelTable(
        identity=world.alice, trust=world.client_trust, random_bytes=_rng(7), now=T0
    )
    codec = WireCodec()
    init = client.connect(b"to-server", now=T0)
    header = codec.parse(init).header
    mallory = Identity.generate("mallory")
    stranger = Handshake(
        initiator=False,
        identity=mallory,
        trust=TrustStore(world.client_trust.directory),  # anything: its check is not reached
        session_id=header.session,
        epoch=header.epoch,
        random_bytes=_rng(9),
    )
    forged = codec.assemble(
        MessageType.HANDSHAKE_REPLY,
        stranger.respond(bytes(codec.parse(init).body), now=T0),
        session=header.session,
        epoch=header.epoch,
    )
    assert client.receive(b"to-server", forged, now=T0) == []
    assert client.rejected == Counter({"unknown_peer": 1})
    link = Duplex(
        left=lambda frames: client.receive(b"to-server", frames, now=T0),
        right=lambda frames: server.receive(b"to-alice", frames, now=T0),
    )
    link.to_right.append(init)
    got_client, got_server = link.pump()
    assert _epochs(got_client) == _epochs(got_server) == [0]
    assert client.route_of(world.server.agent_id) == b"to-server"


def test_handshake_limits_refuse_a_zero_pending_bound() -> None:
    with pytest.raises(UsageError):
        HandshakeLimits(max_pending=0)


# -- guards before any DH ---------------------------------------------------------------------


def test_a_flood_of_inits_from_one_route_is_rate_limited_while_another_route_connects(
    world: World, respond_calls: list[int]
) -> None:
    table = world.table()
    burst = int(table.limits.per_route_burst)
    init = world.client().connect(now=T0)
    answered = [bool(table.receive(b"flood", init, now=T0)) for _ in range(3 * burst)]
    assert answered == [True] * burst + [False] * (2 * burst)
    assert len(respond_calls) == burst  # no DH for a rate-limited INIT
    assert table.rejected == Counter({"rate_limited": 2 * burst})
    assert [r["reason"] for r in world.rejects()] == ["rate_limited"] * (2 * burst)
    assert {r["route"] for r in world.rejects()} == {b"flood".hex()}
    # Meanwhile another route completes a handshake at the same instant.
    _, got_table = _handshake(table, b"legit", world.client())
    assert _epochs(got_table) == [0]
    assert table.route_of(world.alice.agent_id) == b"legit"
    # The flooding route's bucket refills at its rate (2/s by default).
    assert table.receive(b"flood", init, now=T0 + 0.1) == []
    assert table.receive(b"flood", init, now=T0 + 0.6) != []


def test_the_table_wide_bucket_limits_inits_across_routes(world: World) -> None:
    table = world.table(limits=HandshakeLimits(rate=1.0, burst=3.0))
    init = world.client().connect(now=T0)
    answered = [bool(table.receive(f"r{i}".encode(), init, now=T0)) for i in range(5)]
    assert answered == [True, True, True, False, False]
    assert table.rejected == Counter({"rate_limited": 2})
    assert sorted(table.channels) == [b"r0", b"r1", b"r2"]
    assert table.receive(b"r9", init, now=T0 + 1.0) != []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (bytes(32), "bad_handshake"),
        (b"\x01" + bytes(40), "bad_handshake"),
        (b"\x09" + bytes(32), "unknown_suite"),
    ],
)
def test_a_bad_init_costs_no_dh_and_creates_no_channel(
    body: bytes, reason: str, world: World, respond_calls: list[int]
) -> None:
    table = world.table()
    frames = CODEC.assemble(MessageType.HANDSHAKE_INIT, body, session=5)
    assert table.receive(b"r", frames, now=T0) == []
    assert respond_calls == [] and len(table) == 0 and table.next_deadline() is None
    assert table.rejected == Counter({reason: 1})
    (line,) = world.rejects()
    assert line["reason"] == reason and line["peer"] is None and line["route"] == b"r".hex()


def test_non_init_frames_from_unknown_routes_are_refused_without_a_channel(
    world: World, respond_calls: list[int]
) -> None:
    table = world.table()
    # Genuine frames of another connection: REPLY, FINISH, CONFIRM and data.
    other = world.table()
    client = world.client()
    (reply,) = other.receive(b"elsewhere", client.connect(now=T0), now=T0)
    assert isinstance(reply, Transmit)
    (fin,) = client.receive(reply.frames, now=T0)
    assert isinstance(fin, Transmit)
    (confirm,) = [
        e for e in other.receive(b"elsewhere", fin.frames, now=T0) if isinstance(e, Transmit)
    ]
    assert _epochs(client.receive(confirm.frames, now=T0)) == [0]
    data = client.seal(MessageType.DATA, "hi", now=T0)
    calls_before = len(respond_calls)
    frames_in = [reply.frames, fin.frames, confirm.frames, data]
    for index, frames in enumerate(frames_in):
        assert table.receive(f"u{index}".encode(), frames, now=T0) == []
    assert len(table) == 0 and table.peers == [] and table.next_deadline() is None
    assert table.rejected == Counter({"no_session": 4})
    # Not even a parse failure makes a channel; nothing reaches a DH.
    assert table.receive(b"g", [b"not a zmqcomm frame at all"], now=T0) == []
    assert table.receive(b"e", [], now=T0) == []
    assert len(table) == 0 and len(respond_calls) == calls_before
    assert table.rejected == Counter({"no_session": 4, "bad_magic": 1, "truncated": 1})
    assert Counter(r["reason"] for r in world.rejects()) == table.rejected


# -- bounded pending handshakes ---------------------------------------------------------------


def test_max_pending_holds_under_three_times_as_many_routes(world: World) -> None:
    limits = HandshakeLimits(max_pending=4)
    table = world.table(limits=limits)
    _handshake(table, b"alice", world.client())  # established channels are never evicted
    routes = [f"r{i:02d}".encode() for i in range(3 * limits.max_pending)]
    clients = {route: world.client(world.carol) for route in routes}
    replies: dict[bytes, list[Event]] = {}
    for route in routes:
        replies[route] = table.receive(route, clients[route].connect(now=T0), now=T0)
        assert replies[route] != []
        pending = [r for r, c in table.channels.items() if not c.established]
        assert len(pending) <= limits.max_pending
    assert (
        sorted(r for r, c in table.channels.items() if not c.established)
        == routes[-limits.max_pending :]
    )
    assert table.rejected == Counter({"handshake_evicted": 2 * limits.max_pending})
    assert table.route_of(world.alice.agent_id) == b"alice"
    assert table.channels[b"alice"].established

    def finish(route: bytes) -> list[Event]:
        (reply,) = replies[route]
        assert isinstance(reply, Transmit)
        (fin,) = clients[route].receive(reply.frames, now=T0)
        assert isinstance(fin, Transmit)
        return table.receive(route, fin.frames, now=T0)

    # An evicted handshake is gone: its FINISH finds no session.
    assert finish(routes[0]) == []
    assert world.rejects()[-1]["reason"] == "no_session"
    # One still held completes.
    assert _epochs(finish(routes[-1])) == [0]
    assert table.route_of(world.carol.agent_id) == routes[-1]


# -- audit ------------------------------------------------------------------------------------


def test_every_refusal_writes_exactly_one_reject_line_with_its_reason(world: World) -> None:
    table = world.table(limits=HandshakeLimits(per_route_burst=2.0))
    client = world.client()
    _handshake(table, b"alice", client)
    ok = client.seal(MessageType.DATA, "once", now=T0)
    assert _payloads(table.receive(b"alice", ok, now=T0)) == ["once"]

    refused: list[tuple[bytes, Sequence[Buffer]]] = [
        (b"alice", ok),  # replay
        (b"alice", _tampered(client.seal(MessageType.DATA, "x", now=T0))),  # bad_tag
        (b"alice", CODEC.assemble(0x50, b"??")),  # unknown_type
        (b"nobody", client.seal(MessageType.DATA, "x", now=T0)),  # no_session
        (b"junk", [b"ZC\x01\x00"]),  # truncated
        (b"bad-init", CODEC.assemble(MessageType.HANDSHAKE_INIT, bytes(3), session=1)),
    ]
    init = world.client().connect(now=T0)
    refused += [(b"busy", init)] * 4  # 2 answered, then 2 rate_limited
    for route, frames in refused:
        table.receive(route, frames, now=T0)
    # An untrusted agent is refused at FINISH.
    mallory = Identity.generate("mallory")
    _handshake(table, b"mallory", world.client(mallory))

    expected = Counter(
        {
            "replay": 1,
            "bad_tag": 1,
            "unknown_type": 1,
            "no_session": 1,
            "truncated": 1,
            "bad_handshake": 1,
            "rate_limited": 2,
            "unknown_peer": 1,
        }
    )
    assert table.rejected == expected
    lines = world.rejects()
    assert len(lines) == sum(expected.values())
    assert Counter(line["reason"] for line in lines) == expected
    for line in lines:
        assert line["event"] == "reject" and isinstance(line["route"], str)
    by_reason = {line["reason"]: line for line in lines}
    assert by_reason["replay"]["peer"] == world.alice.agent_id
    assert by_reason["replay"]["route"] == b"alice".hex()
    assert by_reason["no_session"]["peer"] is None
    assert by_reason["no_session"]["route"] == b"nobody".hex()
    # Each line is one JSON object that agrees with its record.
    assert [json.loads(line) for line in world.audit.lines] == world.audit.records
    assert world.audit.events("close") == []
    assert table.route_of(world.alice.agent_id) == b"alice"


def test_evicted_and_timed_out_handshakes_are_audited_too(world: World) -> None:
    table = world.table(limits=HandshakeLimits(max_pending=1))
    table.receive(b"first", world.client().connect(now=T0), now=T0)
    table.receive(b"second", world.client().connect(now=T0), now=T0)  # evicts "first"
    table.on_timer(now=T0 + 10)  # "second" times out
    assert table.rejected == Counter({"handshake_evicted": 1, "handshake_timeout": 1})
    assert Counter(r["reason"] for r in world.rejects()) == table.rejected


def test_no_audit_line_contains_key_material(world: World) -> None:
    policy = RekeyPolicy(max_messages=2, jitter=0.0)
    table = world.table(policy=policy)
    client = world.client()
    _handshake(table, b"alice", client)
    channel = table.channel_to(world.alice.agent_id)
    assert channel is not None
    link = _duplex(table, b"alice", client, T0 + 1)
    for i in range(2):
        link.to_left.append(channel.seal(MessageType.DATA, i, now=T0 + 1))
    link.to_right.append(_tampered(client.seal(MessageType.DATA, "x", now=T0 + 1)))
    link.pump()
    for event in table.after_send(b"alice", channel, now=T0 + 1):  # the count: a rekey
        assert isinstance(event, Transmit)
        link.to_left.append(event.frames)
    link.pump()
    table.receive(b"x", [b"junk"], now=T0 + 1)
    _handshake(table, b"mallory", world.client(Identity.generate("mallory")), now=T0 + 2)
    assert table.rekeys == 1 and len(world.audit.events("rekey")) == 1
    assert {r["event"] for r in world.audit.records} == {"handshake", "rekey", "reject"}

    secrets: list[bytes] = []
    for identity in (world.server, world.alice):
        secrets += [
            identity.verify_key,
            identity.static_keypair.public,
            identity.static_keypair.private,
            identity.certificate.signature,
        ]
    text = "\n".join(world.audit.lines).lower()
    for secret in secrets:
        assert base64.b64encode(secret).decode() not in "\n".join(world.audit.lines)
        # Not even 8 bytes of any key, in hex (the audit log redacts only long hex runs).
        digits = secret.hex()
        for start in range(len(digits) - 16 + 1):
            assert digits[start : start + 16] not in text


# -- routes, drops and timers -----------------------------------------------------------------


def test_an_agent_that_handshakes_on_a_new_route_replaces_its_old_one(world: World) -> None:
    table = world.table()
    old_client = world.client()
    _handshake(table, b"r1", old_client)
    _handshake(table, b"r3", world.client(world.carol))
    assert table.route_of(world.alice.agent_id) == b"r1"
    new_client = world.client()
    _, got_table = _handshake(table, b"r2", new_client, now=T0 + 5)
    assert _epochs(got_table) == [0]
    assert table.route_of(world.alice.agent_id) == b"r2"
    assert b"r1" not in table.channels and sorted(table.channels) == [b"r2", b"r3"]
    assert table.peers == sorted([world.alice.agent_id, world.carol.agent_id])
    assert table.route_of(world.carol.agent_id) == b"r3"
    assert table.handshakes == 3
    # The old connection's traffic now meets no channel; the new one's is delivered.
    assert (
        table.receive(b"r1", old_client.seal(MessageType.DATA, "old", now=T0 + 5), now=T0 + 5) == []
    )
    assert world.rejects()[-1]["reason"] == "no_session"
    fresh = table.receive(b"r2", new_client.seal(MessageType.DATA, "new", now=T0 + 5), now=T0 + 5)
    assert _payloads(fresh) == ["new"]


def test_drop_forgets_the_channel_and_the_route(world: World) -> None:
    table = world.table()
    client = world.client()
    _handshake(table, b"r1", client)
    table.drop(b"r1")
    table.drop(b"never-seen")  # harmless
    assert len(table) == 0 and table.peers == []
    assert table.route_of(world.alice.agent_id) is None
    assert table.channel_to(world.alice.agent_id) is None
    assert table.receive(b"r1", client.seal(MessageType.DATA, 1, now=T0), now=T0) == []
    assert table.rejected == Counter({"no_session": 1})


def test_on_timer_forgets_abandoned_handshakes_only(world: World) -> None:
    table = world.table()
    _handshake(table, b"alice", world.client())
    client = world.client(world.carol)
    (reply,) = table.receive(b"abandoned", client.connect(now=T0), now=T0)
    assert isinstance(reply, Transmit)
    (fin,) = client.receive(reply.frames, now=T0)
    assert isinstance(fin, Transmit)
    wait = table.channels[b"abandoned"].answer_timeout  # the responder's, for its FINISH
    assert len(table) == 2 and table.next_deadline() == T0 + wait
    assert table.on_timer(now=T0 + 1) == [] and b"abandoned" in table.channels
    assert table.on_timer(now=T0 + wait) == []
    assert sorted(table.channels) == [b"alice"]
    assert table.rejected == Counter({"handshake_timeout": 1})
    # The late FINISH meets no channel, and the established peer is untouched.
    assert table.receive(b"abandoned", fin.frames, now=T0 + wait + 1) == []
    assert table.rejected["no_session"] == 1
    assert table.route_of(world.alice.agent_id) == b"alice"
    assert table.next_deadline() == table.channels[b"alice"].next_deadline()


def test_repeated_bad_frames_close_and_drop_the_channel(world: World) -> None:
    table = world.table(max_failures=2)
    client = world.client()
    _handshake(table, b"alice", client)
    for _ in range(2):
        bad = _tampered(client.seal(MessageType.DATA, "x", now=T0))
        assert table.receive(b"alice", bad, now=T0) == []
    assert len(table) == 0 and table.route_of(world.alice.agent_id) is None
    (close,) = world.audit.events("close")
    assert close["peer"] == world.alice.agent_id and close["reason"] == "too_many_failures"
    assert [r["reason"] for r in world.rejects()] == ["bad_tag", "bad_tag"]
    good = client.seal(MessageType.DATA, "late", now=T0)
    assert table.receive(b"alice", good, now=T0) == []
    assert world.rejects()[-1]["reason"] == "no_session"


def test_an_established_peer_rekeys_without_spending_handshake_tokens(world: World) -> None:
    limits = HandshakeLimits(per_route_burst=1.0, per_route_rate=0.001)
    table = world.table(limits=limits)
    client = SecureChannel(
        identity=world.alice,
        trust=world.client_trust,
        random_bytes=_rng(5),
        policy=RekeyPolicy(max_messages=1, jitter=0.0),
    )
    _handshake(table, b"alice", client)
    link = _duplex(table, b"alice", client, T0)
    _rekey_from_the_client(link, client, epochs=(1, 2))
    assert table.rekeys == 2 and not table.rejected
    assert [r["epoch"] for r in world.audit.events("rekey")] == [1, 2]
    # A new connection on another route still pays: its one token is there, then none.
    init = world.client(world.carol).connect(now=T0)
    assert table.receive(b"carol", init, now=T0) != []
    assert table.receive(b"carol", init, now=T0) == []
    assert table.rejected == Counter({"rate_limited": 1})


def _rekey_init(client: SecureChannel, *, now: float) -> list[Buffer]:
    """The INIT of a rekey to the next epoch, as a peer that never finishes it sends."""
    session = client.session
    assert session is not None
    return client._initiate(session.session_id, session.epoch + 1, now=now, delay=2.0)


def test_an_established_peer_flooding_inits_is_rate_limited_before_any_dh(
    world: World, respond_calls: list[int]
) -> None:
    table = world.table()
    client = world.client()
    _handshake(table, b"alice", client)
    respond_calls.clear()
    burst = int(table.limits.rekey_burst)
    # Rekey INITs it never finishes, then new-session INITs on the same connection.
    floods = [_rekey_init(client, now=T0) for _ in range(2 * burst)]
    floods += [world.client().connect(now=T0) for _ in range(burst)]
    answered = [bool(table.receive(b"alice", init, now=T0)) for init in floods]
    assert answered == [True] * burst + [False] * (2 * burst)
    assert len(respond_calls) == burst  # no DH, no REPLY for a refused INIT
    assert table.rejected == Counter({"rate_limited": 2 * burst})
    rejects = world.rejects()
    assert [r["reason"] for r in rejects] == ["rate_limited"] * (2 * burst)
    assert {r["peer"] for r in rejects} == {world.alice.agent_id}
    # Nothing changed: the session still carries data, on the same route.
    assert table.route_of(world.alice.agent_id) == b"alice"
    channel = table.channel_to(world.alice.agent_id)
    assert channel is not None and channel.established
    got = table.receive(b"alice", client.seal(MessageType.DATA, "still here", now=T0), now=T0)
    assert _payloads(got) == ["still here"]
    # The bucket refills at its rate, and a rekey then completes.
    later = T0 + 1.0 / table.limits.rekey_rate
    link = _duplex(table, b"alice", client, later)
    link.to_right.append(_rekey_init(client, now=later))
    got_client, got_table = link.pump()
    assert _epochs(got_client) == _epochs(got_table) == [1]
    assert table.rejected == Counter({"rate_limited": 2 * burst})


def test_completed_rekeys_give_their_token_back(world: World) -> None:
    """Legitimate rekeys, however many, never run the budget out: each one completes."""
    limits = HandshakeLimits(rekey_rate=0.001, rekey_burst=1.0)
    policy = RekeyPolicy(max_messages=1, jitter=0.0)
    table = world.table(limits=limits)
    client = SecureChannel(
        identity=world.alice, trust=world.client_trust, random_bytes=_rng(7), policy=policy
    )
    _handshake(table, b"alice", client)
    link = _duplex(table, b"alice", client, T0)
    _rekey_from_the_client(link, client, epochs=range(1, 6))
    assert table.rekeys == 5 and not table.rejected


def test_rekeys_started_by_both_sides_at_once_stay_within_the_budget(world: World) -> None:
    limits = HandshakeLimits(rekey_rate=0.001, rekey_burst=1.0)
    policy = RekeyPolicy(max_messages=1, jitter=0.0)
    table = world.table(limits=limits, policy=policy)
    client = SecureChannel(
        identity=world.alice, trust=world.client_trust, random_bytes=_rng(8), policy=policy
    )
    _handshake(table, b"alice", client)
    channel = table.channel_to(world.alice.agent_id)
    assert channel is not None
    link = _duplex(table, b"alice", client, T0)
    for epoch in range(1, 5):
        link.to_right.append(client.seal(MessageType.DATA, epoch, now=T0))
        link.to_left.append(channel.seal(MessageType.DATA, epoch, now=T0))
        # Both hit the count at once: two INITs cross on the wire.
        (start,) = client.on_timer(now=T0)
        assert isinstance(start, Transmit)
        (ours,) = table.after_send(b"alice", channel, now=T0)
        assert isinstance(ours, Transmit)
        link.to_right.append(start.frames)
        link.to_left.append(ours.frames)
        got_client, got_table = link.pump()
        assert _epochs(got_client) == _epochs(got_table) == [epoch]
        assert _payloads(got_client) == _payloads(got_table) == [epoch]
    assert table.rekeys == 4 and not table.rejected
    assert channel.rekey_collisions + client.rekey_collisions == 4


def _index_agrees(table: ChannelTable) -> float | None:
    """The table's deadline index holds exactly each channel's own next deadline."""
    channels = {route: channel.next_deadline() for route, channel in table.channels.items()}
    assert table._deadline_of == {route: d for route, d in channels.items() if d is not None}
    deadline = table.next_deadline()
    assert deadline == table.scan_deadline()
    return deadline


def test_the_deadline_index_follows_connects_replaced_routes_evictions_and_drops(
    world: World,
) -> None:
    """``next_deadline`` reads a heap kept up to date as channels change, not every channel:
    each way the table itself adds, replaces or forgets a channel must update it, or a
    handshake retry is missed (no retry for a lost INIT), or a channel long gone keeps
    waking the timers."""
    table = world.table(limits=HandshakeLimits(max_pending=2))
    assert _index_agrees(table) is None
    table.connect(b"out", now=T0, expect_peer=world.alice.agent_id)
    assert _index_agrees(table) is not None  # the INIT's retry
    _handshake(table, b"r1", world.client())
    _handshake(table, b"r2", world.client(world.carol))
    _index_agrees(table)
    _handshake(table, b"r3", world.client(), now=T0 + 5)  # alice again: r1 is replaced
    assert b"r1" not in table.channels
    _index_agrees(table)
    for route in (b"p1", b"p2", b"p3"):  # the third evicts the first
        table.receive(route, world.client(world.carol).connect(now=T0), now=T0)
        _index_agrees(table)
    assert b"p1" not in table.channels
    table.drop(b"out")
    _index_agrees(table)
    client = world.client()
    _handshake(table, b"r4", client, now=T0 + 6)
    frames = client.seal(MessageType.DATA, "x", now=T0 + 6)
    for _ in range(table.max_failures):  # bad tags until the channel closes and goes
        table.receive(b"r4", _tampered(frames), now=T0 + 6)
    assert b"r4" not in table.channels
    _index_agrees(table)
    table.on_timer(now=T0 + 60)  # every handshake left is abandoned by now
    _index_agrees(table)


def test_timers_run_for_each_channel_once_its_deadline_comes_and_for_no_other(
    world: World,
) -> None:
    """``on_timer`` visits the channels the index says are due (a broker holds thousands;
    asking each cost 1.3 ms with 1,000 peers): a retry due exactly now goes, one due a
    moment later waits for the next call, and each goes once."""
    table = world.table()
    timeout = table.handshake_timeout
    routes = [f"out{n}".encode() for n in range(4)]
    for n, route in enumerate(routes):  # INITs sent a second apart: retries a second apart
        table.connect(route, now=T0 + n, expect_peer=world.alice.agent_id)
    assert _index_agrees(table) == T0 + timeout
    visited: list[bytes] = []
    for route, channel in table.channels.items():
        channel.on_timer = _counting(channel.on_timer, route, visited)  # type: ignore[method-assign]

    due = table.on_timer(now=T0 + timeout + 1)  # the first two, the second exactly now
    assert [route for route, _ in due] == routes[:2] == visited
    assert all(isinstance(event, Transmit) for _, event in due)
    assert _index_agrees(table) == T0 + timeout + 2  # the third's; the first two retry later
    assert table.on_timer(now=T0 + timeout + 1.5) == [] and visited == routes[:2]
    assert [route for route, _ in table.on_timer(now=T0 + timeout + 3)] == routes[2:]
    assert visited == routes
    _index_agrees(table)


def _counting(
    on_timer: Callable[..., list[Event]], route: bytes, visited: list[bytes]
) -> Callable[..., list[Event]]:
    def counted(*, now: float) -> list[Event]:
        visited.append(route)
        return on_timer(now=now)

    return counted
