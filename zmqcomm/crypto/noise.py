"""The Noise Protocol Framework (revision 34), suite 25519_ChaChaPoly_BLAKE2b, sans-I/O.

zmqcomm uses the XX pattern; the other interactive patterns come almost free from the same
state machine and let the cacophony test vectors check it byte for byte. Primitives are
libsodium's, through PyNaCl's bindings, plus :mod:`hashlib` for BLAKE2b (and HMAC on it).

Pure: no clocks, sockets or randomness here. Ephemeral keys come from the caller, either
directly (``e=``) or from a ``generate_keypair`` callable, so tests and the simulator can fix
them and the drivers feed fresh ones from the OS.

A failed ``read_message`` leaves the handshake exactly as it was (the next, genuine message
still works): reads work on a copy of the state and commit only on success.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

from zmqcomm.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError

DHLEN = 32
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
#: Noise reserves the last nonce (2^64 - 1) for REKEY.
MAX_NONCE = 2**64 - 1
SUITE = "25519_ChaChaPoly_BLAKE2b"
#: Binds zmqcomm's protocol name and wire version into every handshake: a peer speaking
#: another version or suite computes another transcript and fails, so no downgrade.
ZMQCOMM_PROLOGUE = b"zmqcomm/1 Noise_XX_25519_ChaChaPoly_BLAKE2b"

# Message patterns of Noise section 7.4 (interactive). Pre-messages: (initiator, responder).
_PATTERNS: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], list[list[str]]]] = {
    "NN": (((), ()), [["e"], ["e", "ee"]]),
    "NK": (((), ("s",)), [["e", "es"], ["e", "ee"]]),
    "NX": (((), ()), [["e"], ["e", "ee", "s", "es"]]),
    "KN": ((("s",), ()), [["e"], ["e", "ee", "se"]]),
    "KK": ((("s",), ("s",)), [["e", "es", "ss"], ["e", "ee", "se"]]),
    "KX": ((("s",), ()), [["e"], ["e", "ee", "se", "s", "es"]]),
    "XN": (((), ()), [["e"], ["e", "ee"], ["s", "se"]]),
    "XK": (((), ("s",)), [["e", "es"], ["e", "ee"], ["s", "se"]]),
    "XX": (((), ()), [["e"], ["e", "ee", "s", "es"], ["s", "se"]]),
    "IN": (((), ()), [["e", "s"], ["e", "ee", "se"]]),
    "IK": (((), ("s",)), [["e", "es", "s", "ss"], ["e", "ee", "se"]]),
    "IX": (((), ()), [["e", "s"], ["e", "ee", "se", "s", "es"]]),
}


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair. The private half never appears in ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != DHLEN:
            raise LocalProtocolError(f"an X25519 private key is {DHLEN} bytes, got {len(private)}")
        return cls(private, crypto_scalarmult_base(private))


def dh(private: bytes, public: bytes) -> bytes:
    """X25519, refusing low-order public keys (they give an all-zero, attacker-known secret)."""
    if len(public) != DHLEN:
        raise RemoteProtocolError("an X25519 public key is 32 bytes", reason="bad_handshake")
    try:
        shared: bytes = crypto_scalarmult(private, public)
    except RuntimeError as exc:  # libsodium refuses an all-zero result
        raise AuthenticationError(
            "peer sent a low-order X25519 key", reason="low_order_key"
        ) from exc
    if not any(shared):  # belt and braces: never mix a zero secret
        raise AuthenticationError("peer sent a low-order X25519 key", reason="low_order_key")
    return shared


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


_BLOCKLEN = 128
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def _hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2b (RFC 2104), spelled out: ``hmac.new`` costs several times more here, and
    a handshake makes two dozen of these. Keys are at most HASHLEN bytes, never hashed."""
    padded = key.ljust(_BLOCKLEN, b"\x00")
    inner = hashlib.blake2b(padded.translate(_INNER_PAD))
    inner.update(data)
    return hashlib.blake2b(padded.translate(_OUTER_PAD) + inner.digest()).digest()


