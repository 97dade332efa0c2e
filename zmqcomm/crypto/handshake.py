"""zmqcomm's authenticated handshake: Noise XX carrying identity certificates (pure).

Three messages, each the body of a clear wire frame (docs/protocol.md section 10)::

    INIT    initiator -> responder   suite byte || e
    REPLY   responder -> initiator   e, ee, s, es + Enc(responder certificate)
    FINISH  initiator -> responder   s, se + Enc(initiator certificate)

The prologue binds the zmqcomm protocol name and suite plus the session id and epoch from the
frame headers, so a handshake message cannot be spliced into another session or epoch, and a
peer speaking another version or suite fails instead of downgrading.

Each side checks the other's certificate: its Ed25519 signature and expiry, that the X25519
key it vouches for is the static key Noise authenticated, and that the signer is in the trust
store (which also gives the peer's roles). Ephemeral keys come from the injected
``random_bytes``, so tests and the simulator can fix them.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from zmqcomm.crypto.keys import Certificate, Identity
from zmqcomm.crypto.noise import DHLEN, TAGLEN, KeyPair, xx_handshake
from zmqcomm.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError

#: The one suite of protocol version 1; the byte leads INIT so a future suite is refused
#: explicitly ("unknown_suite") rather than failing somewhere inside Noise.
SUITE_XX_25519_CHACHAPOLY_BLAKE2B = 1
SUPPORTED_SUITES = frozenset({SUITE_XX_25519_CHACHAPOLY_BLAKE2B})
PROLOGUE_TAG = b"zmqcomm/1 Noise_XX_25519_ChaChaPoly_BLAKE2b"
INIT_SIZE = 1 + DHLEN
#: REPLY and FINISH carry an encrypted static key and an encrypted certificate (about 150
#: bytes); anything longer is refused before any cryptography.
MAX_HANDSHAKE_MESSAGE = 512

RandomBytes = Callable[[int], bytes]


class CertificateChecker(Protocol):
    """What the handshake needs from a trust store (:class:`zmqcomm.crypto.trust.TrustStore`)."""

    def check_certificate(self, certificate: Certificate, *, now: float) -> PeerInfo: ...


class PeerInfo(Protocol):
    @property
    def agent_id(self) -> str: ...

    @property
    def roles(self) -> frozenset[str]: ...


def prologue(session_id: int, epoch: int) -> bytes:
    return PROLOGUE_TAG + session_id.to_bytes(4, "big") + epoch.to_bytes(4, "big")


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed handshake agreed: keys for this side and who the peer is."""

    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    certificate: Certificate
    peer: PeerInfo
    handshake_hash: bytes = field(repr=False)

    @property
    def agent_id(self) -> str:
        return self.certificate.agent_id


class Handshake:
    """One run of the handshake on either side, for one session id and epoch.

    ``expect_peer`` (an agent id) refuses any other authenticated peer: a rekey must be with
    the same agent, and a client may pin the server it meant to reach.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        identity: Identity,
        trust: CertificateChecker,
        session_id: int,
        epoch: int,
        random_bytes: RandomBytes,
        expect_peer: str | None = None,
    ) -> None:
        self.initiator = initiator
        self.session_id = session_id
        self.epoch = epoch
        self._identity = identity
        self._trust = trust
        self._expect_peer = expect_peer
        self._noise = xx_handshake(
            initiator=initiator,
            static=identity.static_keypair,
            generate_keypair=lambda: KeyPair.from_private(random_bytes(DHLEN)),
            prologue=prologue(session_id, epoch),
        )
        self.result: HandshakeResult | None = None

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return f"Handshake({role}, session={self.session_id}, epoch={self.epoch})"

    @property
    def complete(self) -> bool:
        return self.result is not None

    def start(self) -> bytes:
        """The INIT body (initiator only)."""
        if not self.initiator:
            raise LocalProtocolError("only the initiator starts a handshake")
        return bytes([SUITE_XX_25519_CHACHAPOLY_BLAKE2B]) + self._noise.write_message()

    def respond(self, init: bytes, *, now: float) -> bytes:
        """Read INIT, return the REPLY body (responder only)."""
        if self.initiator:
            raise LocalProtocolError("the initiator does not answer INIT")
        check_init(init)
        self._noise.read_message(init[1:])
        return self._noise.write_message(self._identity.certificate.encode())

    def finish(self, reply: bytes, *, now: float) -> bytes:
        """Read REPLY, check the responder, return the FINISH body (initiator only)."""
        if not self.initiator:
            raise LocalProtocolError("the responder does not read REPLY")
        _check_size(reply)
        # Checked inside the read: a REPLY forged by whoever saw our INIT (its own key, not
        # trusted) must leave the handshake as it was, ready for the real one.
        checked: list[tuple[Certificate, PeerInfo]] = []
        self._noise.read_message(
            reply, check=lambda p: checked.append(self._check_peer(p, now=now))
        )
        body = self._noise.write_message(self._identity.certificate.encode())
        self._complete(checked[0])
        return body

    def accept(self, finish: bytes, *, now: float) -> HandshakeResult:
        """Read FINISH and check the initiator (responder only)."""
        if self.initiator:
            raise LocalProtocolError("the initiator does not read FINISH")
        _check_size(finish)
        checked: list[tuple[Certificate, PeerInfo]] = []
        self._noise.read_message(
            finish, check=lambda p: checked.append(self._check_peer(p, now=now))
        )
        return self._complete(checked[0])

    def _check_peer(self, payload: bytes, *, now: float) -> tuple[Certificate, PeerInfo]:
        certificate = Certificate.decode(payload)
        remote_static = self._noise.remote_static
        if remote_static is None or not hmac.compare_digest(
            certificate.static_public, remote_static
        ):
            raise AuthenticationError(
                "the certificate vouches for another static key than the handshake used",
                reason="static_key_mismatch",
            )
        if certificate.agent_id == self._identity.agent_id:
            raise AuthenticationError("a peer presented our own identity", reason="reflected_id")
        if self._expect_peer is not None and certificate.agent_id != self._expect_peer:
            raise AuthenticationError(
                f"expected peer {self._expect_peer}, met {certificate.agent_id}",
                reason="unexpected_peer",
            )
        return certificate, self._trust.check_certificate(certificate, now=now)

    def _complete(self, checked: tuple[Certificate, PeerInfo]) -> HandshakeResult:
        certificate, peer = checked
        send_key, receive_key = self._noise.split_keys()
        self.result = HandshakeResult(
            send_key, receive_key, certificate, peer, self._noise.handshake_hash
        )
        return self.result


def check_init(init: bytes) -> None:
    """The cheap checks on INIT, done before any state or DH is spent on it."""
    if len(init) != INIT_SIZE:
        raise RemoteProtocolError(
            f"handshake INIT of {len(init)} bytes, expected {INIT_SIZE}", reason="bad_handshake"
        )
    if init[0] not in SUPPORTED_SUITES:
        raise RemoteProtocolError(f"unknown handshake suite {init[0]}", reason="unknown_suite")


def _check_size(message: bytes) -> None:
    if not DHLEN + TAGLEN < len(message) <= MAX_HANDSHAKE_MESSAGE:
        raise RemoteProtocolError(
            f"handshake message of {len(message)} bytes", reason="bad_handshake"
        )
