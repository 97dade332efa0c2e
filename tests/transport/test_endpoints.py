from __future__ import annotations

import errno
import os
import socket
import stat
import time
from pathlib import Path

import pytest
import zmq

from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import ConnectError, EndpointError, UsageError
from zmqcomm.secure import SecureRouter
from zmqcomm.transport.endpoints import (
    IPC_PATH_MAX,
    Endpoint,
    IpcSocketFile,
    parse_endpoint,
    prepare_ipc_directory,
    unreachable_endpoint_hint,
    unresolved_host_hint,
)
from zmqcomm.transport.sockets import bind


@pytest.mark.parametrize(
    ("text", "expected", "rendered"),
    [
        ("inproc://agents", Endpoint("inproc", "agents"), "inproc://agents"),
        ("ipc:///tmp/x.sock", Endpoint("ipc", "/tmp/x.sock"), "ipc:///tmp/x.sock"),
        ("ipc://@abstract", Endpoint("ipc", "@abstract"), "ipc://@abstract"),
        ("tcp://127.0.0.1:5555", Endpoint("tcp", "127.0.0.1", 5555), "tcp://127.0.0.1:5555"),
        ("tcp://127.0.0.1:0", Endpoint("tcp", "127.0.0.1", 0), "tcp://127.0.0.1:*"),
        ("tcp://127.0.0.1:*", Endpoint("tcp", "127.0.0.1", 0), "tcp://127.0.0.1:*"),
        ("tcp://*:7000", Endpoint("tcp", "*", 7000), "tcp://*:7000"),
        ("tcp://[::1]:7000", Endpoint("tcp", "::1", 7000), "tcp://[::1]:7000"),
        ("tcp://[0:0::1]:0", Endpoint("tcp", "::1", 0), "tcp://[::1]:*"),
        ("tcp://localhost:80", Endpoint("tcp", "localhost", 80), "tcp://localhost:80"),
    ],
)
def test_valid_endpoints_parse_and_render(text: str, expected: Endpoint, rendered: str) -> None:
    parsed = parse_endpoint(text)
    assert parsed == expected
    assert str(parsed) == rendered


def test_ipv6_and_free_port_properties() -> None:
    assert parse_endpoint("tcp://[::1]:0").is_ipv6
    assert parse_endpoint("tcp://[::1]:0").wants_free_port
    assert not parse_endpoint("tcp://127.0.0.1:9").is_ipv6
    assert not parse_endpoint("ipc:///tmp/a").wants_free_port


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("127.0.0.1:5555", "no scheme"),
        ("udp://127.0.0.1:5555", "unsupported scheme 'udp'"),
        ("inproc://", "needs a name"),
        ("ipc://", "needs a socket path"),
        ("tcp://127.0.0.1", "needs a port"),
        ("tcp://:5555", "needs a host"),
        ("tcp://127.0.0.1:65536", "over 65535"),
        ("tcp://127.0.0.1:-1", "not a number"),
        ("tcp://127.0.0.1:http", "not a number"),
        ("tcp://::1:5555", "write IPv6 as"),
        ("tcp://[::1:5555", "write IPv6 as"),
        ("tcp://[127.0.0.1]:5555", "only for IPv6"),
        ("tcp://bad_host!:5555", "not an IP address"),
        ("ipc:///tmp/a\0b", "NUL"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(text)
    assert hint in str(caught.value)
    assert isinstance(caught.value, UsageError)


def test_non_string_endpoint_is_refused() -> None:
    with pytest.raises(EndpointError, match="must be a string"):
        parse_endpoint(5555)  # type: ignore[arg-type]


def test_ipc_path_over_the_os_limit_is_refused() -> None:
    just_fits = "/tmp/" + "a" * (IPC_PATH_MAX - len("/tmp/"))
    assert parse_endpoint(f"ipc://{just_fits}").address == just_fits
    with pytest.raises(EndpointError, match=f"limit of {IPC_PATH_MAX}"):
        parse_endpoint(f"ipc://{just_fits}b")


def test_ipc_directory_is_created_private(short_dir: str) -> None:
    endpoint = parse_endpoint(f"ipc://{short_dir}/new/agent.sock")
    prepare_ipc_directory(endpoint)
    mode = stat.S_IMODE(os.stat(f"{short_dir}/new").st_mode)
    assert mode == 0o700


def test_existing_ipc_directory_is_left_alone(short_dir: str) -> None:
    os.chmod(short_dir, 0o755)
    prepare_ipc_directory(parse_endpoint(f"ipc://{short_dir}/agent.sock"))
    assert stat.S_IMODE(os.stat(short_dir).st_mode) == 0o755


def test_ipc_directory_that_cannot_be_created_is_a_clear_error(short_dir: str) -> None:
    blocker = f"{short_dir}/file"
    with open(blocker, "w"):
        pass
    with pytest.raises(EndpointError, match="cannot create the directory"):
        prepare_ipc_directory(parse_endpoint(f"ipc://{blocker}/sub/agent.sock"))


def _resolver_that_knows_nothing(host: str, *args: object, **kwargs: object) -> list[object]:
    # Stands in for DNS: tests never ask a real resolver (it may be off this machine).
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_unresolved_host_is_named_in_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver_that_knows_nothing)
    hint = unreachable_endpoint_hint("tcp://brokr.example:5555")
    assert "'brokr.example' does not resolve" in hint


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://*:0", "ipc://@abstract", "bad"]
)
def test_no_hint_without_a_host_name(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver_that_knows_nothing)
    assert unreachable_endpoint_hint(endpoint) == ""


