"""results.json and results.md: the figures with the machine, versions and settings."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import zmq
import zstandard

from zmqcomm.bench.settings import MODE_LABELS, BenchSettings, format_size

SCHEMA = 1
#: The issue's acceptance figures, on ipc with 64-byte messages.
CLAIMS: tuple[tuple[str, str, str, float], ...] = (
    ("encrypted msg/s vs pyzmq+CURVE", "throughput", "ratio_vs_curve", 1.0),
    ("encrypted msg/s vs raw pyzmq", "throughput", "ratio_vs_raw", 0.8),
    ("encrypted round-trip p50 vs raw pyzmq", "latency", "ratio_p50_vs_raw", 1.3),
)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        info["memory_mib"] = int(first[1]) // 1024
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    return {
        "zmqcomm": _version("zmqcomm"),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "libzmq_curve": bool(zmq.has("curve")),
        "pynacl": _version("pynacl"),
        "msgpack": _version("msgpack"),
        "zstandard": _version("zstandard"),
        "libzstd": zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION)),
        "matplotlib": _version("matplotlib"),
    }


def find_row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def claims(sections: dict[str, Any], *, judge: bool = True) -> list[dict[str, Any]]:
    """The issue's targets against this run (ipc, 64 B); ``met`` is None when not measured,
    or when not judged: a quick run's one short round says nothing about a target (it has
    shown raw pyzmq slower than zmqcomm plain), and must not print "met"."""
    result = []
    for text, section, key, target in CLAIMS:
        rows = sections.get(section, {}).get("rows", [])
        row = find_row(rows, transport="ipc", size=64, mode="encrypted")
        value = row.get(key) if row is not None else None
        lower_is_better = section == "latency"
        met = None
        if value is not None and judge:
            met = value <= target if lower_is_better else value >= target
        result.append(
            {
                "claim": text,
                "target": f"{'<=' if lower_is_better else '>='} {target:.1f}x",
                "value": value,
                "met": met,
                "judged": judge,
            }
        )
    return result


def build_results(
    settings: BenchSettings,
    sections: dict[str, Any],
    *,
    started: str,
    seconds: float,
    command: str,
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "started": started,
        "seconds": seconds,
        "command": command,
        "machine": environment["machine"] if environment else machine(),
        "versions": environment["versions"] if environment else versions(),
        "settings": settings.to_json(),
        "claims": claims(sections, judge=not settings.quick),
        "sections": sections,
    }


def _verdict(claim: dict[str, Any], words: dict[bool, str]) -> str:
    if claim["value"] is None:
        return "not measured"
    if claim["met"] is None:
        return "not judged (quick run)"
    return words[claim["met"]]


def verdict(claim: dict[str, Any]) -> str:
    """How the console says whether a claim's target was met."""
    return _verdict(claim, {True: "met", False: "NOT met"})


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# -- Markdown ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    spec = align or "l" + "r" * (len(head) - 1)
    rule = ["---" if a == "l" else "---:" for a in spec]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _throughput(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            row["transport"],
            format_size(row["size"]),
            MODE_LABELS[row["mode"]],
            _num(row["msg_per_s"]),
            _num(row["mb_per_s"], 1),
            _x(row["ratio_vs_raw"]),
            _x(row["ratio_vs_curve"]),
        ]
        for row in section["rows"]
    ]
    head = ["transport", "size", "mode", "msg/s", "MB/s", "vs raw", "vs CURVE"]
    return _table(head, rows, "lll" + "r" * 4)


def _latency(section: dict[str, Any]) -> list[str]:
    rows = [
        [
            row["transport"],
            format_size(row["size"]),
            MODE_LABELS[row["mode"]],
            _num(row["p50_us"], 1),
            _num(row["p90_us"], 1),
            _num(row["p99_us"], 1),
            _x(row["ratio_p50_vs_raw"]),
            _x(row["ratio_p50_vs_curve"]),
        ]
        for row in section["rows"]
    ]
    head = ["transport", "size", "mode", "p50 µs", "p90 µs", "p99 µs", "p50 vs raw", "vs CURVE"]
    return _table(head, rows, "lll" + "r" * 5)


def _memory(section: dict[str, Any]) -> list[str]:
    rss = section["rss_kib"]
    extra = f"{section['extra_mib']:+.1f} ({section['extra_kib_per_connection']:+.1f} KiB)"
    table = _table(
        [f"process holding {section['connections']:,} connections", "RSS MiB"],
        [
            [section["raw"], _num(rss["raw"] / 1024, 1)],
            [section["zmqcomm"], _num(rss["zmqcomm"] / 1024, 1)],
            ["difference (per connection)", extra],
        ],
    )
    waits = ", ".join(f"{mode} {value:.1f}" for mode, value in section["connect_seconds"].items())
    return [*table, "", f"Seconds until every peer was in: {waits}."]


