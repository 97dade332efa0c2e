"""The UDP driver of SWIM membership: one unicast socket, a :class:`Membership` machine.

Binds ``127.0.0.1`` on an ephemeral port by default and never broadcasts: it sends only to
the seed addresses it was given and to the addresses in records that the machine verified
(signed by the member, and trusted when a trust store is given). An address must be an IP
literal: a peer's record never makes this node resolve a name.

Bad datagrams are dropped and counted by reason in :attr:`MembershipService.dropped` (the
codec's reasons plus the machine's); send and receive errors are counted by exception type
in :attr:`MembershipService.errors` and the service goes on (no errno is hard-coded).
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence

from zmqcomm.actions import Send
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.discovery.beacon import TrustedKey, TrustLookup
from zmqcomm.patterns.discovery.membership import Membership, Output
from zmqcomm.patterns.discovery.membership_addresses import in_scope, scope_of
from zmqcomm.patterns.discovery.membership_config import MembershipConfig
from zmqcomm.patterns.discovery.membership_wire import (
    MAX_DATAGRAM,
    Address,
    decode_packet,
    encode_packet,
)
from zmqcomm.patterns.discovery.peers import PeerEvent

DEFAULT_HOST = "127.0.0.1"
#: memberlist's default port; our magic differs, so the two never mix.
DEFAULT_PORT = 7946
_MAX_READS = 1000  # per step: a flood cannot keep the loop from its timers


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """``"host:port"`` (or ``"[v6]:port"``) with an IP literal host, else :class:`UsageError`."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise UsageError(f"give an address as HOST:PORT, got {text!r}")
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError as exc:
        raise UsageError(
            f"give an address as IP:PORT (an IP literal, not a name), got {text!r}"
        ) from exc
    if not 0 <= port <= 0xFFFF:
        raise UsageError(f"a port is 0..65535, got {port}")
    return (host, port)