def test_an_ipc_path_with_nothing_bound_is_named_in_the_hint(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "broker.sock"
    assert "nothing is bound at the ipc path" in unreachable_endpoint_hint(f"ipc://{missing}")
    assert str(missing) in unreachable_endpoint_hint(f"ipc://{missing}")
    there = tmp_path / "broker.sock"
    there.touch()
    assert unreachable_endpoint_hint(f"ipc://{there}") == ""
    # A bind's own error says why it failed (permissions, say): no guess about the path.
    assert unresolved_host_hint(f"ipc://{missing}") == ""


def test_an_ipc_path_we_may_not_look_at_gets_no_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_searchable(path: object, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "stat", not_searchable)  # a live socket in a 0700 directory
    assert unreachable_endpoint_hint(f"ipc://{tmp_path}/private/broker.sock") == ""


def test_bind_to_an_unresolved_host_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver_that_knows_nothing)

    class Refusing:
        def setsockopt(self, *args: object) -> None:
            pass

        def bind(self, address: str) -> None:  # libzmq's words for a name it cannot use
            raise zmq.ZMQError(errno.ENODEV)

    with pytest.raises(ConnectError, match=r"'brokr\.example' does not resolve"):
        bind(Refusing(), "tcp://brokr.example:5555")  # type: ignore[arg-type]


def test_only_an_ipc_bind_has_a_socket_file_to_remove(short_dir: str) -> None:
    assert IpcSocketFile.made_by_bind("tcp://127.0.0.1:5555") is None
    assert IpcSocketFile.made_by_bind("inproc://x") is None
    assert IpcSocketFile.made_by_bind("ipc://@abstract") is None
    assert IpcSocketFile.made_by_bind(f"ipc://{short_dir}/never-bound.sock") is None


def test_a_closed_sockets_file_is_removed_but_not_one_bound_since(short_dir: str) -> None:
    path = f"{short_dir}/s.sock"
    context = zmq.Context()
    try:
        first = context.socket(zmq.PULL)
        made = IpcSocketFile.made_by_bind(bind(first, f"ipc://{path}"))
        assert made is not None and made.path == path
        first.close(linger=0)
        made.remove()
        assert not os.path.exists(path)
        made.remove()  # twice is harmless
        # Another owner bound the path after ours closed (its bind replaced our file, and
        # may well have been given the same inode): its file is not ours to remove.
        first = context.socket(zmq.PULL)
        made = IpcSocketFile.made_by_bind(bind(first, f"ipc://{path}"))
        first.close(linger=0)
        second = context.socket(zmq.PULL)
        bind(second, f"ipc://{path}")
        assert made is not None
        made.remove()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        context.destroy(linger=0)  # closes what a failed assert left open


def test_a_wildcard_ipc_bind_is_left_to_libzmq_which_removes_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: libzmq makes a temporary directory for ipc://* and removes it with
    the file, after the socket closes; removing the file first left the directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TMPDIR", raising=False)
    assert IpcSocketFile.made_by_bind("ipc:///tmp/tmpabc/socket", asked="ipc://*") is None
    assert IpcSocketFile.made_by_bind("ipc:///tmp/tmpabc/socket", asked="ipc://*x") is None
    router = SecureRouter(
        "ipc://*", identity=Identity.generate("r"), trust=TrustStore(tmp_path / "trust")
    )
    assert router.endpoint.startswith("ipc://") and router.endpoint != "ipc://*"
    made = router.endpoint.removeprefix("ipc://")
    router.close()
    deadline = time.monotonic() + 5
    while os.path.exists(os.path.dirname(made)) and time.monotonic() < deadline:
        time.sleep(0.02)  # libzmq closes the listener in its I/O thread
    assert not os.path.exists(os.path.dirname(made))


def test_a_router_refusing_its_settings_after_the_bind_leaves_no_socket_file(
    short_dir: str,
) -> None:
    path = f"{short_dir}/r.sock"
    with pytest.raises(UsageError):
        SecureRouter(
            f"ipc://{path}",
            identity=Identity.generate("r"),
            trust=TrustStore(f"{short_dir}/trust"),
            max_inbox=0,
        )
    assert not os.path.exists(path)


def test_a_path_with_a_star_that_is_not_leading_is_an_ordinary_file_to_remove(
    short_dir: str,
) -> None:
    """libzmq's wildcard is a leading "*"; review found x* taken for one, and left."""
    path = f"{short_dir}/x*"
    router = SecureRouter(
        f"ipc://{path}", identity=Identity.generate("r"), trust=TrustStore(f"{short_dir}/t")
    )
    assert os.path.exists(path)
    router.close()
    assert not os.path.exists(path)
