"""pytest-benchmark cases for the gossip machine's hot path.

    pytest benchmarks/test_bench_gossip.py --benchmark-columns=min,median,ops
    pytest benchmarks/test_bench_gossip.py --benchmark-autosave / --benchmark-compare

A relaying node pays ``on_message`` for every copy it receives: a fresh message (signature
check, delivery, push to the mesh) or a duplicate (dropped by id). Each case checks its
result, so a broken path cannot produce a fast, wrong figure.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import count
from typing import Any

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.patterns.gossip import (
    Deliver,
    GossipNode,
    Message,
    Publish,
    ed25519_verifier,
    id_material,
)

PEERS = [f"n{i}" for i in range(20)]
ORIGIN = Identity.generate("origin")
RELAY = Identity.generate("n0")
VERIFY = ed25519_verifier({"origin": ORIGIN.verify_key, "n0": RELAY.verify_key})
PAYLOAD = b"x" * 64


def first(population: Sequence[Hashable], k: int) -> list[Hashable]:
    return list(population)[:k]


def relay(signed: bool = True) -> GossipNode:
    return GossipNode(
        "n0",
        PEERS,
        sign=RELAY.sign if signed else None,
        verify=VERIFY if signed else None,
        choose=first,
        now=0.0,
        max_seen=1_000_000,
    )


def messages(total: int, *, signed: bool = True) -> list[Publish]:
    made = []
    for sequence in range(total):
        material = id_material("origin", sequence, PAYLOAD)
        signature = ORIGIN.sign(material) if signed else None
        made.append(Publish(Message("origin", sequence, PAYLOAD, 1, signature)))
    return made


def test_publish_signed_64_bytes(benchmark: Any) -> None:
    node = relay()
    _, actions = benchmark(node.publish, PAYLOAD, now=1.0)
    assert isinstance(actions[0], Deliver)
    assert sum(isinstance(a, Send) for a in actions) == node.degree


def test_on_message_fresh_signed(benchmark: Any) -> None:
    node = relay()
    incoming = iter(messages(3_000))
    actions = benchmark.pedantic(
        lambda: node.on_message("n1", next(incoming), now=1.0), rounds=2_500
    )
    assert isinstance(actions[0], Deliver)


def test_on_message_fresh_unsigned(benchmark: Any) -> None:
    node = relay(signed=False)
    incoming = iter(messages(60_000, signed=False))
    actions = benchmark.pedantic(
        lambda: node.on_message("n1", next(incoming), now=1.0), rounds=50_000
    )
    assert isinstance(actions[0], Deliver)


def test_on_message_duplicate(benchmark: Any) -> None:
    node = relay()
    seen = messages(1)[0]
    node.on_message("n1", seen, now=1.0)
    before = node.counters["delivered"]
    assert benchmark(node.on_message, "n2", seen, now=1.0) == []
    assert node.counters["delivered"] == before


def test_heartbeat_with_recent_messages(benchmark: Any) -> None:
    node = relay(signed=False)
    for publish in messages(200, signed=False):
        node.on_message("n1", publish, now=1.0)
    ticks = count(2)
    actions = benchmark(lambda: node.on_timer(now=float(next(ticks))))
    assert isinstance(actions, list)
