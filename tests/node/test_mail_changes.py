"""What the tunnels record for a mail store: every change to the hold and the seen mail ids,
in order, and nothing without a store; and what they do with a store's letters at a restart.

The tunnel core is driven with fake time as in test_held_mail.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zmqcomm.crypto.audit import MemoryAuditLog
from zmqcomm.crypto.sealed import seal
from zmqcomm.errors import RemoteProtocolError
from zmqcomm.node.held_mail import (
    RETRY_FIRST,
    DropLetter,
    HeldLetter,
    KeepLetter,
    MarkSeen,
    Rewait,
    letter_key,
)
from zmqcomm.wire import MessageType, WireCodec

from .test_held_mail import NOW, Pair, acked, make_pair, payloads

_codec = WireCodec()


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path, record_mail=True)


def test_the_tunnels_record_a_hold_and_its_release_with_the_seen_id(pair: Pair) -> None:
    blob = pair.mail("held, then opened")
    out, incoming = pair.deliver(blob)
    assert acked(out) and incoming == []
    [kept] = pair.reader.mailroom.take_changes()
    assert isinstance(kept, KeepLetter) and kept.key == letter_key(blob)
    assert (kept.letter.blob, kept.letter.reason) == (blob, "unknown_peer")
    assert pair.reader.mailroom.take_changes() == []  # taken once

    pair.trust_alice()
    assert payloads(pair.reader.mailroom.retry_held(now=NOW)) == ["held, then opened"]
    # Out of the hold and seen: one write, so a crash cannot keep one and lose the other.
    dropped, seen = pair.reader.mailroom.take_changes()
    assert dropped == DropLetter(letter_key(blob))
    assert isinstance(seen, MarkSeen) and seen.sealed_at == NOW


def test_the_tunnels_record_mail_that_opens_at_once_and_nothing_for_refused_mail(
    pair: Pair, tmp_path: Path
) -> None:
    pair.trust_alice()
    blob = pair.mail("at once")
    out, incoming = pair.deliver(blob)
    assert acked(out) and payloads(incoming) == ["at once"]
    [seen] = pair.reader.mailroom.take_changes()
    assert isinstance(seen, MarkSeen)
    # A repeat is dropped by its id and changes nothing.
    out, incoming = pair.deliver(blob)
    assert acked(out) and incoming == [] and pair.reader.mailroom.repeats == 1
    assert pair.reader.mailroom.take_changes() == []
    # Mail sealed for someone else never opens: refused, not held, nothing to write.
    other = make_pair(tmp_path / "other")
    out, incoming = pair.deliver(other.mail("not for dave"))
    assert acked(out) and incoming == [] and pair.reader.mailroom.take_changes() == []


def test_a_changed_reason_is_recorded(pair: Pair) -> None:
    pair.trust_alice()
    blob = pair.mail("early", now=NOW + 1000)
    pair.deliver(blob, now=NOW)
    pair.reader.mailroom.take_changes()
    assert pair.dave_trust.remove(pair.alice.agent_id)  # now it waits for the trust store
    assert pair.reader.mailroom.retry_held(now=NOW + 900) == []
    assert pair.reader.mailroom.take_changes() == [Rewait(letter_key(blob), "unknown_peer")]


def test_without_a_store_nothing_is_recorded(tmp_path: Path) -> None:
    plain = make_pair(tmp_path)
    plain.deliver(plain.mail("held"))
    assert len(plain.reader.mailroom.held) == 1 and plain.reader.mailroom.take_changes() == []


def test_letters_the_smaller_hold_has_no_room_for_are_given_up_counted(
    pair: Pair, tmp_path: Path
) -> None:
    letters = [
        HeldLetter(pair.mail(f"m{n}"), pair.alice.agent_id, "unknown_peer", NOW + n)
        for n in range(3)
    ]
    small = make_pair(tmp_path / "small", max_held_mail=2, record_mail=True)
    small.reader.mailroom.restore(letters, [], now=NOW)
    assert len(small.reader.mailroom.held) == 2
    assert small.reader.dropped == {"held_mail_overflow": 1}
    # The oldest goes, and goes from the file too.
    assert small.reader.mailroom.take_changes() == [DropLetter(letter_key(letters[0].blob))]
    [line] = small.audit.events("reject", reason="held_mail_overflow")
    assert line["waited"] == "unknown_peer"


def test_malformed_mail_is_refused_as_before_and_records_nothing(pair: Pair) -> None:
    # Garbage where the sealed blob goes: acknowledged, refused and counted, never kept.
    out, incoming = pair.deliver(b"\x00not sealed mail at all" * 10)
    assert acked(out) and incoming == []
    assert sum(pair.reader.table.rejected.values()) == 1 and len(pair.reader.mailroom.held) == 0
    # A MAIL_DELIVER without its id and blob raises (the driver counts it) and records nothing.
    frames = _codec.encode(MessageType.MAIL_DELIVER, ["no id"], topic=pair.alice.agent_id)
    with pytest.raises(RemoteProtocolError):
        pair.reader.on_hop(_codec.decode(frames), now=NOW)
    assert pair.reader.mailroom.take_changes() == []


def mail_with_id(pair: Pair, mail_id: bytes, text: str) -> bytes:
    """Mail from alice to dave, sealed by hand with the id she chose."""
    public = pair.sender.trust.lookup(pair.dave.agent_id, now=NOW).public
    [frame] = _codec.encode(MessageType.DATA, [mail_id, text], topic="")
    return seal(bytes(frame), sender=pair.alice, recipient=public, now=NOW)


@pytest.mark.parametrize("size", [0, 7, 9, 500_000])
def test_mail_whose_id_is_not_the_honest_size_is_refused_and_never_recorded(
    pair: Pair, size: int
) -> None:
    # Ids are remembered (in memory and in the store): a trusted sender choosing 100,000
    # ids of 500 kB would fill both. Honest ids are MAIL_ID_SIZE random bytes.
    pair.trust_alice()
    out, incoming = pair.deliver(mail_with_id(pair, os.urandom(size), "odd id"))
    assert acked(out) and incoming == []
    assert pair.reader.table.rejected == {"bad_mail": 1}
    assert pair.audit.events("reject", reason="bad_mail")
    assert pair.reader.mailroom.take_changes() == [] and len(pair.reader.mailroom.held) == 0
    # An honest one opens.
    out, incoming = pair.deliver(mail_with_id(pair, os.urandom(8), "honest id"))
    assert payloads(incoming) == ["honest id"]


class RaisingAudit(MemoryAuditLog):
    """An audit sink that fails once, on one event or reason (an application's own sink)."""

    def __init__(self, fail_on: str) -> None:
        super().__init__()
        self.fail_on = fail_on

    def _emit(self, entry: dict[str, Any], line: str) -> None:
        if self.fail_on in (entry.get("event"), entry.get("reason")):
            self.fail_on = ""
            raise RuntimeError("audit sink down")
        super()._emit(entry, line)


def test_an_audit_sink_raising_mid_hold_leaves_the_records_matching_memory(
    tmp_path: Path,
) -> None:
    small = make_pair(tmp_path, record_mail=True, max_held_mail=1)
    first, second = small.mail("first"), small.mail("second")
    small.deliver(first)
    small.reader.mailroom.take_changes()
    small.reader.mailroom.audit = RaisingAudit("held_mail_overflow")
    with pytest.raises(RuntimeError):
        small.deliver(second)  # pushes "first" out, and its audit line fails
    # Memory holds "second": so must the records, or the broker's next copy ("again",
    # acknowledged, nothing recorded) would leave it in memory only, lost by a crash.
    assert small.reader.mailroom.take_changes() == [
        DropLetter(letter_key(first)),
        KeepLetter(
            letter_key(second), HeldLetter(second, small.alice.agent_id, "unknown_peer", NOW)
        ),
    ]
    out, _ = small.deliver(second)
    assert acked(out) and small.reader.mailroom.take_changes() == []


def test_an_audit_sink_raising_mid_retry_loses_no_opened_mail(pair: Pair) -> None:
    blobs = [pair.mail("a"), pair.mail("b")]
    for blob in blobs:
        pair.deliver(blob)
    pair.reader.mailroom.take_changes()
    pair.trust_alice()
    pair.reader.mailroom.audit = RaisingAudit("mail_released")
    with pytest.raises(RuntimeError):
        pair.reader.mailroom.retry_held(now=NOW + RETRY_FIRST)
    # What opened before the audit failed is out of the hold and marked seen: it comes out
    # of the next call (due at once), not lost with the exception; the rest on its schedule.
    assert pair.reader.next_deadline(NOW + RETRY_FIRST) == 0.0
    delivered = payloads(pair.reader.mailroom.retry_held(now=NOW + RETRY_FIRST))
    assert len(delivered) == 1
    delivered += payloads(pair.reader.mailroom.retry_held(now=NOW + 10 * RETRY_FIRST))
    assert sorted(delivered) == ["a", "b"] and len(pair.reader.mailroom.held) == 0
    changes = pair.reader.mailroom.take_changes()
    assert sorted(c.key for c in changes if isinstance(c, DropLetter)) == sorted(
        letter_key(blob) for blob in blobs
    )
    assert len([c for c in changes if isinstance(c, MarkSeen)]) == 2
