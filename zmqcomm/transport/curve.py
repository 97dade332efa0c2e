"""CURVE on one ZeroMQ hop: optional defence in depth under the end-to-end Noise sessions.

zmqcomm's security does not depend on this: messages are already encrypted end to end. CURVE
adds a layer on one tcp or ipc connection that hides the clear header (topics, sender ids)
from whoever watches that hop. libzmq applies no security mechanism to inproc, so inproc is
refused rather than left silently unprotected. A server needs a :class:`CurveAuthenticator`
on its context to decide which client keys may connect; see docs/security.md.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from zmqcomm.errors import UsageError
from zmqcomm.transport.endpoints import Endpoint, parse_endpoint
from zmqcomm.transport.sockets import bind, connect, translate_zmq_error

#: The ZAP domain a server socket announces; the authenticator answers only for its domain.
DEFAULT_DOMAIN = "zmqcomm"

#: libzmq releases the ZAP endpoint (inproc://zeromq.zap.01) of a stopped authenticator
#: asynchronously, so a start right after a stop may find it still bound: retry for this long
#: before concluding that another authenticator runs on the context.
_ZAP_RELEASE_GRACE = 0.5
_ZAP_RETRY_INTERVAL = 0.005


def curve_available() -> bool:
    """Whether this libzmq was built with CURVE (libzmq can be built without it)."""
    return bool(zmq.has("curve"))


def _require_curve() -> None:
    if not curve_available():
        raise UsageError(
            f"libzmq {zmq.zmq_version()} was built without the 'curve' feature "
            "(zmq.has('curve') is False): install pyzmq from its wheels, which bundle a libzmq "
            "with CURVE, or build libzmq with libsodium; or run without the CURVE hop"
        )


def _check_key(key: object, what: str) -> bytes:
    # Messages name the key's role, never its bytes.
    with contextlib.suppress(KeyError, ValueError, TypeError):  # what z85.decode raises
        if isinstance(key, bytes) and len(key) == 40 and len(z85.decode(key)) == 32:
            return key
    raise UsageError(
        f"{what} must be a CURVE key as 40 bytes of Z85 text, as made by CurveKeys.generate()"
    )


def _check_domain(domain: str) -> bytes:
    # The server's domain must match its authenticator's exactly; an empty one matches none.
    if not isinstance(domain, str) or not domain:
        raise UsageError("the ZAP domain must be a non-empty string, the same on both sides")
    return domain.encode()


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """A CURVE key pair, both halves as Z85 bytes. The secret never appears in ``repr``."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        _check_key(self.public, "the CURVE public key")
        _check_key(self.secret, "the CURVE secret key")
        # A mismatched pair fails only later, as a handshake that silently never completes.
        _require_curve()
        if zmq.curve_public(self.secret) != self.public:
            raise UsageError(
                "the CURVE public key does not belong to the secret key; "
                "use CurveKeys.from_secret(secret) to derive it"
            )

    @classmethod
    def generate(cls) -> CurveKeys:
        _require_curve()
        return cls(*zmq.curve_keypair())

    @classmethod
    def from_secret(cls, secret: bytes) -> CurveKeys:
        """The key pair of ``secret`` (Z85), with its public half derived."""
        _require_curve()
        return cls(zmq.curve_public(_check_key(secret, "the CURVE secret key")), secret)

    def __repr__(self) -> str:
        return f"CurveKeys(public={self.public!r}, secret=<hidden>)"


def check_curve_endpoint(endpoint: str) -> Endpoint:
    """Parse ``endpoint`` and raise :class:`UsageError` if CURVE cannot protect it (inproc)."""
    parsed = parse_endpoint(endpoint)
    if parsed.scheme == "inproc":
        raise UsageError(
            f"CURVE does nothing on {endpoint!r}: libzmq passes inproc messages in memory "
            "without a security mechanism; use ipc:// or tcp:// for a CURVE hop, or use "
            "bind()/connect() without CURVE (the end-to-end session still protects messages)"
        )
    return parsed


def _check_socket(socket: zmq.Socket[Any]) -> None:
    _require_curve()
    # Only the last bind/connect is visible; bind_curve and connect_curve check before it.
    last = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    if last.startswith("inproc://"):
        check_curve_endpoint(last)


