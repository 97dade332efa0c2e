"""``LoadGenerator.call`` (one operation, as ``zmqcomm pbft client`` runs it) and the pure
client's ``abandon``: a timed-out operation's late result is never taken for the next."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.errors import RequestTimeout
from zmqcomm.patterns.pbft.client import Client, Result
from zmqcomm.patterns.pbft.loadgen import LoadGenerator
from zmqcomm.patterns.pbft.messages import Reply, Request


def _replies(request: Request, result: bytes) -> list[tuple[int, Reply]]:
    """f + 1 = 2 matching replies from replicas 0 and 1."""
    return [
        (replica, Reply(0, request.timestamp, request.client, replica, result))
        for replica in (0, 1)
    ]


def test_an_abandoned_requests_late_result_is_refused_and_the_next_gets_its_own() -> None:
    client = Client("me/0", 4, now=0.0)
    (first, *_) = client.request(b"op1", now=0.0)
    client.abandon()
    assert not client.busy and client.next_deadline() is None
    (second, *_) = client.request(b"op2", now=1.0)
    for sender, reply in _replies(first.message, b"result of op1"):
        assert client.on_message(sender, reply, now=1.1) == []
    assert client.rejected["stale_reply"] == 2
    results = [
        out
        for sender, reply in _replies(second.message, b"result of op2")
        for out in client.on_message(sender, reply, now=1.2)
    ]
    assert results == [Result(second.message.timestamp, b"result of op2")]


class _Scripted(LoadGenerator):
    """``call`` without sockets: the replicas answer as ``answer(op)`` says (None: not
    yet), every time the loop looks."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:  # no super(): no sockets
        self.n = 4
        self.clients = {"me/0": Client("me/0", 4, now=0.0)}
        self.dropped: Counter[str] = Counter()
        self.dealers = []
        self._next_timer = 0.0
        self.answer = answer
        self.sent: list[Request] = []

    def _send(self, actions: list[Any]) -> None:
        self.sent += [a.message for a in actions if isinstance(a, Send)]

    def _replies(self, timeout: float) -> list[tuple[int, Reply]]:
        out = []
        for request in {(r.timestamp, r.op): r for r in self.sent}.values():
            result = self.answer(request.op)
            if result is not None:
                out += _replies(request, result)
        return out


def test_a_call_after_one_that_timed_out_returns_its_own_result() -> None:
    """Found in review: the timed-out request stayed outstanding, the next call's op only
    queued behind it, and the first op's late result came back as the second's."""
    slow = {b"op1"}
    generator = _Scripted(lambda op: None if op in slow else b"result of " + op)
    with pytest.raises(RequestTimeout, match="fewer than 2 replicas"):
        generator.call(b"op1", timeout=0.05)
    slow.clear()  # op1's result now comes, after the caller moved on
    assert generator.call(b"op2", timeout=5.0) == b"result of op2"
