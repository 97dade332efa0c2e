"""An encrypted session after the handshake: per-direction keys, counters, epochs, replay.

Pure: time comes in as ``now``, keys and jitter from the caller.

- One ChaCha20-Poly1305 key per direction (from the handshake's split). The nonce is
  ``frame index (u32 LE) || counter (u64 LE)``: the counter is the message counter carried in
  the clear header; the frame index is 0 for the body and 1.. for out-of-band frames, so every
  (key, nonce) pair is used once. The clear header is the associated data.
- Counters come from :func:`itertools.count`, whose ``next`` is atomic under the GIL, and the
  send state is replaced as one object on rekey: two threads never get the same nonce.
- Rekey after ``max_messages`` or ``max_age`` (each shortened by a random jitter fraction so a
  swarm does not rekey in lockstep). Past the hard limits the session refuses to send.
- Each epoch has its own replay window. After a rekey the previous epoch's receive key keeps
  opening messages for ``grace_period`` seconds, then is erased.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from zmqcomm.checks import check_seconds
from zmqcomm.crypto import aead
from zmqcomm.crypto.replay import ReplayWindow
from zmqcomm.errors import AuthenticationError, ReplayError, SecurityError, UsageError
from zmqcomm.wire.payload import OOB_THRESHOLD

KEY_SIZE = 32
TAG_SIZE = 16
#: Bodies and arrays at least this large are encrypted straight into their frame and opened
#: from the received buffer; below it copying is faster (a 64 B message opens 0.2 us sooner
#: by copy and seals as fast). The same 64 KiB where out-of-band arrays start.
IN_PLACE_MIN = OOB_THRESHOLD
_U32 = 2**32
#: Message counters are 64-bit (the nonce and the wire header carry a u64).
_COUNTER_LIMIT = 2**64


@dataclass(frozen=True)
class RekeyPolicy:
    """When a session rekeys, and when it refuses to go on without one."""

    max_messages: int = 1_000_000
    max_age: float = 24 * 3600.0
    #: Each limit is shortened by up to this fraction, drawn once per epoch.
    jitter: float = 0.1
    #: Past these, sending is refused until a rekey completes.
    hard_max_messages: int = 2_000_000
    hard_max_age: float = 48 * 3600.0
    #: How long the previous epoch's receive key still opens messages after a rekey.
    grace_period: float = 30.0
    #: Counters remembered per epoch for replay detection.
    window: int = 4096

    def __post_init__(self) -> None:
        # Written so NaN fails (every comparison with it is false): a NaN hard limit would
        # switch the refusal to send off.
        check_seconds(self.max_age, "rekey max_age", allow_zero=False)
        check_seconds(self.hard_max_age, "rekey hard_max_age", allow_zero=False)
        check_seconds(self.grace_period, "rekey grace_period")
        for name in ("max_messages", "hard_max_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"rekey {name} must be a whole number, got {value!r}")
        if not 1 <= self.max_messages <= self.hard_max_messages < _COUNTER_LIMIT:
            raise UsageError(
                "rekey message limits must satisfy 1 <= max_messages <= hard_max_messages "
                f"< 2**64, got {self.max_messages} and {self.hard_max_messages}"
            )
        if self.hard_max_age < self.max_age:
            raise UsageError("hard rekey limits must not be below the soft ones")
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise UsageError(f"rekey jitter is a fraction in [0, 1), got {jitter!r}")


_NONCE = struct.Struct("<IQ")


def nonce(counter: int, frame: int = 0) -> bytes:
    """The 96-bit AEAD nonce: the frame index (32 bits), then the message counter (64 bits),
    both little-endian."""
    return _NONCE.pack(frame, counter)


def _bad_tag() -> AuthenticationError:
    return AuthenticationError("message failed authentication", reason="bad_tag")


def _open_with(
    key: bytes, iv: bytes, associated: bytes, ciphertext: aead.Buffer
) -> bytes | bytearray | None:
    """The plaintext, or None when the tag does not verify; a large ciphertext is read where
    it lies (no copy), and its plaintext comes back as a bytearray."""
    if len(ciphertext) < IN_PLACE_MIN:
        return aead.decrypt(key, iv, associated, bytes(ciphertext))
    return aead.decrypt_buffer(key, iv, associated, ciphertext)


@dataclass
class _SendState:
    epoch: int
    key: bytes = field(repr=False)
    started: float
    counter: itertools.count[int] = field(default_factory=itertools.count)
    #: Messages allocated so far (approximate under threads; only the rekey trigger reads it).
    sent: int = 0


@dataclass
class _ReceiveState:
    key: bytes = field(repr=False)
    window: ReplayWindow
    #: None while current; the time the key is erased once superseded.
    expires: float | None = None


class Session:
    """Both directions of one authenticated peer relationship."""

    def __init__(
        self,
        *,
        session_id: int,
        send_key: bytes,
        receive_key: bytes,
        now: float,
        policy: RekeyPolicy | None = None,
        jitter: float = 0.0,
        epoch: int = 0,
    ) -> None:
        if not 0 <= session_id < _U32:
            raise UsageError(f"session id must fit in 32 bits, got {session_id}")
        self.session_id = session_id
        self.policy = policy if policy is not None else RekeyPolicy()
        self._receive: dict[int, _ReceiveState] = {}
        self._send = _SendState(epoch, b"", now)
        self._soft_messages = 0
        self._soft_age = 0.0
        #: The epoch whose receive key waits for our FINISH to go out (see pause_expiry).
        self._paused_epoch: int | None = None
        self.rekeys = 0
        self._install(send_key, receive_key, epoch=epoch, now=now, jitter=jitter)

    def __repr__(self) -> str:
        return f"Session(id={self.session_id}, epoch={self.epoch})"

    @property
    def epoch(self) -> int:
        return self._send.epoch

    # -- sending -----------------------------------------------------------------------------

    def allocate(self, *, now: float) -> tuple[int, int]:
        """The (epoch, counter) for the next message; refuses past the hard limits."""
        state = self._send  # read once: a concurrent rekey swaps the whole object
        counter = next(state.counter)
        state.sent = counter + 1
        if (
            counter >= self.policy.hard_max_messages
            or now - state.started >= self.policy.hard_max_age
        ):
            raise SecurityError(
                "this session is past its hard rekey limit and refuses to send; a rekey must "
                "complete first",
                reason="rekey_overdue",
            )
        return state.epoch, counter

    def encrypt(
        self, epoch: int, counter: int, associated: bytes, plaintext: bytes, *, frame: int = 0
    ) -> bytes:
        """Encrypt under the send key of ``epoch`` (the one :meth:`allocate` returned)."""
        state = self._send
        if epoch != state.epoch:
            raise SecurityError(
                "the session rekeyed since this counter was allocated", reason="stale_epoch"
            )
        return aead.encrypt(state.key, nonce(counter, frame), associated, plaintext)

    def encrypt_into(
        self,
        epoch: int,
        counter: int,
        associated: bytes,
        plaintext: aead.Buffer,
        out: bytearray | memoryview,
        *,
        frame: int = 0,
    ) -> None:
        """:meth:`encrypt` writing ciphertext + tag into ``out`` (exactly that long), reading
        ``plaintext`` in place: no copy of a large body or array."""
        state = self._send
        if epoch != state.epoch:
            raise SecurityError(
                "the session rekeyed since this counter was allocated", reason="stale_epoch"
            )
        aead.encrypt_into(state.key, nonce(counter, frame), associated, plaintext, out)

    def needs_rekey(self, *, now: float) -> bool:
        state = self._send
        return state.sent >= self._soft_messages or now - state.started >= self._soft_age

    def rekey_deadline(self) -> float:
        """When age alone makes a rekey due (for the driver's timer)."""
        return self._send.started + self._soft_age

    # -- receiving ---------------------------------------------------------------------------

    def decrypt(
        self,
        epoch: int,
        counter: int,
        associated: bytes,
        ciphertext: aead.Buffer,
        *,
        now: float,
        frame: int = 0,
        accept: bool = True,
    ) -> bytes | bytearray:
        """Open a message; replay is checked before and recorded only after the tag verifies.

        ``ciphertext`` (a byte buffer) is read in place from IN_PLACE_MIN bytes: a view of a
        large received frame needs no copy, and its plaintext comes back as a bytearray.

        For a message of several frames, pass ``accept=False`` for all but the last, so the
        counter is recorded once every frame has opened.
        """
        state = self._receive.get(epoch)
        if state is None or (state.expires is not None and now >= state.expires):
            raise ReplayError(
                f"no key for epoch {epoch} (expired or never agreed)", reason="stale_epoch"
            )
        if not state.window.check(counter):
            raise ReplayError(f"message {counter} of epoch {epoch} was replayed or is too old")
        plaintext = _open_with(state.key, nonce(counter, frame), associated, ciphertext)
        if plaintext is None:
            raise _bad_tag()
        if accept:
            state.window.accept(counter)
        return plaintext

    def open_current(
        self, epoch: int, counter: int, associated: bytes, ciphertext: aead.Buffer
    ) -> bytes | bytearray | None:
        """:meth:`decrypt` for a one-frame message under the current receive key; None, with
        nothing changed, for anything else (an older epoch, a counter the window refuses, a
        tag that does not verify): :meth:`decrypt` then says which, and knows whether an
        older key has expired."""
        state = self._receive.get(epoch)
        if state is None or state.expires is not None:
            return None
        window = state.window
        if not window.check(counter):
            return None
        plaintext = _open_with(state.key, _NONCE.pack(0, counter), associated, ciphertext)
        if plaintext is not None:
            window.accept(counter)
        return plaintext

    # -- rotation ----------------------------------------------------------------------------

    def install(
        self, send_key: bytes, receive_key: bytes, *, now: float, jitter: float = 0.0
    ) -> int:
        """Switch to keys from a fresh handshake; returns the new epoch."""
        epoch = self.epoch + 1
        if epoch >= _U32:
            raise SecurityError(
                "epoch space exhausted: open a new session", reason="epoch_overflow"
            )
        for state in self._receive.values():
            if state.expires is None:
                state.expires = now + self.policy.grace_period
        self._install(send_key, receive_key, epoch=epoch, now=now, jitter=jitter)
        self.rekeys += 1
        return epoch

    def pause_expiry(self, *, now: float) -> None:
        """Keep the receive key of the epoch before the current one open until
        :meth:`resume_expiry`, for at most ``hard_max_age`` seconds.

        For the initiator of a rekey whose FINISH waits to be sent (the peer's queue is
        full): the peer switches keys only when that FINISH arrives, and seals under the
        previous epoch until then. Were that key erased ``grace_period`` after the switch
        regardless, everything the peer sent meanwhile would be refused. Only that epoch:
        older ones keep their expiry. The cap is the longest the peer may seal under one
        key at all; a peer that never reads cannot keep it open longer."""
        epoch = self.epoch - 1
        state = self._receive.get(epoch)
        if state is None or state.expires is None or self._paused_epoch == epoch:
            return
        self._paused_epoch = epoch
        state.expires = max(state.expires, now + self.policy.hard_max_age)

    def resume_expiry(self, *, now: float) -> None:
        """The FINISH went out: the paused key gets one grace period from ``now``."""
        epoch, self._paused_epoch = self._paused_epoch, None
        state = None if epoch is None else self._receive.get(epoch)
        if state is not None and state.expires is not None:
            state.expires = min(state.expires, now + self.policy.grace_period)

    def next_deadline(self) -> float | None:
        """When a superseded receive key is due to be erased."""
        expiries = [s.expires for s in self._receive.values() if s.expires is not None]
        return min(expiries) if expiries else None

    def on_timer(self, *, now: float) -> None:
        if len(self._receive) < 2:
            return  # only the current key, which never expires (this runs on every send)
        for epoch in [
            e for e, s in self._receive.items() if s.expires is not None and now >= s.expires
        ]:
            del self._receive[epoch]

    @property
    def open_epochs(self) -> list[int]:
        return sorted(self._receive)

    def _install(
        self, send_key: bytes, receive_key: bytes, *, epoch: int, now: float, jitter: float
    ) -> None:
        if len(send_key) != KEY_SIZE or len(receive_key) != KEY_SIZE:
            raise UsageError("session keys are 32 bytes each")
        if not 0 <= jitter < 1:
            raise UsageError(f"jitter is a fraction in [0, 1), got {jitter}")
        shorten = 1.0 - jitter * self.policy.jitter
        self._soft_messages = max(1, int(self.policy.max_messages * shorten))
        self._soft_age = self.policy.max_age * shorten
        self._receive[epoch] = _ReceiveState(receive_key, ReplayWindow(self.policy.window))
        self._send = _SendState(epoch, send_key, now)


def keeps_initiator_role(our_id: bytes, their_id: bytes) -> bool:
    """Both sides started a rekey at once: which one keeps its handshake as initiator?

    The side with the smaller sender id; the other abandons its own attempt and answers.
    Both compute the same answer from the same two ids, so exactly one handshake survives.
    """
    if our_id == their_id:
        raise SecurityError("a peer presented our own id", reason="reflected_id")
    return our_id < their_id
