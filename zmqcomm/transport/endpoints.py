"""Endpoint strings: parse, check and prepare them before ZeroMQ sees them.

ZeroMQ reports a bad endpoint as a bare ``EINVAL`` or ``EPROTONOSUPPORT``; parsing first lets
zmqcomm say which part is wrong and how to fix it. Supported forms::

    inproc://NAME
    ipc:///absolute/or/relative/path.sock
    tcp://HOST:PORT       HOST is an IPv4 address, [IPv6], a hostname or *; PORT 0-65535
                          (0 or * picks a free port when binding)
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

from zmqcomm.errors import AddressInUseError, EndpointError

Scheme = Literal["inproc", "ipc", "tcp"]
SCHEMES: tuple[Scheme, ...] = ("inproc", "ipc", "tcp")

#: ``sizeof(sockaddr_un.sun_path)`` minus the terminating NUL: 107 bytes on Linux, 103 on
#: macOS and the BSDs. A longer path fails inside libzmq with a vague error.
IPC_PATH_MAX = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. ``str(endpoint)`` gives the form ZeroMQ accepts."""

    scheme: Scheme
    #: inproc name, ipc path, or tcp host (without IPv6 brackets).
    address: str
    #: tcp port; ``None`` for inproc and ipc, ``0`` for "pick a free port".
    port: int | None = None

    @property
    def is_ipv6(self) -> bool:
        return self.scheme == "tcp" and ":" in self.address

    @property
    def wants_free_port(self) -> bool:
        return self.scheme == "tcp" and self.port == 0

    def __str__(self) -> str:
        if self.scheme != "tcp":
            return f"{self.scheme}://{self.address}"
        host = f"[{self.address}]" if self.is_ipv6 else self.address
        # libzmq spells "any free port" as "*" when binding.
        port = "*" if self.port == 0 else str(self.port)
        return f"tcp://{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse and check ``text``; raise :class:`EndpointError` saying what to fix."""
    if not isinstance(text, str):
        raise EndpointError(f"an endpoint must be a string, got {type(text).__name__}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise EndpointError(
            f"endpoint {text!r} has no scheme; write it as inproc://NAME, ipc://PATH "
            "or tcp://HOST:PORT"
        )
    if scheme not in SCHEMES:
        raise EndpointError(
            f"endpoint {text!r} uses unsupported scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "inproc":
        return _parse_inproc(text, rest)
    if scheme == "ipc":
        return _parse_ipc(text, rest)
    return _parse_tcp(text, rest)


def _parse_inproc(text: str, name: str) -> Endpoint:
    if not name:
        raise EndpointError(f"endpoint {text!r} needs a name after inproc://")
    if len(name) > 256:
        # libzmq itself has no limit, but a name this long is a bug in the caller.
        raise EndpointError(f"inproc name in {text!r} is {len(name)} characters; keep it under 256")
    return Endpoint("inproc", name)


def _parse_ipc(text: str, path: str) -> Endpoint:
    if not path:
        raise EndpointError(f"endpoint {text!r} needs a socket path after ipc://")
    if "\0" in path:
        raise EndpointError(f"ipc path in {text!r} contains a NUL character")
    # "@name" is Linux's abstract namespace: no file, but the same length limit.
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise EndpointError(
            f"ipc path {path!r} is {size} bytes, over this system's limit of {IPC_PATH_MAX}; "
            "use a shorter directory (for example under /tmp)"
        )
    return Endpoint("ipc", path)


def _parse_tcp(text: str, rest: str) -> Endpoint:
    host, port_text = _split_host_port(text, rest)
    port = _parse_port(text, port_text)
    if host == "*":
        return Endpoint("tcp", host, port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A ";" introduces a source address in libzmq; we do not support that form.
        if not _HOSTNAME.match(host):
            raise EndpointError(
                f"host {host!r} in {text!r} is not an IP address, a hostname or *"
            ) from None
        return Endpoint("tcp", host, port)
    return Endpoint("tcp", str(address), port)


def _split_host_port(text: str, rest: str) -> tuple[str, str]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise EndpointError(f"endpoint {text!r}: write IPv6 as tcp://[ADDRESS]:PORT")
        if ":" not in host:
            raise EndpointError(f"endpoint {text!r}: brackets are only for IPv6 addresses")
        return host, tail[1:]
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        raise EndpointError(
            f"endpoint {text!r} needs a port: tcp://HOST:PORT (0 for any free port)"
        )
    if ":" in host:
        raise EndpointError(f"endpoint {text!r}: write IPv6 as tcp://[ADDRESS]:PORT")
    if not host:
        raise EndpointError(f"endpoint {text!r} needs a host: use 127.0.0.1 for loopback")
    return host, port_text


def _parse_port(text: str, port_text: str) -> int:
    if port_text == "*":
        return 0
    if not port_text.isdigit():
        raise EndpointError(f"port {port_text!r} in {text!r} is not a number from 0 to 65535")
    port = int(port_text)
    if port > 65535:
        raise EndpointError(f"port {port} in {text!r} is over 65535")
    return port


def unresolved_host_hint(endpoint: str) -> str:
    """`` (host H does not resolve ...)`` when ``endpoint`` is tcp with a host name the
    resolver does not know, else "". Only for error messages: libzmq resolves a connect's
    host in the background and retries forever, so the caller only sees a timeout."""
    try:
        parsed = parse_endpoint(endpoint)
    except EndpointError:
        return ""
    host = parsed.address
    if parsed.scheme != "tcp" or host == "*":
        return ""
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return f" (the host name {host!r} does not resolve: check its spelling)"
    except OSError:
        return ""
    return ""


def unreachable_endpoint_hint(endpoint: str) -> str:
    """For a connect that timed out: :func:`unresolved_host_hint`, or `` (nothing is bound
    at ...)`` for an ipc path with no file there (libzmq retries that connect for ever
    too). Not for binds: their own error says why."""
    try:
        parsed = parse_endpoint(endpoint)
    except EndpointError:
        return ""
    if parsed.scheme != "ipc" or parsed.address.startswith("@"):
        return unresolved_host_hint(endpoint)
    try:
        os.stat(parsed.address)
    except FileNotFoundError:
        return f" (nothing is bound at the ipc path {parsed.address!r}: check the path)"
    except OSError:
        return ""  # not ours to see (a directory we may not search): no guess
    return ""


#: Bytes left for socket names under a directory from :func:`ipc_temporary_directory`.
IPC_NAME_ROOM = 48


def ipc_temporary_directory(prefix: str) -> str:
    """A new private directory (``mkdtemp``) for ipc sockets, in the system's temporary
    directory (``TMPDIR``) when it leaves room for socket names, else in /tmp: a long
    ``TMPDIR`` (macOS's, or a CI runner's) would push the socket paths past the limit."""
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len(prefix) + 10 > IPC_PATH_MAX - IPC_NAME_ROOM:
        base = "/tmp"
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def prepare_ipc_directory(endpoint: Endpoint) -> None:
    """Create the directory of an ipc socket, readable only by us (mode 0700).

    Existing directories are left as they are: they may be shared on purpose.
    """
    if endpoint.scheme != "ipc" or endpoint.address.startswith("@"):
        return
    directory = os.path.dirname(os.path.abspath(endpoint.address))
    if os.path.isdir(directory):
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise EndpointError(
            f"cannot create the directory {directory!r} for ipc socket: {exc.strerror}"
        ) from exc


def refuse_live_ipc_socket(endpoint: Endpoint) -> None:
    """Refuse to bind over an ipc socket file that a running process still listens on.

    libzmq unlinks whatever file is at the path and binds anew, so a second broker or
    replica would silently take the address from the first: new clients would reach the
    newcomer while the first keeps running unreachable. A file nobody answers on is left
    to libzmq (it replaces it: the owner died without cleaning up). There is a short race
    between this check and the bind; it catches the mistake, not a determined rival.
    """
    if endpoint.scheme != "ipc" or endpoint.address.startswith("@"):
        return  # abstract sockets fail with EADDRINUSE in libzmq itself
    # A socket this process just closed keeps listening for a few milliseconds (libzmq
    # closes it in its I/O thread): give a listener that is going away the time to go.
    deadline = time.monotonic() + _LISTENER_GRACE
    while _someone_listens(endpoint.address):
        if time.monotonic() >= deadline:
            raise AddressInUseError(
                f"cannot bind to ipc://{endpoint.address}: another process is listening on "
                "it; stop that process or choose another path"
            )
        time.sleep(0.01)


#: How long a listener found on an ipc path may take to go away before the bind is refused.
_LISTENER_GRACE = 0.5


def _someone_listens(path: str) -> bool:
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False  # refused, not a socket, or gone: nobody is serving there
    finally:
        probe.close()
    return True


@dataclass(frozen=True)
class IpcSocketFile:
    """The file an ipc bind made, to remove once the socket is closed: libzmq leaves it
    behind, and a stopped broker's socket file looks like a running one to whoever lists
    the directory."""

    path: str
    #: (device, inode, ctime in ns): an inode freed by an unlink is soon given to the next
    #: file made, so the inode alone cannot tell our file from one bound since.
    identity: tuple[int, int, int]

    @classmethod
    def made_by_bind(cls, bound: str, *, asked: str | None = None) -> IpcSocketFile | None:
        """The file behind ``bound`` (what a bind of ``asked`` returned); None for another
        transport, and for a wildcard (``ipc://*``, or any address starting with ``*``):
        libzmq removes that file and its temporary directory
        itself, and would leave the directory if the file were gone first.

        The file is looked at just after the bind. A rival that binds the same path in the
        microseconds between (both passed :func:`refuse_live_ipc_socket`, which admits that
        race) would have its file taken for ours."""
        if asked is not None:
            wanted = parse_endpoint(asked)
            if wanted.scheme == "ipc" and wanted.address.startswith("*"):
                return None  # libzmq's wildcard rule: a leading "*" (ipc://*, ipc://*x)
        endpoint = parse_endpoint(bound)
        if endpoint.scheme != "ipc" or endpoint.address.startswith("@"):
            return None  # an abstract socket has no file
        try:
            status = os.stat(endpoint.address)
        except OSError:
            return None
        return cls(os.path.abspath(endpoint.address), _file_identity(status))

    def remove(self) -> None:
        """Unlink the file if it is still the one the bind made: another process that has
        bound the path since (ours was closed) made a new file, which is not ours."""
        try:
            if _file_identity(os.stat(self.path)) == self.identity:
                os.unlink(self.path)
        except OSError:
            pass  # gone already, or a directory we may no longer enter: nothing to undo


def _file_identity(status: os.stat_result) -> tuple[int, int, int]:
    return status.st_dev, status.st_ino, status.st_ctime_ns
