from __future__ import annotations

import os
import stat

import pytest

from zmqcomm.errors import EndpointError, UsageError
from zmqcomm.transport.endpoints import (
    IPC_PATH_MAX,
    Endpoint,
    parse_endpoint,
    prepare_ipc_directory,
)


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
