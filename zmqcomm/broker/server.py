"""The broker process: a SecureRouter driving :class:`BrokerCore`, a mailbox, stats, signals.

One thread: pump the router, feed new sessions and messages to the core, send what it
decides. A message to an agent whose connection is gone (ZeroMQ refuses the routing id) turns
into UNREACHABLE for its sender, who falls back to mail. Statistics go to ``stats.json`` in
the data directory once a second, so ``zmqcomm broker stats`` can read them without keys.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from zmqcomm.access import Policy
from zmqcomm.broker.core import MAX_SUBSCRIPTIONS, BrokerCore, Send
from zmqcomm.broker.mailbox import Mailbox
from zmqcomm.checks import check_seconds
from zmqcomm.crypto.audit import BaseAuditLog
from zmqcomm.crypto.channel_table import HandshakeLimits
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.data_lock import lock_data_directory
from zmqcomm.errors import (
    CorruptStoreError,
    LocalProtocolError,
    QueueFullError,
    SecurityError,
    SendTimeout,
    TransportError,
    UnknownPeerError,
)
from zmqcomm.secure import SecureRouter
from zmqcomm.transport import SocketOptions
from zmqcomm.wire import MessageType

STATS_FILE = "stats.json"
MAILBOX_FILE = "mailbox.sqlite3"
#: Locked (flock) by the broker process that runs on the data directory.
LOCK_FILE = "broker.lock"
_STATS_INTERVAL = 1.0
#: Nodes PING every 10 s when idle: three missed pings and an agent counts as gone.
IDLE_TIMEOUT = 30.0
#: Mail not collected within a week is deleted (looked for once a minute): a recipient that
#: never comes back must not hold mailbox space for ever.
MAIL_TTL = 7 * 24 * 3600.0
_EXPIRY_INTERVAL = 60.0
#: A broker holds many connections: deeper queues than an agent's defaults.
BROKER_SOCKET_OPTIONS = SocketOptions(send_hwm=100_000, receive_hwm=100_000)


class Broker:
    """Routes direct messages by agent id, fans out topics, keeps mail for offline agents."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        identity: Identity,
        trust: TrustStore,
        policy: Policy | None = None,
        data: str | os.PathLike[str] | None = None,
        audit: BaseAuditLog | None = None,
        limits: HandshakeLimits | None = None,
        options: SocketOptions = BROKER_SOCKET_OPTIONS,
        context: zmq.Context[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        idle_timeout: float = IDLE_TIMEOUT,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        mail_ttl: float = MAIL_TTL,
        mailbox_limits: Mapping[str, int] | None = None,
    ) -> None:
        """``mailbox_limits``: keyword arguments of :class:`Mailbox` (its bounds)."""
        if not endpoints:
            raise TransportError("a broker needs at least one endpoint to bind")
        self.mail_ttl = check_seconds(mail_ttl, "mail_ttl", allow_zero=False)
        # NaN would count no agent as idle ever, and a negative one every agent at once.
        idle_timeout = check_seconds(idle_timeout, "idle_timeout", allow_zero=False)
        self.trust = trust
        # Made first, so a bad setting is refused before anything is opened.
        core = BrokerCore(
            policy=policy,
            audit=audit,
            max_subscriptions=max_subscriptions,
            can_collect=self._can_collect,
            revoked=self._revoked,
        )
        self.data = Path(data) if data is not None else None
        #: A broker that fails to start removes the data directory it made (a lock file and
        #: an empty mailbox looked like a broker that had run there).
        self._made_data = self.data is not None and not self.data.exists()
        # Two brokers on one directory would share a mailbox and overwrite each other's
        # stats.json: the second is refused before it opens anything.
        self._lock = (
            lock_data_directory(self.data, lock_file=LOCK_FILE, owner="broker")
            if self.data is not None
            else None
        )
        try:
            self.mailbox = (
                Mailbox(self.data / MAILBOX_FILE, **(mailbox_limits or {}))
                if self.data is not None
                else None
            )
        except BaseException:
            self._unlock()
            self._forget_new_data()
            raise
        core.mailbox = self.mailbox
        try:
            self.router = SecureRouter(
                endpoints[0],
                identity=identity,
                trust=trust,
                audit=audit,
                limits=(limits or HandshakeLimits()).with_policy(policy),
                options=options,
                context=context,
                clock=clock,
                wall_clock=wall_clock,
                send_timeout=0.0,  # never block the whole broker on one slow agent
            )
        except BaseException:
            if self.mailbox is not None:
                self.mailbox.close()  # an address in use must not leave the database open
            self._unlock()
            self._forget_new_data()
            raise
        self.endpoints = [self.router.endpoint]
        try:
            for endpoint in endpoints[1:]:
                self.endpoints.append(self.router.bind(endpoint))
        except BaseException:
            self.close()
            self._forget_new_data()
            raise
        self.core = core
        self.clock = clock
        self.wall_clock = wall_clock
        self.idle_timeout = idle_timeout
        self.started = wall_clock()
        self._next_stats = 0.0
        self._next_expiry = 0.0
        self._previous: tuple[float, tuple[int, int, int]] | None = None
        self._stopping = False
        #: ERROR answers (refusals) that found the agent's queue full and were let go.
        self.error_answers_dropped = 0

    # -- the loop ----------------------------------------------------------------------------

    def step(self, timeout: float = 0.05) -> int:
        """Handle what arrived within ``timeout`` seconds; returns messages handled."""
        handled = self.router.pump(timeout)
        now = self.wall_clock()
        while self.router.joined:
            joined = self.router.joined.popleft()
            self._send(
                self.core.connected(
                    joined.agent_id, joined.roles, now=now, session=joined.session_id
                )
            )
        inbox = self.router.inbox
        while inbox:
            delivered = inbox.popleft()
            agent, header = delivered.agent_id, delivered.message.header
            if agent not in self.core.agents and header.type != MessageType.BYE:
                # Counted as gone after a long silence, but its session is intact: it is
                # back (a node busy for a while), so take it in again and hand it its mail.
                roles = self._roles(agent)
                self._send(
                    self.core.connected(agent, roles, now=now, resumed=True, session=header.session)
                )
            else:
                # Roles edited in the trust store count from the agent's next message.
                self.core.update_roles(agent, self._roles(agent), now=now)
            answered = False
            for payload in delivered.message.payloads:
                sends = self.core.handle(
                    agent, header.type, header.topic, payload, now=now, session=header.session
                )
                if sends and sends[0].msg_type == MessageType.ERROR:
                    # One refusal answer per frame: a batch of refused payloads must not
                    # turn into as many answers (each is counted and audited anyway).
                    if answered:
                        continue
                    answered = True
                self._send(sends)
            # Unless the BYE came from a connection the agent has since replaced (this step
            # took in its new session first): the route now is the new connection's.
            if header.type == MessageType.BYE and agent not in self.core.agents:
                self._forget(agent)
        if self.clock() >= self._next_stats:
            self._next_stats = self.clock() + _STATS_INTERVAL
            # Silent agents stop counting as online (their mail waits), but their sessions
            # stay: a connection that is really gone shows when a send to it fails.
            self.core.expire_idle(now=now, max_idle=self.idle_timeout)
            self._send(self.core.retry_mail())
            if self.data is not None:
                self.write_stats()
        if self.clock() >= self._next_expiry:
            self._next_expiry = self.clock() + _EXPIRY_INTERVAL
            self.core.expire_mail(now=now, max_age=self.mail_ttl)
        return handled

    def _send(self, sends: list[Send]) -> None:
        for send in sends:
            try:
                self.router.send(send.to, send.payload, msg_type=send.msg_type, topic=send.topic)
            except (SendTimeout, QueueFullError):
                if send.msg_type == MessageType.ERROR:
                    # A refusal answer for an agent that does not read: let it go, counted.
                    # Not audited: the refusal itself was, and an agent that floods refused
                    # messages while it reads nothing must not cost an audit line for each.
                    self.error_answers_dropped += 1
                    continue
                # A slow consumer: its queue is at the high-water mark. Never wait on one
                # agent (every other would wait too): bounce, and the sender mails it.
                self._count_undelivered(send, "slow_consumer")
                self.core.hand_over_later(send)  # mail stays stored: retried once a second
                self._bounce(send)
            except LocalProtocolError:
                # Accepted as it came in, but too big once wrapped for its recipient (the
                # wrapper adds a few bytes): drop this one send. Bouncing it would not fit either.
                # Mail is deleted: it would never fit, and would hold its slot for ever.
                self._count_undelivered(send, "unsendable")
                self._send(self.core.undeliverable(send))
            except (TransportError, SecurityError):
                # The agent's connection is gone, or its session refuses to send (a rekey it
                # never answered): forget it, and tell a forwarder to use mail.
                self._count_undelivered(send, "recipient_gone")
                self._forget(send.to)
                self.core.disconnected(send.to)
                self._bounce(send)

    def _count_undelivered(self, send: Send, reason: str) -> None:
        self.core.refuse(send.to, reason, now=self.wall_clock(), type=int(send.msg_type))

    def _bounce(self, send: Send) -> None:
        if send.msg_type == MessageType.DELIVER:
            self._send([Send(send.topic, MessageType.UNREACHABLE, send.payload, send.to)])

    def _revoked(self, agent: str, now: float) -> bool:
        """Whether ``agent`` was revoked (not merely absent, or expired: both may change)."""
        try:
            self.trust.lookup(agent, now=now)
        except UnknownPeerError as exc:
            return exc.reason == "revoked"
        return False

    def _can_collect(self, agent: str, now: float) -> bool:
        """Whether ``agent`` could connect now: trusted, not revoked, not expired (under
        trust on first use, an agent never seen may still come and be pinned)."""
        try:
            self.trust.lookup(agent, now=now)
        except UnknownPeerError as exc:
            return self.trust.tofu and exc.reason == "unknown_peer"
        return True

    def _roles(self, agent: str) -> frozenset[str]:
        channel = self.router.table.channel_to(agent)
        return channel.peer.roles if channel is not None and channel.peer else frozenset()

    def _forget(self, agent: str) -> None:
        route = self.router.table.route_of(agent)
        if route is not None:
            self.router.table.drop(route)

    def serve(self, until: Callable[[], bool] | None = None) -> None:
        """Run until :meth:`stop` is called (a signal handler may call it) or ``until()``."""
        while not self._stopping and not (until is not None and until()):
            self.step(0.05)

    def stop(self) -> None:
        """Ask :meth:`serve` to return after the current step (safe from a signal handler)."""
        self._stopping = True

    def set_policy(self, policy: Policy | None) -> None:
        """Put a new role policy in force (None: every trusted agent may do anything): it
        decides every message from now on, and subscriptions it no longer allows end at once
        (audited as ``subscription_ended``). Its ``[unauthenticated]`` handshake bucket
        counts only from a restart: the router's buckets are made when it binds."""
        self.core.set_policy(policy, now=self.wall_clock())

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        router = self.router.statistics()
        return {
            **self.core.statistics(),
            "endpoints": self.endpoints,
            "uptime": round(self.wall_clock() - self.started, 3),
            "messages_in": router["received"],
            "messages_out": router["sent"],
            "handshakes": router["handshakes"],
            "rekeys": router["rekeys"],
            "rejected_sessions": router["rejected"],
            "error_answers_dropped": self.error_answers_dropped,
            # Audit lines a failing sink (a full disk) could not write: never an error.
            "audit_write_errors": getattr(self.core.audit, "write_errors", 0),
            "pid": os.getpid(),
            "updated": self.wall_clock(),
        }

    def _rates(self, stats: dict[str, Any]) -> dict[str, float]:
        """Messages per second since the previous snapshot (for ``broker stats``)."""
        now = self.clock()
        counts = (stats["messages_in"], stats["messages_out"], stats["routed"])
        previous = self._previous
        self._previous = (now, counts)
        if previous is None or now <= previous[0]:
            return {"in": 0.0, "out": 0.0, "routed": 0.0}
        elapsed = now - previous[0]
        names = ("in", "out", "routed")
        return {
            name: round((new - old) / elapsed, 1)
            for name, new, old in zip(names, counts, previous[1], strict=True)
        }

    def write_stats(self, *, running: bool = True) -> None:
        """``running=False``: the last write, at a clean stop (so ``broker stats`` can say
        the broker stopped, instead of guessing from the file's age)."""
        assert self.data is not None
        path = self.data / STATS_FILE
        temporary = path.with_name(f".{STATS_FILE}.{os.getpid()}")
        stats = self.statistics()
        stats["rates_per_s"] = self._rates(stats)
        stats["running"] = running
        temporary.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def close(self) -> None:
        try:
            if self.data is not None and hasattr(self, "core"):
                self.write_stats(running=False)
        finally:  # a last stats write that fails (a full disk) must not keep the rest open
            try:
                self.router.close()
                if self.mailbox is not None:
                    self.mailbox.close()
            finally:
                self._unlock()

    def _forget_new_data(self) -> None:
        if self._made_data and self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_stats(data: str | os.PathLike[str]) -> dict[str, Any]:
    """The statistics a running (or the last) broker wrote under ``data``."""
    path = Path(data) / STATS_FILE
    try:
        loaded: object = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TransportError(
            f"no broker statistics in {path}: is a broker running with --data {data}?"
        ) from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise CorruptStoreError(f"{path} is not broker statistics: {exc}") from exc
    if not isinstance(loaded, dict):
        raise CorruptStoreError(f"{path} is not broker statistics: not a JSON object")
    for key, (wanted, valid) in _STATS_TYPES.items():
        # Checked here, so a reader formats them without a traceback on a hand-edited file.
        if key in loaded and not valid(loaded[key]):
            shown = type(loaded[key]).__name__
            raise CorruptStoreError(
                f"{path} is not broker statistics: {key} must be {wanted}, got {shown}"
            )
    return loaded


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The fields of stats.json a reader does arithmetic or formatting on, and their types.
_STATS_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "updated": ("a number", _is_number),
    "uptime": ("a number", _is_number),
    "endpoints": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v),
    ),
    "rates_per_s": (
        "an object of numbers",
        lambda v: isinstance(v, dict) and all(_is_number(r) for r in v.values()),
    ),
    "rejected": ("an object", lambda v: isinstance(v, dict)),
    "rejected_sessions": ("an object", lambda v: isinstance(v, dict)),
}
