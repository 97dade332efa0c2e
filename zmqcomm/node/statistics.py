"""What a node reports in ``statistics()``: the counts of its links' session tables (those
of links closed before it included), its own counters, and what its tunnels hold and
gave up."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from zmqcomm.crypto.channel_table import ChannelTable
from zmqcomm.node.hop_outbox import HopOutbox
from zmqcomm.node.topics import Topics
from zmqcomm.node.tunnel import Tunnels


def table_counts(table: ChannelTable) -> Counter[str]:
    """What one link's table counted: kept once the link is closed, so no total goes down."""
    counts: Counter[str] = Counter(
        handshakes=table.handshakes,
        rekeys=table.rekeys,
        bytes_plain=table.codec.bytes_plain,
        bytes_encoded=table.codec.bytes_encoded,
    )
    counts.update({f"rejected:{k}": v for k, v in table.rejected.items()})
    return counts


def gather_statistics(
    *,
    agent_id: str,
    tables: Iterable[ChannelTable],
    counters: Mapping[str, int],
    retired: Mapping[str, int],
    tunnels: Tunnels | None,
    topics: Topics | None,
    outbox: HopOutbox | None = None,
) -> dict[str, Any]:
    """The statistics dictionary (``counters`` holds ``rejected:<reason>`` entries too)."""
    tables = list(tables)
    rejected: Counter[str] = Counter()
    for table in tables:
        rejected.update(table.rejected)
    for key, value in (*counters.items(), *retired.items()):
        if key.startswith("rejected:"):
            rejected[key.split(":", 1)[1]] += value
    codecs = {id(table.codec): table.codec for table in tables}.values()
    return {
        "agent_id": agent_id,
        "bytes_before_compression": sum(c.bytes_plain for c in codecs)
        + retired.get("bytes_plain", 0),
        "bytes_after_compression": sum(c.bytes_encoded for c in codecs)
        + retired.get("bytes_encoded", 0),
        "sent": counters.get("sent", 0),
        "received": counters.get("received", 0),
        "queued": tunnels.queued() if tunnels is not None else 0,
        "waiting_for_broker": len(outbox) if outbox is not None else 0,
        "mailed": tunnels.mailroom.sealed if tunnels is not None else 0,
        "mail_stored": tunnels.mailroom.stored if tunnels is not None else 0,
        # Mail acknowledged but not opened yet (its sender not trusted yet, say), and its
        # bytes; held_total: held since the start; released: opened and delivered later.
        "mail_held": len(tunnels.mailroom.held) if tunnels is not None else 0,
        "mail_held_bytes": tunnels.mailroom.held.bytes if tunnels is not None else 0,
        "mail_held_total": tunnels.mailroom.held.kept if tunnels is not None else 0,
        "mail_released": tunnels.mailroom.held.released if tunnels is not None else 0,
        # Held pieces put back from the mail store at start, and mail dropped because its id
        # was seen before (a broker handing it over again, or replaying it).
        "mail_restored": tunnels.mailroom.held.restored if tunnels is not None else 0,
        "mail_repeats": tunnels.mailroom.repeats if tunnels is not None else 0,
        "resent": tunnels.resent if tunnels is not None else 0,
        "last_error": tunnels.last_error if tunnels is not None else None,
        "refused_by_broker": dict(tunnels.refused_by_broker) if tunnels is not None else {},
        "dropped": _dropped(tunnels, topics, outbox),
        "handshakes": sum(table.handshakes for table in tables) + retired.get("handshakes", 0),
        "rekeys": sum(table.rekeys for table in tables) + retired.get("rekeys", 0),
        "rejected": dict(rejected),
    }


def _dropped(
    tunnels: Tunnels | None, topics: Topics | None, outbox: HopOutbox | None
) -> dict[str, int]:
    """Messages and publications given up, by reason (queue_full, key_refused, ...)."""
    dropped: Counter[str] = Counter()
    if outbox is not None:
        dropped.update(outbox.dropped)
    if tunnels is not None:
        dropped.update(tunnels.dropped)
    if topics is not None:
        dropped.update(topics.dropped)
    return dict(dropped)
