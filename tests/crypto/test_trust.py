"""The trust store: add, lookup, roles, expiry, revocation (here and by others), TOFU pinning."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from zmqcomm.crypto.key_files import public_file_bytes, save_identity
from zmqcomm.crypto.keys import Identity, PublicIdentity
from zmqcomm.crypto.trust import TrustStore, _stat_key, format_time, parse_time
from zmqcomm.errors import AuthenticationError, KeyFileError, UnknownPeerError, UsageError

NOW = 1_800_000_000.0


@pytest.fixture
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust")


def _reason(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(getattr(exc_info.value, "reason", ""))


def test_add_and_lookup_with_roles(store: TrustStore, alice: Identity) -> None:
    entry = store.add(alice.public, ["worker", "sensor"])
    assert entry.roles == frozenset({"worker", "sensor"})
    assert entry.path == store.directory / f"{alice.agent_id}.pub"
    found = store.lookup(alice.agent_id, now=NOW)
    assert found == entry and found.name == "alice" and not found.pinned
    assert found.verify_key == alice.verify_key and found.sender_id == alice.sender_id
    assert alice.agent_id in store and len(store) == 1
    document = json.loads(entry.path.read_text())
    assert document["roles"] == ["sensor", "worker"] and document["expires"] is None


def test_entries_survive_a_restart(tmp_path: Path, alice: Identity) -> None:
    TrustStore(tmp_path).add(alice.public, ["worker"])
    again = TrustStore(tmp_path)
    assert again.lookup(alice.agent_id, now=NOW).roles == {"worker"}


def test_add_from_pub_file_and_from_certificate(store: TrustStore, tmp_path: Path) -> None:
    bob, carol = Identity.generate("bob"), Identity.generate("carol")
    (tmp_path / "keys").mkdir()
    paths = save_identity(bob, tmp_path / "keys")
    assert store.add(paths.public).name == "bob"
    assert store.add(carol.certificate, ["x"]).name == carol.agent_id
    assert {e.agent_id for e in store.entries()} == {bob.agent_id, carol.agent_id}


def test_add_refuses_forged_certificates_and_bad_roles(store: TrustStore, alice: Identity) -> None:
    forged = dataclasses.replace(alice.certificate, static_public=os.urandom(32))
    with pytest.raises(AuthenticationError):
        store.add(forged)
    for roles in ("worker", ["has space"], [""], ["x" * 65]):
        with pytest.raises(UsageError):
            store.add(alice.public, roles)  # type: ignore[arg-type]
    assert len(store) == 0


def test_add_again_updates_roles_in_place(store: TrustStore, alice: Identity) -> None:
    first = store.add(alice.public, ["a"])
    second = store.add(alice.public, ["b"])
    assert second.path == first.path and second.roles == {"b"}
    assert sorted(os.listdir(store.directory)) == [first.path.name]


def test_generation_goes_up_on_every_change_and_only_then(
    store: TrustStore, alice: Identity, tmp_path: Path
) -> None:
    seen = [store.generation]

    def changed() -> bool:
        seen.append(store.generation)
        return seen[-1] > seen[-2]

    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW)
    assert not changed()
    store.add(alice.public)
    assert changed()
    store.lookup(alice.agent_id, now=NOW)
    assert not changed()
    store.revoke(alice.agent_id)
    assert changed()
    store.reload()  # finds what it had: waiting mail must not be retried for it
    assert not changed()
    # Another process writes a key file: seen at the next full check.
    bob = Identity.generate("bob")
    (store.directory / f"{bob.agent_id}.pub").write_bytes(public_file_bytes(bob.public))
    store.lookup(bob.agent_id, now=NOW + 10)
    assert changed()


def test_unknown_peer(store: TrustStore, alice: Identity) -> None:
    with pytest.raises(UnknownPeerError) as info:
        store.lookup(alice.agent_id, now=NOW)
    assert _reason(info) == "unknown_peer"


def test_trust_expiry(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public, ["w"], expires="2027-01-15T00:00:00Z")
    limit = datetime(2027, 1, 15, tzinfo=timezone.utc).timestamp()
    assert store.lookup(alice.agent_id, now=limit - 1).expires == limit
    with pytest.raises(UnknownPeerError) as info:
        store.lookup(alice.agent_id, now=limit)
    assert _reason(info) == "trust_expired"
    assert "2027-01-15T00:00:00Z" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (12.5, 12.5),
        ("1970-01-01T00:01:00Z", 60.0),
        ("1970-01-01T00:01:00", 60.0),
        ("1970-01-01T01:01:00+01:00", 60.0),
        ("1970-01-02", 86400.0),
        (datetime(1970, 1, 1, 0, 1, tzinfo=timezone(timedelta(hours=0))), 60.0),
    ],
)
def test_parse_time(value: object, expected: float | None) -> None:
    assert parse_time(value) == expected  # type: ignore[arg-type]


def test_parse_time_refuses_nonsense() -> None:
    with pytest.raises(UsageError):
        parse_time("next tuesday")
    assert format_time(60.0) == "1970-01-01T00:01:00Z"


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+14:00",  # parses, but is before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # parses, but is year 10000 in UTC
        float("nan"),
        float("inf"),
        10.0**20,
        True,
        [2027],
    ],
)
def test_parse_time_refuses_times_it_could_not_write_back(value: object) -> None:
    with pytest.raises(UsageError):
        parse_time(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("roles", [5, [["worker"]], [5], {"worker": 1}, True])
def test_roles_of_the_wrong_type_are_a_bad_file_not_a_crash(
    store: TrustStore, alice: Identity, roles: object
) -> None:
    good = store.add(Identity.generate("bob").public, ["w"])
    entry = store.add(alice.public, ["worker"])
    assert store.lookup(alice.agent_id, now=NOW).roles == {"worker"}
    document = json.loads(entry.path.read_text())
    document["roles"] = roles
    entry.path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match=entry.path.name):
        TrustStore(store.directory)
    # The watching lookup (every message) skips the file and records why.
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW + 10)
    assert "roles" in store.problems[entry.path]
    assert store.lookup(good.agent_id, now=NOW + 10).roles == {"w"}


@pytest.mark.parametrize("expires", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_an_expiry_out_of_range_is_a_bad_file_not_a_crash(
    store: TrustStore, alice: Identity, expires: str
) -> None:
    entry = store.add(alice.public)
    document = json.loads(entry.path.read_text())
    document["expires"] = expires
    entry.path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match=entry.path.name):
        TrustStore(store.directory)
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW + 10)
    assert "out of range" in store.problems[entry.path]


def test_add_refuses_roles_and_expiries_of_the_wrong_kind(
    store: TrustStore, alice: Identity
) -> None:
    for roles in (5, [["worker"]]):
        with pytest.raises(UsageError):
            store.add(alice.public, roles)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        store.add(alice.public, expires=float("nan"))
    assert list(store.directory.iterdir()) == []


def test_revocation_takes_effect_at_once(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public, ["w"])
    store.lookup(alice.agent_id, now=NOW)
    assert store.revoke(alice.agent_id) is True
    with pytest.raises(UnknownPeerError) as info:
        store.lookup(alice.agent_id, now=NOW)
    assert _reason(info) == "revoked"
    assert (store.revoked_directory / f"{alice.agent_id}.pub").exists()
    assert alice.agent_id in store.revoked() and alice.agent_id not in store


def test_revocation_beats_a_copied_back_file(store: TrustStore, alice: Identity) -> None:
    entry = store.add(alice.public)
    store.revoke(alice.agent_id)
    shutil.copy(store.revoked_directory / entry.path.name, entry.path)
    with pytest.raises(UnknownPeerError):
        TrustStore(store.directory).lookup(alice.agent_id, now=NOW)
    store.add(alice.public, ["back"])  # only an explicit add lifts a revocation
    assert TrustStore(store.directory).lookup(alice.agent_id, now=NOW).roles == {"back"}


def test_revoking_an_unknown_id_leaves_a_marker(store: TrustStore, alice: Identity) -> None:
    assert store.revoke(alice.agent_id) is False
    assert (store.revoked_directory / f"{alice.agent_id}.revoked").exists()
    with pytest.raises(UsageError):
        store.revoke("not-an-id")


def test_revocation_by_another_process_counts_after_the_revocation_interval(
    store: TrustStore, alice: Identity
) -> None:
    store.add(alice.public, ["w"])
    store.lookup(alice.agent_id, now=NOW)
    TrustStore(store.directory).revoke(alice.agent_id)  # stands in for another process
    store.lookup(alice.agent_id, now=NOW + store.revocation_interval / 2)  # not looked yet
    with pytest.raises(UnknownPeerError) as info:
        store.lookup(alice.agent_id, now=NOW + 2 * store.revocation_interval)
    assert _reason(info) == "revoked"


def test_with_no_revocation_interval_an_outside_revocation_counts_on_the_next_lookup(
    tmp_path: Path, alice: Identity
) -> None:
    store = TrustStore(tmp_path, revocation_interval=0)
    store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW)
    TrustStore(store.directory).revoke(alice.agent_id)  # another process, say the CLI
    with pytest.raises(UnknownPeerError) as caught:
        store.lookup(alice.agent_id, now=NOW)
    assert caught.value.reason == "revoked"


def test_a_revocation_through_the_same_store_counts_at_once(
    store: TrustStore, alice: Identity
) -> None:
    store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW)
    store.revoke(alice.agent_id)
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW)


@pytest.mark.parametrize("interval", [-1.0, float("nan")])
def test_a_negative_or_missing_revocation_interval_is_refused(
    tmp_path: Path, interval: float
) -> None:
    with pytest.raises(UsageError, match="revocation_interval"):
        TrustStore(tmp_path, revocation_interval=interval)


def test_a_deleted_file_counts_after_the_watch_interval(store: TrustStore, alice: Identity) -> None:
    entry = store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW)
    entry.path.unlink()
    store.lookup(alice.agent_id, now=NOW + store.watch_interval / 2)  # not looked for yet
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW + store.watch_interval)


def test_with_no_interval_a_deleted_file_counts_on_the_next_lookup(
    tmp_path: Path, alice: Identity
) -> None:
    store = TrustStore(tmp_path, watch_interval=0)
    entry = store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW)
    entry.path.unlink()
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW)


def test_a_deleted_file_is_noticed_even_if_the_directory_looks_unchanged(
    tmp_path: Path, alice: Identity
) -> None:
    store = TrustStore(tmp_path, watch_interval=0)
    entry = store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW)
    entry.path.unlink()
    # As if the directory's timestamp had not moved (coarse file system clocks).
    store._snapshot = (_stat_key(store.directory), _stat_key(store.revoked_directory))
    with pytest.raises(UnknownPeerError):
        store.lookup(alice.agent_id, now=NOW)


def test_files_added_by_others_are_picked_up(store: TrustStore, tmp_path: Path) -> None:
    bob = Identity.generate("bob")
    other = tmp_path / "other"
    other.mkdir()
    paths = save_identity(bob, other)
    shutil.copy(paths.public, store.directory / "bob.pub")
    assert store.lookup(bob.agent_id, now=NOW).name == "bob"


def test_without_watch_only_reload_sees_outside_changes(tmp_path: Path, alice: Identity) -> None:
    quiet = TrustStore(tmp_path, watch=False)
    quiet.add(alice.public)
    TrustStore(tmp_path).revoke(alice.agent_id)
    assert quiet.lookup(alice.agent_id, now=NOW)  # still cached
    quiet.reload()
    with pytest.raises(UnknownPeerError):
        quiet.lookup(alice.agent_id, now=NOW)


def test_lookup_checks_the_key_when_given(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public)
    store.lookup(alice.agent_id, now=NOW, verify_key=alice.verify_key)
    with pytest.raises(AuthenticationError) as info:
        store.lookup(alice.agent_id, now=NOW, verify_key=os.urandom(32))
    assert _reason(info) == "key_changed"


def test_lookup_by_sender_id(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public, ["w"])
    assert store.lookup_sender(alice.sender_id, now=NOW).agent_id == alice.agent_id
    with pytest.raises(UnknownPeerError):
        store.lookup_sender(b"short", now=NOW)


def test_check_certificate(store: TrustStore) -> None:
    seed = os.urandom(32)
    alice = Identity("alice", seed, os.urandom(32))
    store.add(alice.public, ["w"])
    assert store.check_certificate(alice.certificate, now=NOW).roles == {"w"}
    # A trusted (not pinned) Ed25519 key may vouch for a new static key: the signature decides.
    rotated = Identity("alice", seed, os.urandom(32))
    assert store.check_certificate(rotated.certificate, now=NOW).agent_id == alice.agent_id
    forged = dataclasses.replace(alice.certificate, static_public=os.urandom(32))
    with pytest.raises(AuthenticationError):
        store.check_certificate(forged, now=NOW)
    expiring = alice.issue_certificate(expires=int(NOW))
    with pytest.raises(AuthenticationError) as info:
        store.check_certificate(expiring, now=NOW)
    assert _reason(info) == "certificate_expired"


def test_unknown_certificate_without_tofu_is_refused_and_not_pinned(
    store: TrustStore, alice: Identity
) -> None:
    with pytest.raises(UnknownPeerError):
        store.check_certificate(alice.certificate, now=NOW)
    assert list(store.directory.iterdir()) == []


def test_tofu_pins_on_first_sight_and_then_refuses_a_changed_key(tmp_path: Path) -> None:
    seed = os.urandom(32)
    first = Identity("alice", seed, os.urandom(32))
    store = TrustStore(tmp_path, tofu=True, tofu_roles=["guest"])
    entry = store.check_certificate(first.certificate, now=NOW)
    assert entry.pinned and entry.roles == {"guest"}
    document = json.loads(entry.path.read_text())
    assert document["pinned"] is True and document["pinned_at"] == format_time(NOW)
    assert store.check_certificate(first.certificate, now=NOW + 1) == entry
    # Same Ed25519 key, another X25519 key: the pin says no, here and after a restart.
    changed = Identity("alice", seed, os.urandom(32))
    for view in (store, TrustStore(tmp_path, tofu=True)):
        with pytest.raises(AuthenticationError, match="key changed for pinned peer") as info:
            view.check_certificate(changed.certificate, now=NOW + 2)
        assert _reason(info) == "key_changed"


def test_a_second_process_pinning_the_same_peer_meanwhile_accepts_it(
    tmp_path: Path, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = TrustStore(tmp_path, tofu=True), TrustStore(tmp_path, tofu=True)
    real_fdopen = os.fdopen
    during: list[object] = []

    def pin_meanwhile(fd: int, *args: object, **kwargs: object) -> object:
        # The first pin has its file open and nothing written yet: the second process
        # (another store on the same directory) meets the same peer right then.
        monkeypatch.setattr(os, "fdopen", real_fdopen)
        try:
            during.append(second.check_certificate(alice.certificate, now=NOW))
        except UnknownPeerError as exc:
            during.append(exc)
        return real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "fdopen", pin_meanwhile)
    entry = first.check_certificate(alice.certificate, now=NOW)
    assert entry.pinned and entry.agent_id == alice.agent_id
    assert len(during) == 1 and not isinstance(during[0], Exception)
    assert [p.name for p in tmp_path.iterdir()] == [f"{alice.agent_id}.pub"]


def test_an_empty_leftover_pin_file_pins_nothing(tmp_path: Path, alice: Identity) -> None:
    store = TrustStore(tmp_path, tofu=True)
    # What a writer that crashed between creating the file and filling it used to leave.
    leftover = tmp_path / f"{alice.agent_id}.pub"
    leftover.touch()
    for attempt in range(2):
        entry = store.check_certificate(alice.certificate, now=NOW + 2 * attempt)
        assert entry.pinned and entry.path == leftover
    assert not store.problems
    assert TrustStore(tmp_path).lookup(alice.agent_id, now=NOW).pinned  # a restart is fine too


def test_a_damaged_file_in_the_way_of_a_pin_is_named(tmp_path: Path, alice: Identity) -> None:
    store = TrustStore(tmp_path, tofu=True)
    damaged = tmp_path / f"{alice.agent_id}.pub"
    damaged.write_text("{not json")  # someone's file: not ours to overwrite
    with pytest.raises(UnknownPeerError, match=r"not pinned.*not a valid zmqcomm key file"):
        store.check_certificate(alice.certificate, now=NOW)
    assert damaged.read_text() == "{not json"


def test_tofu_never_pins_a_revoked_id(tmp_path: Path, alice: Identity) -> None:
    store = TrustStore(tmp_path, tofu=True)
    store.check_certificate(alice.certificate, now=NOW)
    store.revoke(alice.agent_id)
    with pytest.raises(UnknownPeerError) as info:
        store.check_certificate(alice.certificate, now=NOW)
    assert _reason(info) == "revoked"


def test_remove_forgets_without_revoking(tmp_path: Path, alice: Identity) -> None:
    store = TrustStore(tmp_path, tofu=True)
    store.check_certificate(alice.certificate, now=NOW)
    assert store.remove(alice.agent_id) is True
    assert alice.agent_id not in store
    assert store.check_certificate(alice.certificate, now=NOW).pinned  # pinned afresh
    assert store.remove("a" * 26) is False


def test_explicit_entries_are_not_pinned(store: TrustStore, alice: Identity) -> None:
    store.add(alice.certificate)
    store.tofu = True
    assert not store.check_certificate(alice.certificate, now=NOW).pinned


def test_a_corrupt_file_fails_loading_but_not_running(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public)
    (store.directory / "junk.pub").write_text("{not json")
    with pytest.raises(KeyFileError, match=r"junk\.pub"):
        TrustStore(store.directory)
    # A running store skips the bad file, says so, and keeps serving the good ones.
    assert store.lookup(alice.agent_id, now=NOW)
    assert store.directory / "junk.pub" in store.problems


@pytest.mark.parametrize(
    "data",
    [b"[" * 20_000 + b"]" * 20_000, b'{"version": ' + b"1" * 5_000 + b"}"],
    ids=["deep_nesting", "long_integer"],
)
def test_json_the_parser_cannot_take_is_a_corrupt_file_too(
    store: TrustStore, alice: Identity, data: bytes
) -> None:
    store.add(alice.public)
    (store.directory / "junk.pub").write_bytes(data)
    with pytest.raises(KeyFileError, match=r"junk\.pub"):
        TrustStore(store.directory)
    # The watching lookup on the message path skips it and keeps serving the good entries.
    assert store.lookup(alice.agent_id, now=NOW + 10)
    assert store.directory / "junk.pub" in store.problems


def test_bad_extra_fields_are_refused(store: TrustStore, alice: Identity) -> None:
    entry = store.add(alice.public)
    for change in ({"roles": "worker"}, {"expires": 5}, {"pinned": "yes"}, {"expires": "soon"}):
        document = json.loads(entry.path.read_text())
        document.update(change)
        entry.path.write_text(json.dumps(document))
        with pytest.raises(KeyFileError):
            store.reload()


def test_the_same_key_twice_is_refused(store: TrustStore, alice: Identity) -> None:
    entry = store.add(alice.public)
    shutil.copy(entry.path, store.directory / "copy.pub")
    with pytest.raises(KeyFileError, match="repeats agent id"):
        store.reload()


def test_temporary_and_other_files_are_ignored(store: TrustStore, alice: Identity) -> None:
    store.add(alice.public)
    (store.directory / ".x.pub.1234.tmp").write_text("partial")
    (store.directory / ".hidden.pub").write_text("partial")
    (store.directory / "README").write_text("notes")
    store.reload()
    assert len(store) == 1 and not store.problems


def test_a_secret_file_is_not_a_trust_entry(store: TrustStore, tmp_path: Path) -> None:
    other = tmp_path / "k"
    other.mkdir()
    paths = save_identity(Identity.generate("bob"), other)
    shutil.copy(paths.secret, store.directory / "bob.pub")
    with pytest.raises(KeyFileError):
        store.reload()


def test_concurrent_lookups_and_revocations(store: TrustStore) -> None:
    peers = [Identity.generate(f"p{i}") for i in range(8)]
    for peer in peers:
        store.add(peer.public, ["w"])
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(200):
                for peer in peers[:4]:
                    store.lookup(peer.agent_id, now=NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for peer in peers[4:]:
        store.revoke(peer.agent_id)
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store) == 4


def test_repr_names_the_directory(store: TrustStore) -> None:
    assert str(store.directory) in repr(store)


def test_public_identity_equality_is_by_content(alice: Identity) -> None:
    assert PublicIdentity("alice", alice.certificate) == alice.public


def test_a_key_file_caught_half_copied_is_read_once_it_is_complete(tmp_path: Path) -> None:
    """cp creates the file, then writes it: a scan in between sees a bad file. The directory
    does not change when the write completes, yet the entry must come."""
    alice = Identity.generate("alice")
    store = TrustStore(tmp_path / "t")
    target = store.directory / "alice.pub"
    with open(target, "wb") as handle:
        with pytest.raises(UnknownPeerError):
            store.lookup(alice.agent_id, now=1000.0)  # scanned while still empty
        assert target in store.problems
        handle.write(public_file_bytes(alice.public, roles=["agent"], expires=None))
    assert store.lookup(alice.agent_id, now=1002.0).roles == frozenset({"agent"})
    assert store.problems == {}


def test_a_key_file_caught_half_rewritten_in_place_comes_back(tmp_path: Path) -> None:
    alice = Identity.generate("alice")
    store = TrustStore(tmp_path / "t")
    entry = store.add(alice.public, roles=["agent"])
    store.lookup(alice.agent_id, now=1000.0)
    data = public_file_bytes(alice.public, roles=["agent", "admin"], expires=None)
    with open(entry.path, "wb") as handle:  # an editor, or cat > file
        handle.write(data[:10])
        handle.flush()
        with pytest.raises(UnknownPeerError):
            store.lookup(alice.agent_id, now=1002.0)  # scanned mid-write
        handle.write(data[10:])
    assert store.lookup(alice.agent_id, now=1004.0).roles == frozenset({"agent", "admin"})