def hkdf(chaining_key: bytes, material: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise's HKDF over HMAC-BLAKE2b: two or three 64-byte outputs."""
    temp = _hmac(chaining_key, material)
    first = _hmac(temp, b"\x01")
    second = _hmac(temp, first + b"\x02")
    if outputs == 2:
        return first, second
    return first, second, _hmac(temp, second + b"\x03")


class CipherState:
    """A key and an implicit nonce counter (Noise section 5.1)."""

    __slots__ = ("key", "n")

    def __init__(self, key: bytes | None = None, n: int = 0) -> None:
        self.key = key
        self.n = n

    def __repr__(self) -> str:
        return f"CipherState(has_key={self.key is not None}, n={self.n})"

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.key is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted: rekey or start a new handshake")
        ciphertext: bytes = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, _nonce(self.n), self.key
        )
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.key is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted: rekey or start a new handshake")
        try:
            plaintext: bytes = crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self.n), self.key
            )
        except CryptoError as exc:
            raise AuthenticationError(
                "handshake message failed authentication", reason="bad_handshake_tag"
            ) from exc
        self.n += 1
        return plaintext

    def rekey(self) -> None:
        """Noise REKEY: the new key is the first 32 bytes of encrypting zeros at nonce 2^64-1."""
        if self.key is None:
            raise LocalProtocolError("cannot rekey a cipher without a key")
        self.key = crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(KEYLEN), b"", _nonce(MAX_NONCE), self.key
        )[:KEYLEN]


