"""pytest-benchmark cases for the PBFT machines' hot paths.

    pytest benchmarks/test_bench_pbft.py --benchmark-columns=min,median,ops
    pytest benchmarks/test_bench_pbft.py --benchmark-autosave / --benchmark-compare

The codec cases are what every replica pays per message; ``one_batch`` runs a whole normal
case (request, pre-prepare, prepares, commits, execution, replies) for a committee of four
pure replicas with real Ed25519 keys, delivering messages in memory, so it measures the
protocol's own CPU cost per batch without sockets. Each case checks its result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from itertools import count
from typing import Any

import pytest

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.pbft import (
    Client,
    KeyValueStore,
    MemoryStore,
    PrePrepare,
    Replica,
    Reply,
    Request,
    Result,
    batch_digest,
    decode,
    ed25519_verifier,
    encode,
    encode_op,
)

N = 4
IDENTITIES = [Identity.generate(f"r{i}") for i in range(N)]
VERIFY = ed25519_verifier({i: ident.verify_key for i, ident in enumerate(IDENTITIES)})
BATCH = tuple(Request(f"c/{i}", 1, encode_op("put", b"key %d" % i, b"v" * 32)) for i in range(256))


def test_encode_reply(benchmark: Any) -> None:
    reply = Reply(0, 7, "loadgen/3", 1, b"\x92\xa2ok\xc0")
    assert decode(benchmark(encode, reply)) == reply


def test_decode_reply(benchmark: Any) -> None:
    reply = Reply(0, 7, "loadgen/3", 1, b"\x92\xa2ok\xc0")
    assert benchmark(decode, encode(reply)) == reply


def test_batch_digest_of_256_requests(benchmark: Any) -> None:
    assert len(benchmark(batch_digest, BATCH)) == 32


def test_encode_pre_prepare_of_256_requests(benchmark: Any) -> None:
    pp = PrePrepare(0, 1, batch_digest(BATCH), BATCH, 0)
    assert decode(benchmark(encode, pp)) == pp


class Committee:
    """Four replicas and clients exchanging messages through an in-memory queue."""

    def __init__(self, clients: int, batch: int) -> None:
        self.nodes: dict[Hashable, Any] = {
            i: Replica(
                i,
                N,
                state_machine=KeyValueStore(),
                store=MemoryStore(),
                sign=IDENTITIES[i].sign,
                verify=VERIFY,
                now=0.0,
                max_batch=batch,
                batch_delay=60.0,  # a batch leaves when full (max_batch = clients)
                checkpoint_interval=1_000_000,  # no checkpoints: measure the normal case only
                watermark_window=2_000_000,
            )
            for i in range(N)
        }
        self.clients = [f"c{k}" for k in range(clients)]
        for name in self.clients:
            self.nodes[name] = Client(name, N, now=0.0)
        self.results = 0
        self._ops = count()

    def round(self) -> None:
        """Every client submits one put; run until every client has its result."""
        queue: deque[tuple[Hashable, Any]] = deque()
        for name in self.clients:
            op = encode_op("put", b"k%d" % next(self._ops), b"v")
            queue.extend((name, a) for a in self.nodes[name].request(op, now=1.0))
        wanted = self.results + len(self.clients)
        while queue:
            sender, action = queue.popleft()
            if isinstance(action, Send):
                out = self.nodes[action.to].on_message(sender, action.message, now=1.0)
                queue.extend((action.to, a) for a in out)
            elif isinstance(action, Result):
                self.results += 1
        assert self.results == wanted, (self.results, wanted)


@pytest.mark.parametrize("clients", [1, 64])
def test_normal_case_one_batch_four_replicas(benchmark: Any, clients: int) -> None:
    committee = Committee(clients, batch=clients)
    benchmark(committee.round)