def _handshakes(section: dict[str, Any]) -> list[str]:
    per_s = section["per_s"]
    rows = [
        [
            "Noise XX computed in process (both sides)",
            _num(section["noise_in_process_per_s"]),
            "-",
        ]
    ]
    labels = {
        "raw": "ipc connect + first echo, no security",
        "curve": "ipc connect + CURVE + ZAP + first echo",
        "encrypted": "ipc connect + Noise XX session + first echo",
    }
    rows += [[labels[m], _num(per_s[m]), _x(section["ratio_vs_curve"][m])] for m in per_s]
    return _table(["what", "per second", "vs CURVE"], rows)


def _relay(section: dict[str, Any]) -> list[str]:
    rates = section["msg_per_s"]
    return _table(
        ["relay", "msg/s", "vs raw"],
        [
            ["raw pyzmq ROUTER, one recv/send per message", _num(rates["raw"]), "1.00x"],
            [
                f"zmqcomm Broker, sender batches of {section['batch']}",
                _num(rates["zmqcomm"]),
                _x(section["ratio_vs_raw"]),
            ],
        ],
    )


def _gossip(section: dict[str, Any]) -> list[str]:
    rows = []
    for row in section["rows"]:
        seconds = row["seconds_to"]
        rows.append(
            [
                _num(row["nodes"]),
                str(row["rounds_to_full"]),
                *(_num(seconds.get(level), 2) for level in ("50", "90", "99", "100")),
                f"{row['coverage'] * 100:.1f} %",
                _num(row["duplicates_per_node_message"], 2),
                _num(row["wall_seconds"], 1),
            ]
        )
    head = ["N", "rounds to 100 %", "s to 50 %", "90 %", "99 %", "100 %", "coverage",
            "duplicates/node", "wall s"]  # fmt: skip
    return _table(head, rows)


def _pbft(section: dict[str, Any]) -> list[str]:
    if section.get("status") != "measured":
        rows = [[str(row["n"]), str(section.get("status"))] for row in section["rows"]]
        return [*_table(["committee n", "ops/s"], rows), "", f"Not measured: {section['reason']}."]
    rows = [
        [
            str(row["n"]),
            _num(row["ops_per_s"]),
            _num(row["p50_ms"], 1),
            _num(row["p99_ms"], 1),
            _num(row["messages_per_op"], 1),
            _num(row["replica_cpu_us_per_op"]),
            "yes" if row["complete"] else "**no**",
        ]
        for row in section["rows"]
    ]
    head = ["committee n", "ops/s", "p50 ms", "p99 ms", "messages/op", "replica CPU µs/op",
            "all ops done"]  # fmt: skip
    note = (
        f"{section['ops']:,} operations per run, {section['clients']} clients in flight, "
        f"stores {'with' if section['fsync'] else 'without'} fsync."
    )
    return [*_table(head, rows), "", note]


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "throughput": _throughput,
    "latency": _latency,
    "memory": _memory,
    "handshakes": _handshakes,
    "relay": _relay,
    "gossip": _gossip,
    "pbft": _pbft,
}


def to_markdown(results: dict[str, Any]) -> str:
    machine_info, versions_info = results["machine"], results["versions"]
    lines = [
        "# zmqcomm benchmark results",
        "",
        f"Run {results['started']} ({results['seconds']:.0f} s): `{results['command']}`",
        "",
        f"Machine: {machine_info.get('cpu', machine_info['machine'])}, "
        f"{machine_info['cpus']} CPUs, {machine_info.get('memory_mib', '?')} MiB, "
        f"{machine_info['platform']}, Python {machine_info['python']}.",
        "Versions: "
        + ", ".join(f"{name} {value}" for name, value in versions_info.items() if value),
        "",
        "## Targets (ipc, 64-byte messages)",
        "",
    ]
    claim_rows = [
        [
            claim["claim"],
            claim["target"],
            _x(claim["value"]),
            _verdict(claim, {True: "yes", False: "**no**"}),
        ]
        for claim in results["claims"]
    ]
    lines += _table(["figure", "target", "measured", "met"], claim_rows, "lrrl")
    for name, section in results["sections"].items():
        renderer = RENDERERS.get(name)
        lines += ["", f"## {section.get('title', name)}", ""]
        if section.get("status") == "failed":
            lines.append(f"**Failed**: {section['error']}")
            continue
        if section.get("status") == "interrupted":
            lines.append("**Interrupted** before this section finished.")
            continue
        if renderer is None:
            lines.append("```json\n" + json.dumps(section, indent=2) + "\n```")
            continue
        lines += renderer(section)
        for skip in section.get("skipped", []):
            lines += [
                "",
                f"Not measured: {skip['mode']} on {skip['transport']} ({skip['reason']}).",
            ]
    return "\n".join(lines) + "\n"
