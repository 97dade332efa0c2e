"""The simulator: deterministic from a seed, with loss, duplication, reordering, partitions,
crashes, restarts and Byzantine nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqcomm.actions import Broadcast, Send
from zmqcomm.errors import UsageError
from zmqcomm.sim import LinkModel, Network, Simulator, byzantine, fixed, lognormal, uniform


@dataclass(frozen=True)
class Deliver:
    value: Any


@dataclass
class Flooder:
    """Re-broadcasts every new value once and delivers it; re-floods on a timer until stopped."""

    origin_value: Any = None
    seen: set[Any] = field(default_factory=set)
    received: list[tuple[Any, Any]] = field(default_factory=list)
    refresh: float | None = None
    _next: float | None = None

    def __post_init__(self) -> None:
        if self.origin_value is not None:
            self.seen.add(self.origin_value)
        if self.refresh is not None:
            self._next = 0.0

    def start(self) -> list[Any]:
        self.seen.add(self.origin_value)
        return [Deliver(self.origin_value), Broadcast(self.origin_value)]

    def on_message(self, sender: Any, message: Any, *, now: float) -> list[Any]:
        self.received.append((sender, message))
        if message in self.seen:
            return []
        self.seen.add(message)
        return [Deliver(message), Broadcast(message)]

    def on_timer(self, *, now: float) -> list[Any]:
        assert self.refresh is not None
        self._next = now + self.refresh
        return [Broadcast(value) for value in sorted(self.seen, key=repr)]

    def next_deadline(self) -> float | None:
        return self._next


class Mute(Flooder):
    """Originates its value but relays nothing (so a Byzantine rewrite cannot loop)."""

    def on_message(self, sender: Any, message: Any, *, now: float) -> list[Any]:
        self.received.append((sender, message))
        return []


class Sequencer:
    """Sends 0..count-1 to node 'b', one per millisecond."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.got: list[Any] = []

    def on_message(self, sender: Any, message: Any, *, now: float) -> list[Any]:
        self.got.append(message)
        return []

    def on_timer(self, *, now: float) -> list[Any]:
        self.sent += 1
        return [Send("b", self.sent - 1)]

    def next_deadline(self) -> float | None:
        return self.sent * 0.001 if self.sent < self.count else None


def _sequence_run(seed: int, model: LinkModel, count: int = 2000) -> list[Any]:
    sim = Simulator(seed=seed, network=Network(model))
    sim.add_node("a", lambda: Sequencer(count))
    receiver = Sequencer(0)
    sim.add_node("b", lambda: receiver)
    sim.run()
    return receiver.got


def test_same_seed_same_run_and_another_seed_another_run() -> None:
    model = LinkModel(latency=uniform(0.0005, 0.01), loss=0.1, duplicate=0.1)

    def run(seed: int) -> str:
        sim = Simulator(seed=seed, network=Network(model))
        for node in range(6):
            sim.add_node(node, lambda node=node: Flooder(origin_value=f"v{node}"))
        for node in range(6):
            sim.call_node(node, lambda machine: machine.start())  # type: ignore[attr-defined]
        sim.run()
        return sim.trace_digest()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_loss_rate_follows_the_link_model() -> None:
    got = _sequence_run(1, LinkModel(loss=0.2))
    assert 1500 < len(got) < 1700  # 2000 sent, 20 % lost
    assert got == sorted(got)  # fixed latency keeps order


def test_duplication_and_reordering() -> None:
    duplicated = _sequence_run(2, LinkModel(duplicate=0.5, latency=fixed(0.002)))
    assert 2800 < len(duplicated) < 3200
    reordered = _sequence_run(3, LinkModel(latency=uniform(0.0, 0.02)))
    assert sorted(reordered) == list(range(2000))
    assert reordered != sorted(reordered)


def test_lognormal_latency_has_a_long_tail() -> None:
    sim = Simulator(seed=4)
    draw = lognormal(0.01, sigma=1.0)
    samples = sorted(draw(sim.random) for _ in range(2001))
    assert 0.008 < samples[1000] < 0.012
    assert samples[-20] > 0.08


def test_partition_cuts_and_heal_restores() -> None:
    sim = Simulator(seed=5)
    for node in "abcd":
        sim.add_node(node, lambda node=node: Flooder(origin_value=node, refresh=1.0))
    sim.network.partition([{"a", "b"}, {"c", "d"}])
    sim.run(until=5.0)
    seen = {node: sim.machine(node).seen for node in "abcd"}  # type: ignore[attr-defined]
    assert seen["a"] == {"a", "b"} and seen["c"] == {"c", "d"}
    sim.network.heal()
    sim.run(until=7.0)
    assert all(sim.machine(n).seen == set("abcd") for n in "abcd")  # type: ignore[attr-defined]


def test_crash_loses_in_flight_messages_and_restart_starts_fresh() -> None:
    sim = Simulator(seed=6, network=Network(LinkModel(latency=fixed(1.0))))
    sim.add_node("a", lambda: Flooder(origin_value="a"))
    sim.add_node("b", lambda: Flooder(origin_value="b"))
    before_crash = sim.machine("b")
    sim.call_node("a", lambda m: m.start())  # type: ignore[attr-defined]
    sim.call_at(0.5, lambda s: s.crash("b"))
    sim.call_at(0.7, lambda s: s.restart("b"))
    sim.run()
    assert before_crash.received == []  # type: ignore[attr-defined]
    assert sim.machine("b") is not before_crash
    assert sim.machine("b").received == []  # type: ignore[attr-defined]
    assert sim.dropped == 1
    assert [e.kind for e in sim.trace if e.node == "b"] == ["crash", "restart", "lost"]


