"""Gossip over real ipc sockets: N agents in P processes, M messages from random agents.

Each process steps its share of the agents with one poller (:class:`GossipGroup`). Identities,
endpoints and the peer graph are derived from a seed, so every process knows every key and
endpoint without exchanging anything. After a warm-up (connections made, meshes grafted) all
processes start together; message ``m`` is published by a random agent at ``t0 + m / rate``.
Time to coverage of a message = the last agent's delivery time minus its publish time
(CLOCK_MONOTONIC is system-wide on Linux, so times compare across processes).

    python benchmarks/gossip_ipc.py                 # 100 agents, 4 processes, 100 msgs at 10/s
    python benchmarks/gossip_ipc.py --quick         # 30 agents, 2 processes, 50 msgs at 20/s
    python benchmarks/gossip_ipc.py --procs 1       # everything in one process
    python benchmarks/gossip_ipc.py --plain         # signed-only transport, for comparison

Agents run over secure sessions (the default with a trust store: one holding every agent's
key is written to the temporary directory); ``--plain`` measures the signed-only transport.
The warm-up lasts until every dialed session is up (or ``--warmup`` seconds, if longer).

Prints a short table and writes JSON (``--json PATH``, default stdout only). The loop is
CPU-bound Python (about 1,200 frame sends/receives and 100 signature checks per message for
100 agents with degree 6): offer a rate above what the cores can carry and the times measure
queueing, not gossip (``msgs_per_s`` falls below ``--rate``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing as mp
import queue
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.patterns.gossip.driver import GossipAgent, GossipConfig
from zmqcomm.patterns.gossip.group import GossipGroup


def identity(seed: int, index: int) -> Identity:
    material = hashlib.blake2b(b"gossip-bench %d %d" % (seed, index), digest_size=64).digest()
    return Identity(f"a{index}", material[:32], material[32:])


def plan(args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    """Who dials whom (symmetric-ish random graph) and who publishes message m."""
    rng = random.Random(args.seed)
    n = args.agents
    dials: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in rng.sample([j for j in range(n) if j != i], args.peers // 2):
            dials[i].append(j)
    publishers = [rng.randrange(n) for _ in range(args.messages)]
    return dials, publishers


def worker(
    rank: int, args: argparse.Namespace, directory: str, ready: Any, go: Any, t0: Any, out: Any
) -> None:
    n, m = args.agents, args.messages
    mine = list(range(rank, n, args.procs))
    identities = [identity(args.seed, i) for i in range(n)]
    keys = {ident.agent_id: ident.verify_key for ident in identities}
    endpoints = [f"ipc://{directory}/{i}" for i in range(n)]
    dials, publishers = plan(args)
    config = GossipConfig(heartbeat=args.heartbeat, degree=args.degree)
    trust = None if args.plain else TrustStore(f"{directory}/trust")
    agents = {
        i: GossipAgent(
            identities[i],
            endpoints[i],
            verify_keys=keys if trust is None else None,
            trust=trust,
            config=config,
            rng=random.Random(args.seed * 1000 + i),
        )
        for i in mine
    }
    for i, agent in agents.items():
        for j in dials[i]:
            agent.add_peer(identities[j].agent_id, endpoints[j])
    group = GossipGroup(agents.values())
    ready.wait()

    def sessions_up() -> bool:
        return all(
            a.statistics()["transport"].get("established", 0)
            == a.statistics()["transport"]["dialed"]
            for a in agents.values()
        )

    group.run_for(args.warmup)  # connect, graft, settle
    if trust is not None:
        group.run_until(sessions_up, timeout=60.0)
    go.wait()
    start = t0.value
    published: dict[int, float] = {}
    first: dict[int, int] = {}
    last: dict[int, float] = {}
    delivered_count = 0
    target = len(mine) * m
    schedule = [(start + k / args.rate, k) for k in range(m) if publishers[k] in agents]
    pad = b"\0" * max(0, args.payload - 8)

    def note(index: int, at: float) -> None:
        nonlocal delivered_count
        delivered_count += 1
        first[index] = first.get(index, 0) + 1
        last[index] = max(last.get(index, at), at)

    deadline = start + m / args.rate + args.timeout
    next_pub = 0
    while delivered_count < target and time.monotonic() < deadline:
        now = time.monotonic()
        while next_pub < len(schedule) and schedule[next_pub][0] <= now:
            _, k = schedule[next_pub]
            agent = agents[publishers[k]]
            agent.publish(k.to_bytes(8, "big") + pad)
            published[k] = time.monotonic()
            note(k, published[k])
            next_pub += 1
        wait = schedule[next_pub][0] - now if next_pub < len(schedule) else 0.01
        for _agent, d in group.step(max(0.0, min(wait, 0.01))):
            if d.sender is not None:
                note(int.from_bytes(d.payload[:8], "big"), d.at)
    stats = [a.statistics() for a in agents.values()]
    totals: dict[str, int] = {}
    for s in stats:
        for key in ("sent_frames", "sent_items", "received_items", "hwm_blocked"):
            totals[key] = totals.get(key, 0) + s[key]
        totals["duplicates"] = totals.get("duplicates", 0) + s["machine"].get("duplicates", 0)
        totals["drops"] = totals.get("drops", 0) + sum(s["drops"].values())
    out.put({"rank": rank, "published": published, "count": first, "last": last, **totals})
    group.run_for(0.2)  # keep answering repair requests while the others finish
    group.close()


def _set_start(t0: Any) -> None:
    t0.value = time.monotonic() + 0.05


def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="zgb", dir="/tmp")
    if not args.plain:
        store = TrustStore(f"{directory}/trust")
        for i in range(args.agents):
            store.add(identity(args.seed, i).public)
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(args.procs + 1)
    t0 = ctx.Value("d", 0.0)
    # Whoever arrives last (workers go on warming up until their sessions are up) sets t0.
    go = ctx.Barrier(args.procs + 1, action=functools.partial(_set_start, t0))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(r, args, directory, ready, go, t0, out))
        for r in range(args.procs)
    ]
    try:
        for p in procs:
            p.start()
        ready.wait(timeout=120)
        go.wait(timeout=180)
        results = _collect(out, procs, args.timeout + args.messages / args.rate + 120)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        shutil.rmtree(directory, ignore_errors=True)
    return summarise(args, results)


def _collect(out: Any, procs: list[Any], seconds: float) -> list[dict[str, Any]]:
    """Every worker's result; stops at once, saying which, when a worker died instead."""
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [(n, p.exitcode) for n, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(
                    f"worker(s) died (rank, exit code): {dead}; see their output"
                ) from None
            if time.monotonic() > deadline:
                raise SystemExit(f"no result from every worker within {seconds:.0f} s") from None
    return results


def _raise_file_limit() -> None:
    """A secure agent holds about five descriptors per dialed peer (a dealer socket, its
    connection events and libzmq's own pair), so 25 agents of 8 peers each pass a soft limit
    of 1024: lift it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


def summarise(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    published: dict[int, float] = {}
    count: dict[int, int] = {}
    last: dict[int, float] = {}
    for r in results:
        published.update(r["published"])
        for k, c in r["count"].items():
            count[k] = count.get(k, 0) + c
        for k, t in r["last"].items():
            last[k] = max(last.get(k, t), t)
    covered = [k for k in range(args.messages) if count.get(k, 0) == args.agents]
    ttc = sorted((last[k] - published[k]) * 1000 for k in covered if k in published)
    deliveries = sum(count.values())
    span = max(last.values()) - min(published.values()) if published else 0.0

    def pct(q: float) -> float:
        return round(ttc[min(len(ttc) - 1, int(q * len(ttc)))], 2) if ttc else float("nan")

    sums = {k: sum(r[k] for r in results) for k in ("sent_frames", "sent_items", "duplicates")}
    return {
        "transport": "plain" if args.plain else "secure",
        "agents": args.agents,
        "processes": args.procs,
        "messages": args.messages,
        "payload_bytes": args.payload,
        "publish_rate": args.rate,
        "degree": args.degree,
        "peers_dialed": args.peers // 2,
        "coverage": round(deliveries / (args.agents * args.messages), 6),
        "fully_covered_messages": len(covered),
        "ttc_ms_p50": pct(0.50),
        "ttc_ms_p99": pct(0.99),
        "ttc_ms_max": round(ttc[-1], 2) if ttc else float("nan"),
        "ttc_ms_mean": round(statistics.fmean(ttc), 2) if ttc else float("nan"),
        "msgs_per_s": round(args.messages / span, 1) if span else float("nan"),
        "deliveries_per_s": round(deliveries / span, 1) if span else float("nan"),
        "items_per_frame": round(sums["sent_items"] / max(1, sums["sent_frames"]), 2),
        "duplicates_per_delivery": round(sums["duplicates"] / max(1, deliveries), 2),
        "drops": sum(r["drops"] for r in results),
        "hwm_blocked": sum(r["hwm_blocked"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="publishes per second")
    parser.add_argument("--payload", type=int, default=256)
    parser.add_argument("--peers", type=int, default=16, help="about this many peers each")
    parser.add_argument("--degree", type=int, default=6)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="30 agents, 2 procs, 50 msgs")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument(
        "--plain", action="store_true", help="signed-only transport (default: secure sessions)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.procs, args.messages, args.rate = 30, 2, 50, 20.0
    if args.procs < 1 or args.agents < 2 or args.messages < 1:
        parser.error("need --procs >= 1, --agents >= 2, --messages >= 1")
    _raise_file_limit()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    print(
        f"\n{'agents':>7} {'procs':>5} {'msgs':>6} {'coverage':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'msgs/s':>8}\n{result['agents']:>7} {result['processes']:>5} "
        f"{result['messages']:>6} {result['coverage']:>9.2%} {result['ttc_ms_p50']:>8} "
        f"{result['ttc_ms_p99']:>8} {result['msgs_per_s']:>8}",
        file=sys.stderr,
    )
    return 0 if result["coverage"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
