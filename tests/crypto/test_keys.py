"""Identities, certificates and key files: ids, modes, O_EXCL, passphrases, damage, no leaks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pickle
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from nacl.bindings import crypto_scalarmult_base
from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from zmqcomm.crypto import key_files
from zmqcomm.crypto.key_files import (
    inspect_secret_file,
    key_file_kind,
    load_identity,
    load_public,
    save_identity,
)
from zmqcomm.crypto.keys import (
    CERT_TAG,
    Certificate,
    Identity,
    agent_id,
    agent_id_from_sender,
    check_name,
    is_agent_id,
    sender_from_agent_id,
    sender_id,
    verify_signature,
)
from zmqcomm.errors import AuthenticationError, KeyFileError, SecurityError, UsageError

FAST = {"opslimit": argon2id.OPSLIMIT_MIN, "memlimit": argon2id.MEMLIMIT_MIN}
SEED = bytes(range(32))
STATIC = bytes(range(32, 64))


@pytest.fixture
def ident() -> Identity:
    return Identity("alice", SEED, STATIC)


def _secret_texts() -> list[str]:
    """Every spelling of the fixed test secrets that must never show up anywhere."""
    texts = []
    for secret in (SEED, STATIC, SEED + STATIC):
        texts += [secret.hex(), base64.b64encode(secret).decode(), repr(secret)]
    return texts


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _assert_no_secret(exc: BaseException) -> None:
    for link in _chain(exc):
        for text in _secret_texts():
            assert text not in str(link)
            assert text not in repr(link)
            for arg in link.args:
                assert text not in str(arg)


# -- ids --------------------------------------------------------------------------------------


def test_agent_id_is_base32_of_blake2b_128_of_the_public_key(ident: Identity) -> None:
    public = bytes(SigningKey(SEED).verify_key)
    digest = hashlib.blake2b(public, digest_size=16).digest()
    assert ident.sender_id == sender_id(public) == digest
    expected = base64.b32encode(digest).decode().rstrip("=").lower()
    assert ident.agent_id == agent_id(public) == expected
    assert len(ident.agent_id) == 26 and is_agent_id(ident.agent_id)
    # A golden value: changing the id scheme breaks every deployed trust store.
    assert ident.agent_id == agent_id_from_sender(digest)
    assert agent_id(bytes(32)) == "74hsesjpis5mjrftblsy2dunvi"


def test_agent_id_round_trips_to_the_sender_id(ident: Identity) -> None:
    assert sender_from_agent_id(ident.agent_id) == ident.sender_id


@pytest.mark.parametrize("text", ["", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "a" * 25, "a" * 27, "1" * 26])
def test_malformed_agent_ids_are_refused(text: str) -> None:
    assert not is_agent_id(text)
    with pytest.raises(UsageError):
        sender_from_agent_id(text)


def test_non_canonical_agent_id_is_refused(ident: Identity) -> None:
    # The last character carries 2 spare bits; setting them names the same bytes twice.
    last = ident.agent_id[-1]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    twin = ident.agent_id[:-1] + alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(UsageError):
        sender_from_agent_id(twin)


def test_ids_need_a_32_byte_key() -> None:
    with pytest.raises(UsageError):
        sender_id(b"short")
    with pytest.raises(UsageError):
        agent_id_from_sender(b"x" * 20)


@pytest.mark.parametrize("name", ["", "../evil", ".hidden", "a/b", "a b", "x" * 65, "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_name(name)


def test_good_names_pass() -> None:
    for name in ("alice", "node-7", "svc_a.prod", "A" * 64):
        assert check_name(name) == name


# -- identities and certificates --------------------------------------------------------------


def test_identity_parts_fit_together(ident: Identity) -> None:
    assert ident.verify_key == bytes(SigningKey(SEED).verify_key)
    assert ident.static_keypair.private == STATIC
    assert ident.static_keypair.public == crypto_scalarmult_base(STATIC)
    ident.certificate.verify()
    assert ident.certificate.static_public == ident.static_keypair.public
    assert ident.public.agent_id == ident.agent_id


def test_generated_identities_differ() -> None:
    one, two = Identity.generate("a"), Identity.generate("a")
    assert one.agent_id != two.agent_id
    assert one.static_keypair.public != two.static_keypair.public


def test_sign_and_verify(ident: Identity) -> None:
    signature = ident.sign(b"hello")
    verify_signature(ident.verify_key, b"hello", signature)
    with pytest.raises(AuthenticationError):
        verify_signature(ident.verify_key, b"hellO", signature)
    with pytest.raises(AuthenticationError):
        verify_signature(ident.verify_key, b"hello", signature[:10])


def test_certificate_signs_the_documented_bytes(ident: Identity) -> None:
    cert = ident.certificate
    body = CERT_TAG + ident.verify_key + ident.static_keypair.public + bytes(8)
    SigningKey(SEED).verify_key.verify(body, cert.signature)


def test_certificate_round_trip_and_expiry(ident: Identity) -> None:
    cert = ident.issue_certificate(expires=2_000_000_000)
    decoded = Certificate.decode(cert.encode())
    assert decoded == cert
    decoded.verify(now=1_999_999_999)
    with pytest.raises(AuthenticationError) as info:
        decoded.verify(now=2_000_000_000)
    assert info.value.reason == "certificate_expired"
    # Array, version, 2 x (bin header + 32), uint64 expiry, bin header + 64: 145 at most.
    assert len(ident.issue_certificate(expires=2**63 - 1).encode()) == 145
    assert Certificate.decode(ident.issue_certificate(expires=2**63 - 1).encode()).expires


@pytest.mark.parametrize("field", ["verify_key", "static_public", "expires", "signature"])
def test_tampered_certificate_fails(ident: Identity, field: str) -> None:
    cert = ident.issue_certificate(expires=2_000_000_000)
    changes: dict[str, object] = {
        "verify_key": Identity.generate("m").verify_key,
        "static_public": os.urandom(32),
        "expires": 2_000_000_001,
        "signature": bytes(64),
    }
    forged = dataclasses.replace(cert, **{field: changes[field]})
    with pytest.raises(AuthenticationError):
        forged.verify()


def test_certificate_signed_by_another_key_fails(ident: Identity) -> None:
    other = Identity.generate("mallory")
    body = Certificate.signed_bytes(ident.verify_key, other.static_keypair.public, None)
    forged = Certificate(ident.verify_key, other.static_keypair.public, None, other.sign(body))
    with pytest.raises(AuthenticationError):
        forged.verify()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        os.urandom(100),
        b"\x00" * 300,
        msgpack.packb([1, b"x" * 32, b"y" * 32, None]),
        msgpack.packb([2, b"x" * 32, b"y" * 32, None, b"s" * 64]),
        msgpack.packb([1, b"x" * 31, b"y" * 32, None, b"s" * 64]),
        msgpack.packb([1, b"x" * 32, b"y" * 32, -5, b"s" * 64]),
        msgpack.packb([1, b"x" * 32, b"y" * 32, 1.5, b"s" * 64]),
        msgpack.packb([1, b"x" * 32, b"y" * 32, True, b"s" * 64]),
        msgpack.packb([1, "x" * 32, b"y" * 32, None, b"s" * 64]),
        msgpack.packb({"a": 1}),
        msgpack.packb([1, [[[[]]]], b"y" * 32, None, b"s" * 64]),
        msgpack.packb([1, b"x" * 1000, b"y" * 32, None, b"s" * 64]),
    ],
)
def test_garbage_certificates_are_refused(data: bytes) -> None:
    with pytest.raises(AuthenticationError) as info:
        Certificate.decode(data)
    assert info.value.reason == "bad_certificate"


def test_mismatched_certificate_is_refused(ident: Identity) -> None:
    with pytest.raises(UsageError):
        Identity("alice", SEED, os.urandom(32), certificate=ident.certificate)


def test_no_secret_in_repr_str_or_pickle(ident: Identity) -> None:
    for text in (repr(ident), str(ident), repr(ident.static_keypair), repr(ident.public)):
        for secret in _secret_texts():
            assert secret not in text
    assert ident.agent_id in repr(ident)
    with pytest.raises(TypeError):
        pickle.dumps(ident)


# -- key files --------------------------------------------------------------------------------


def test_save_writes_0600_secret_and_public_file(tmp_path: Path, ident: Identity) -> None:
    old_umask = os.umask(0)  # even with a permissive umask the secret file is owner-only
    try:
        paths = save_identity(ident, tmp_path)
    finally:
        os.umask(old_umask)
    assert paths.secret == tmp_path / "alice.key" and paths.public == tmp_path / "alice.pub"
    assert stat.S_IMODE(paths.secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.public.stat().st_mode) == 0o644
    document = json.loads(paths.public.read_text())
    assert document["format"] == "zmqcomm-public-key"
    assert document["agent_id"] == ident.agent_id
    assert document["ed25519_public"] == ident.verify_key.hex()
    assert "secret" not in document
    assert load_public(paths.public) == ident.public
    assert key_file_kind(paths.secret) == "secret" and key_file_kind(paths.public) == "public"


def test_unprotected_round_trip(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path)
    loaded = load_identity(paths.secret)
    assert loaded.agent_id == ident.agent_id
    assert loaded.static_keypair == ident.static_keypair
    assert loaded.certificate == ident.certificate
    assert loaded.sign(b"m") == ident.sign(b"m")
    document = json.loads(paths.secret.read_text())
    assert document["kdf"] is None and document["aead"] is None


def test_existing_files_are_not_overwritten(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path)
    before = paths.secret.read_bytes(), paths.public.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(Identity.generate("alice"), tmp_path)
    assert (paths.secret.read_bytes(), paths.public.read_bytes()) == before


def test_an_existing_public_file_alone_blocks_and_leaves_no_secret(tmp_path: Path) -> None:
    (tmp_path / "bob.pub").write_text("someone else's\n")
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(Identity.generate("bob"), tmp_path)
    assert not (tmp_path / "bob.key").exists()


def test_atomic_write_is_exclusive(tmp_path: Path) -> None:
    target = tmp_path / "f"
    key_files.atomic_write(target, b"one", mode=0o600, replace=False)
    with pytest.raises(KeyFileError):
        key_files.atomic_write(target, b"two", mode=0o600, replace=False)
    key_files.atomic_write(target, b"two", mode=0o600, replace=True)
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["0600", "0644"])
def test_atomic_write_shows_the_whole_file_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: bool, mode: int
) -> None:
    target = tmp_path / "f"
    real_fsync = os.fsync
    synced: list[tuple[bool, int, bool]] = []

    def watching_fsync(fd: int) -> None:
        info = os.fstat(fd)
        # (a directory?, the file's mode, is the final name there yet?)
        synced.append((stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode), target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    key_files.atomic_write(target, b"data", mode=mode, replace=replace)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"data"
    if mode == 0o600:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # The data reached the disk before the final name existed, with an owner-only mode for a
    # secret from the first byte; then the directory was synced to keep the new name.
    assert synced[0] == (False, stat.S_IMODE(target.stat().st_mode), False)
    assert synced[-1][0] and synced[-1][2]
    assert os.listdir(tmp_path) == ["f"]


class _Crash(BaseException):
    """Stands for the process dying: no ``except OSError`` cleans up after it."""


def test_a_writer_dying_midway_leaves_no_empty_file_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ident: Identity
) -> None:
    def die(fd: int) -> None:
        raise _Crash

    monkeypatch.setattr(os, "fsync", die)
    with pytest.raises(_Crash):
        key_files.atomic_write(tmp_path / "f", b"data", mode=0o644, replace=False)
    with pytest.raises(_Crash):
        save_identity(ident, tmp_path)
    monkeypatch.undo()
    # Only hidden temporaries could be left by a real crash; here even they were cleaned up.
    assert os.listdir(tmp_path) == []
    save_identity(ident, tmp_path)  # nothing in the way afterwards


def test_force_replaces_both_files(tmp_path: Path, ident: Identity) -> None:
    save_identity(ident, tmp_path)
    newer = Identity.generate("alice")
    paths = save_identity(newer, tmp_path, force=True)
    assert load_identity(paths.secret).agent_id == newer.agent_id
    assert load_public(paths.public).agent_id == newer.agent_id
    assert stat.S_IMODE(paths.secret.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["alice.key", "alice.pub"]  # no temporaries left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o700 | 0o007])
def test_loose_modes_are_refused_with_the_fix(tmp_path: Path, ident: Identity, mode: int) -> None:
    paths = save_identity(ident, tmp_path)
    paths.secret.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_identity(paths.secret)
    message = str(info.value)
    assert f"chmod 600 {paths.secret}" in message
    assert f"{mode:04o}" in message
    assert "group or others" in message
    assert isinstance(info.value, SecurityError) and isinstance(info.value, UsageError)
    _assert_no_secret(info.value)


def test_owner_only_modes_load(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path)
    paths.secret.chmod(0o400)
    assert load_identity(paths.secret).agent_id == ident.agent_id


def test_passphrase_round_trip(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path, passphrase="correct horse", **FAST)
    document = json.loads(paths.secret.read_text())
    assert document["kdf"]["alg"] == "argon2id"
    assert document["kdf"]["opslimit"] == argon2id.OPSLIMIT_MIN
    assert document["kdf"]["memlimit"] == argon2id.MEMLIMIT_MIN
    assert document["aead"] == "xchacha20poly1305-ietf"
    for secret in _secret_texts():
        assert secret not in paths.secret.read_text()
    assert inspect_secret_file(paths.secret).encrypted
    loaded = load_identity(paths.secret, passphrase="correct horse")
    assert loaded.static_keypair == ident.static_keypair
    assert load_identity(paths.secret, passphrase=b"correct horse").agent_id == ident.agent_id


def test_default_kdf_limits_are_moderate_and_patchable(
    tmp_path: Path, ident: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert key_files.DEFAULT_OPSLIMIT == argon2id.OPSLIMIT_MODERATE
    assert key_files.DEFAULT_MEMLIMIT == argon2id.MEMLIMIT_MODERATE
    monkeypatch.setattr(key_files, "DEFAULT_OPSLIMIT", argon2id.OPSLIMIT_MIN)
    monkeypatch.setattr(key_files, "DEFAULT_MEMLIMIT", argon2id.MEMLIMIT_MIN)
    paths = save_identity(ident, tmp_path, passphrase="p")
    assert json.loads(paths.secret.read_text())["kdf"]["memlimit"] == argon2id.MEMLIMIT_MIN


def test_wrong_or_missing_passphrase(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path, passphrase="right", **FAST)
    with pytest.raises(KeyFileError, match="wrong passphrase") as info:
        load_identity(paths.secret, passphrase="wrong")
    _assert_no_secret(info.value)
    with pytest.raises(KeyFileError, match="passphrase"):
        load_identity(paths.secret)
    for empty in ("", b""):
        with pytest.raises(UsageError, match="empty passphrase") as empty_info:
            load_identity(paths.secret, passphrase=empty)
        # Advice for loading, not the saving advice to give none.
        assert "is protected: give its passphrase" in str(empty_info.value)
        assert str(paths.secret) in str(empty_info.value)
        assert "unprotected" not in str(empty_info.value)


def test_empty_passphrase_and_silly_limits_are_refused(tmp_path: Path, ident: Identity) -> None:
    with pytest.raises(UsageError, match="give none to store the key unprotected"):
        save_identity(ident, tmp_path, passphrase="", **FAST)
    with pytest.raises(UsageError):
        save_identity(ident, tmp_path, passphrase="p", opslimit=0, memlimit=8192)
    assert not list(tmp_path.iterdir())


def _edit(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


#: Both fit under the 64 KiB size limit, yet json.loads raises RecursionError / ValueError
#: (Python's int digit limit) on them rather than JSONDecodeError.
_DEEP_JSON = b"[" * 20_000 + b"]" * 20_000
_LONG_INT_JSON = b'{"version": ' + b"1" * 5_000 + b"}"


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "empty",
        "not_json",
        "json_list",
        "binary",
        "wrong_format",
        "wrong_version",
        "bad_b64",
        "short_secret",
        "other_secret",
        "swapped_public",
        "bad_certificate",
        "bad_name",
        "aead_without_kdf",
        "huge",
        "deep_nesting",
        "long_integer",
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, ident: Identity, damage: str) -> None:
    path = save_identity(ident, tmp_path).secret
    text = path.read_text()
    other = Identity.generate("other")
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "empty":
        path.write_text("")
    elif damage == "not_json":
        path.write_text("secret = 'x'\n")
    elif damage == "json_list":
        path.write_text("[1, 2]")
    elif damage == "binary":
        path.write_bytes(b"\xff\xfe" + os.urandom(50))
    elif damage == "wrong_format":
        _edit(path, format="zmqcomm-public-key")
    elif damage == "wrong_version":
        _edit(path, version=2)
    elif damage == "bad_b64":
        _edit(path, secret="!!!not base64!!!")
    elif damage == "short_secret":
        _edit(path, secret=base64.b64encode(SEED).decode())
    elif damage == "other_secret":
        _edit(path, secret=base64.b64encode(other._secret_bytes()).decode())
    elif damage == "swapped_public":
        _edit(path, ed25519_public=other.verify_key.hex())
    elif damage == "bad_certificate":
        _edit(path, certificate=base64.b64encode(other.certificate.encode()).decode())
    elif damage == "bad_name":
        _edit(path, name="../../etc")
    elif damage == "aead_without_kdf":
        _edit(path, aead="xchacha20poly1305-ietf")
    elif damage == "huge":
        path.write_text(" " * 70_000 + text)
    elif damage == "deep_nesting":
        path.write_bytes(_DEEP_JSON)
    elif damage == "long_integer":
        path.write_bytes(_LONG_INT_JSON)
    with pytest.raises(KeyFileError) as info:
        load_identity(path)
    _assert_no_secret(info.value)


@pytest.mark.parametrize(
    "kdf_change",
    [
        {"memlimit": 2**42},
        {"opslimit": 10**9},
        {"opslimit": 0},
        {"opslimit": "3"},
        {"alg": "scrypt"},
        {"salt": "AAAA"},
    ],
)
def test_crafted_kdf_parameters_are_refused(
    tmp_path: Path, ident: Identity, kdf_change: dict[str, object]
) -> None:
    path = save_identity(ident, tmp_path, passphrase="p", **FAST).secret
    document = json.loads(path.read_text())
    document["kdf"].update(kdf_change)
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="not a valid zmqcomm key file"):
        load_identity(path, passphrase="p")


@pytest.mark.parametrize("field", ["nonce", "secret", "ed25519_public"])
def test_altered_sealed_file_fails_like_a_wrong_passphrase(
    tmp_path: Path, ident: Identity, field: str
) -> None:
    path = save_identity(ident, tmp_path, passphrase="p", **FAST).secret
    document = json.loads(path.read_text())
    if field == "ed25519_public":
        # Move the sealed secret into another identity's (valid) public envelope.
        (tmp_path / "donor").mkdir()
        donor = save_identity(Identity.generate("alice"), tmp_path / "donor").secret
        sealed = {k: document[k] for k in ("kdf", "aead", "nonce", "secret")}
        document = {**json.loads(donor.read_text()), **sealed}
    else:
        raw = bytearray(base64.b64decode(document[field]))
        raw[0] ^= 1
        document[field] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_identity(path, passphrase="p")


@pytest.mark.parametrize(
    ("data", "why"),
    [(_DEEP_JSON, "nested too deeply"), (_LONG_INT_JSON, "number too long")],
    ids=["deep_nesting", "long_integer"],
)
@pytest.mark.parametrize("loader", [load_public, load_identity, key_file_kind, inspect_secret_file])
def test_json_the_parser_cannot_take_is_a_corrupt_key_file(
    tmp_path: Path, data: bytes, why: str, loader: Callable[[Path], object]
) -> None:
    path = tmp_path / "x.pub"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=why) as info:
        loader(path)
    assert info.value.reason == "corrupt_key_file"
    assert str(path) in str(info.value)


def test_missing_file_directory_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_identity(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_public(tmp_path)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(fifo)


def test_public_loader_refuses_secret_files_and_vice_versa(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path)
    with pytest.raises(KeyFileError, match="format"):
        load_public(paths.secret)
    paths.public.chmod(0o600)
    with pytest.raises(KeyFileError, match="format"):
        load_identity(paths.public)


def test_inspect_reads_the_public_part_without_passphrase(tmp_path: Path, ident: Identity) -> None:
    paths = save_identity(ident, tmp_path, passphrase="p", **FAST)
    paths.secret.chmod(0o644)
    info = inspect_secret_file(paths.secret)
    assert info.public == ident.public
    assert info.encrypted and info.mode == 0o644 and not info.mode_ok
