"""The UDP driver of beacon discovery: send our beacon, read others', feed the peer table.

Loopback only by default: the beacon goes to 127.255.255.255, and every process on the host
that listens on the same port (SO_REUSEADDR/SO_REUSEPORT, bound to that broadcast address)
hears it; nothing leaves the machine. Other interfaces are used only when named, with their
broadcast address from netifaces. One socket per interface, bound to that interface's
broadcast address, so a node never hears beacons from interfaces it was not asked to use.

Bad datagrams are dropped and counted by reason in ``dropped``; beacons the peer table
refuses (``stale``, ``not_fresh``, ``table_full``) are counted by the table. With an audit
log, every drop also writes a ``reject`` line (at most one per peer and reason per second).
Sending or receiving errors (an interface
that went down, a buffer full) are counted and retried on the next interval: the service
keeps beaconing and never hard-codes an errno.
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import netifaces

from zmqcomm.checks import check_seconds
from zmqcomm.crypto.audit import REJECT, BaseAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError, ZmqCommError
from zmqcomm.patterns.discovery.beacon import (
    MAX_BEACON_LEN,
    MAX_SEQUENCE,
    TrustLookup,
    decode_beacon,
    encode_beacon,
)
from zmqcomm.patterns.discovery.peers import PeerEvent, PeerTable

#: Where the sender id sits in a beacon (docs/protocol.md section 12).
_SENDER = slice(5, 21)
DEFAULT_PORT = 5670  # Zyre's default beacon port; our magic differs, so the two never mix
DEFAULT_INTERVAL = 1.0
LOOPBACK = "lo"
_AUDIT_EVERY = 1.0  # seconds between two audit lines of one peer and reason
#: Audit lines per second at most, whatever the keys: spoofed sources and made-up agent ids
#: are unlimited, the log is not. What is not written is still counted.
_AUDIT_PER_SECOND = 50
_AUDIT_KEYS = 10_000


def broadcast_address(interface: str) -> str:
    """The IPv4 broadcast address of ``interface`` (UsageError naming the known ones)."""
    try:
        addresses = netifaces.ifaddresses(interface).get(netifaces.AF_INET, [])
    except ValueError as exc:
        known = ", ".join(netifaces.interfaces())
        raise UsageError(f"no network interface {interface!r}; known: {known}") from exc
    for entry in addresses:
        if entry.get("broadcast"):
            return str(entry["broadcast"])
        if entry.get("addr") and entry.get("netmask"):
            network = ipaddress.IPv4Network(f"{entry['addr']}/{entry['netmask']}", strict=False)
            return str(network.broadcast_address)
    raise UsageError(f"interface {interface!r} has no IPv4 address to broadcast on")


class BeaconService:
    """Beacons ``identity`` with ``ports`` every ``interval`` s and tracks who else does."""

    def __init__(
        self,
        identity: Identity,
        *,
        ports: Sequence[int] = (),
        port: int = DEFAULT_PORT,
        interfaces: Sequence[str] = (LOOPBACK,),
        interval: float = DEFAULT_INTERVAL,
        trust: TrustLookup | None = None,
        table: PeerTable | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        audit: BaseAuditLog | None = None,
    ) -> None:
        # A finite number of seconds in (0, 60]: not "1", not True, not NaN.
        interval = check_seconds(interval, "the beacon interval", allow_zero=False, maximum=60)
        given: object = interfaces
        if isinstance(given, str | bytes) or not isinstance(given, list | tuple):
            # "eth0" would otherwise be read as the interfaces "e", "t", "h", "0".
            raise UsageError(f"interfaces is a list of names, e.g. ['eth0'], got {given!r}")
        if not interfaces:
            raise UsageError("name at least one interface (the default is loopback)")
        for name in interfaces:
            if not isinstance(name, str) or not name:
                raise UsageError(f"an interface is a name such as 'lo', got {name!r}")
        self.identity = identity
        encode_beacon(identity, sequence=0, ports=ports)  # checks the ports now
        self.ports = tuple(ports)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise UsageError(f"the beacon port must be a UDP port, 1 to 65535; got {port!r}")
        self.port = port
        self.interval = interval
        self.trust = trust
        self.table = table if table is not None else PeerTable()
        self.clock = clock
        self.wall_clock = wall_clock
        self.audit = audit
        self._audited: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._audit_second = (-1.0, 0)  # (the second, lines written in it)
        self.dropped: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sent = 0
        #: Random, new with every BeaconService: receivers tell a restart from a replay by it.
        self.incarnation = secrets.randbits(64)
        self._sequence = 0
        self._next_beacon = 0.0
        self._sockets: list[tuple[socket.socket, str]] = []
        try:
            for interface in dict.fromkeys(interfaces):
                target = broadcast_address(interface)
                self._sockets.append((self._open(target), target))
        except BaseException:
            self.close()
            raise

    def _open(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((address, self.port))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen for beacons on {address}:{self.port}: {exc}") from exc
        sock.setblocking(False)
        return sock

    def step(self, timeout: float = 0.0) -> list[PeerEvent]:
        """Beacon if due, read what arrived (waiting up to ``timeout`` s), run the timers."""
        if self.clock() >= self._next_beacon:
            self._beacon()
        readable = [sock for sock, _ in self._sockets]
        wait = max(0.0, min(timeout, self._next_beacon - self.clock()))
        try:
            ready, _, _ = select.select(readable, [], [], wait)
        except OSError:
            self.errors["select"] += 1
            ready = []
        events: list[PeerEvent] = []
        for sock in ready:
            events += self._read(sock)
        # The table runs on the monotonic clock: a wall-clock step must neither expire every
        # live peer at once nor freeze dead ones. The wall clock is for trust expiry only.
        events += self.table.on_timer(now=self.clock())
        return events

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last beacon sent (0 before the first)."""
        return self._sequence

    def _beacon(self) -> None:
        self._next_beacon = self.clock() + self.interval
        # Wall-clock microseconds: receivers take the first beacons of a new incarnation
        # when this is close to their own clock. Strictly increasing: +1 if the clock is behind.
        now_us = int(self.wall_clock() * 1_000_000)
        self._sequence = min(max(self._sequence + 1, now_us), MAX_SEQUENCE)
        datagram = encode_beacon(
            self.identity,
            sequence=self._sequence,
            ports=self.ports,
            incarnation=self.incarnation,
        )
        for sock, target in self._sockets:
            try:
                sock.sendto(datagram, (target, self.port))
                self.sent += 1
            except OSError as exc:  # interface down, buffer full...: try again next time
                self.errors[type(exc).__name__] += 1

    def _read(self, sock: socket.socket) -> list[PeerEvent]:
        events: list[PeerEvent] = []
        for _ in range(1000):  # bounded: a flood cannot keep us here
            try:
                datagram, (host, _port) = sock.recvfrom(MAX_BEACON_LEN + 1)
            except BlockingIOError:
                break
            except OSError as exc:
                self.errors[type(exc).__name__] += 1
                break
            if datagram[_SENDER] == self.identity.sender_id:
                continue  # our own, looped back: not a peer, and not worth a signature check
            wall = self.wall_clock()
            try:
                beacon = decode_beacon(datagram, trust=self.trust, now=wall)
            except ZmqCommError as exc:
                reason = getattr(exc, "reason", "error")
                self.dropped[reason] += 1
                self._audit(None, reason, host)
                continue
            table = self.table
            before = (table.stale, table.not_fresh, table.ignored)
            events += table.observe(beacon, host, now=self.clock(), wall=wall)
            after = (table.stale, table.not_fresh, table.ignored)
            reasons = ("stale", "not_fresh", "table_full")
            for reason, old, new in zip(reasons, before, after, strict=True):
                if new != old:
                    # A refused newcomer's id is its sender's choice: key it by host.
                    agent = None if reason == "table_full" else beacon.agent_id
                    self._audit(agent, reason, host)
        return events

    def _audit(self, agent: str | None, reason: str, host: str) -> None:
        if self.audit is None:
            return
        now = self.clock()
        key = (agent or host, reason)
        last = self._audited.get(key)
        if last is not None and now - last < _AUDIT_EVERY:
            return  # a flood of junk stays cheap: one line per peer and reason per second
        second, written = self._audit_second
        if now - second >= 1.0:
            second, written = now, 0
        if written >= _AUDIT_PER_SECOND:
            return
        self._audit_second = (second, written + 1)
        self._audited[key] = now
        self._audited.move_to_end(key)
        while len(self._audited) > _AUDIT_KEYS:
            self._audited.popitem(last=False)
        self.audit.record(
            REJECT, now=self.wall_clock(), peer=agent, reason=reason, pattern="beacon", host=host
        )

    def close(self) -> None:
        for sock, _ in self._sockets:
            sock.close()
        self._sockets = []

    def __enter__(self) -> BeaconService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
