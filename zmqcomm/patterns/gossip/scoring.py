"""Per-peer receive rate limits and a score that graylists peers who misbehave.

Pure: time comes in as ``now``. The driver reports what each peer's messages turned out to be:

- :meth:`PeerScores.admit` before decoding anything expensive: a graylisted peer is dropped at
  once (``graylisted``); a peer over its token bucket is dropped (``rate_limited``) and loses
  ``flood_penalty`` per message over the rate;
- :meth:`invalid` for a bad signature or a malformed frame: ``invalid_penalty`` each;
- :meth:`duplicate` for a copy already seen: free within a second token bucket (a mesh peer
  normally sends some duplicates), ``duplicate_penalty`` beyond it (``excess_duplicates``);
- :meth:`broken_promises` for IWants a peer left unanswered after its IHave advertised the
  ids: ``broken_promise_penalty`` each (small: an honest peer breaks a few when its queue to
  us is full; one that advertises ids it does not have breaks them by the hundred);
- :meth:`useful` for a first delivery: ``useful_reward`` (capped at ``max_score``).

Scores decay towards zero (half-life ``decay_half_life``), so old sins and old merits fade.
When a score falls below ``graylist_below`` the peer is graylisted for ``graylist_seconds``:
the call returns a :class:`Prune` record and the driver removes the peer from the gossip mesh
and drops its frames unread; :meth:`on_timer` returns :class:`Restore` when the time is up
(the score restarts at zero).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from zmqcomm.access import TokenBucket
from zmqcomm.checks import check_seconds
from zmqcomm.errors import UsageError

RATE_LIMITED = "rate_limited"
GRAYLISTED = "graylisted"
EXCESS_DUPLICATES = "excess_duplicates"
BROKEN_PROMISES = "broken_promises"


@dataclass(frozen=True, slots=True)
class ScoreParams:
    """Knobs of :class:`PeerScores`; rates in messages per second."""

    rate: float = 20_000.0
    burst: float = 40_000.0
    duplicate_rate: float = 20_000.0
    duplicate_burst: float = 40_000.0
    invalid_penalty: float = 10.0
    flood_penalty: float = 0.5
    duplicate_penalty: float = 0.1
    broken_promise_penalty: float = 0.1
    useful_reward: float = 0.05
    max_score: float = 20.0
    graylist_below: float = -50.0
    graylist_seconds: float = 60.0
    decay_half_life: float = 30.0
    max_peers: int = 10_000

    def __post_init__(self) -> None:
        check_seconds(self.graylist_seconds, "ScoreParams.graylist_seconds", allow_zero=False)
        check_seconds(self.decay_half_life, "ScoreParams.decay_half_life", allow_zero=False)
        numbers = (
            self.rate,
            self.burst,
            self.duplicate_rate,
            self.duplicate_burst,
            self.invalid_penalty,
            self.flood_penalty,
            self.duplicate_penalty,
            self.broken_promise_penalty,
            self.useful_reward,
            self.max_score,
            self.graylist_below,
        )
        if not all(math.isfinite(n) for n in numbers):
            raise UsageError("score rates, bursts, penalties, rewards and bounds must be finite")
        if min(self.rate, self.burst, self.duplicate_rate, self.duplicate_burst) <= 0:
            raise UsageError("score rates and bursts must be positive")
        if (
            min(
                self.invalid_penalty,
                self.flood_penalty,
                self.duplicate_penalty,
                self.broken_promise_penalty,
            )
            < 0
        ):
            raise UsageError("score penalties are given as non-negative amounts")
        if self.graylist_below >= 0 or self.graylist_seconds <= 0 or self.decay_half_life <= 0:
            raise UsageError(
                "graylist_below must be negative; graylist_seconds and decay_half_life positive"
            )
        if self.max_peers < 1:
            raise UsageError("max_peers must be at least 1")


@dataclass(frozen=True, slots=True)
class Prune:
    """Output: ``peer`` fell below the threshold; drop it from the mesh until ``until``."""

    peer: Hashable
    until: float


@dataclass(frozen=True, slots=True)
class Restore:
    """Output: ``peer``'s graylisting is over."""

    peer: Hashable


@dataclass(slots=True)
class _Peer:
    bucket: TokenBucket
    duplicates: TokenBucket
    score: float = 0.0
    stamp: float = 0.0
    graylisted_until: float | None = None
    counters: Counter[str] = field(default_factory=Counter)


