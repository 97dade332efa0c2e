"""The broker's decisions, sans-I/O: who may do what, where each message goes, what is stored.

Input is what arrived on an agent's authenticated hop session (the agent id and roles come
from that session, never from the message); output is a list of :class:`Send` for the driver.
The broker reads clear headers only: FORWARD and DELIVER carry an agent-to-agent session's
ciphertext, MAIL a sealed box; neither opens with any key the broker has.

Checks run cheapest first: the per-agent token bucket, then the role policy, then the work.
Every refusal is counted by reason and audited.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from zmqcomm.access import Policy, RateLimiter
from zmqcomm.broker.subscriptions import SubscriptionIndex
from zmqcomm.crypto.audit import BaseAuditLog, NullAuditLog
from zmqcomm.crypto.keys import is_agent_id
from zmqcomm.errors import (
    LimitExceededError,
    MailboxFullError,
    NotPermittedError,
    RemoteProtocolError,
    UsageError,
)
from zmqcomm.wire import MessageType

_MAIL_BATCH = 100
#: Topics (or patterns) one agent may be subscribed to at once: every publication is matched
#: against every subscription, so this bounds the work one agent can make for all others.
MAX_SUBSCRIPTIONS = 256


class MailStore(Protocol):
    """What the broker needs from a mailbox (see :class:`zmqcomm.broker.mailbox.Mailbox`)."""

    def put(self, recipient: str, sender: str, blob: bytes, *, now: float) -> int: ...

    def pending(self, recipient: str, *, limit: int = ..., after: int = ...) -> list[Any]: ...

    def ack(self, recipient: str, message_id: int) -> bool: ...

    def count(self, recipient: str | None = None) -> int: ...

    def expire(self, *, now: float, max_age: float) -> int: ...

    def recipients(self) -> list[str]: ...

    def discard(self, recipient: str) -> int: ...

    def stored_ids(self, recipient: str, ids: Iterable[int]) -> set[int]: ...


@dataclass(frozen=True)
class Send:
    """A message for the driver to seal under ``to``'s hop session."""

    to: str
    msg_type: int
    payload: object
    topic: str = ""


@dataclass
class _Agent:
    roles: frozenset[str]
    subscriptions: set[str]
    received: int = 0
    #: Ids of mail handed over and not yet acknowledged, and the highest stored id handed over.
    mail_in_flight: set[int] = field(default_factory=set)
    mail_cursor: int = 0
    #: A hand-over met a full queue: retry_mail() hands that mail over again.
    mail_retry: bool = False
    last_seen: float = 0.0
    #: The hop session it is connected on: a BYE ends that session only, not a newer one.
    session: int = 0


#: Refusals the sender is told of (an ERROR with the reason): what its owner must change.
#: Garbage and rate limits are not answered: an answer would be traffic an attacker causes.
_ANSWERED = frozenset({"too_many_topics"})


def _refusal(agent: str, reason: str, msg_type: int, topic: str) -> Send:
    """The ERROR that tells ``agent`` why its message was refused."""
    return Send(agent, MessageType.ERROR, {"reason": reason, "type": int(msg_type)}, topic)


