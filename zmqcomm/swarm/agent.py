"""One agent of ``zmqcomm swarm``, run as its own process: ``python -m zmqcomm.swarm.agent FILE``.

It connects to the broker, waits for the go signal (a file), then for the run's duration
sends numbered direct messages to random peers at a set rate, makes a request every
``request_every`` messages (timing the round trip), answers the requests of others, and
counts what it receives per sender. At the end it tells every peer how many messages it sent
them, keeps receiving until every peer's count is matched (or a deadline passes), and writes
its result: what it sent and received, duplicates, latencies, rekeys and rejections.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.cli.common import load_node_identity
from zmqcomm.crypto.session import RekeyPolicy
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.node import Incoming, Node
from zmqcomm.swarm.layout import AgentSettings, write_json
from zmqcomm.wire import MessageType

GO_FILE = "go"
ENDPOINTS_FILE = "endpoints.json"
_DRAIN_TIMEOUT = 30.0
_STATUS_EVERY = 0.25


class SwarmAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        directory = Path(settings.directory)
        self.rng = random.Random(settings.seed)
        rekey = RekeyPolicy(
            max_messages=settings.rekey_every,
            hard_max_messages=max(settings.rekey_every * 1000, 2_000_000),
        )
        self.node = Node(
            load_node_identity(directory / "keys", settings.name),
            TrustStore(directory / "trust" / "agents"),
            broker=None if settings.peer_to_peer else settings.endpoint,
            bind=settings.listen,
            policy=Policy.load(directory / "policy.toml"),
            rekey=rekey,
            connect_timeout=30.0,
        )
        self.node.request_handler = lambda request: {"pong": request.payload}
        self.node.subscribe(settings.topic.rsplit("/", 1)[0] + "/*")
        self.published = 0
        self.publications: dict[str, set[int]] = defaultdict(set)
        self.expected_publications: dict[str, int] = {}
        self.sent: dict[str, int] = defaultdict(int)
        self.seen: dict[str, set[int]] = defaultdict(set)
        self.duplicates = 0
        self.expected: dict[str, int] = {}
        self.latencies: list[float] = []
        self.request_failures = 0
        self.padding = b"x" * max(0, settings.size - 16)
        self._next_status = 0.0
        self.phase = "ready"

    def handle(self, message: Incoming) -> None:
        payload = message.payload
        if message.kind == MessageType.PUBLISH and isinstance(payload, dict):
            seen = self.publications[message.sender]
            if payload.get("n") in seen:
                self.duplicates += 1
            seen.add(int(payload.get("n", -1)))
            return
        if message.kind != MessageType.DATA or not isinstance(payload, dict):
            return
        if "seq" in payload:
            seen = self.seen[message.sender]
            if payload["seq"] in seen:
                self.duplicates += 1
            seen.add(payload["seq"])
        elif "done" in payload:
            self.expected[message.sender] = int(payload["done"])
            self.expected_publications[message.sender] = int(payload.get("published", 0))

    def drain(self) -> None:
        self.node.pump(0.0)
        while self.node.inbox:
            self.handle(self.node.inbox.popleft())

    def status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_status:
            return
        self._next_status = now + _STATUS_EVERY
        stats = self.node.statistics()
        write_json(
            self.settings.status_path,
            {
                "phase": self.phase,
                "sent": sum(self.sent.values()),
                "received": sum(len(s) for s in self.seen.values()),
                "requests": len(self.latencies),
                "published": self.published,
                "rekeys": stats["rekeys"],
                "rejected": sum(stats["rejected"].values()),
                "endpoint": self.node.endpoint,
            },
        )

    def run(self) -> dict[str, Any]:
        settings = self.settings
        go = Path(settings.directory) / GO_FILE
        self.status(force=True)
        while not go.exists():
            self.node.pump(0.02)
            self.status()
        if settings.peer_to_peer:
            self._connect_to_peers()
        self.phase = "running"
        started = time.monotonic()
        end = started + settings.duration
        interval = 1.0 / settings.rate
        next_send = started
        count = 0
        while (now := time.monotonic()) < end:
            if now < next_send:
                self.node.pump(min(next_send - now, 0.01))
                self.drain()
                continue
            next_send += interval
            peer = self.rng.choice(settings.peers)
            self.node.send(peer, {"seq": self.sent[peer], "pad": self.padding})
            self.sent[peer] += 1
            count += 1
            if count % settings.request_every == 0:
                self._request(self.rng.choice(settings.peers))
            if count % settings.publish_every == 0:
                self.node.publish(settings.topic, {"n": self.published})
                self.published += 1
            self.drain()
            self.status()
        sending_time = time.monotonic() - started
        self.phase = "draining"
        for peer in settings.peers:
            self.node.send(peer, {"done": self.sent[peer], "published": self.published})
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        while time.monotonic() < deadline and not self._complete():
            self.node.pump(0.01)
            self.drain()
            self.status()
        # Linger so that peers still draining get our replies and acknowledgements.
        linger = time.monotonic() + 1.0
        while time.monotonic() < linger:
            self.node.pump(0.01)
            self.drain()
        self.phase = "done"
        self.status(force=True)
        stats = self.node.statistics()
        result = {
            "name": settings.name,
            "agent_id": self.node.agent_id,
            "sent": dict(self.sent),
            "received": {peer: len(seen) for peer, seen in self.seen.items()},
            "expected": self.expected,
            "duplicates": self.duplicates,
            "published": self.published,
            "publications": {peer: len(seen) for peer, seen in self.publications.items()},
            "latencies": self.latencies,
            "request_failures": self.request_failures,
            "sending_time": sending_time,
            "rekeys": stats["rekeys"],
            "rejected": stats["rejected"],
            "complete": self._complete(),
        }
        self.node.close()
        return result

    def _connect_to_peers(self) -> None:
        """Dial every peer listed after us (they dial those after them): one link a pair."""
        listed = json.loads((Path(self.settings.directory) / ENDPOINTS_FILE).read_text())
        mine = listed.index([self.node.agent_id, self.node.endpoint])
        for agent_id, endpoint in listed[mine + 1 :]:
            self.node.connect(endpoint, expect_peer=agent_id, timeout=30.0)
        deadline = time.monotonic() + 30.0
        wanted = set(self.settings.peers)
        # Every peer linked, and every peer's subscription in: no publication goes missing.
        while (
            set(self.node.peers) < wanted
            or set(self.node.subscribers(self.settings.topic)) < wanted
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("not every peer connected and subscribed within 30 s")
            self.node.pump(0.01)

    def _request(self, peer: str) -> None:
        started = time.perf_counter()
        try:
            self.node.request(peer, len(self.latencies), timeout=10.0)
        except TimeoutError:
            self.request_failures += 1
            return
        self.latencies.append(time.perf_counter() - started)

    def _complete(self) -> bool:
        return all(
            peer in self.expected
            and len(self.seen.get(peer, ())) >= self.expected[peer]
            and len(self.publications.get(peer, ())) >= self.expected_publications[peer]
            for peer in self.settings.peers
        )


def main(argv: list[str]) -> int:
    settings = AgentSettings.load(argv[0])
    agent = SwarmAgent(settings)
    result = agent.run()
    write_json(settings.result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
