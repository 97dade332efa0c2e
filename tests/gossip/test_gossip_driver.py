"""Gossip over real ipc sockets: coverage, forged messages, floods, late joiners, slow peers.

Everything runs in one thread (a :class:`GossipGroup` with one poller); every wait is bounded
by ``run_until(..., timeout=...)``. Tests taking ``secure`` run twice: over secure sessions
(a trust store listing everyone, the default then) and signed-only (``verify_keys``).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import zmq

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ClosedError, TransportError, UsageError
from zmqcomm.patterns.discovery.peers import ENTER, EXPIRED, PeerEvent
from zmqcomm.patterns.gossip import IHave, Message, Publish, id_material
from zmqcomm.patterns.gossip.codec import encode_frame
from zmqcomm.patterns.gossip.driver import Delivered, GossipAgent, GossipConfig
from zmqcomm.patterns.gossip.group import GossipGroup
from zmqcomm.patterns.gossip.scoring import ScoreParams
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.transport.sockets import SocketOptions

from .support import secure_peer

FAST = GossipConfig(heartbeat=0.05, unreachable_grace=1.0)


class Swarm:
    def __init__(
        self,
        directory: str,
        n: int,
        *,
        peers: int = 8,
        seed: int = 1,
        config: GossipConfig = FAST,
        audit: MemoryAuditLog | None = None,
        secure: bool = False,
    ) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.config = config
        self.identities = [Identity.generate(f"a{i}") for i in range(n + 2)]
        self.keys = {ident.agent_id: ident.verify_key for ident in self.identities}
        self.trust: TrustStore | None = None
        if secure:
            self.trust = TrustStore(f"{directory}/trust")
            for ident in self.identities:
                self.trust.add(ident.public)
        self.group = GossipGroup()
        self.agents: list[GossipAgent] = []
        self.got: dict[str, dict[bytes, Delivered]] = {}
        self.counts: dict[str, int] = {}
        for _ in range(n):
            self.spawn(peers, audit=audit)

    def spawn(
        self, peers: int, *, audit: MemoryAuditLog | None = None, config: GossipConfig | None = None
    ) -> GossipAgent:
        index = len(self.agents)
        agent = GossipAgent(
            self.identities[index],
            f"ipc://{self.directory}/{index}",
            verify_keys=self.keys if self.trust is None else None,
            trust=self.trust,
            config=config or self.config,
            rng=random.Random(index),
            audit=audit,
        )
        others = self.rng.sample(self.agents, min(peers, len(self.agents)))
        for other in others:
            agent.add_peer(other.agent_id, other.endpoint)
            other.add_peer(agent.agent_id, agent.endpoint)
        self.agents.append(agent)
        self.group.add(agent)
        self.got[agent.agent_id] = {}
        self.counts[agent.agent_id] = 0
        return agent

    def record(self, agent: GossipAgent, delivered: Delivered) -> None:
        self.got[agent.agent_id][delivered.message_id] = delivered
        self.counts[agent.agent_id] += 1

    def publish(self, agent: GossipAgent, payload: bytes) -> bytes:
        mid = agent.publish(payload)
        for delivered in agent.deliveries:
            if delivered.message_id == mid:
                self.record(agent, delivered)
        return mid

    def covered(self, mids: set[bytes], agents: list[GossipAgent] | None = None) -> bool:
        return all(mids <= self.got[a.agent_id].keys() for a in agents or self.agents)

    def run_until_covered(
        self, mids: set[bytes], timeout: float = 10.0, agents: list[GossipAgent] | None = None
    ) -> bool:
        return self.group.run_until(
            lambda: self.covered(mids, agents), timeout=timeout, on_delivered=self.record
        )

    def settle(self, seconds: float) -> None:
        for agent, delivered in self.group.run_for(seconds):
            self.record(agent, delivered)

    def connected(self, timeout: float = 10.0) -> bool:
        """Run until every dialed secure session is up (at once when signed-only)."""

        def up() -> bool:
            if self.trust is None:
                return True
            return all(
                a.statistics()["transport"].get("established", 0)
                == a.statistics()["transport"]["dialed"]
                for a in self.agents
            )

        return self.group.run_until(up, timeout=timeout, on_delivered=self.record)

    def intruder(
        self, sockets: list[Any], identity: Identity, victim: GossipAgent
    ) -> Callable[[bytes], None]:
        """A way to put frames in front of ``victim`` under ``identity`` without the driver:
        a raw dealer claiming its routing id, or (secure) a session of its own."""
        if self.trust is None:
            return raw_dealer(sockets, identity, victim.endpoint).send
        dealer = secure_peer(zmq.Context.instance(), identity, self.trust, victim.endpoint)
        sockets.append(dealer)
        assert self.group.run_until(
            lambda: dealer.pump(0.0) >= 0 and dealer.established, timeout=5.0
        )
        return dealer.send


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="zgd", dir="/tmp")  # ipc paths must stay short
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def raw_sockets() -> Iterator[list[zmq.Socket[Any]]]:
    sockets: list[zmq.Socket[Any]] = []
    yield sockets
    for sock in sockets:
        if isinstance(sock, SecureDealer | SecureRouter):
            sock.close()
        else:
            sock.close(0)


def raw_dealer(
    sockets: list[zmq.Socket[Any]], identity: Identity, endpoint: str
) -> zmq.Socket[Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, identity.agent_id.encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sockets.append(sock)
    return sock


@pytest.fixture(params=[False, True], ids=["plain", "secure"])
def secure(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_twenty_agents_reach_full_coverage_from_several_publishers(
    ipc_dir: str, secure: bool
) -> None:
    swarm = Swarm(ipc_dir, 20, secure=secure)
    try:
        assert swarm.connected()
        swarm.settle(0.1)
        mids = {
            swarm.publish(swarm.agents[p], f"{p}:{k}".encode())
            for p in (0, 7, 13)
            for k in range(5)
        }
        assert len(mids) == 15
        assert swarm.run_until_covered(mids, timeout=10.0)
        swarm.settle(0.2)
        for agent in swarm.agents:
            assert swarm.counts[agent.agent_id] == 15  # exactly once each, nothing else
            payloads = {d.payload for d in swarm.got[agent.agent_id].values()}
            assert payloads == {f"{p}:{k}".encode() for p in (0, 7, 13) for k in range(5)}
            stats = agent.statistics()
            assert stats["delivered"] == 15 and stats["drops"] == {}
            assert stats["queues"]["bytes"] == 0
        # Batching: some frames carried several items.
        total = [a.statistics() for a in swarm.agents]
        assert sum(s["sent_items"] for s in total) > sum(s["sent_frames"] for s in total)
    finally:
        swarm.group.close()


def test_forged_and_altered_messages_are_never_delivered_nor_forwarded(
    ipc_dir: str, raw_sockets: list[Any], secure: bool
) -> None:
    audit = MemoryAuditLog()
    swarm = Swarm(ipc_dir, 6, peers=5, audit=audit, secure=secure)
    try:
        assert swarm.connected()
        swarm.settle(0.1)
        victim, origin = swarm.agents[0], swarm.identities[1]
        intruder = swarm.identities[-1]  # a valid agent id with a key everyone knows
        send = swarm.intruder(raw_sockets, intruder, victim)
        genuine = Message(origin.agent_id, 0, b"genuine")
        signature = origin.sign(id_material(origin.agent_id, 0, b"genuine"))
        altered = Message(origin.agent_id, 0, b"ALTERED", 0, signature)
        unsigned = Message(origin.agent_id, 1, b"unsigned", 0, None)
        stranger = Identity.generate("stranger")  # not in anyone's key map
        forged = Message(
            stranger.agent_id,
            0,
            b"forged",
            0,
            stranger.sign(id_material(stranger.agent_id, 0, b"forged")),
        )
        send(encode_frame([Publish(altered), Publish(unsigned), Publish(forged)]))
        swarm.settle(0.3)
        assert victim.statistics()["drops"].get("bad_signature") == 3
        for agent in swarm.agents:
            assert swarm.counts[agent.agent_id] == 0
        for agent in swarm.agents[1:]:  # nothing was relayed
            assert agent.statistics()["machine"].get("bad_signature", 0) == 0
        rejects = audit.events("reject", reason="bad_signature")
        assert len(rejects) == 3 and all(r["peer"] == intruder.agent_id for r in rejects)
        assert victim.scores.score(intruder.agent_id, now=victim._clock()) < 0
        # The forged copy did not mark the id as seen: the real message still gets through.
        real = replace(genuine, signature=signature)
        send(encode_frame([Publish(real)]))
        assert swarm.run_until_covered({real.id}, agents=[victim], timeout=5.0)
        assert swarm.got[victim.agent_id][real.id].payload == b"genuine"
    finally:
        swarm.group.close()


def test_flooding_raw_peer_is_rate_limited_and_graylisted_while_others_deliver(
    ipc_dir: str, raw_sockets: list[Any], secure: bool
) -> None:
    params = ScoreParams(rate=300.0, burst=300.0, flood_penalty=0.5, graylist_below=-50.0)
    swarm = Swarm(ipc_dir, 8, peers=4, config=replace(FAST, scores=params), secure=secure)
    try:
        assert swarm.connected()
        swarm.settle(0.1)
        victim = swarm.agents[0]
        flooder = swarm.identities[-1]
        send = swarm.intruder(raw_sockets, flooder, victim)
        rng = random.Random(5)
        for _ in range(1500):
            send(encode_frame([IHave((rng.randbytes(16),))]))
        mids = {swarm.publish(swarm.agents[i], b"during flood %d" % i) for i in (0, 3, 5)}
        assert swarm.run_until_covered(mids, timeout=10.0)
        assert swarm.group.run_until(
            lambda: victim.statistics()["received_frames"] >= 1500, timeout=10.0
        ), "the flood did not all arrive"
        stats = victim.statistics()
        assert stats["drops"]["rate_limited"] > 0 and stats["drops"]["graylisted"] > 0
        assert victim.scores.is_graylisted(flooder.agent_id)
        assert flooder.agent_id not in victim.node.peers
        assert stats["drops"]["rate_limited"] + stats["drops"]["graylisted"] >= 1500 - 300
        # The flood cost little: the victim sent far fewer IWants than it received IHaves.
        assert stats["machine"].get("sent_iwant", 0) <= 300 + 20
        for agent in swarm.agents[1:]:
            assert not agent.scores.is_graylisted(victim.agent_id)
    finally:
        swarm.group.close()


def test_late_joiner_gets_earlier_messages_by_repair(ipc_dir: str, secure: bool) -> None:
    config = replace(FAST, history=40, gossip_windows=40)
    swarm = Swarm(ipc_dir, 8, peers=4, config=config, secure=secure)
    try:
        assert swarm.connected()
        swarm.settle(0.1)
        mids = {swarm.publish(swarm.agents[i], b"before %d" % i) for i in range(3)}
        assert swarm.run_until_covered(mids, timeout=5.0)
        late = swarm.spawn(3)  # dials three existing agents; nobody pushes old messages
        assert swarm.run_until_covered(mids, agents=[late], timeout=10.0)
        assert {d.payload for d in swarm.got[late.agent_id].values()} >= {
            b"before 0",
            b"before 1",
            b"before 2",
        }
        stats = late.statistics()
        assert stats["machine"]["sent_iwant"] >= 1  # it came by lazy repair
        assert stats["delivered"] == 3
    finally:
        swarm.group.close()


def test_slow_peer_does_not_block_others_and_drops_are_counted(
    ipc_dir: str, raw_sockets: list[Any], secure: bool
) -> None:
    config = replace(
        FAST,
        degree=6,
        degree_low=1,
        queue_bytes=32 * 1024,
        frame_bytes=4096,
        sockets=SocketOptions(send_hwm=8, linger=0),
    )
    swarm = Swarm(ipc_dir, 4, peers=3, config=config, secure=secure)
    try:
        slow_identity = swarm.identities[-1]
        publisher = swarm.agents[0]
        if swarm.trust is None:
            slow = zmq.Context.instance().socket(zmq.ROUTER)  # bound, never reads
            slow.setsockopt(zmq.ROUTING_ID, slow_identity.agent_id.encode())
            slow.setsockopt(zmq.RCVHWM, 8)
            slow.setsockopt(zmq.LINGER, 0)
            slow.bind(f"ipc://{ipc_dir}/slow")
            raw_sockets.append(slow)
            publisher.add_peer(slow_identity.agent_id, f"ipc://{ipc_dir}/slow")
        else:  # a session comes up, then the peer stops reading
            router = SecureRouter(
                f"ipc://{ipc_dir}/slow",
                identity=slow_identity,
                trust=swarm.trust,
                options=SocketOptions(receive_hwm=8, linger=0),
            )
            raw_sockets.append(router)
            publisher.add_peer(slow_identity.agent_id, f"ipc://{ipc_dir}/slow")
            assert swarm.group.run_until(
                lambda: router.pump(0.0) >= 0 and publisher.agent_id in router.peers,
                timeout=5.0,
            )
        assert swarm.connected()
        swarm.settle(0.2)
        assert slow_identity.agent_id in publisher.node.mesh
        payload = b"x" * 1000
        mids: set[bytes] = set()
        for i in range(600):
            mids.add(swarm.publish(publisher, b"%d" % i + payload))
            # A step per publish: the fast peers' queues (as small as the slow one's) must
            # not overflow too when the machine is busy, or their losses are never repaired.
            for agent, delivered in swarm.group.step(0.0):
                swarm.record(agent, delivered)
        assert swarm.run_until_covered(mids, timeout=10.0)
        stats = publisher.statistics()
        slow_queue = publisher.queues.get(slow_identity.agent_id)
        assert slow_queue.bytes <= 32 * 1024
        assert stats["hwm_blocked"] > 0
        assert sum(v for k, v in slow_queue.drops.items() if k.startswith("full_")) > 0
        assert sum(stats["queues"]["drops"].values()) > 0
        for agent in swarm.agents:
            assert swarm.counts[agent.agent_id] == 600
    finally:
        swarm.group.close()


def test_peer_garbage_never_raises_and_is_counted(
    ipc_dir: str, raw_sockets: list[zmq.Socket[Any]]
) -> None:
    audit = MemoryAuditLog()
    swarm = Swarm(ipc_dir, 2, peers=1, audit=audit)
    try:
        victim = swarm.agents[0]
        sender = swarm.identities[-1]
        sock = raw_dealer(raw_sockets, sender, victim.endpoint)
        sock.send(b"\xc1garbage")
        sock.send(msgpack.packb([1, [7]]))
        sock.send_multipart([b"two", b"frames"])
        bad_id = zmq.Context.instance().socket(zmq.DEALER)
        bad_id.setsockopt(zmq.ROUTING_ID, b"not-an-agent-id")
        bad_id.setsockopt(zmq.LINGER, 0)
        bad_id.connect(victim.endpoint)
        raw_sockets.append(bad_id)
        bad_id.send(encode_frame([IHave(())]))
        swarm.group.run_until(lambda: victim.statistics()["received_frames"] >= 4, timeout=5.0)
        drops = victim.statistics()["drops"]
        assert drops == {
            "malformed_undecodable": 1,
            "malformed_bad_item": 1,
            "bad_frames": 1,
            "bad_routing_id": 1,
        }
        assert len(audit.events("reject")) == 4
        assert victim.statistics()["delivered"] == 0
    finally:
        swarm.group.close()


def test_discovery_events_add_and_remove_peers(ipc_dir: str, secure: bool) -> None:
    swarm = Swarm(ipc_dir, 2, peers=0, secure=secure)
    try:
        a, b = swarm.agents
        event = PeerEvent(ENTER, b.agent_id, "127.0.0.1", (1,))
        a.on_peer_event(event, endpoint_for=lambda e: b.endpoint)
        assert a.node.peers == [b.agent_id]
        swarm.settle(0.15)
        mid = swarm.publish(a, b"hello")
        assert swarm.run_until_covered({mid}, timeout=5.0)
        a.on_peer_event(PeerEvent(EXPIRED, b.agent_id, "127.0.0.1", (1,)))
        assert a.node.peers == []
        assert a.statistics()["transport"]["dialed"] == 0  # secure: its dealer was closed
        swarm.publish(a, b"nobody hears")
        swarm.settle(0.1)
        assert swarm.counts[b.agent_id] == 1
    finally:
        swarm.group.close()


def test_usage_errors_are_clear(ipc_dir: str) -> None:
    ident = Identity.generate("solo")
    with pytest.raises(UsageError, match="verify_keys"):
        GossipAgent(ident, f"ipc://{ipc_dir}/x")
    with GossipAgent(ident, f"ipc://{ipc_dir}/x", verify_keys={}) as agent:
        with pytest.raises(UsageError, match="bytes"):
            agent.publish("text")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="max_payload_bytes"):
            agent.publish(b"x" * (agent.config.limits.max_payload_bytes + 1))
        with pytest.raises(UsageError, match="agent id"):
            agent.add_peer("bob", "ipc:///tmp/nowhere")
        assert agent.step(0.0) == []
        assert agent.step(-0.5) == []  # a deadline already past: no wait, never "forever"
    with pytest.raises(ClosedError):
        agent.publish(b"late")
    with pytest.raises(UsageError):
        GossipConfig(frame_bytes=2 * 1024 * 1024)


@pytest.mark.parametrize("secure", [False, True])
def test_a_closed_agent_removes_its_ipc_socket_file(ipc_dir: str, secure: bool) -> None:
    ident = Identity.generate("solo")
    trust = TrustStore(f"{ipc_dir}/trust") if secure else None
    socket_file = f"{ipc_dir}/solo.sock"
    with GossipAgent(
        ident,
        f"ipc://{socket_file}",
        verify_keys=None if secure else {},
        trust=trust,
    ):
        assert os.path.exists(socket_file)
    assert not os.path.exists(socket_file)


def test_an_agent_that_cannot_open_its_outbox_leaves_no_socket_behind(ipc_dir: str) -> None:
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 1)  # room for the inbox only
    # Keep the traceback, as a caller's error report would: it holds the half-made agent, so
    # the garbage collector cannot close a leaked socket behind our back.
    with pytest.raises(TransportError) as caught:
        GossipAgent(
            Identity.generate("cramped"), f"ipc://{ipc_dir}/c", verify_keys={}, context=context
        )
    # term() waits for every socket of the context: a leaked inbox would block it for good.
    terminated = threading.Thread(target=context.term, daemon=True)
    terminated.start()
    terminated.join(5.0)
    assert not terminated.is_alive()
    assert caught.value.__traceback__ is not None