class BrokerCore:
    """Routing, fan-out, mailboxes and the checks in front of them."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        mailbox: MailStore | None = None,
        audit: BaseAuditLog | None = None,
        rate: float | None = None,
        burst: float | None = None,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        can_collect: Callable[[str, float], bool] | None = None,
        revoked: Callable[[str, float], bool] | None = None,
    ) -> None:
        """``can_collect(agent, now)``: whether ``agent`` could ever connect to collect its
        mail (the driver asks its trust store); None takes mail for any agent id."""
        if type(max_subscriptions) is not int or max_subscriptions < 1:
            raise UsageError(
                f"max_subscriptions must be an integer >= 1, got {max_subscriptions!r}"
            )
        self.max_subscriptions = max_subscriptions
        self.can_collect = can_collect
        #: ``revoked(agent, now)``: whether ``agent`` was revoked, so that its stored mail
        #: can go. Only a positive verdict deletes mail: an agent merely missing from the
        #: trust store may be a key file being rewritten.
        self.revoked = revoked
        self.policy = policy
        self.mailbox = mailbox
        self.audit = audit if audit is not None else NullAuditLog()
        default_rate = policy.rate if policy is not None else 100_000.0
        default_burst = policy.burst if policy is not None else 200_000.0
        self.limiter = RateLimiter(rate or default_rate, burst or default_burst)
        self.agents: dict[str, _Agent] = {}
        #: Agents counted offline after a silence; at most one entry per trusted agent.
        self._idle: dict[str, _Agent] = {}
        #: The subscriptions of the agents in ``agents`` (online), for fan-out.
        self._subscribers = SubscriptionIndex()
        self.rejected: Counter[str] = Counter()
        self.routed = 0
        self.stored = 0
        self.expired = 0
        #: Mail deleted because its recipient could no longer collect it.
        self.uncollectable = 0

    # -- membership --------------------------------------------------------------------------

    def connected(
        self,
        agent: str,
        roles: Iterable[str],
        *,
        now: float,
        resumed: bool = False,
        session: int = 0,
    ) -> list[Send]:
        """An agent completed its hop handshake on ``session``: remember it and hand over
        its mail.

        ``resumed``: it spoke again on the session it had when it went idle, so it keeps the
        subscriptions it made on that session (it has no reason to make them again)."""
        idle = self._idle.pop(agent, None)
        subscriptions = idle.subscriptions if resumed and idle is not None else set()
        state = _Agent(frozenset(roles), subscriptions, last_seen=now, session=session)
        replaced = self.agents.get(agent)
        if replaced is not None:  # a new session replaces the one it had, subscriptions too
            self._subscribers.discard(agent, replaced.subscriptions)
        self.agents[agent] = state
        if subscriptions:  # its roles may have changed while it was idle
            self._prune_subscriptions(agent, state, now=now)
        self._subscribers.add(agent, state.subscriptions)
        return self._mail_for(agent)

    def _go_offline(self, agent: str) -> _Agent | None:
        """Take ``agent`` out of ``agents`` and its subscriptions out of the fan-out."""
        state = self.agents.pop(agent, None)
        if state is not None:
            self._subscribers.discard(agent, state.subscriptions)
        return state

    def update_roles(self, agent: str, roles: frozenset[str], *, now: float) -> None:
        """The agent's roles as the trust store has them now (edited since it connected):
        subscriptions its new roles no longer allow end."""
        state = self.agents.get(agent)
        if state is not None and state.roles != roles:
            state.roles = roles
            self._prune_subscriptions(agent, state, now=now)

    def set_policy(self, policy: Policy | None, *, now: float) -> None:
        """Put ``policy`` in force (a reload): it decides every message from now on, and
        subscriptions it does not allow end now, not when their agents reconnect."""
        self.policy = policy
        for name, state in [*self.agents.items(), *self._idle.items()]:
            self._prune_subscriptions(name, state, now=now)

    def _prune_subscriptions(self, agent: str, state: _Agent, *, now: float) -> None:
        if self.policy is None:
            return
        for topic in sorted(state.subscriptions):
            if not self.policy.may_subscribe(state.roles, topic):
                state.subscriptions.discard(topic)
                self._subscribers.discard(agent, [topic])  # nothing, if it is offline
                self.refuse(agent, "subscription_ended", now=now, topic=topic)

    def disconnected(self, agent: str) -> None:
        self._go_offline(agent)
        self._idle.pop(agent, None)

    def expire_idle(self, *, now: float, max_idle: float) -> list[str]:
        """Count agents silent for ``max_idle`` seconds as offline (nodes PING when idle, so
        these crashed or lost their connection without a BYE). Their subscriptions are kept
        aside until they come back on the same session or a new one replaces it."""
        gone = [name for name, state in self.agents.items() if now - state.last_seen > max_idle]
        for name in gone:
            state = self._go_offline(name)
            assert state is not None
            self._idle[name] = state
        return gone

    def _mail_for(self, agent: str) -> list[Send]:
        """Hand over stored mail, keeping at most _MAIL_BATCH unacknowledged per agent."""
        state = self.agents.get(agent)
        room = _MAIL_BATCH - len(state.mail_in_flight) if state is not None else 0
        if self.mailbox is None or state is None or room <= 0:
            return []
        out = []
        for stored in self.mailbox.pending(agent, limit=room, after=state.mail_cursor):
            state.mail_cursor = stored.id
            if stored.id in state.mail_in_flight:  # the cursor went back for a retry
                continue
            out.append(
                Send(agent, MessageType.MAIL_DELIVER, [stored.id, stored.blob], stored.sender)
            )
            state.mail_in_flight.add(stored.id)
        return out

    def hand_over_later(self, send: Send) -> None:
        """The driver could not hand over this MAIL_DELIVER (the agent's queue was full): it
        stays stored, and :meth:`retry_mail` hands it over again."""
        state = self.agents.get(send.to)
        if send.msg_type != MessageType.MAIL_DELIVER or state is None:
            return
        assert isinstance(send.payload, list)  # made by _mail_for: [stored id, blob]
        message_id: int = send.payload[0]
        state.mail_in_flight.discard(message_id)
        state.mail_cursor = min(state.mail_cursor, message_id - 1)
        state.mail_retry = True

    def undeliverable(self, send: Send) -> list[Send]:
        """The driver can never hand over this MAIL_DELIVER (too big once wrapped for the
        hop): delete it, so it neither holds a slot nor waits out its time to live, and hand
        over what comes after it. The driver counts and audits the drop."""
        state = self.agents.get(send.to)
        if send.msg_type != MessageType.MAIL_DELIVER or self.mailbox is None:
            return []
        assert isinstance(send.payload, list)  # made by _mail_for: [stored id, blob]
        message_id: int = send.payload[0]
        self.mailbox.ack(send.to, message_id)
        if state is None or message_id not in state.mail_in_flight:
            return []
        state.mail_in_flight.discard(message_id)
        return self._mail_for(send.to)

    def retry_mail(self) -> list[Send]:
        """Mail again for agents whose queue was full at the last hand-over (the driver
        calls this now and then: by then there may be room)."""
        out = []
        for name, state in self.agents.items():
            if state.mail_retry:
                state.mail_retry = False
                out += self._mail_for(name)
        return out

    def expire_mail(self, *, now: float, max_age: float) -> int:
        """Delete mail stored more than ``max_age`` seconds ago (its recipient never came for
        it), and mail whose recipient was revoked since (it can never collect it): counted and
        audited. Returns how many."""
        if self.mailbox is None:
            return 0
        expired = self.mailbox.expire(now=now, max_age=max_age)
        if expired:
            self.expired += expired
            self.audit.record("mail_expired", now=now, messages=expired, max_age=max_age)
        if self.revoked is not None:
            for recipient in self.mailbox.recipients():
                if not self.revoked(recipient, now):
                    continue
                # It cannot connect again to take it: free the space rather than keep it
                # for the whole time to live.
                dropped = self.mailbox.discard(recipient)
                self.uncollectable += dropped
                expired += dropped
                self.audit.record(
                    "mail_dropped",
                    now=now,
                    peer=recipient,
                    reason="recipient_revoked",
                    messages=dropped,
                )
        if expired:
            self._release_deleted_mail()
        return expired

    def _release_deleted_mail(self) -> None:
        """Handed-over mail deleted before its ack frees its slot now: an agent that never
        acknowledges it must not keep the slot until it reconnects."""
        assert self.mailbox is not None
        for name, state in self.agents.items():
            if not state.mail_in_flight:
                continue
            still = self.mailbox.stored_ids(name, state.mail_in_flight)
            if still != state.mail_in_flight:
                state.mail_in_flight = still
                state.mail_retry = True  # retry_mail() fills the freed slots

    # -- messages ----------------------------------------------------------------------------

    def handle(
        self,
        agent: str,
        msg_type: int,
        topic: str,
        payload: object,
        *,
        now: float,
        session: int = 0,
    ) -> list[Send]:
        """One message from an authenticated agent, on its hop session ``session``.
        Refusals are counted, audited, and answered where the sender can act on them; they
        never raise."""
        state = self.agents.get(agent)
        if state is None:
            return self.refuse(agent, "not_connected", now=now)
        state.last_seen = now
        roles = state.roles
        rate = burst = None
        if self.policy is not None:
            decision = self.policy.decide(roles)
            rate, burst = decision.rate, decision.burst
        if not self.limiter.allow(agent, now=now, rate=rate, burst=burst):
            return self.refuse(agent, "rate_limited", now=now)
        try:
            if self.policy is not None and msg_type not in _ALWAYS_ALLOWED:
                self.policy.check_send(agent, roles, msg_type)
            state.received += 1
            return self._route(agent, state, msg_type, topic, payload, now=now, session=session)
        except NotPermittedError:
            self.refuse(agent, "denied", now=now, msg_type=msg_type, topic=topic)
            return [_refusal(agent, "denied", msg_type, topic)]
        except RemoteProtocolError as exc:
            self.refuse(agent, exc.reason, now=now, msg_type=msg_type, topic=topic)
            if exc.reason in _ANSWERED:
                return [_refusal(agent, exc.reason, msg_type, topic)]
            return []

    def _route(
        self,
        agent: str,
        state: _Agent,
        msg_type: int,
        topic: str,
        payload: object,
        *,
        now: float,
        session: int,
    ) -> list[Send]:
        if msg_type == MessageType.PING:
            return []
        if msg_type == MessageType.BYE:
            # A BYE the old connection sent just before the agent came back on a new one
            # ends only the old session.
            if session == state.session:
                self.disconnected(agent)  # the driver sees it gone and drops its connection
            return []
        if msg_type == MessageType.FORWARD:
            _check_agent_id(topic)
            if topic not in self.agents:
                # The frames go back, so the sender knows exactly what to send again as mail.
                return [Send(agent, MessageType.UNREACHABLE, payload, topic)]
            self.routed += 1
            return [Send(topic, MessageType.DELIVER, payload, agent)]
        if msg_type == MessageType.SESSION_RESET:
            _check_agent_id(topic)
            if topic in self.agents:
                return [Send(topic, MessageType.SESSION_RESET, payload, agent)]
            return []
        if msg_type == MessageType.MAIL:
            return self._store(agent, topic, payload, now=now)
        if msg_type == MessageType.MAIL_ACK:
            if type(payload) is not int or self.mailbox is None:
                raise RemoteProtocolError("MAIL_ACK without a stored id", reason="bad_mail")
            deleted = self.mailbox.ack(agent, payload)
            # Also when nothing was deleted: mail that expired while handed over is
            # acknowledged too, and must not keep its slot until the agent reconnects.
            if deleted or payload in state.mail_in_flight:
                state.mail_in_flight.discard(payload)
                return self._mail_for(agent)
            return []
        if msg_type == MessageType.SUBSCRIBE:
            if self.policy is not None:
                self.policy.check_subscribe(agent, state.roles, topic)
            subscriptions = state.subscriptions
            if topic not in subscriptions and len(subscriptions) >= self.max_subscriptions:
                raise LimitExceededError(
                    f"more than {self.max_subscriptions} subscriptions", reason="too_many_topics"
                )
            subscriptions.add(topic)
            self._subscribers.add(agent, [topic])
            return []
        if msg_type == MessageType.UNSUBSCRIBE:
            state.subscriptions.discard(topic)
            self._subscribers.discard(agent, [topic])
            return []
        if msg_type == MessageType.PUBLISH:
            if self.policy is not None:
                self.policy.check_publish(agent, state.roles, topic)
            return self._fan_out(agent, topic, payload)
        if msg_type == MessageType.BROKER_STATS:
            return [Send(agent, MessageType.BROKER_STATS, self.statistics())]
        raise RemoteProtocolError(f"message type {msg_type:#04x} to a broker", reason="bad_type")

    def _store(self, agent: str, recipient: str, blob: object, *, now: float) -> list[Send]:
        _check_agent_id(recipient)
        if not isinstance(blob, bytes):
            raise RemoteProtocolError("MAIL without a sealed blob", reason="bad_mail")
        if self.can_collect is not None and not self.can_collect(recipient, now):
            # It would wait out its time to live in space others need: tell the sender now.
            self.refuse(agent, "unknown_recipient", now=now, topic=recipient)
            return [Send(agent, MessageType.UNREACHABLE, "recipient not trusted", recipient)]
        if self.mailbox is None:
            return [Send(agent, MessageType.UNREACHABLE, "no mailbox", recipient)]
        try:
            stored = self.mailbox.put(recipient, agent, blob, now=now)
        except MailboxFullError as exc:
            self.refuse(agent, exc.reason, now=now)
            return [Send(agent, MessageType.UNREACHABLE, str(exc), recipient)]
        except UsageError as exc:  # larger than the mailbox takes
            self.refuse(agent, "mail_too_large", now=now)
            return [Send(agent, MessageType.UNREACHABLE, str(exc), recipient)]
        self.stored += 1
        out = [Send(agent, MessageType.MAIL_ACCEPTED, stored, recipient)]
        if recipient in self.agents:  # it came back since the sender was told it was away
            out += self._mail_for(recipient)
        return out

    def _fan_out(self, agent: str, topic: str, payload: object) -> list[Send]:
        out = [
            Send(name, MessageType.PUBLISH, [agent, payload], topic)
            for name in self._subscribers.subscribers(topic)
            if name != agent
        ]
        self.routed += len(out)
        return out

    def refuse(self, agent: str, reason: str, *, now: float, **fields: object) -> list[Send]:
        """Count and audit a refusal (here, or a send the driver could not make)."""
        self.rejected[reason] += 1
        self.audit.record("reject", now=now, peer=agent, reason=reason, **fields)
        return []

    def statistics(self) -> dict[str, Any]:
        return {
            "agents": len(self.agents),
            "routed": self.routed,
            "stored": self.stored,
            "mail_expired": self.expired,
            "mail_uncollectable": self.uncollectable,
            "mail_waiting": self.mailbox.count() if self.mailbox is not None else 0,
            "rejected": dict(self.rejected),
        }


#: Housekeeping every connected agent may send whatever its roles.
_ALWAYS_ALLOWED = frozenset(
    {
        MessageType.MAIL_ACK,
        MessageType.UNSUBSCRIBE,
        MessageType.PING,
        MessageType.BYE,
        MessageType.SESSION_RESET,
    }
)


def _check_agent_id(text: str) -> None:
    if not is_agent_id(text):
        raise RemoteProtocolError("the topic is not an agent id", reason="bad_recipient")
