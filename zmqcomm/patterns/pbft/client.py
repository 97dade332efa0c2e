"""The PBFT client: a pure machine that sends one request at a time and accepts a result
once f + 1 replicas (so at least one correct one) sent matching replies.

The first transmission goes to the replica the client believes is the primary; on each
timeout it retransmits to every replica (backups then start their view-change timers, which
is how a silent primary is found out) and doubles its timeout up to ``max_timeout``.
Normally only f + 1 designated replicas reply; a replica the request reached directly
replies too, so after a timeout the client sends its next ``broadcast_after_timeout``
requests (32) to every replica: a silent designated replier then costs it one timeout per
33 requests, not one per request, and a timeout from a passing stall does not turn the
client into one that sends everything n times for good.
Timestamps increase strictly, and also across a restart of the client: each one is at least
``now`` in microseconds. Requests made while one is outstanding wait in a queue.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.checks import check_seconds
from zmqcomm.errors import UsageError
from zmqcomm.patterns.pbft.messages import Reply, Request, is_int, material
from zmqcomm.patterns.pbft.quorum import Quorum


@dataclass(frozen=True, slots=True)
class Result:
    """Output: the request with ``timestamp`` was executed and gave ``result``."""

    timestamp: int
    result: bytes


class Client:
    def __init__(
        self,
        client_id: str | int,
        n: int,
        *,
        now: float,
        timeout: float = 0.5,
        max_timeout: float = 8.0,
        sign: Callable[[bytes], bytes] | None = None,
        max_queue: int = 10_000,
        broadcast_after_timeout: int = 32,
    ) -> None:
        self.config = Quorum(n)
        if not isinstance(client_id, (str, int)) or isinstance(client_id, bool):
            raise UsageError(f"a client id is a str or an int, got {client_id!r}")
        if self.config.is_replica(client_id):
            raise UsageError(f"client id {client_id!r} collides with a replica id (0..{n - 1})")
        check_seconds(timeout, "client timeout", allow_zero=False)
        check_seconds(max_timeout, "client max_timeout", allow_zero=False)
        if max_timeout < timeout:
            raise UsageError(f"max_timeout ({max_timeout}) must be at least timeout ({timeout})")
        if not is_int(broadcast_after_timeout):
            raise UsageError(
                f"broadcast_after_timeout is a count >= 0, got {broadcast_after_timeout!r}"
            )
        self.id = client_id
        self.n = n
        self.base_timeout = timeout
        self.max_timeout = max_timeout
        self.sign = sign
        self.max_queue = max_queue
        #: The client's guess of the current view (from replies), to find the primary.
        self.view = 0
        self.timestamp = int(now * 1_000_000)
        self.current: Request | None = None
        self.queue: deque[bytes] = deque()
        self.replies: dict[int, Reply] = {}
        self.deadline: float | None = None
        self.timeout = timeout
        self.retransmissions = 0
        self.broadcast_after_timeout = broadcast_after_timeout
        #: How many of the next requests go to every replica (set after a timeout).
        self.broadcast_left = 0
        self.rejected: Counter[str] = Counter()

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    def request(self, op: bytes, *, now: float) -> list[Any]:
        """Queue ``op``; sends it now if nothing is outstanding."""
        if not isinstance(op, bytes):
            raise UsageError(f"an operation is bytes, got {type(op).__name__}")
        if len(self.queue) >= self.max_queue:
            raise UsageError(f"more than {self.max_queue} requests queued: wait for results")
        self.queue.append(op)
        return [] if self.current is not None else self._send_next(now)

    def _send_next(self, now: float) -> list[Any]:
        if not self.queue:
            return []
        self.timestamp = max(self.timestamp + 1, int(now * 1_000_000))
        request = Request(self.id, self.timestamp, self.queue.popleft())
        if self.sign is not None:
            request = replace(request, signature=self.sign(material(request)))
        self.current = request
        self.replies = {}
        self.timeout = self.base_timeout
        self.deadline = now + self.timeout
        if self.broadcast_left > 0:
            self.broadcast_left -= 1
            return [Send(r, request) for r in range(self.n)]
        return [Send(self.config.primary(self.view), request)]

    def abandon(self) -> None:
        """Give up the outstanding request and those queued: the caller stopped waiting.
        Their results, if they come, are refused (``stale_reply``) instead of being taken
        for the next request's. A request given up may still have been executed."""
        self.current = None
        self.deadline = None
        self.replies = {}
        self.queue.clear()

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, *, now: float) -> list[Any]:
        if self.current is None or self.deadline is None or now < self.deadline:
            return []
        self.retransmissions += 1
        self.broadcast_left = self.broadcast_after_timeout
        self.timeout = min(self.timeout * 2, self.max_timeout)
        self.deadline = now + self.timeout
        return [Send(r, self.current) for r in range(self.n)]

    def on_message(self, sender: Any, message: Any, *, now: float) -> list[Any]:
        if not isinstance(message, Reply):
            return self._reject("unknown_type")
        claimed = message.replica  # exact int: 1.0 == 1 must not pass as replica 1
        if not (self.config.is_replica(sender) and self.config.is_replica(claimed)):
            return self._reject("sender_mismatch")
        if claimed != sender:
            return self._reject("sender_mismatch")
        if not (
            is_int(message.view)
            and is_int(message.timestamp)
            and isinstance(message.result, bytes)
            and message.client == self.id
        ):
            return self._reject("malformed")
        current = self.current
        if current is None or message.timestamp != current.timestamp:
            return self._reject("stale_reply")
        if sender in self.replies:
            return []  # the first reply of each replica counts; later ones cannot change it
        self.replies[sender] = message
        # Only this reply's result can have just reached f + 1 matching replies.
        result = message.result
        if sum(r.result == result for r in self.replies.values()) < self.config.weak:
            return []
        # The (f+1)-th highest view reported is one a correct replica has reached.
        views = sorted((r.view for r in self.replies.values()), reverse=True)
        self.view = max(self.view, views[self.config.f])
        self.current = None
        self.deadline = None
        return [Result(current.timestamp, result), *self._send_next(now)]

    def _reject(self, reason: str) -> list[Any]:
        self.rejected[reason] += 1
        return []
