"""A PBFT load generator: many logical clients multiplexed over one connection per replica.

One process holds one identity and one :class:`~zmqcomm.secure.SecureDealer` to every
replica. Logical client k is the pure :class:`~zmqcomm.patterns.pbft.Client` with id
``"<agent id>/k"`` (the replicas accept that id from this agent only), each with one
request outstanding, so ``clients`` requests are in flight and the primary can fill
batches. Requests to one replica in one loop iteration go out as one batch, and the
replicas' replies to the many clients come back batched too.

Each operation is ``put(b"<client>/<i>", value)``; every acknowledged key is recorded, so a
test can check that no acknowledged operation is missing from any replica's state.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.channel import TrustChecker
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import (
    ConnectError,
    RemoteProtocolError,
    RequestTimeout,
    UsageError,
    ZmqCommError,
)
from zmqcomm.patterns.pbft.client import Client, Result
from zmqcomm.patterns.pbft.driver import group_sends
from zmqcomm.patterns.pbft.messages import Reply, decode
from zmqcomm.patterns.pbft.statemachine import encode_op
from zmqcomm.quantiles import nearest_rank
from zmqcomm.secure import SecureDealer
from zmqcomm.secure_poller import SecurePoller
from zmqcomm.transport.endpoints import unreachable_endpoint_hint
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS

__all__ = ["LoadGenerator", "LoadReport", "percentile"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank (:func:`zmqcomm.quantiles.nearest_rank`); NaN when there are no values."""
    return nearest_rank(values, fraction) if values else float("nan")


@dataclass
class LoadReport:
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    max_view: int = 0
    retransmissions: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    acknowledged: list[bytes] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "throughput": round(self.throughput, 1),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 3) if lat else None,
            "p99_ms": round(percentile(lat, 0.99) * 1000, 3) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 3) if lat else None,
            "view_changes": self.max_view,
            "retransmissions": self.retransmissions,
            "rejected": dict(self.rejected),
        }


