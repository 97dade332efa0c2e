"""SWIM membership in the simulator: the figures in docs/discovery.md.

Three runs of :class:`zmqcomm.sim.membership_swarm.Swarm` (links of 1-20 ms, 1 s period):
100 nodes joining through 2 seeds; the same with 10 % loss on every link, then 300 periods
after convergence (false EXPIRED events, probes); a node crashed after convergence and the
periods until all 99 others have declared it dead.

    python benchmarks/swim_sim.py            # about a minute on one core
    python benchmarks/swim_sim.py --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zmqcomm.sim.membership_swarm import Swarm, address, identity

NODES = 100


def _expired(swarm: Swarm) -> int:
    return sum(len(swarm.events(i, "EXPIRED")) for i in range(swarm.count))


def measure() -> dict[str, Any]:
    everyone = list(range(NODES))
    swarm = Swarm(NODES)
    joined = swarm.run_until(lambda: swarm.full(everyone), limit=300)

    lossy = Swarm(NODES, loss=0.10, seed=3)
    converged = lossy.run_until(lambda: lossy.full(everyone), limit=300)
    while_joining = _expired(lossy)
    lossy.sim.run(until=converged + 300)
    nodes = [lossy.node(i) for i in everyone]

    crash = Swarm(NODES)
    crash.run_until(lambda: crash.full(everyone), limit=300)
    crashed_at = crash.sim.now
    crash.sim.crash(address(17))
    gone = identity(17).agent_id
    detected = crash.run_until(
        lambda: all(gone not in crash.node(i) for i in everyone if i != 17),
        limit=crashed_at + 300,
    )
    return {
        "nodes": NODES,
        "join_seconds": joined,
        "loss_10pct_converged_seconds": converged,
        "loss_10pct_false_expired_while_joining": while_joining,
        "loss_10pct_false_expired_in_300_periods": _expired(lossy) - while_joining,
        "loss_10pct_probes": sum(node.stats["probes"] for node in nodes),
        "loss_10pct_probes_failed": sum(node.stats["probe_failed"] for node in nodes),
        "crash_declared_dead_by_all_after_periods": detected - crashed_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    figures = measure()
    if parser.parse_args().json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:<42} {value}")


if __name__ == "__main__":
    main()