def test_a_crashed_node_fires_no_timers() -> None:
    sim = Simulator(seed=7)
    sim.add_node("a", lambda: Flooder(origin_value="a", refresh=0.1))
    sim.add_node("b", lambda: Flooder(origin_value="b"))
    sim.crash("a")
    sim.run(until=2.0)
    assert sim.machine("b").received == []  # type: ignore[attr-defined]
    assert not sim.is_up("a")


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (byzantine.silent(), []),
        (byzantine.alter(lambda message, rng: message.upper()), [("byz", "X")]),
        (byzantine.flood(3), [("byz", "x")] * 3),
    ],
)
def test_byzantine_rewrites(behaviour: Any, expected: list[Any]) -> None:
    sim = Simulator(seed=8)
    sim.add_node("byz", lambda: Mute(origin_value="x"))
    sim.add_node("honest", lambda: Flooder(origin_value="y"))
    sim.set_byzantine("byz", behaviour)
    sim.call_node("byz", lambda m: m.start())  # type: ignore[attr-defined]
    sim.run()
    assert sim.machine("honest").received == expected  # type: ignore[attr-defined]


def test_equivocation_replay_and_forgery() -> None:
    sim = Simulator(seed=9)
    sim.add_node("byz", lambda: Mute(origin_value="v"))
    for node in ("p", "q"):
        sim.add_node(node, Flooder)
    sim.set_byzantine("byz", byzantine.equivocate(lambda message, to, rng: f"{message}-{to}"))
    sim.call_node("byz", lambda m: m.start())  # type: ignore[attr-defined]
    sim.run()
    assert ("byz", "v-p") in sim.machine("p").received  # type: ignore[attr-defined]
    assert ("byz", "v-q") in sim.machine("q").received  # type: ignore[attr-defined]
    sim.inject("p", "q", "forged")
    sim.run()
    assert ("p", "forged") in sim.machine("q").received  # type: ignore[attr-defined]
    replays = _sequence_with(byzantine.replay(1.0, history=5))
    assert len(replays) == 2 * 50 - 1 and len(set(replays)) == 50


def _sequence_with(interceptor: Any) -> list[Any]:
    sim = Simulator(seed=10)
    sim.add_node("a", lambda: Sequencer(50))
    receiver = Sequencer(0)
    sim.add_node("b", lambda: receiver)
    sim.set_byzantine("a", interceptor)
    sim.run()
    return receiver.got


def test_livelock_guard_and_usage_errors() -> None:
    sim = Simulator(seed=11)
    sim.add_node("a", lambda: Flooder(origin_value="a", refresh=0.0))
    sim.add_node("b", Flooder)
    with pytest.raises(RuntimeError, match="seed 11"):
        sim.run(max_events=1000)
    with pytest.raises(UsageError):
        sim.add_node("a", Flooder)
    with pytest.raises(UsageError):
        sim.crash("nobody")
    with pytest.raises(UsageError):
        sim.call_at(-1.0, lambda s: None)
    with pytest.raises(UsageError):
        LinkModel(loss=1.5)
    with pytest.raises(UsageError):
        sim.network.partition([{"a"}, {"a", "b"}])


faults = st.lists(
    st.tuples(
        st.floats(0.0, 5.0),
        st.sampled_from(["crash", "restart", "split", "heal"]),
        st.integers(0, 4),
    ),
    max_size=12,
)


@given(seed=st.integers(0, 2**32), schedule=faults)
@settings(max_examples=40, deadline=None)
def test_any_fault_schedule_replays_exactly_from_its_seed(
    seed: int, schedule: list[tuple[float, str, int]]
) -> None:
    def run() -> tuple[str, dict[Any, list[Any]]]:
        model = LinkModel(latency=uniform(0.001, 0.05), loss=0.05, duplicate=0.05)
        sim = Simulator(seed=seed, network=Network(model))
        for node in range(5):
            sim.add_node(node, lambda node=node: Flooder(origin_value=node, refresh=0.5))
        for time, fault, node in schedule:
            if fault == "crash":
                sim.call_at(time, lambda s, n=node: s.crash(n))
            elif fault == "restart":
                sim.call_at(time, lambda s, n=node: s.restart(n))
            elif fault == "split":
                sim.call_at(time, lambda s, n=node: s.network.partition([{n}, set(range(5)) - {n}]))
            else:
                sim.call_at(time, lambda s: s.network.heal())
        sim.call_at(5.0, lambda s: s.network.heal())
        for node in range(5):
            sim.call_at(5.0, lambda s, n=node: None if s.is_up(n) else s.restart(n))
        sim.run(until=8.0)
        seen = {n: sim.machine(n).seen for n in range(5)}  # type: ignore[attr-defined]
        assert all(values == set(range(5)) for values in seen.values()), seen
        return sim.trace_digest(), dict(sim.outputs)

    first, second = run(), run()
    assert first == second