class PeerScores:
    """Scores and rate limits for every peer that sent us something (bounded memory)."""

    def __init__(self, params: ScoreParams | None = None) -> None:
        self.params = params or ScoreParams()
        self._peers: dict[Hashable, _Peer] = {}
        self.counters: Counter[str] = Counter()
        self._graylisted: dict[Hashable, float] = {}  # peer -> until: keeps timers O(graylisted)
        self._decay = math.log(2) / self.params.decay_half_life

    def _peer(self, peer: Hashable, now: float) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= self.params.max_peers:
                self._forget_one()
            p = self.params
            state = _Peer(
                TokenBucket(p.rate, p.burst, now=now),
                TokenBucket(p.duplicate_rate, p.duplicate_burst, now=now),
                stamp=now,
            )
            self._peers[peer] = state
        else:
            self._age(state, now)
        return state

    def _forget_one(self) -> None:
        # Evict the peer with the best score that is not graylisted: forgetting a bad peer
        # would wipe its record.
        candidates = [k for k, s in self._peers.items() if s.graylisted_until is None]
        victim = max(candidates or self._peers, key=lambda k: self._peers[k].score)
        del self._peers[victim]
        self._graylisted.pop(victim, None)

    def _age(self, state: _Peer, now: float) -> None:
        elapsed = now - state.stamp
        if elapsed > 0:
            state.score *= math.exp(-self._decay * elapsed)
            state.stamp = now

    def _adjust(self, peer: Hashable, state: _Peer, delta: float, now: float) -> list[Prune]:
        state.score = min(self.params.max_score, state.score + delta)
        if state.graylisted_until is None and state.score < self.params.graylist_below:
            until = now + self.params.graylist_seconds
            state.graylisted_until = until
            self._graylisted[peer] = until
            self.counters["graylisted_peers"] += 1
            return [Prune(peer, until)]
        return []

    def _count(self, state: _Peer, reason: str, amount: int = 1) -> None:
        state.counters[reason] += amount
        self.counters[reason] += amount

    # -- inputs ------------------------------------------------------------------------------

    def admit(self, peer: Hashable, *, now: float, cost: int = 1) -> tuple[bool, list[Prune]]:
        """May ``cost`` messages from ``peer`` be processed? Cheap: call before any crypto."""
        state = self._peer(peer, now)
        if state.graylisted_until is not None:
            self._count(state, GRAYLISTED, cost)
            return False, []
        if state.bucket.take(now=now, cost=cost):
            return True, []
        self._count(state, RATE_LIMITED, cost)
        return False, self._adjust(peer, state, -self.params.flood_penalty * cost, now)

    def invalid(self, peer: Hashable, reason: str, *, now: float, count: int = 1) -> list[Prune]:
        """``count`` messages from ``peer`` were invalid (bad signature, malformed...)."""
        state = self._peer(peer, now)
        self._count(state, reason, count)
        return self._adjust(peer, state, -self.params.invalid_penalty * count, now)

    def duplicate(self, peer: Hashable, *, now: float, count: int = 1) -> list[Prune]:
        state = self._peer(peer, now)
        excess = sum(1 for _ in range(count) if not state.duplicates.take(now=now))
        if not excess:
            return []
        self._count(state, EXCESS_DUPLICATES, excess)
        return self._adjust(peer, state, -self.params.duplicate_penalty * excess, now)

    def broken_promises(self, peer: Hashable, *, now: float, count: int = 1) -> list[Prune]:
        """``peer`` advertised ``count`` ids by IHave and did not send them when asked."""
        state = self._peer(peer, now)
        self._count(state, BROKEN_PROMISES, count)
        return self._adjust(peer, state, -self.params.broken_promise_penalty * count, now)

    def useful(self, peer: Hashable, *, now: float, count: int = 1) -> None:
        state = self._peer(peer, now)
        self._adjust(peer, state, self.params.useful_reward * count, now)

    # -- queries and time --------------------------------------------------------------------

    def score(self, peer: Hashable, *, now: float) -> float:
        state = self._peers.get(peer)
        if state is None:
            return 0.0
        self._age(state, now)
        return state.score

    def is_graylisted(self, peer: Hashable) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.graylisted_until is not None

    def peer_counters(self, peer: Hashable) -> dict[str, int]:
        state = self._peers.get(peer)
        return {} if state is None else dict(state.counters)

    def next_deadline(self) -> float | None:
        return min(self._graylisted.values(), default=None)

    def on_timer(self, *, now: float) -> list[Restore]:
        restored: list[Restore] = []
        for peer, until in list(self._graylisted.items()):
            state = self._peers.get(peer)
            if until <= now and state is not None:
                del self._graylisted[peer]
                state.graylisted_until = None
                state.score = 0.0
                state.stamp = now
                self.counters["restored_peers"] += 1
                restored.append(Restore(peer))
        return restored

    def snapshot(self, *, now: float) -> dict[str, float]:
        """Every known peer's current score (for statistics)."""
        return {str(peer): round(self.score(peer, now=now), 3) for peer in self._peers}
