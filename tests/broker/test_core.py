"""BrokerCore, sans I/O: routing, mail hand-over, fan-out, policy, rate limits, idle agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from zmqcomm.access import Policy
from zmqcomm.broker.core import _MAIL_BATCH, BrokerCore, Send
from zmqcomm.broker.mailbox import Mailbox
from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.keys import Identity
from zmqcomm.errors import UsageError
from zmqcomm.wire import MessageType

NOW = 1_800_000_000.0
ALICE, BOB, CAROL = (Identity.generate(name).agent_id for name in ("alice", "bob", "carol"))
POLICY = Policy.from_toml(
    """
[roles.agent]
send = ["FORWARD", "MAIL", "SUBSCRIBE", "PUBLISH"]
publish = ["news/*"]
subscribe = ["news/*"]
rate = 5.0
burst = 5

[roles.listener]
send = ["SUBSCRIBE"]
subscribe = ["news/*"]
"""
)


@pytest.fixture
def core(tmp_path: Path) -> BrokerCore:
    mailbox = Mailbox(tmp_path / "mail.sqlite3")
    broker = BrokerCore(policy=POLICY, mailbox=mailbox, audit=MemoryAuditLog())
    broker.connected(ALICE, ["agent"], now=NOW)
    broker.connected(BOB, ["agent"], now=NOW)
    return broker


def test_forward_goes_to_the_recipient_named_by_the_topic(core: BrokerCore) -> None:
    sends = core.handle(ALICE, MessageType.FORWARD, BOB, [b"frame"], now=NOW)
    assert sends == [Send(BOB, MessageType.DELIVER, [b"frame"], ALICE)]


def test_forward_to_an_absent_agent_answers_unreachable(core: BrokerCore) -> None:
    sends = core.handle(ALICE, MessageType.FORWARD, CAROL, [b"frame"], now=NOW)
    assert sends == [Send(ALICE, MessageType.UNREACHABLE, [b"frame"], CAROL)]  # bounced back


def test_mail_is_stored_acknowledged_and_handed_over_on_connect(core: BrokerCore) -> None:
    accepted = core.handle(ALICE, MessageType.MAIL, CAROL, b"sealed", now=NOW)
    assert len(accepted) == 1 and accepted[0].msg_type == MessageType.MAIL_ACCEPTED
    stored = accepted[0].payload
    handed = core.connected(CAROL, ["agent"], now=NOW)
    assert handed == [Send(CAROL, MessageType.MAIL_DELIVER, [stored, b"sealed"], ALICE)]
    assert core.handle(CAROL, MessageType.MAIL_ACK, "", stored, now=NOW) == []
    assert core.mailbox is not None and core.mailbox.count(CAROL) == 0


def test_mail_for_an_agent_already_online_is_handed_over_at_once(core: BrokerCore) -> None:
    sends = core.handle(ALICE, MessageType.MAIL, BOB, b"sealed", now=NOW)
    assert [s.msg_type for s in sends] == [MessageType.MAIL_ACCEPTED, MessageType.MAIL_DELIVER]


def test_publications_fan_out_to_matching_subscribers_only(core: BrokerCore) -> None:
    core.connected(CAROL, ["listener"], now=NOW)
    assert core.handle(BOB, MessageType.SUBSCRIBE, "news/*", None, now=NOW) == []
    assert core.handle(CAROL, MessageType.SUBSCRIBE, "news/sport", None, now=NOW) == []
    sends = core.handle(ALICE, MessageType.PUBLISH, "news/today", ["ct"], now=NOW)
    assert sends == [Send(BOB, MessageType.PUBLISH, [ALICE, ["ct"]], "news/today")]


def test_policy_denials_are_refused_counted_audited_and_answered(core: BrokerCore) -> None:
    """The sender is told (an ERROR with the reason): only its owner can fix its roles, and
    a refusal it never heard of looked like success."""
    core.connected(CAROL, ["listener"], now=NOW)
    assert core.handle(CAROL, MessageType.FORWARD, BOB, [b"x"], now=NOW) == [
        Send(CAROL, MessageType.ERROR, {"reason": "denied", "type": MessageType.FORWARD}, BOB)
    ]
    assert core.handle(ALICE, MessageType.PUBLISH, "secret/x", ["ct"], now=NOW) == [
        Send(
            ALICE,
            MessageType.ERROR,
            {"reason": "denied", "type": MessageType.PUBLISH},
            "secret/x",
        )
    ]
    assert core.rejected["denied"] == 2
    audit = core.audit
    assert isinstance(audit, MemoryAuditLog)
    assert [r["peer"] for r in audit.events("reject", reason="denied")] == [CAROL, ALICE]


def test_roles_updated_after_connecting_decide_the_next_message(core: BrokerCore) -> None:
    assert core.handle(ALICE, MessageType.FORWARD, BOB, [b"x"], now=NOW) != []
    core.update_roles(ALICE, frozenset({"listener"}), now=NOW)  # demoted in the trust store
    assert [s.msg_type for s in core.handle(ALICE, MessageType.FORWARD, BOB, [b"x"], now=NOW)] == [
        MessageType.ERROR
    ]
    assert core.rejected["denied"] == 1
    core.update_roles(CAROL, frozenset({"agent"}), now=NOW)  # not connected: nothing to update
    assert CAROL not in core.agents


def _subscribers_of(core: BrokerCore, topic: str) -> list[str]:
    return [s.to for s in core.handle(ALICE, MessageType.PUBLISH, topic, ["ct"], now=NOW)]


def test_a_demoted_agent_loses_the_subscriptions_its_new_roles_forbid(core: BrokerCore) -> None:
    """Roles are re-read on each message; a subscription made under the old roles used to
    go on receiving (ciphertext, but also who publishes what and when)."""
    core.handle(BOB, MessageType.SUBSCRIBE, "news/*", None, now=NOW)
    assert _subscribers_of(core, "news/a") == [BOB]
    core.update_roles(BOB, frozenset({"observer"}), now=NOW)  # a role with no grants
    assert _subscribers_of(core, "news/b") == []
    audit = core.audit
    assert isinstance(audit, MemoryAuditLog)
    assert [r["peer"] for r in audit.events("reject", reason="subscription_ended")] == [BOB]


def test_an_idle_agent_back_with_fewer_roles_keeps_only_what_they_allow(core: BrokerCore) -> None:
    core.handle(BOB, MessageType.SUBSCRIBE, "news/*", None, now=NOW)
    core.expire_idle(now=NOW + 100, max_idle=50)
    core.connected(BOB, ["observer"], now=NOW + 100, resumed=True)  # demoted while idle
    assert core.agents[BOB].subscriptions == set()
    core.connected(ALICE, ["agent"], now=NOW + 100, resumed=True)
    assert _subscribers_of(core, "news/a") == []


def test_a_reloaded_policy_decides_the_next_message_and_ends_what_it_forbids(
    core: BrokerCore,
) -> None:
    core.connected(CAROL, ["listener"], now=NOW)
    core.handle(BOB, MessageType.SUBSCRIBE, "news/*", None, now=NOW)
    core.handle(CAROL, MessageType.SUBSCRIBE, "news/sport", None, now=NOW)
    core.expire_idle(now=NOW + 100, max_idle=50)  # both idle: their subscriptions kept aside
    core.connected(ALICE, ["agent"], now=NOW + 100, resumed=True)
    core.set_policy(
        Policy.from_toml(
            """
