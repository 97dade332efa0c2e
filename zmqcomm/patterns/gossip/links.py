"""How a :class:`~zmqcomm.patterns.gossip.driver.GossipAgent` moves frames: the two transports.

:class:`SecureLinks` (the default with a trust store): a
:class:`~zmqcomm.secure.SecureRouter` bound as the inbox and one
:class:`~zmqcomm.secure.SecureDealer` per dialed peer, each expecting that peer's agent id.
Every frame travels in an authenticated, encrypted session; the sender of a received frame is
the agent id its session's handshake proved, and a frame goes out on our dealer to the peer
if its session is up, else on the session the peer opened to our router.

:class:`PlainLinks` (``verify_keys``, or ``secure=False``): two plain ROUTER sockets with
``ROUTER_MANDATORY``, the sender being the claimed routing id (signed-only).

Why ROUTER and not PUB/SUB: gossip sends each message to a *chosen* mesh peer, IWant replies
to one asker and Graft to one new mesh member. PUB cannot address one subscriber, misses what
was sent before a SUB connected, and drops silently at the high-water mark. A ROUTER with
``ROUTER_MANDATORY`` addresses a peer by routing id and *tells* us when it cannot deliver:
``EHOSTUNREACH`` (not connected yet, or gone) or ``EAGAIN`` (the peer's high-water mark);
what the agent then does with the frame is :mod:`.outbox`'s business.

Why two ROUTER sockets per agent (``inbox`` bound, ``outbox`` dialing), both with
``ROUTING_ID`` = the agent id: on a single ROUTER that both binds and dials, two peers that
dial each other create two connections with the same routing id on each side; libzmq keeps
the first one attached on each side and silently ignores frames arriving on the other, so
when the two sides pick different connections every message is lost (measured: 18 of 20
trials). With an inbox and an outbox no socket ever holds two connections to one peer. We
send through the outbox to peers we dialed and through the inbox to peers that dialed us
(a late joiner learned from its Graft), and read from both.

Both report a send as :data:`SENT`, :data:`BLOCKED` (the peer's high-water mark: keep the
frame queued), :data:`UNREACHABLE` (no connection or session now) or :data:`REFUSED` (the
peer is no longer trusted: secure only), and never raise for a peer's sake. A session that
refuses to send for another reason (its rekey overdue) is replaced: our dealer is dialed
afresh, and the frame waits as for an unreachable peer.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    QueueFullError,
    SecurityError,
    SendTimeout,
    TransportError,
    ZmqCommError,
)
from zmqcomm.secure import SecureDealer, SecureRouter
from zmqcomm.transport.endpoints import IpcSocketFile
from zmqcomm.transport.sockets import SocketOptions, bind, connect, open_socket

SENT, BLOCKED, UNREACHABLE, REFUSED = "sent", "blocked", "unreachable", "refused"
#: (sender, the message's parts): plain, the routing id (decoded, "" if not ASCII) and the
#: frames after it; secure, the authenticated agent id and the one payload.
Received = tuple[str, list[Any]]
#: A secure channel error that means "no session now", not "this peer is not trusted".
_NO_SESSION = frozenset({"channel_closed", "no_session"})
#: The errors that mean the peer is not trusted now: only these drop it as untrusted.
_UNTRUSTED = frozenset({"revoked", "trust_expired", "unknown_peer", "key_changed"})
#: Any other refusal to send (a rekey overdue past the hard limit, say): the session is
#: unusable but the peer trusted, so the dealer is replaced by a fresh one.
_RESET = "reset"
#: Secure sockets are pumped at least this often, whatever their deadlines say (held rekey
#: FINISH frames wait for a pump's timer tick).
_IDLE_TICK = 0.25
#: And at most this often because of a deadline (a pump runs its timers every 5 ms at most).
_MIN_TICK = 0.01


class PlainLinks:
    """Two plain ROUTER sockets, both with ``ROUTING_ID`` = our agent id (signed-only)."""

    secure = False

    def __init__(
        self,
        agent_id: str,
        endpoint: str,
        options: SocketOptions,
        context: zmq.Context[Any] | None,
        max_burst: int,
    ) -> None:
        self._max_burst = max_burst
        self._dialed: dict[str, str] = {}
        rid = agent_id.encode()
        opened: list[zmq.Socket[Any]] = []
        try:
            self.inbox = self._router(rid, options, context)
            opened.append(self.inbox)
            self.outbox = self._router(rid, options, context)
            opened.append(self.outbox)
            self.endpoint = bind(self.inbox, endpoint)
        except BaseException:
            for sock in opened:  # e.g. the context's socket limit refused the outbox
                sock.close(0)
            raise
        self._bound_file = IpcSocketFile.made_by_bind(self.endpoint, asked=endpoint)
        #: Bumped whenever :meth:`sockets` changes (never, here).
        self.version = 0

    @staticmethod
    def _router(
        rid: bytes, options: SocketOptions, context: zmq.Context[Any] | None
    ) -> zmq.Socket[Any]:
        sock = open_socket(zmq.ROUTER, options, context=context)
        sock.setsockopt(zmq.ROUTING_ID, rid)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        return sock

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [self.inbox, self.outbox]

    def take_reconnected(self) -> list[str]:
        """Plain ROUTERs see no sessions: never anything."""
        return []

    def forget(self, peer: str) -> None:
        """Nothing is kept per peer here beyond its dial (:meth:`hang_up`)."""

    def dial(self, peer: str, endpoint: str) -> None:
        old = self._dialed.get(peer)
        if old == endpoint:
            return
        if old is not None:
            self.hang_up(peer)
        self._dialed[peer] = connect(self.outbox, endpoint)

    def hang_up(self, peer: str) -> None:
        endpoint = self._dialed.pop(peer, None)
        if endpoint is not None:
            with contextlib.suppress(zmq.ZMQError):  # never fully connected: nothing to undo
                self.outbox.disconnect(endpoint)

    def receive(self, sock: zmq.Socket[Any]) -> list[Received]:
        out: list[Received] = []
        for _ in range(self._max_burst):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            try:
                sender = frames[0].decode("ascii")
            except UnicodeDecodeError:
                sender = ""
            out.append((sender, frames[1:]))
        return out

    def send(self, peer: str, frame: bytes) -> str:
        rid = peer.encode()
        socks = (self.outbox, self.inbox) if peer in self._dialed else (self.inbox,)
        for sock in socks:
            try:
                sock.send_multipart((rid, frame), zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return BLOCKED
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                continue
            return SENT
        return UNREACHABLE

    def due_in(self) -> float | None:
        return None

    def tick(self) -> list[Received]:
        return []

    def rejected(self) -> Counter[str]:
        return Counter()

    def statistics(self) -> dict[str, Any]:
        return {"secure": False, "dialed": len(self._dialed)}

    def close(self, linger_ms: int | None) -> None:
        for sock in (self.inbox, self.outbox):
            sock.close(linger_ms)
        if self._bound_file is not None:
            self._bound_file.remove()


class SecureLinks:
    """A :class:`SecureRouter` inbox and a :class:`SecureDealer` per dialed peer."""

    secure = True

    def __init__(
        self,
        identity: Identity,
        endpoint: str,
        *,
        trust: TrustStore,
        audit: BaseAuditLog | None,
        options: SocketOptions,
        context: zmq.Context[Any] | None,
        max_burst: int,
    ) -> None:
        self._identity = identity
        self._trust = trust
        self._audit = audit
        self._options = options
        self._context = context
        self._max_burst = max_burst
        self.router = SecureRouter(
            endpoint,
            identity=identity,
            trust=trust,
            audit=audit,
            options=options,
            context=context,
            send_timeout=0.0,  # never block the loop on a slow peer
            max_inbox=max_burst,
        )
        self.endpoint = self.router.endpoint
        self.dealers: dict[str, SecureDealer] = {}
        self._dialed: dict[str, str] = {}
        #: Raw socket (a secure socket's own, or a dealer's connection events) -> its owner.
        self._owner: dict[zmq.Socket[Any], SecureRouter | SecureDealer] = {}
        self._own(self.router)
        #: Bumped whenever :meth:`sockets` changes (a peer dialed or hung up).
        self.version = 0
        #: Counted here for sockets already closed (hung up), so the totals never go down.
        self._retired: Counter[str] = Counter()
        self._retired_handshakes = 0
        self.pump_errors: Counter[str] = Counter()
        #: Dealers replaced because their session refused to send (a rekey overdue).
        self.resets = 0
        self._last_tick = time.monotonic()
        #: When :meth:`tick` is due next (monotonic); None: to be worked out again.
        self._due: float | None = None
        #: Each socket's next timer deadline (monotonic), and the sockets to look at again.
        self._deadlines: dict[SecureRouter | SecureDealer, float | None] = {}
        self._dirty: set[SecureRouter | SecureDealer] = {self.router}
        #: Agents that have had a session on our router, and peers whose current dealer has
        #: had one: a new session from one of them means it came back (restarted, or its
        #: connection dropped), reported by take_reconnected.
        self._inbound: set[str] = set()
        self._outbound: set[str] = set()
        self._reconnected: list[str] = []

    def _own(self, sock: SecureRouter | SecureDealer) -> None:
        self._owner[sock.socket] = sock
        for side in sock.side_sockets():
            self._owner[side] = sock

    def sockets(self) -> list[zmq.Socket[Any]]:
        return list(self._owner)

    # -- membership --------------------------------------------------------------------------

    def dial(self, peer: str, endpoint: str, *, again: bool = False) -> None:
        """A dealer to ``peer`` at ``endpoint``; ``again``: a new one even if dialed there."""
        if self._dialed.get(peer) == endpoint and not again:
            return
        self.hang_up(peer)
        dealer = SecureDealer(
            endpoint,
            identity=self._identity,
            trust=self._trust,
            expect_peer=peer,  # the handshake proves the far end is that agent, or fails
            audit=self._audit,
            options=self._options,
            context=self._context,
            send_timeout=0.0,
            connect_timeout=None,  # comes up in the background; frames wait in our queue
            max_inbox=self._max_burst,
        )
        self.dealers[peer] = dealer
        self._dialed[peer] = endpoint
        self._own(dealer)
        self.version += 1
        self._touched(dealer)

    def hang_up(self, peer: str) -> None:
        self._dialed.pop(peer, None)
        self._outbound.discard(peer)  # a new dealer's first session is not a comeback
        dealer = self.dealers.pop(peer, None)
        if dealer is None:
            return
        for raw in [raw for raw, owner in self._owner.items() if owner is dealer]:
            del self._owner[raw]
        self._retired.update(dealer.table.rejected)
        self._retired_handshakes += dealer.table.handshakes
        dealer.socket.setsockopt(zmq.LINGER, 0)
        dealer.close()
        self.version += 1
        self._deadlines.pop(dealer, None)
        self._dirty.discard(dealer)
        self._due = None

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, raw: zmq.Socket[Any]) -> list[Received]:
        owner = self._owner.get(raw)
        if owner is None:  # hung up since the poll
            return []
        if raw is not owner.socket:
            owner.on_side_ready(raw)  # a (re)connection: its handshake starts now
        return self._pump(owner)

    def forget(self, peer: str) -> None:
        """``peer`` is no longer ours: its next session to our router is a first one."""
        self._inbound.discard(peer)

    def take_reconnected(self) -> list[str]:
        """The agents whose session was made anew since the last call, a session before it
        having been up on the same socket: each may have restarted and forgotten what it
        knew of us. The pumps that noticed them returned their frames already; handle these
        first."""
        reconnected, self._reconnected = self._reconnected, []
        return reconnected

    def _pump(self, sock: SecureRouter | SecureDealer) -> list[Received]:
        self._touched(sock)
        try:
            sock.pump(0.0)
        except ZmqCommError as exc:  # never out of step(): counted instead
            self.pump_errors[exc.reason] += 1
        seen, other = (
            (self._inbound, self._outbound)
            if sock is self.router
            else (self._outbound, self._inbound)
        )
        joined = sock.joined
        while joined:
            agent = joined.popleft().agent_id
            if agent in seen:
                self._reconnected.append(agent)
                # One restart, once: the other socket's new session with it (which may come
                # after its Graft) counts as a first one.
                other.discard(agent)
            seen.add(agent)
        out: list[Received] = []
        inbox = sock.inbox
        while inbox:
            delivered = inbox.popleft()
            for payload in delivered.message.payloads:
                out.append((delivered.agent_id, [payload]))
        return out

    def due_in(self) -> float | None:
        """Seconds until the secure sockets should be pumped for their timers (handshake
        retries, rekeys, key expiry; a dealer whose channel is gone starts a new one in a
        pump). Each socket's deadline is cached until that socket is pumped or sent on: an
        idle agent costs a comparison, a busy one a look at the sockets it used."""
        now = time.monotonic()
        if self._due is None:
            if self._dirty:
                wall = time.time()
                for sock in self._dirty:
                    # A dealer is due now when its session is gone on a connection that is
                    # up; while its peer is down it waits for the connection event.
                    deadline = sock.next_deadline()
                    if deadline is not None:
                        deadline += now - wall  # wall clock -> monotonic
                    self._deadlines[sock] = deadline
                self._dirty.clear()
            due = self._last_tick + _IDLE_TICK
            earliest = min((d for d in self._deadlines.values() if d is not None), default=None)
            if earliest is not None:
                due = min(due, max(earliest, self._last_tick + _MIN_TICK))
            self._due = due
        return max(0.0, self._due - now)

    def _touched(self, sock: SecureRouter | SecureDealer) -> None:
        self._dirty.add(sock)
        self._due = None

    def tick(self) -> list[Received]:
        """Pump every secure socket (their timers run in a pump)."""
        self._last_tick = time.monotonic()
        out = self._pump(self.router)
        for dealer in list(self.dealers.values()):
            out += self._pump(dealer)
        return out

    # -- sending -----------------------------------------------------------------------------

    def send(self, peer: str, frame: bytes) -> str:
        dealer = self.dealers.get(peer)
        if dealer is not None and dealer.established:
            self._touched(dealer)  # a send may start a rekey
            result = self._try(lambda: dealer.send(frame, wait=False))
            if result == _RESET:
                self.resets += 1
                self.dial(peer, self._dialed[peer], again=True)
                result = UNREACHABLE
            if result != UNREACHABLE:
                return result
        router = self.router
        if router.table.route_of(peer) is None:
            return UNREACHABLE
        self._touched(router)
        result = self._try(lambda: router.send(peer, frame, wait=False))
        # The peer's own dealer replaces a session it can no longer use; until then, wait.
        return UNREACHABLE if result == _RESET else result

    @staticmethod
    def _try(send: Callable[[], None]) -> str:
        try:
            send()
        except (QueueFullError, SendTimeout):
            return BLOCKED
        except SecurityError as exc:
            if exc.reason in _UNTRUSTED:
                return REFUSED
            return UNREACHABLE if exc.reason in _NO_SESSION else _RESET
        except TransportError:  # link_down, unroutable: the session went with its connection
            return UNREACHABLE
        return SENT

    # -- introspection and lifetime ----------------------------------------------------------

    def _all(self) -> list[SecureRouter | SecureDealer]:
        return [self.router, *self.dealers.values()]

    def rejected(self) -> Counter[str]:
        """What the sessions refused (handshakes with untrusted or unexpected peers, frames
        from a revoked one, frames outside a session), by reason; each was audited."""
        total = Counter(self._retired)
        for sock in self._all():
            total.update(sock.table.rejected)
        return total

    def statistics(self) -> dict[str, Any]:
        socks = self._all()
        return {
            "secure": True,
            "dialed": len(self.dealers),
            "established": sum(1 for d in self.dealers.values() if d.established),
            "inbound": len(self.router.peers),
            "handshakes": self._retired_handshakes + sum(s.table.handshakes for s in socks),
            "rekeys": sum(s.table.rekeys for s in socks),
            "rejected": dict(self.rejected()),
            "pump_errors": dict(self.pump_errors),
            "session_resets": self.resets,
        }

    def close(self, linger_ms: int | None) -> None:
        for sock in self._all():
            with contextlib.suppress(zmq.ZMQError):
                sock.socket.setsockopt(zmq.LINGER, -1 if linger_ms is None else linger_ms)
            sock.close()
        self.dealers.clear()
        self._owner.clear()
        self._deadlines.clear()
        self._dirty.clear()
