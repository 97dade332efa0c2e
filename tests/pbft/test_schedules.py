"""Randomized schedules: many seeded runs with random delays, loss, duplication, reordering,
partitions that heal, crashes and restarts (also at random store writes), and up to f
Byzantine replicas with a random behaviour (see adversary.py). Every run checks:

- no two correct replicas execute different requests at one sequence number;
- executed histories of correct replicas are prefixes of each other;
- no correct replica executes a request twice;
- every result a client accepted is what the correct replicas executed;
- liveness: after every crashed replica is back and the network has healed (t = 5 s),
  every request completes.

The number of schedules is ZMQCOMM_PBFT_SCHEDULES (default 1000, split into chunks of
100); ZMQCOMM_PBFT_SCHEDULE_START moves the first seed, for a longer or different run:

    ZMQCOMM_PBFT_SCHEDULES=20000 ZMQCOMM_PBFT_SCHEDULE_START=5000 \
        pytest tests/pbft/test_schedules.py

A failure names the seed; replay it with ``random_schedule(seed)`` from adversary.py.
"""

from __future__ import annotations

import os

import pytest

from .adversary import random_schedule

TOTAL = int(os.environ.get("ZMQCOMM_PBFT_SCHEDULES", "1000"))
START = int(os.environ.get("ZMQCOMM_PBFT_SCHEDULE_START", "0"))
CHUNK = 100
#: Virtual seconds a schedule may take; everything has healed at 5 s.
DEADLINE = 30.0


def run_schedule(seed: int) -> None:
    schedule = random_schedule(seed)
    cluster = schedule.cluster
    context = f"seed {seed}: {'; '.join(schedule.description)}"
    try:
        cluster.sim.run(
            until=DEADLINE,
            stop=lambda: all(len(cluster.results(c)) >= schedule.ops for c in cluster.clients),
            max_events=2_000_000,
        )
        cluster.check_safety()
    except Exception as exc:
        raise AssertionError(f"{context}: {exc!r}") from exc
    done = [len(cluster.results(c)) for c in cluster.clients]
    assert all(d == schedule.ops for d in done), f"{context}: not live, results {done}"


@pytest.mark.parametrize("chunk", range((TOTAL + CHUNK - 1) // CHUNK))
def test_random_schedules_keep_agreement_and_liveness(chunk: int) -> None:
    first = START + chunk * CHUNK
    for seed in range(first, min(first + CHUNK, START + TOTAL)):
        run_schedule(seed)


def test_a_schedule_replays_exactly_from_its_seed() -> None:
    def digest(seed: int) -> tuple[object, ...]:
        schedule = random_schedule(seed)
        cluster = schedule.cluster
        cluster.sim.run(
            until=DEADLINE,
            stop=lambda: all(len(cluster.results(c)) >= schedule.ops for c in cluster.clients),
        )
        return (
            cluster.sim.now,
            cluster.sim.delivered,
            tuple(tuple(cluster.results(c)) for c in cluster.clients),
        )

    assert digest(12345) == digest(12345)