def enable_curve_server(
    socket: zmq.Socket[Any], keys: CurveKeys, *, domain: str = DEFAULT_DOMAIN
) -> None:
    """Make ``socket`` a CURVE server for its next binds; clients are checked by ZAP."""
    _check_socket(socket)
    domain_bytes = _check_domain(domain)
    try:
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        socket.setsockopt(zmq.ZAP_DOMAIN, domain_bytes)
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "enable CURVE") from exc
    # Without this, libzmq lets every client in when no ZAP handler runs (fail open); with it,
    # a server whose authenticator is missing or stopped refuses everyone. A libzmq that does
    # not know the option keeps the old behaviour: there the authenticator must run first.
    with contextlib.suppress(zmq.ZMQError, AttributeError):
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def enable_curve_client(socket: zmq.Socket[Any], keys: CurveKeys, server_public: bytes) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is ``server_public``."""
    _check_socket(socket)
    server_key = _check_key(server_public, "the server's CURVE public key")
    try:
        socket.setsockopt(zmq.CURVE_SERVER, 0)
        socket.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    except zmq.ZMQError as exc:
        raise translate_zmq_error(exc, "enable CURVE") from exc


def bind_curve(
    socket: zmq.Socket[Any], endpoint: str, keys: CurveKeys, *, domain: str = DEFAULT_DOMAIN
) -> str:
    """Enable CURVE as a server and bind; returns the endpoint actually bound."""
    check_curve_endpoint(endpoint)
    enable_curve_server(socket, keys, domain=domain)
    return bind(socket, endpoint)


def connect_curve(
    socket: zmq.Socket[Any], endpoint: str, keys: CurveKeys, server_public: bytes
) -> str:
    """Enable CURVE as a client and connect to the server at ``endpoint``."""
    check_curve_endpoint(endpoint)
    enable_curve_client(socket, keys, server_public)
    return connect(socket, endpoint)


class CurveAuthenticator:
    """A ZAP handler on ``context`` that lets in only the listed client public keys (Z85).

    A context has at most one ZAP handler, so run one per context and list every client key on
    it. Keys are checked at the handshake: :meth:`deny` keeps new connections out but does not
    cut an established one. ``denied`` counts refused handshakes, for audit.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        allowed: Iterable[bytes] = (),
        *,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        _check_domain(domain)
        self._context = context
        self._domain = domain
        self._lock = threading.Lock()  # allow/deny on the caller's thread, checks on ZAP's
        # start/stop from any thread; separate from _lock, which the ZAP thread takes while
        # stop() waits for that thread to end.
        self._run_lock = threading.Lock()
        self._allowed = {_check_key(key, "an allowed client key") for key in allowed}
        self._denied = 0
        self._thread: ThreadAuthenticator | None = None

    @property
    def denied(self) -> int:
        """How many client handshakes were refused since this authenticator was made."""
        with self._lock:
            return self._denied

    @property
    def allowed(self) -> frozenset[bytes]:
        with self._lock:
            return frozenset(self._allowed)

    def allow(self, public: bytes) -> None:
        key = _check_key(public, "an allowed client key")
        with self._lock:
            self._allowed.add(key)

    def deny(self, public: bytes) -> None:
        key = _check_key(public, "a denied client key")
        with self._lock:
            self._allowed.discard(key)

    def _check(self, domain: str, key: bytes) -> bool:
        # Called by pyzmq's ZAP thread with the client's key in Z85; must not raise.
        with self._lock:
            if key in self._allowed:
                return True
            self._denied += 1
            return False

    def start(self) -> None:
        """Start answering ZAP on the context.

        A start right after a :meth:`stop` (of this or another authenticator on the context)
        waits up to half a second for libzmq to release the ZAP endpoint; if it is still
        taken then, another authenticator runs there and :class:`UsageError` is raised.
        """
        _require_curve()
        with self._run_lock:
            if self._thread is not None:
                raise UsageError("this CurveAuthenticator is already running")
            deadline = time.monotonic() + _ZAP_RELEASE_GRACE
            while True:
                try:
                    self._thread = self._start_thread()
                    return
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise translate_zmq_error(exc, "start the CURVE authenticator") from exc
                    if time.monotonic() >= deadline:
                        raise UsageError(
                            "another ZAP authenticator already runs on this context: a context "
                            "has at most one, so use a single CurveAuthenticator and allow() "
                            "every key"
                        ) from exc
                time.sleep(_ZAP_RETRY_INTERVAL)

    def _start_thread(self) -> ThreadAuthenticator:
        thread = ThreadAuthenticator(self._context)
        # Configured before start so no handshake meets an authenticator without the list.
        thread.configure_curve_callback(self._domain, SimpleNamespace(callback=self._check))
        try:
            thread.start()
        except zmq.ZMQError:
            thread.stop()
            raise
        return thread

    def stop(self) -> None:
        """Stop answering ZAP; CURVE servers here then refuse new clients (if enforced)."""
        with self._run_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                thread.stop()

    def __enter__(self) -> CurveAuthenticator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
