"""``zmqcomm bench``: zmqcomm side by side with raw pyzmq and pyzmq+CURVE, in one run."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zmqcomm.bench import plots
from zmqcomm.bench.harness import Progress
from zmqcomm.bench.report import verdict
from zmqcomm.bench.runner import SECTIONS, default_out_dir, run_benchmarks
from zmqcomm.bench.settings import TRANSPORTS, BenchSettings, parse_size
from zmqcomm.cli.common import sigterm_interrupts
from zmqcomm.cli.help_format import HelpFormatter
from zmqcomm.errors import UsageError, ZmqCommError

EXAMPLES = """\
examples:
  zmqcomm bench --quick                    a small run in seconds; every output file
  zmqcomm bench                            the whole table (about 15 minutes)
  zmqcomm bench --only throughput latency --transports ipc --sizes 64 1k
  zmqcomm bench --only memory handshakes relay gossip
  zmqcomm bench --out /tmp/run1 --json     also print results.json to stdout

Outputs in --out (default ./bench-results/YYYYmmdd-HHMMSS/): results.json (figures, machine,
versions, settings), results.md (the tables), throughput.png and latency.png. Progress goes to
stderr. Modes: raw pyzmq, pyzmq + CURVE, zmqcomm plain, encrypted, encrypted+zstd; runs
alternate between modes so drift in the machine's load hits all alike. Plots need matplotlib:
pip install 'zmqcomm[bench]'. Only loopback and ipc are used.
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure throughput, latency, memory and more against raw pyzmq and CURVE",
        description=(
            "Measure zmqcomm against raw pyzmq (the limit) and pyzmq with CURVE, side by side "
            "in one run: throughput and round-trip latency over inproc, ipc and tcp "
            "(loopback) from 64 B to 1 MiB, memory with 1000 connections, handshakes per "
            "second, broker relay rate, gossip time to coverage and PBFT ops/s."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts, 64 B and 64 KiB, inproc and ipc, one round (seconds)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (created; one that holds an earlier run's results.json is refused)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SECTION",
        choices=list(SECTIONS),
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--transports", nargs="+", choices=TRANSPORTS, help="default: all (quick: inproc ipc)"
    )
    parser.add_argument(
        "--sizes", nargs="+", metavar="SIZE", help="message sizes, e.g. 64 1k 64k 1m"
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="runs of each mode (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="payload and simulation seed (1)")
    parser.add_argument(
        "--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)"
    )
    parser.add_argument("--json", action="store_true", help="print results.json to stdout too")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def settings_from(args: argparse.Namespace) -> BenchSettings:
    settings = BenchSettings.quick_settings() if args.quick else BenchSettings()
    changes: dict[str, Any] = {"seed": args.seed}
    if args.only:
        changes["sections"] = tuple(args.only)
    if args.transports:
        changes["transports"] = tuple(dict.fromkeys(args.transports))
    if args.sizes:
        changes["sizes"] = tuple(sorted({parse_size(text) for text in args.sizes}))
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    return settings.with_changes(**changes)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not args.no_plots:
        plots.check_available()  # before the run, not after minutes of it
    out = Path(args.out) if args.out else default_out_dir()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if (out / "results.json").exists():
        # Before the run: finding out afterwards that it wrote over the figures of an
        # earlier run (the ones a comparison was to be made with) would be too late.
        raise UsageError(
            f"--out {out} already holds the results of an earlier run: give a new directory "
            "(it is created), or move that one away first"
        )
    # ``zmqcomm bench ARGS`` or ``python -m zmqcomm.cli.bench ARGS``: record ARGS.
    given = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    command = "zmqcomm bench " + shlex.join(given)
    with sigterm_interrupts():
        outcome = run_benchmarks(
            settings,
            out,
            progress=Progress(quiet=args.quiet),
            command=command.strip(),
            plots=not args.no_plots,
        )
    if args.json:
        print(json.dumps(outcome.results, indent=2))
    else:
        for name, path in outcome.files.items():
            print(f"{name:<15} {path}")
        for claim in outcome.results["claims"]:
            # Three decimals: 0.795 shown as 0.80x beside "NOT met" for >= 0.8x looked wrong.
            value = "not measured" if claim["value"] is None else f"{claim['value']:.3f}x"
            print(f"{claim['claim']:<40} {value:>12}  target {claim['target']}  {verdict(claim)}")
    if outcome.failed:
        print(f"zmqcomm bench: failed sections: {', '.join(outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zmqcomm.cli.bench``: the same command without the ``zmqcomm`` front end."""
    parser = argparse.ArgumentParser(
        prog="python -m zmqcomm.cli.bench",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("zmqcomm bench: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"zmqcomm bench: error: {exc}", file=sys.stderr)
        return 2
    except ZmqCommError as exc:
        print(f"zmqcomm bench: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # --out, as the zmqcomm front end reports it
        print(f"zmqcomm bench: error: {exc}; check the path and its permissions", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
