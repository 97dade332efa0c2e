"""Access control: what each role may do, and how fast. Pure: time comes in as ``now``.

A :class:`Policy` maps roles (from the trust store) to the message types they may send and the
topics they may publish and subscribe to. Anything not granted is denied. Decisions are cached
per role set, so the check that runs before any expensive work costs a dict lookup.

:class:`RateLimiter` keeps one token bucket per key (an agent id, or a source address before
any handshake) in bounded memory.

Policy file (TOML)::

    [limits]                       # optional; per identity unless a role overrides it
    rate = 1000.0                  # messages per second, sustained
    burst = 2000                   # messages allowed at once

    [unauthenticated]              # optional; handshakes before authentication, per
    rate = 2.0                     # connection (default 2 per second, burst 8), on the
    burst = 8                      # routers of a broker or node made with this policy

    [roles.worker]
    send = ["DATA", "REQUEST", "REPLY"]      # MessageType names, or "*"
    publish = ["telemetry/*"]                # exact topics, or prefixes ending in "*"
    subscribe = ["tasks/*", "status"]
    rate = 500.0
    burst = 1000

An identity with several roles may do what any of them grants, at the rate and burst of the
role with the highest rate.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmqcomm.errors import NotPermittedError, UsageError
from zmqcomm.wire.message_types import MessageType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

WILDCARD = "*"


# -- token buckets -----------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        # Written so NaN fails (a NaN burst refused every token, a NaN rate lifted the
        # limit); infinity is allowed and means no limit.
        if not (rate > 0 and burst >= 1):
            raise UsageError(f"a rate limit needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, *, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; a clock going backwards adds nothing."""
        if self.rate == math.inf:
            return True  # no limit, even for calls at one instant (a fake or coarse clock)
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        elif elapsed < 0:
            # The clock was stepped back (NTP on a wall clock): no refill for the step, but
            # count from the new time, or nothing would refill until it passed the old one.
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def full_at(self) -> float:
        """When the bucket will be full again (for evicting idle buckets)."""
        if self._tokens >= self.burst:  # also when both are infinite (inf - inf is NaN)
            return self._stamp
        return self._stamp + (self.burst - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per key, at most ``max_keys`` of them (least recently used evicted).

    An evicted key comes back with a full bucket. That is the price of bounded memory under a
    flood of distinct keys, and why the bound should exceed the number of legitimate peers.
    """

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise UsageError(f"max_keys must be at least 1, got {max_keys}")
        TokenBucket(rate, burst, now=0.0)  # validates the numbers once, up front
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()
        self.denied = 0

    def allow(
        self,
        key: object,
        *,
        now: float,
        cost: float = 1.0,
        rate: float | None = None,
        burst: float | None = None,
    ) -> bool:
        """Spend from ``key``'s bucket; ``rate``/``burst`` override the defaults for a new key."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = TokenBucket(rate or self.rate, burst or self.burst, now=now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now=now, cost=cost):
            return True
        self.denied += 1
        return False

    def forget(self, key: object) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


# -- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleGrant:
    """What one role may do."""

    send: frozenset[int] = frozenset()
    send_any: bool = False
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    rate: float | None = None
    burst: float | None = None


@dataclass(frozen=True)
class Decision:
    """The merged grants of a set of roles (a peer may hold several)."""

    send: frozenset[int]
    send_any: bool
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    rate: float
    burst: float


def topic_matches(pattern: str, topic: str) -> bool:
    """Exact match, or a prefix match when the pattern ends in ``*`` (``*`` alone: anything)."""
    if pattern.endswith(WILDCARD):
        return topic.startswith(pattern[:-1])
    return pattern == topic


@dataclass
class Policy:
    """Role-based permissions, default deny."""

    roles: Mapping[str, RoleGrant] = field(default_factory=dict)
    rate: float = 1000.0
    burst: float = 2000.0
    #: The per-connection handshake bucket (``HandshakeLimits.per_route_rate/_burst``);
    #: None keeps that default.
    unauthenticated_rate: float | None = None
    unauthenticated_burst: float | None = None
    _cache: dict[frozenset[str], Decision] = field(default_factory=dict, repr=False)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a TOML policy file; a bad file raises :class:`UsageError` naming what to fix."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read policy file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"policy file {path} is not UTF-8 text: {exc.reason}") from exc
        return cls.from_toml(text, source=str(path))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{source} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        _only_keys(data, {"limits", "unauthenticated", "roles"}, source)
        limits = _table(data, "limits", source)
        _only_keys(limits, {"rate", "burst"}, f"{source} [limits]")
        unauth = _table(data, "unauthenticated", source)
        _only_keys(unauth, {"rate", "burst"}, f"{source} [unauthenticated]")
        roles_table = _table(data, "roles", source)
        roles = {
            name: _parse_role(grant, f"{source} [roles.{name}]")
            for name, grant in roles_table.items()
        }
        return cls(
            roles=roles,
            rate=_number(limits, "rate", 1000.0, f"{source} [limits]"),
            burst=_number(limits, "burst", 2000.0, f"{source} [limits]"),
            unauthenticated_rate=_optional_number(unauth, "rate", f"{source} [unauthenticated]"),
            unauthenticated_burst=_optional_number(unauth, "burst", f"{source} [unauthenticated]"),
        )

    # -- decisions -------------------------------------------------------------------------

    def decide(self, roles: Iterable[str]) -> Decision:
        """The merged grants of ``roles``; unknown roles grant nothing."""
        key = frozenset(roles)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        grants = [self.roles[name] for name in sorted(key) if name in self.roles]
        # Several roles: the limit of the most generous one, rate and burst together (the
        # best of each taken apart could give a pair no role grants).
        limited = [(g.rate, g.burst) for g in grants if g.rate is not None]
        if limited:
            rate, best_burst = max(limited, key=lambda pair: (pair[0], pair[1] or 0))
            burst = best_burst if best_burst is not None else self.burst
        else:
            rate = self.rate
            burst = max((g.burst for g in grants if g.burst is not None), default=self.burst)
        decision = Decision(
            send=frozenset().union(*(g.send for g in grants)),
            send_any=any(g.send_any for g in grants),
            publish=tuple(p for g in grants for p in g.publish),
            subscribe=tuple(p for g in grants for p in g.subscribe),
            rate=rate,
            burst=burst,
        )
        self._cache[key] = decision
        return decision

    def may_send(self, roles: Iterable[str], msg_type: int) -> bool:
        decision = self.decide(roles)
        return decision.send_any or msg_type in decision.send

    def may_publish(self, roles: Iterable[str], topic: str) -> bool:
        return any(topic_matches(p, topic) for p in self.decide(roles).publish)

    def may_subscribe(self, roles: Iterable[str], topic: str) -> bool:
        return any(topic_matches(p, topic) for p in self.decide(roles).subscribe)

    def check_send(self, peer: str, roles: Iterable[str], msg_type: int) -> None:
        if not self.may_send(roles, msg_type):
            raise NotPermittedError(f"{peer} may not send {_type_name(msg_type)} messages")

    def check_publish(self, peer: str, roles: Iterable[str], topic: str) -> None:
        if not self.may_publish(roles, topic):
            raise NotPermittedError(f"{peer} may not publish to topic {topic!r}")

    def check_subscribe(self, peer: str, roles: Iterable[str], topic: str) -> None:
        if not self.may_subscribe(roles, topic):
            raise NotPermittedError(f"{peer} may not subscribe to topic {topic!r}")


def _type_name(msg_type: int) -> str:
    try:
        return MessageType(msg_type).name
    except ValueError:
        return f"type-{msg_type}"


# -- parsing helpers ---------------------------------------------------------------------------


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(
            f"{where}: unknown setting {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
        )


def _table(data: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"{where}: [{name}] must be a table")
    return value


def _number(table: Mapping[str, Any], name: str, default: float, where: str) -> float:
    """A rate (> 0) or a burst (>= 1), as TokenBucket takes them: refused here, by name,
    rather than on the first message (TOML writes NaN as ``nan``; ``not value > 0`` catches
    it where ``value <= 0`` would not)."""
    value = table.get(name, default)
    burst = name.endswith("burst")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 1 if burst else value > 0)
    ):
        wanted = "a number >= 1" if burst else "a positive number"
        raise UsageError(f"{where}: {name} must be {wanted}, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # TOML takes integers of any size
        raise UsageError(f"{where}: {name} is too large, got {str(value)[:20]}...") from None


def _optional_number(table: Mapping[str, Any], name: str, where: str) -> float | None:
    return _number(table, name, 1.0, where) if name in table else None


def _strings(table: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{where}: {name} must be a list of strings")
    for item in value:
        if WILDCARD in item[:-1]:
            raise UsageError(f"{where}: {name} pattern {item!r} may only end in '*'")
    return tuple(value)


def _parse_role(grant: Any, where: str) -> RoleGrant:
    if not isinstance(grant, dict):
        raise UsageError(f"{where} must be a table")
    _only_keys(grant, {"send", "publish", "subscribe", "rate", "burst"}, where)
    names = _strings(grant, "send", where)
    types: set[int] = set()
    for name in names:
        if name == WILDCARD:
            continue
        try:
            types.add(int(MessageType[name.upper()]))
        except KeyError:
            known = ", ".join(t.name for t in MessageType)
            raise UsageError(f"{where}: unknown message type {name!r}; use {known} or *") from None
    return RoleGrant(
        send=frozenset(types),
        send_any=WILDCARD in names,
        publish=_strings(grant, "publish", where),
        subscribe=_strings(grant, "subscribe", where),
        rate=_number(grant, "rate", 1.0, where) if "rate" in grant else None,
        burst=_number(grant, "burst", 1.0, where) if "burst" in grant else None,
    )
