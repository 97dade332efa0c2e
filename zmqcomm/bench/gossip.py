"""Section ``gossip``: time to coverage against swarm size, in the deterministic simulator.

The pure gossip machines run in :mod:`zmqcomm.sim` (virtual clock, 10 % message loss, seeded),
so the figures are heartbeat rounds and virtual seconds, plus the wall time the simulation took;
they do not depend on this machine's speed except ``wall_seconds``.
"""

from __future__ import annotations

from typing import Any

from zmqcomm.bench.harness import BenchContext
from zmqcomm.sim.gossip_metrics import measure_gossip
from zmqcomm.wording import counted

NAME = "gossip"
TITLE = "Gossip time to coverage (simulated, 10 % loss)"
LOSS = 0.1


def run(context: BenchContext) -> dict[str, Any]:
    settings, progress = context.settings, context.progress
    progress.section(NAME, len(settings.gossip_sizes))
    rows = []
    for n in settings.gossip_sizes:
        metrics = measure_gossip(n, settings.seed, loss=LOSS).as_dict()
        metrics["seconds_to"] = {str(k): v for k, v in metrics["seconds_to"].items()}
        rows.append(metrics)
        progress.step(
            f"N={n}: {counted(metrics['rounds_to_full'], 'round')} to 100 %, "
            f"{metrics['wall_seconds']:.1f} s wall"
        )
    return {"title": TITLE, "loss": LOSS, "rows": rows}