def _check_host(host: object, what: str) -> str:
    if not isinstance(host, str):
        raise UsageError(f"{what} must be an IP literal string, got {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise UsageError(f"{what} must be an IP literal, not a name; got {host!r}") from exc
    return host


def _check_address(address: object, what: str, *, allow_port_zero: bool) -> Address:
    """An ``(ip, port)`` pair from the caller, else :class:`UsageError` (never a raw
    TypeError or OverflowError from the socket layer)."""
    if not isinstance(address, tuple | list) or len(address) != 2:
        raise UsageError(f"{what} must be an (IP, port) pair, got {address!r}")
    host, port = address
    _check_host(host, f"the host of {what}")
    low = 0 if allow_port_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 0xFFFF:
        raise UsageError(f"the port of {what} must be an int, {low} to 65535; got {port!r}")
    return (host, port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class WallClockTrust:
    """A trust lookup that ignores the caller's ``now`` and asks ``trust`` at wall-clock time.

    Trust entries expire at epoch times, while the machine runs on the service's monotonic
    clock: handing that clock to the store would keep an expired peer trusted (or refuse a
    valid one).
    """

    def __init__(self, trust: TrustLookup, wall_clock: Callable[[], float]) -> None:
        self.trust = trust
        self.wall_clock = wall_clock

    def lookup(self, agent_id: str, *, now: float) -> TrustedKey:
        return self.trust.lookup(agent_id, now=self.wall_clock())


class MembershipService:
    """SWIM membership over UDP unicast for ``identity``; :meth:`step` drives it."""

    def __init__(
        self,
        identity: Identity,
        *,
        listen: Address = (DEFAULT_HOST, 0),
        advertise: str | None = None,
        seeds: Sequence[Address] = (),
        ports: Sequence[int] = (),
        trust: TrustLookup | None = None,
        config: MembershipConfig | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Everything is checked before the socket exists: a bad argument leaks nothing.
        host, port = _check_address(listen, "listen", allow_port_zero=True)
        advertised = host if advertise is None else _check_host(advertise, "advertise")
        if ipaddress.ip_address(advertised).is_unspecified:
            raise UsageError(
                f"listening on {host} needs advertise= (the IP others reach this node at)"
            )
        given: object = seeds  # typed as pairs, but a caller may pass "127.0.0.1:7946"
        if isinstance(given, str | bytes):
            raise UsageError(f"seeds must be a list of (IP, port) pairs, got {given!r}")
        checked_seeds = [_check_address(s, "a seed", allow_port_zero=False) for s in seeds]
        scope = scope_of(advertised)
        for seed_host, seed_port in checked_seeds:
            if not in_scope(seed_host, scope):
                raise UsageError(
                    f"seed {seed_host}:{seed_port} is out of reach from {advertised} "
                    "(another IP family, or loopback on one side only)"
                )
        self.clock = clock
        self.wall_clock = wall_clock
        self.wire_dropped: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.received = 0
        self._sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            try:
                self._sock.bind((host, port))
            except OSError as exc:
                raise UsageError(f"cannot listen for membership on {host}:{port}: {exc}") from exc
            self._sock.setblocking(False)
            self.address: Address = (host, self._sock.getsockname()[1])
            self.trust = trust
            self.machine = Membership.from_identity(
                identity,
                address=(advertised, self.address[1]),
                rng=rng if rng is not None else random.Random(),
                ports=ports,
                seeds=checked_seeds,
                trust=None if trust is None else WallClockTrust(trust, wall_clock),
                config=config,
            )
        except BaseException:
            self._sock.close()
            raise

    @property
    def port(self) -> int:
        return self.address[1]

    def step(self, timeout: float = 0.0) -> list[PeerEvent]:
        """Run due timers, read what arrives (waiting up to ``timeout`` s), send replies."""
        events = self._perform(self.machine.on_timer(now=self.clock()))
        deadline = self.machine.next_deadline()
        wait = timeout if deadline is None else min(timeout, deadline - self.clock())
        try:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, wait))
        except (OSError, ValueError):  # ValueError: closed socket
            self.errors["select"] += 1
            ready = []
        if ready:
            events += self._read()
        if (deadline := self.machine.next_deadline()) is not None and self.clock() >= deadline:
            events += self._perform(self.machine.on_timer(now=self.clock()))
        return events

    def leave(self) -> list[PeerEvent]:
        """Tell a few members we leave (the machine stops); call :meth:`close` after."""
        return self._perform(self.machine.leave(now=self.clock()))

    def _read(self) -> list[PeerEvent]:
        events: list[PeerEvent] = []
        for _ in range(_MAX_READS):
            try:
                datagram, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. an ICMP error reported on the socket: go on
                self.errors[type(exc).__name__] += 1
                break
            self.received += 1
            try:
                packet = decode_packet(datagram)
            except ZmqCommError as exc:
                self.wire_dropped[exc.reason] += 1
                continue
            events += self._perform(self.machine.on_message(source[:2], packet, now=self.clock()))
        return events

    @property
    def dropped(self) -> Counter[str]:
        """Dropped datagrams by reason: the codec's and the machine's together."""
        return self.wire_dropped + self.machine.dropped

    def _perform(self, actions: list[Output]) -> list[PeerEvent]:
        events: list[PeerEvent] = []
        for action in actions:
            if isinstance(action, PeerEvent):
                events.append(action)
            elif isinstance(action, Send):
                self._send(action)
        return events

    def _send(self, action: Send) -> None:
        to = action.to
        if not isinstance(to, tuple) or len(to) != 2:
            self.errors["bad_address"] += 1
            return
        host, port = to
        try:
            family = _family(str(host))
        except ValueError:
            self.errors["bad_address"] += 1
            return
        if family != self._sock.family:
            self.errors["address_family"] += 1
            return
        try:
            datagram = encode_packet(action.message)
        except ZmqCommError:
            self.errors["encode"] += 1
            return
        try:
            self._sock.sendto(datagram, (host, port))
            self.sent += 1
        except OSError as exc:  # unreachable, buffer full...: SWIM tolerates lost datagrams
            self.errors[type(exc).__name__] += 1

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> MembershipService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