[roles.agent]
send = ["FORWARD", "PUBLISH"]
publish = ["news/*"]
subscribe = ["news/local"]

[roles.listener]
subscribe = ["news/*"]
"""
        ),
        now=NOW + 100,
    )
    core.connected(BOB, ["agent"], now=NOW + 100, resumed=True)
    assert core.agents[BOB].subscriptions == set()  # "news/*" is more than news/local
    refused = core.handle(BOB, MessageType.SUBSCRIBE, "news/local", None, now=NOW + 100)
    assert [s.msg_type for s in refused] == [MessageType.ERROR]
    assert core.rejected["denied"] == 1  # SUBSCRIBE is no longer a type agents may send
    core.connected(CAROL, ["listener"], now=NOW + 100, resumed=True)
    assert core.agents[CAROL].subscriptions == {"news/sport"}  # still allowed, kept while idle


def test_rate_limit_per_identity(core: BrokerCore) -> None:
    results = [core.handle(ALICE, MessageType.FORWARD, BOB, [b"x"], now=NOW) for _ in range(8)]
    assert sum(1 for r in results if r) == 5  # burst 5, then refused
    assert core.rejected["rate_limited"] == 3
    # Another identity has its own bucket; time refills Alice's.
    assert core.handle(BOB, MessageType.FORWARD, ALICE, [b"x"], now=NOW)
    assert core.handle(ALICE, MessageType.FORWARD, BOB, [b"x"], now=NOW + 1.0)


@pytest.mark.parametrize(
    ("msg_type", "topic", "payload", "reason"),
    [
        (MessageType.FORWARD, "not-an-agent", [b"x"], "bad_recipient"),
        (MessageType.MAIL, BOB, "not bytes", "bad_mail"),
        (MessageType.MAIL_ACK, "", "nope", "bad_mail"),
        (MessageType.DATA, "", None, "denied"),
    ],
)
def test_malformed_requests_are_refused_without_raising(
    core: BrokerCore, msg_type: int, topic: str, payload: object, reason: str
) -> None:
    answers = core.handle(ALICE, msg_type, topic, payload, now=NOW)
    # Garbage gets no answer (traffic an attacker would cause); a denial does.
    assert [a.msg_type for a in answers] == ([MessageType.ERROR] if reason == "denied" else [])
    assert core.rejected[reason] == 1


def test_bye_and_idle_agents_are_forgotten(core: BrokerCore) -> None:
    core.handle(ALICE, MessageType.BYE, "", None, now=NOW)
    assert ALICE not in core.agents
    core.handle(BOB, MessageType.PING, "", None, now=NOW + 10)
    assert core.expire_idle(now=NOW + 35, max_idle=30) == []
    assert core.expire_idle(now=NOW + 41, max_idle=30) == [BOB]
    assert core.handle(BOB, MessageType.FORWARD, ALICE, [b"x"], now=NOW + 42) == []
    assert core.rejected["not_connected"] == 1


def test_an_idle_agent_taken_back_on_its_session_keeps_its_subscriptions(
    core: BrokerCore,
) -> None:
    core.handle(BOB, MessageType.SUBSCRIBE, "news/today", None, now=NOW)
    assert core.expire_idle(now=NOW + 100, max_idle=30) == [ALICE, BOB]
    core.connected(ALICE, ["agent"], now=NOW + 101)  # a new session: starts afresh
    core.connected(BOB, ["agent"], now=NOW + 101, resumed=True)
    sends = core.handle(
        ALICE, MessageType.PUBLISH, "news/today", b"still listening?", now=NOW + 102
    )
    assert [send.to for send in sends] == [BOB]
    # A new session of bob's replaces the old one and what it subscribed to.
    core.connected(BOB, ["agent"], now=NOW + 103)
    assert core.handle(ALICE, MessageType.PUBLISH, "news/today", b"anyone?", now=NOW + 104) == []


def test_a_bye_from_a_replaced_session_leaves_the_new_one_connected(core: BrokerCore) -> None:
    core.connected(CAROL, ["agent"], now=NOW, session=1)
    core.connected(CAROL, ["agent"], now=NOW, session=2)  # back on a new connection
    assert core.handle(CAROL, MessageType.BYE, "", None, now=NOW, session=1) == []
    assert CAROL in core.agents
    core.handle(CAROL, MessageType.BYE, "", None, now=NOW, session=2)
    assert CAROL not in core.agents


def test_mail_a_full_queue_refused_is_handed_over_again(core: BrokerCore) -> None:
    for number in range(3):
        core.handle(ALICE, MessageType.MAIL, CAROL, bytes([number]), now=NOW)
    handed = core.connected(CAROL, ["agent"], now=NOW)
    assert len(handed) == 3
    core.hand_over_later(handed[1])  # the driver met CAROL's full queue
    assert core.retry_mail() == [handed[1]]  # that one again, and only that one
    assert core.retry_mail() == []
    # Every acknowledgement frees its slot: more mail is handed over at once.
    for send in handed:
        assert isinstance(send.payload, list)
        core.handle(CAROL, MessageType.MAIL_ACK, "", send.payload[0], now=NOW)
    later = core.handle(ALICE, MessageType.MAIL, CAROL, b"later", now=NOW)
    assert [send.msg_type for send in later][-1] == MessageType.MAIL_DELIVER


def test_subscriptions_beyond_the_limit_are_refused_counted_and_audited() -> None:
    audit = MemoryAuditLog()
    core = BrokerCore(audit=audit, max_subscriptions=2)  # no policy: no rate limit either
    core.connected(ALICE, ["agent"], now=NOW)
    core.connected(BOB, ["agent"], now=NOW)
    for topic in ("news/a", "news/b", "news/a"):  # a repeat takes no more room
        assert core.handle(BOB, MessageType.SUBSCRIBE, topic, None, now=NOW) == []
    assert core.handle(BOB, MessageType.SUBSCRIBE, "news/c", None, now=NOW) == [
        Send(
            BOB,
            MessageType.ERROR,
            {"reason": "too_many_topics", "type": MessageType.SUBSCRIBE},
            "news/c",
        )
    ]
    assert core.agents[BOB].subscriptions == {"news/a", "news/b"}
    assert core.rejected["too_many_topics"] == 1
    assert [r["topic"] for r in audit.events("reject", reason="too_many_topics")] == ["news/c"]
    assert core.handle(ALICE, MessageType.PUBLISH, "news/c", b"x", now=NOW) == []
    # Room again once it lets one go.
    core.handle(BOB, MessageType.UNSUBSCRIBE, "news/a", None, now=NOW)
    core.handle(BOB, MessageType.SUBSCRIBE, "news/c", None, now=NOW)
    assert [s.to for s in core.handle(ALICE, MessageType.PUBLISH, "news/c", b"x", now=NOW)] == [BOB]


def test_the_subscription_limit_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UsageError, match="max_subscriptions"):
            BrokerCore(max_subscriptions=bad)  # type: ignore[arg-type]


def test_mail_older_than_max_age_is_expired_counted_and_audited(core: BrokerCore) -> None:
    core.handle(ALICE, MessageType.MAIL, CAROL, b"old", now=NOW)
    core.handle(ALICE, MessageType.MAIL, CAROL, b"new", now=NOW + 50)
    assert core.expire_mail(now=NOW + 100, max_age=60) == 1
    assert core.statistics()["mail_expired"] == 1
    audit = core.audit
    assert isinstance(audit, MemoryAuditLog)
    assert [r["messages"] for r in audit.events("mail_expired")] == [1]
    (handed,) = core.connected(CAROL, ["agent"], now=NOW + 101)
    assert isinstance(handed.payload, list) and handed.payload[1] == b"new"


def test_mail_beyond_the_senders_quota_is_refused_counted_and_audited(tmp_path: Path) -> None:
    audit = MemoryAuditLog()
    mailbox = Mailbox(tmp_path / "mail.sqlite3", max_messages_per_sender=2)
    core = BrokerCore(mailbox=mailbox, audit=audit)
    core.connected(ALICE, ["agent"], now=NOW)
    core.connected(BOB, ["agent"], now=NOW)
    others = [Identity.generate(f"nobody{n}").agent_id for n in range(3)]
    for recipient in others[:2]:
        assert core.handle(ALICE, MessageType.MAIL, recipient, b"x", now=NOW)
    (refused,) = core.handle(ALICE, MessageType.MAIL, others[2], b"x", now=NOW)
    assert refused.to == ALICE and refused.msg_type == MessageType.UNREACHABLE
    assert core.rejected["sender_quota"] == 1
    assert [r["peer"] for r in audit.events("reject", reason="sender_quota")] == [ALICE]
    assert mailbox.count() == 2
    sends = core.handle(BOB, MessageType.MAIL, others[2], b"x", now=NOW)
    assert [s.msg_type for s in sends] == [MessageType.MAIL_ACCEPTED]


def test_mail_for_an_agent_that_cannot_collect_it_is_refused(tmp_path: Path) -> None:
    audit = MemoryAuditLog()
    mailbox = Mailbox(tmp_path / "mail.sqlite3")
    trusted = {ALICE, BOB}
    core = BrokerCore(mailbox=mailbox, audit=audit, can_collect=lambda agent, now: agent in trusted)
    core.connected(ALICE, ["agent"], now=NOW)
    (refused,) = core.handle(ALICE, MessageType.MAIL, CAROL, b"sealed", now=NOW)
    assert refused.to == ALICE and refused.msg_type == MessageType.UNREACHABLE
    assert isinstance(refused.payload, str) and refused.topic == CAROL  # the sender knows
    assert core.rejected["unknown_recipient"] == 1
    assert [r["topic"] for r in audit.events("reject", reason="unknown_recipient")] == [CAROL]
    assert mailbox.count() == 0 and core.stored == 0
    sends = core.handle(ALICE, MessageType.MAIL, BOB, b"sealed", now=NOW)
    assert [s.msg_type for s in sends] == [MessageType.MAIL_ACCEPTED]


def test_mail_stored_for_an_agent_revoked_later_is_dropped_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    audit = MemoryAuditLog()
    mailbox = Mailbox(tmp_path / "mail.sqlite3")
    revoked: set[str] = set()
    core = BrokerCore(mailbox=mailbox, audit=audit, revoked=lambda agent, now: agent in revoked)
    core.connected(ALICE, ["agent"], now=NOW)
    for blob in (b"one", b"two"):
        core.handle(ALICE, MessageType.MAIL, CAROL, blob, now=NOW)
    core.handle(ALICE, MessageType.MAIL, BOB, b"kept", now=NOW)
    assert core.expire_mail(now=NOW + 1, max_age=60) == 0  # all still collectable
    revoked.add(CAROL)  # it can never connect to take its mail
    assert core.expire_mail(now=NOW + 2, max_age=60) == 2
    assert mailbox.count(CAROL) == 0 and mailbox.count(BOB) == 1
    assert mailbox.statistics()["recipients"] == 1
    assert core.statistics()["mail_uncollectable"] == 2
    assert core.statistics()["mail_expired"] == 0
    (line,) = audit.events("mail_dropped")
    assert line["peer"] == CAROL and line["messages"] == 2
    assert line["reason"] == "recipient_revoked"


def _batch_and_one_more(tmp_path: Path) -> tuple[BrokerCore, list[Send]]:
    """A core with CAROL connected and handed a full batch of mail, one more waiting (the
    oldest stored a minute before the rest)."""
    mailbox = Mailbox(tmp_path / "mail.sqlite3")
    mailbox.put(CAROL, ALICE, b"old", now=NOW)
    mailbox.put_many([(CAROL, ALICE, bytes([n % 256])) for n in range(_MAIL_BATCH)], now=NOW + 60)
    core = BrokerCore(mailbox=mailbox, audit=MemoryAuditLog())
    handed = core.connected(CAROL, ["agent"], now=NOW + 60)
    assert len(handed) == _MAIL_BATCH  # the rest waits for a free slot
    return core, handed


def test_mail_that_expired_while_handed_over_frees_its_slot_at_once(tmp_path: Path) -> None:
    core, handed = _batch_and_one_more(tmp_path)
    assert core.expire_mail(now=NOW + 90, max_age=60) == 1  # the oldest, already handed over
    # The agent never acknowledges it: the slot is free anyway, and the mail that waited
    # for one goes out at the next retry.
    assert len(core.agents[CAROL].mail_in_flight) == _MAIL_BATCH - 1
    (more,) = core.retry_mail()
    assert more.msg_type == MessageType.MAIL_DELIVER and more not in handed
    assert len(core.agents[CAROL].mail_in_flight) == _MAIL_BATCH
    # A late ack of the expired mail, or of an id never handed over, frees and sends nothing.
    assert isinstance(handed[0].payload, list)
    assert core.handle(CAROL, MessageType.MAIL_ACK, "", handed[0].payload[0], now=NOW + 91) == []
    assert core.handle(CAROL, MessageType.MAIL_ACK, "", 10**9, now=NOW + 92) == []
    assert len(core.agents[CAROL].mail_in_flight) == _MAIL_BATCH


def test_mail_that_can_never_be_handed_over_is_deleted_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    core, handed = _batch_and_one_more(tmp_path)
    (more,) = core.undeliverable(handed[0])
    assert more.msg_type == MessageType.MAIL_DELIVER and more not in handed
    assert core.mailbox is not None and core.mailbox.count(CAROL) == _MAIL_BATCH
    assert core.undeliverable(Send(CAROL, MessageType.PUBLISH, [ALICE, b"x"], "t")) == []