class LoadGenerator:
    """``clients`` logical clients of a PBFT cluster, driven from one loop."""

    def __init__(
        self,
        identity: Identity,
        trust: TrustChecker,
        *,
        endpoints: Sequence[str],
        replica_agents: Sequence[str],
        clients: int = 64,
        timeout: float = 0.5,
        value_size: int = 16,
        context: zmq.Context[Any] | None = None,
        connect_timeout: float = 10.0,
        sign_requests: bool = False,
        min_sessions: int | None = None,
    ) -> None:
        """``sign_requests``: sign every request with ``identity`` (for replicas that check
        client signatures, ``client_signatures = true``). ``min_sessions``: how many
        replicas must have answered before the constructor returns (default all of them; a
        quorum is enough to make progress); the others keep being tried in the background."""
        if clients < 1 or len(endpoints) != len(replica_agents):
            raise UsageError("need at least one client and one agent id per endpoint")
        check_seconds(connect_timeout, "connect_timeout", allow_zero=False)
        self.n = len(endpoints)
        need = self.n if min_sessions is None else min_sessions
        if not 1 <= need <= self.n:
            raise UsageError(f"min_sessions must be 1 to {self.n}, got {min_sessions}")
        self.agent = identity.agent_id
        self.index = {agent: i for i, agent in enumerate(replica_agents)}
        self.value = b"v" * value_size
        now = time.time()
        sign = identity.sign if sign_requests else None
        self.clients: dict[Hashable, Client] = {
            f"{self.agent}/{k}": Client(
                f"{self.agent}/{k}", self.n, now=now, timeout=timeout, sign=sign
            )
            for k in range(clients)
        }
        options = DEFAULT_SOCKET_OPTIONS.with_changes(linger=0.0)
        self.dealers: list[SecureDealer] = []
        try:
            for endpoint, agent in zip(endpoints, replica_agents, strict=True):
                self.dealers.append(
                    SecureDealer(
                        endpoint,
                        identity=identity,
                        trust=trust,
                        expect_peer=agent,
                        options=options,
                        context=context,
                        send_timeout=0.0,
                        connect_timeout=None,  # each sends its INIT now; none waits yet
                    )
                )
            self._poller = SecurePoller(self.dealers)
            self._wait_established(connect_timeout, need)
        except BaseException:
            self.close()
            raise
        self.dropped: Counter[str] = Counter()
        self._next_timer = 0.0

    def _wait_established(self, connect_timeout: float, need: int) -> None:
        """Pump every dealer together until ``need`` of them have a session, or
        ConnectError naming every replica that has none after ``connect_timeout`` s. One
        replica at a time, the others' answers waited unread behind it: connecting took
        the sum of the round trips, and one slow replica held up the rest."""
        deadline = time.monotonic() + connect_timeout
        while True:
            waiting = [dealer for dealer in self.dealers if not dealer.established]
            left = deadline - time.monotonic()
            if len(self.dealers) - len(waiting) >= need or left <= 0:
                break
            for dealer in self._poller.wait(min(left, 0.05)):
                dealer.pump(0.0)  # nothing else arrives before our first request
        if len(self.dealers) - len(waiting) >= need:
            return
        # The dealers' own words (as their wait_established says them), for the whole wait.
        if len(waiting) == 1:
            [dealer] = waiting
            raise ConnectError(
                f"no authenticated session with the {dealer.peer_label} at {dealer.endpoint} "
                f"within {connect_timeout} s: {dealer.why_no_session()}"
                f"{unreachable_endpoint_hint(dealer.endpoint)}"
            )
        each = "; ".join(
            f"the {d.peer_label} at {d.endpoint}: {d.why_no_session()}"
            f"{unreachable_endpoint_hint(d.endpoint)}"
            for d in waiting
        )
        needed = "" if need == len(self.dealers) else f" ({need} needed)"
        raise ConnectError(
            f"no authenticated session with {len(waiting)} of {len(self.dealers)} replicas "
            f"within {connect_timeout} s{needed}: {each}"
        )

    def run(
        self,
        ops: int,
        *,
        stop: Callable[[], bool] | None = None,
        max_seconds: float = 600.0,
        on_result: Callable[[int], None] | None = None,
    ) -> LoadReport:
        """Issue ``ops`` operations (each client one at a time) and wait for their results."""
        check_seconds(max_seconds, "max_seconds", allow_zero=False)
        self._report = report = LoadReport()
        self._started: dict[Hashable, float] = {}
        self._counters: Counter[Hashable] = Counter()
        self._ops, self._issued, self._on_result = ops, 0, on_result
        begin = time.monotonic()
        actions: list[Any] = []
        for client_id in list(self.clients)[:ops]:
            actions += self._issue(client_id)
        self._send(actions)
        self._next_timer = 0.0
        while report.ops < ops and time.monotonic() - begin < max_seconds:
            if stop is not None and stop():
                break
            actions = []
            for sender, reply in self._replies(0.01):
                actions += self._on_reply(sender, reply)
            self._send(actions + self._timers())
        report.seconds = time.monotonic() - begin
        for client in self.clients.values():
            report.retransmissions += client.retransmissions
            report.rejected.update(client.rejected)
        return report

    def call(self, op: bytes, *, timeout: float = 10.0) -> bytes:
        """One operation from the first logical client: its result, once f + 1 replicas
        sent the same one. RequestTimeout after ``timeout`` seconds; the operation may
        still be executed after that (the replicas had it), so retry only what is safe to
        run twice, or read first."""
        check_seconds(timeout, "timeout", allow_zero=False)
        client_id, client = next(iter(self.clients.items()))
        self._next_timer = 0.0
        self._send(client.request(op, now=time.time()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            actions: list[Any] = []
            for sender, reply in self._replies(0.01):
                if reply.client != client_id:
                    self.dropped["unknown_client"] += 1
                    continue
                for out in client.on_message(sender, reply, now=time.time()):
                    if isinstance(out, Result):
                        return out.result
                    actions.append(out)
            self._send(actions + self._timers())
        client.abandon()  # else its late result would be taken for the next call's
        raise RequestTimeout(
            f"no result within {timeout} s: fewer than {client.config.f + 1} replicas sent "
            f"the same reply (sessions with {self.sessions()} of {self.n} replicas). Is a "
            "quorum of them running, and does each trust this identity's .pub file?"
        )

    def sessions(self) -> int:
        """Replicas with an authenticated session now."""
        return sum(dealer.established for dealer in self.dealers)

    def _replies(self, timeout: float) -> list[tuple[int, Reply]]:
        """Wait up to ``timeout`` for the replicas, and take the replies that came."""
        replies: list[tuple[int, Reply]] = []
        for dealer in self._poller.wait(timeout):
            try:
                dealer.pump(0.0)
            except ZmqCommError as exc:
                self.dropped[f"pump_{exc.reason}"] += 1
            while dealer.inbox:
                delivered = dealer.inbox.popleft()
                sender = self.index.get(delivered.agent_id)
                for payload in delivered.message.payloads:
                    reply = self._decode(payload)
                    if sender is not None and reply is not None:
                        replies.append((sender, reply))
        return replies

    def _timers(self) -> list[Any]:
        """The clients' retransmissions that are due (looked at every 10 ms)."""
        mono = time.monotonic()
        if mono < self._next_timer:
            return []
        self._next_timer = mono + 0.01
        now, actions = time.time(), []
        for client in self.clients.values():
            deadline = client.next_deadline()
            if deadline is not None and now >= deadline:
                actions += client.on_timer(now=now)
        return actions

    def _on_reply(self, sender: int, reply: Reply) -> list[Any]:
        if not isinstance(reply.client, str):
            # A faulty replica may put anything here; a map would crash the lookup below.
            self.dropped["bad_client_id"] += 1
            return []
        client = self.clients.get(reply.client)
        if client is None:
            self.dropped["unknown_client"] += 1
            return []
        actions: list[Any] = []
        report = self._report
        for out in client.on_message(sender, reply, now=time.time()):
            if not isinstance(out, Result):
                actions.append(out)
                continue
            report.latencies.append(time.monotonic() - self._started.pop(reply.client))
            report.ops += 1
            report.max_view = max(report.max_view, client.view)
            report.acknowledged.append(self._key(reply.client))
            if self._on_result is not None:
                self._on_result(report.ops)
            if self._issued < self._ops:
                actions += self._issue(reply.client)
        return actions

    def _key(self, client_id: Hashable) -> bytes:
        return f"{client_id}/{self._counters[client_id]}".encode()

    def _issue(self, client_id: Hashable) -> list[Any]:
        self._issued += 1
        self._counters[client_id] += 1
        self._started[client_id] = time.monotonic()
        op = encode_op("put", self._key(client_id), self.value)
        return self.clients[client_id].request(op, now=time.time())

    def _decode(self, payload: Any) -> Reply | None:
        if not isinstance(payload, bytes):
            self.dropped["not_bytes"] += 1
            return None
        try:
            message = decode(payload)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return None
        if not isinstance(message, Reply):
            self.dropped["not_a_reply"] += 1
            return None
        return message

    def _send(self, actions: list[Any]) -> None:
        if not actions:
            return
        sends, _ = group_sends(actions)
        for to, payloads in sends.items():
            if not isinstance(to, int) or not 0 <= to < self.n:
                continue
            try:
                self.dealers[to].send_many(payloads)
            except ZmqCommError as exc:
                # A dead replica: the client's retransmission to all replicas covers it.
                self.dropped[f"send_{exc.reason}"] += len(payloads)

    def close(self) -> None:
        for dealer in self.dealers:
            dealer.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