class SymmetricState:
    """The chaining key, the transcript hash and the handshake cipher (Noise section 5.2)."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def snapshot(self) -> tuple[bytes, bytes, bytes | None, int]:
        """The whole state in four immutable values (far cheaper than a deep copy)."""
        return self.ck, self.h, self.cipher.key, self.cipher.n

    def restore(self, saved: tuple[bytes, bytes, bytes | None, int]) -> None:
        self.ck, self.h, key, n = saved
        self.cipher = CipherState(key, n)

    def mix_key(self, material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, material, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, material: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, material, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        first, second = hkdf(self.ck, b"", 2)
        return first[:KEYLEN], second[:KEYLEN]


def parse_protocol_name(name: str) -> tuple[str, list[int]]:
    """``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b`` -> ("XX", [3])."""
    parts = name.split("_", 2)
    if len(parts) != 3 or parts[0] != "Noise" or parts[2] != SUITE:
        raise LocalProtocolError(f"unsupported Noise protocol {name!r}; the suite is {SUITE}")
    handshake = parts[1]
    base = handshake[:2]
    if base not in _PATTERNS:
        raise LocalProtocolError(f"unsupported Noise pattern {base!r} in {name!r}")
    psks: list[int] = []
    for modifier in filter(None, handshake[2:].split("+")):
        if not (modifier.startswith("psk") and modifier[3:].isdigit()):
            raise LocalProtocolError(f"unsupported Noise modifier {modifier!r} in {name!r}")
        psks.append(int(modifier[3:]))
    return base, psks


class HandshakeState:
    """One side of a Noise handshake (Noise section 5.3).

    Call :meth:`write_message` and :meth:`read_message` in the pattern's order; when
    :attr:`complete` is true, :meth:`split_keys` gives this side's (send, receive) keys.
    """

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: tuple[bytes, ...] = (),
        generate_keypair: Callable[[], KeyPair] | None = None,
    ) -> None:
        base, psk_positions = parse_protocol_name(protocol_name)
        (pre_init, pre_resp), patterns = _PATTERNS[base]
        messages = [list(tokens) for tokens in patterns]
        for position in psk_positions:
            if position == 0:
                messages[0].insert(0, "psk")
            elif position <= len(messages):
                messages[position - 1].append("psk")
            else:
                raise LocalProtocolError(f"psk{position} is past the last message of {base}")
        if len(psks) != len(psk_positions) or any(len(p) != KEYLEN for p in psks):
            raise LocalProtocolError(f"{protocol_name} needs {len(psk_positions)} 32-byte psks")
        self.initiator = initiator
        self.s, self.e, self.rs, self.re = s, e, rs, re
        self._psks = list(psks)
        self._psk_mode = bool(psk_positions)
        self._generate = generate_keypair
        self._messages = messages
        self._index = 0
        self._keys: tuple[bytes, bytes] | None = None
        self._failed = False
        self.symmetric = SymmetricState(protocol_name.encode("ascii"))
        self.symmetric.mix_hash(prologue)
        for owner_is_initiator, tokens in ((True, pre_init), (False, pre_resp)):
            for _token in tokens:  # every pre-message in these patterns is a static key
                ours = owner_is_initiator == initiator
                key = (self.s.public if self.s else None) if ours else self.rs
                if key is None:
                    side = "our" if ours else "the peer's"
                    raise LocalProtocolError(f"{base} needs {side} static key before it starts")
                self.symmetric.mix_hash(key)

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return f"HandshakeState({role}, message {self._index}/{len(self._messages)})"

    @property
    def complete(self) -> bool:
        return self._index >= len(self._messages)

    @property
    def our_turn(self) -> bool:
        return not self.complete and (self._index % 2 == 0) == self.initiator

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash: unique to this handshake, fit for channel binding."""
        return self.symmetric.h

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next message to the peer, carrying ``payload`` (encrypted once keys exist).

        A failure here (a low-order key from the peer) abandons the handshake: start anew.
        """
        if self._failed:
            raise LocalProtocolError("this handshake failed; start a new one")
        if not self.our_turn:
            raise LocalProtocolError("not our turn to write a handshake message")
        try:
            return self._write(payload)
        except BaseException:
            self._failed = True
            raise

    def _write(self, payload: bytes) -> bytes:
        out = bytearray()
        for token in self._messages[self._index]:
            if token == "e":
                if self.e is None:
                    if self._generate is None:
                        raise LocalProtocolError("no ephemeral key and no generate_keypair")
                    self.e = self._generate()
                out += self.e.public
                self.symmetric.mix_hash(self.e.public)
                if self._psk_mode:
                    self.symmetric.mix_key(self.e.public)
            elif token == "s":
                if self.s is None:
                    raise LocalProtocolError("this pattern sends our static key: pass s=")
                out += self.symmetric.encrypt_and_hash(self.s.public)
            elif token == "psk":
                self.symmetric.mix_key_and_hash(self._psks.pop(0))
            else:
                self.symmetric.mix_key(self._dh(token))
        out += self.symmetric.encrypt_and_hash(payload)
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes, check: Callable[[bytes], object] | None = None) -> bytes:
        """Process the peer's message and return its payload; on failure nothing changes.

        ``check(payload)`` runs before the message counts (the peer's certificate, say): if
        it raises, the state is as before, so a forged message cannot spoil the real one."""
        if self._failed:
            raise LocalProtocolError("this handshake failed; start a new one")
        if self.complete or self.our_turn:
            raise LocalProtocolError("not expecting a handshake message from the peer now")
        saved = (self.symmetric.snapshot(), self.re, self.rs, list(self._psks), self._index)
        try:
            payload = self._read(bytes(message))
            if check is not None:
                check(payload)
            return payload
        except BaseException:
            symmetric, self.re, self.rs, self._psks, self._index = saved
            self.symmetric.restore(symmetric)
            raise

    def _read(self, message: bytes) -> bytes:
        offset = 0
        for token in self._messages[self._index]:
            if token == "e":
                self.re = self._take(message, offset, DHLEN)
                offset += DHLEN
                self.symmetric.mix_hash(self.re)
                if self._psk_mode:
                    self.symmetric.mix_key(self.re)
            elif token == "s":
                size = DHLEN + (TAGLEN if self.symmetric.cipher.key is not None else 0)
                self.rs = self.symmetric.decrypt_and_hash(self._take(message, offset, size))
                offset += size
            elif token == "psk":
                self.symmetric.mix_key_and_hash(self._psks.pop(0))
            else:
                self.symmetric.mix_key(self._dh(token))
        rest = message[offset:]
        if self.symmetric.cipher.key is not None and len(rest) < TAGLEN:
            raise RemoteProtocolError("handshake message is truncated", reason="bad_handshake")
        payload = self.symmetric.decrypt_and_hash(rest)
        self._advance()
        return payload

    @staticmethod
    def _take(message: bytes, offset: int, size: int) -> bytes:
        if len(message) < offset + size:
            raise RemoteProtocolError("handshake message is truncated", reason="bad_handshake")
        return message[offset : offset + size]

    def _dh(self, token: str) -> bytes:
        # Which of our keys meets which of theirs, from the initiator's point of view.
        ours_is_e = {"ee": True, "ss": False, "es": self.initiator, "se": not self.initiator}
        theirs_is_e = {"ee": True, "ss": False, "es": not self.initiator, "se": self.initiator}
        mine = self.e if ours_is_e[token] else self.s
        theirs = self.re if theirs_is_e[token] else self.rs
        if mine is None or theirs is None:
            raise LocalProtocolError(f"token {token} needs keys this side does not have")
        return dh(mine.private, theirs)

    def _advance(self) -> None:
        self._index += 1
        if self.complete:
            self._keys = self.symmetric.split()

    def split_keys(self) -> tuple[bytes, bytes]:
        """This side's (send key, receive key) once the handshake is complete."""
        if self._keys is None:
            raise LocalProtocolError("the handshake is not complete")
        first, second = self._keys
        return (first, second) if self.initiator else (second, first)

    def split(self) -> tuple[CipherState, CipherState]:
        """This side's (send, receive) cipher states with Noise's implicit nonces."""
        send, receive = self.split_keys()
        return CipherState(send), CipherState(receive)


def xx_handshake(
    *,
    initiator: bool,
    static: KeyPair,
    generate_keypair: Callable[[], KeyPair],
    prologue: bytes = ZMQCOMM_PROLOGUE,
) -> HandshakeState:
    """The handshake zmqcomm runs: XX with the zmqcomm prologue."""
    return HandshakeState(
        f"Noise_XX_{SUITE}",
        initiator=initiator,
        prologue=prologue,
        s=static,
        generate_keypair=generate_keypair,
    )
