"""The numbers of a swarm run, from the agents' own results, and the table that shows them."""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from zmqcomm.quantiles import nearest_rank
from zmqcomm.wording import counted


class _Options(Protocol):
    mode: str
    agents: int
    duration: float
    transport: str
    size: int
    rate: float


#: Below this share of the planned messages, the footer says the host was overloaded.
_KEPT_UP = 0.9


def _percentile(samples: list[float], fraction: float) -> float | None:
    return nearest_rank(samples, fraction) if samples else None


def summarize(
    results: list[dict[str, Any]], broker: dict[str, Any], options: _Options
) -> dict[str, Any]:
    """Totals per agent and for the swarm. ``lost`` counts direct messages a peer never
    received and publications a subscriber (every other agent) never received."""
    by_id = {result["agent_id"]: result for result in results}
    rows = []
    lost_total = 0
    for result in results:
        lost = 0
        for peer, count in result["sent"].items():
            received = by_id.get(peer, {}).get("received", {}).get(result["agent_id"], 0)
            lost += max(0, count - received)
        for peer, count in by_id.items():
            if peer != result["agent_id"]:
                lost += max(
                    0, result["published"] - count["publications"].get(result["agent_id"], 0)
                )
        lost_total += lost
        rejected = sum(result["rejected"].values())
        rows.append(
            {
                "agent": result["name"],
                "sent": sum(result["sent"].values()),
                "received": sum(result["received"].values()),
                "requests": len(result["latencies"]),
                "published": result["published"],
                "topic_received": sum(result["publications"].values()),
                "request_failures": result["request_failures"],
                "p50_ms": _ms(_percentile(result["latencies"], 0.50)),
                "p99_ms": _ms(_percentile(result["latencies"], 0.99)),
                "rekeys": result["rekeys"],
                "rejected": rejected,
                "duplicates": result["duplicates"],
                "lost": lost,
            }
        )
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result["rejected"])
    latencies = [value for result in results for value in result["latencies"]]
    sending_time = max((result["sending_time"] for result in results), default=0.0)
    sent = sum(row["sent"] for row in rows)
    return {
        "agents": options.agents,
        "mode": options.mode,
        "duration": options.duration,
        "transport": options.transport,
        "size": options.size,
        "rows": rows,
        "messages": sent,
        # What the agents were asked to send: fewer means the host could not keep up.
        "planned": round(options.agents * options.rate * options.duration),
        "received": sum(row["received"] for row in rows),
        "msg_per_s": sent / sending_time if sending_time else 0.0,
        "requests": len(latencies),
        "published": sum(row["published"] for row in rows),
        "topic_received": sum(row["topic_received"] for row in rows),
        "request_failures": sum(row["request_failures"] for row in rows),
        "p50_ms": _ms(_percentile(latencies, 0.50)),
        "p99_ms": _ms(_percentile(latencies, 0.99)),
        "rekeys": sum(row["rekeys"] for row in rows),
        "rejected": sum(row["rejected"] for row in rows),
        # Why, most frequent first: on an overloaded host, late handshake answers
        # (unexpected_handshake, handshake_timeout) that the retries then recover.
        "rejected_reasons": dict(reasons.most_common()),
        "duplicates": sum(row["duplicates"] for row in rows),
        "lost": lost_total,
        "broker": {
            key: broker.get(key) for key in ("routed", "stored", "handshakes", "rekeys", "rejected")
        },
    }


def _reasons(summary: dict[str, Any]) -> str:
    """`` (reason count, ...)`` for the footer, the three most frequent; "" for none."""
    reasons = list(summary.get("rejected_reasons", {}).items())
    if not reasons:
        return ""
    shown = ", ".join(f"{reason} {count:,}" for reason, count in reasons[:3])
    return f" ({shown}{', ...' if len(reasons) > 3 else ''})"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(summary: dict[str, Any]) -> str:
    columns = [
        ("agent", "agent"),
        ("sent", "sent"),
        ("received", "received"),
        ("requests", "requests"),
        ("published", "published"),
        ("topic recv", "topic_received"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("rekeys", "rekeys"),
        ("rejects", "rejected"),
        ("lost", "lost"),
    ]
    total = {
        "agent": "total",
        **{
            key: summary[key]
            for key in (
                "requests",
                "published",
                "topic_received",
                "p50_ms",
                "p99_ms",
                "rekeys",
                "lost",
            )
        },
        "sent": summary["messages"],
        "received": summary["received"],
        "rejected": summary["rejected"],
    }
    table = [[title for title, _ in columns]]
    for row in [*summary["rows"], total]:
        table.append([_cell(row.get(key)) for _, key in columns])
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    lines = []
    for number, line in enumerate(table):
        cells = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if number == 0 or number == len(table) - 2:
            lines.append("  ".join("-" * width for width in widths))
    how = "through a broker" if summary["mode"] == "broker" else "peer to peer"
    header = (
        f"{summary['agents']} agents {how} on {summary['transport']}, "
        f"{summary['size']}-byte messages, {summary['duration']:g} s of traffic"
    )
    footer = (
        f"{summary['messages']:,} direct messages at {summary['msg_per_s']:,.0f} msg/s, "
        f"{summary['published']:,} publications ({summary['topic_received']:,} deliveries to "
        "subscribers), "
        f"{summary['requests']:,} requests (p50 {_cell(summary['p50_ms'])} ms, "
        f"p99 {_cell(summary['p99_ms'])} ms), {counted(summary['rekeys'], 'rekey')}, "
        f"{summary['rejected']} rejects{_reasons(summary)}, {summary['duplicates']} duplicates, "
        f"lost = {summary['lost']}"
    )
    planned = summary.get("planned", 0)
    if planned and summary["messages"] < _KEPT_UP * planned:
        footer += (
            f"\nThe agents sent {summary['messages']:,} of the {planned:,} messages planned "
            f"({summary['messages'] / planned:.0%}; --agents x --rate x --duration): this host "
            "could not keep up, so these figures are those of an overloaded host. Fewer "
            "agents or a lower --rate measure the software rather than the overload."
        )
    return "\n".join([header, "", *lines, "", footer])
