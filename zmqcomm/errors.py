"""The one exception tree of zmqcomm.

Everything zmqcomm raises derives from :class:`ZmqCommError`. The branches are chosen by what
the caller can do about it:

- :class:`UsageError`: the caller (or its configuration) asked for something invalid. Fix the
  call or the config; retrying will not help.
- :class:`TransportError`: moving bytes failed (cannot bind or connect, timed out, queue full,
  socket closed). Often worth a retry or a backoff.
- :class:`ProtocolError`: a message broke the wire rules. :class:`LocalProtocolError` means we
  tried to send something invalid; :class:`RemoteProtocolError` means a peer sent garbage. A
  driver never lets a remote protocol error escape: it drops the message, counts the
  ``reason`` and writes an audit line.
- :class:`SecurityError`: authentication, replay, trust, permission or rate-limit failures.

Third-party exceptions (pyzmq, msgpack, zstandard, PyNaCl) are translated where they enter the
library, with the original chained as ``__cause__``.

Every remote-facing error carries a short machine-readable ``reason`` (``"truncated"``,
``"bad_magic"``, ...) used for drop counters and audit lines; messages never contain key
material or payload bytes.
"""

from __future__ import annotations

import builtins


class ZmqCommError(Exception):
    """Root of every exception raised by zmqcomm."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


# -- usage and configuration ------------------------------------------------------------------


class UsageError(ZmqCommError, ValueError):
    """An invalid argument, option or configuration value given by the user."""

    reason = "usage"


class EndpointError(UsageError):
    """An endpoint string that cannot be used (scheme, host, port or ipc path)."""

    reason = "bad_endpoint"


# -- transport --------------------------------------------------------------------------------


class TransportError(ZmqCommError):
    """Moving bytes over ZeroMQ failed."""

    reason = "transport"


class AddressInUseError(TransportError):
    """Binding failed because another socket already holds the address."""

    reason = "address_in_use"


class ConnectError(TransportError):
    """A bind or connect could not be set up."""

    reason = "connect"


class TransportTimeout(TransportError, builtins.TimeoutError):
    """A send or receive did not complete within its timeout.

    Also a builtin :class:`TimeoutError`, so generic timeout handling catches it.
    """

    reason = "timeout"


class SendTimeout(TransportTimeout):
    """A send could not be queued before its timeout (the peer is slow or gone)."""

    reason = "send_timeout"


class ReceiveTimeout(TransportTimeout):
    """Nothing arrived before the receive timeout."""

    reason = "receive_timeout"


class RequestTimeout(ReceiveTimeout):
    """A request got no reply in time (the peer may be slow, gone, or not allowed to answer)."""

    reason = "request_timeout"


class QueueFullError(TransportError):
    """A bounded queue (ours or ZeroMQ's high-water mark) is full and the policy is to raise."""

    reason = "queue_full"


class MailboxFullError(QueueFullError):
    """A broker mailbox hit a bound: messages or bytes for one recipient, from one sender
    (``reason`` ``sender_quota``), or bytes in total.

    Nothing was stored. The sender may retry later, once the recipients have drained their mail.
    """

    reason = "mailbox_full"


class ClosedError(TransportError):
    """The object was closed locally; it cannot be used any more."""

    reason = "closed"


class BrokenError(TransportError):
    """The connection broke underneath us (peer gone, context terminated)."""

    reason = "broken"


# -- protocol ---------------------------------------------------------------------------------


class ProtocolError(ZmqCommError):
    """A message violates the zmqcomm wire protocol."""

    reason = "protocol"


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry (a local bug or misuse)."""

    reason = "local_protocol"


class RemoteProtocolError(ProtocolError):
    """A peer sent bytes that are not a valid message. Drop, count ``reason``, audit, go on."""

    reason = "malformed"


class UnsupportedVersionError(RemoteProtocolError):
    """A frame uses a major protocol version this build does not speak."""

    reason = "unsupported_version"

    def __init__(self, message: str, *, theirs: tuple[int, int], ours: tuple[int, int]) -> None:
        super().__init__(message)
        self.theirs = theirs
        self.ours = ours


class LimitExceededError(RemoteProtocolError):
    """A frame or a value inside it exceeds a configured size, count or depth limit."""

    reason = "limit_exceeded"


# -- local storage ----------------------------------------------------------------------------


class CorruptStoreError(ZmqCommError):
    """A stored record cannot be read back (a PBFT replica's log, say): the process must not
    trust that store. Restore it from a backup or let the replica catch up from an empty one."""

    reason = "corrupt_store"


class StoreError(ZmqCommError):
    """Writing to or reading from a local store failed (disk full, I/O error, locked): what
    was saved since the last durable commit may be lost, so the process must stop before it
    acts on it. Restarting recovers from what is on disk."""

    reason = "store_failed"


# -- security ---------------------------------------------------------------------------------


class SecurityError(ZmqCommError):
    """A security check failed."""

    reason = "security"


class AuthenticationError(SecurityError):
    """A handshake or message authentication tag did not verify."""

    reason = "authentication_failed"


class ReplayError(SecurityError):
    """A message was seen before, or is too old for the replay window."""

    reason = "replay"


class UnknownPeerError(SecurityError):
    """The peer's key is not in the trust store, or was revoked or has expired."""

    reason = "unknown_peer"


class NotPermittedError(SecurityError):
    """The access policy denies this action to this identity."""

    reason = "denied"


class RateLimitedError(SecurityError):
    """The identity or source exceeded its rate limit."""

    reason = "rate_limited"


class KeyFileError(SecurityError, UsageError):
    """A key file is missing, malformed, unreadable or has unsafe permissions."""

    reason = "key_file"


__all__ = [
    "AddressInUseError",
    "AuthenticationError",
    "BrokenError",
    "ClosedError",
    "ConnectError",
    "CorruptStoreError",
    "EndpointError",
    "KeyFileError",
    "LimitExceededError",
    "LocalProtocolError",
    "MailboxFullError",
    "NotPermittedError",
    "ProtocolError",
    "QueueFullError",
    "RateLimitedError",
    "ReceiveTimeout",
    "RemoteProtocolError",
    "ReplayError",
    "SecurityError",
    "SendTimeout",
    "StoreError",
    "TransportError",
    "TransportTimeout",
    "UnknownPeerError",
    "UnsupportedVersionError",
    "UsageError",
    "ZmqCommError",
]
