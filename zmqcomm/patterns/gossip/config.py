""":class:`GossipConfig`: the knobs of a :class:`~zmqcomm.patterns.gossip.driver.GossipAgent`.

Checked when built, so a bad setting raises :class:`~zmqcomm.errors.UsageError` before any
socket is bound: frames must fit the codec's limits with room for one maximal payload, sizes
and counts must be positive, and durations finite (``check_seconds`` refuses NaN and
infinities, which plain comparisons let through).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zmqcomm.checks import check_seconds
from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip.codec import DEFAULT_CODEC_LIMITS, CodecLimits
from zmqcomm.patterns.gossip.scoring import ScoreParams
from zmqcomm.transport.sockets import DEFAULT_SOCKET_OPTIONS, SocketOptions


@dataclass(frozen=True)
class GossipConfig:
    """Knobs of a :class:`~zmqcomm.patterns.gossip.driver.GossipAgent` (the machine's own are
    passed through)."""

    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat: float = 0.5
    history: int = 5
    gossip_windows: int = 3
    #: Any other :class:`GossipNode` keyword (seen_ttl, max_hops, iwant_timeout, ...).
    machine_options: Mapping[str, Any] = field(default_factory=dict)
    #: Each peer's outgoing queue, in bytes of encoded items.
    queue_bytes: int = 4 * 1024 * 1024
    #: Largest frame we build (several items each); must fit the codec's max_frame_bytes.
    frame_bytes: int = 256 * 1024
    frame_items: int = 1024
    #: How long frames for an unreachable peer (EHOSTUNREACH) are kept before being dropped.
    unreachable_grace: float = 2.0
    #: How soon to retry a peer that refused a frame (EAGAIN or EHOSTUNREACH).
    retry_interval: float = 0.005
    #: Most frames read from one socket per step, so one busy peer cannot starve the timer.
    max_burst: int = 2000
    #: How many recent deliveries :attr:`GossipAgent.deliveries` keeps.
    keep_deliveries: int = 10_000
    scores: ScoreParams = field(default_factory=ScoreParams)
    limits: CodecLimits = DEFAULT_CODEC_LIMITS
    sockets: SocketOptions = DEFAULT_SOCKET_OPTIONS

    def __post_init__(self) -> None:
        if self.frame_bytes + 16 > self.limits.max_frame_bytes:
            raise UsageError("frame_bytes must leave room below limits.max_frame_bytes")
        if self.limits.max_payload_bytes + 256 > self.limits.max_frame_bytes:
            raise UsageError("limits.max_frame_bytes must hold one maximal payload")
        if min(self.queue_bytes, self.frame_bytes, self.frame_items, self.max_burst) < 1:
            raise UsageError("queue_bytes, frame_bytes, frame_items and max_burst must be >= 1")
        # check_seconds refuses NaN and infinities, which plain comparisons let through.
        check_seconds(self.heartbeat, "GossipConfig.heartbeat", allow_zero=False)
        check_seconds(self.unreachable_grace, "GossipConfig.unreachable_grace")
        check_seconds(self.retry_interval, "GossipConfig.retry_interval", allow_zero=False)
