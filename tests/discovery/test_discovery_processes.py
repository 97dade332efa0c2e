"""`zmqcomm peers` as real processes: 20 on loopback, and 3 hosts in network namespaces.

Network: loopback only, or namespaces this test creates and always deletes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

pytestmark = pytest.mark.slow

_counter = itertools.count()


def _port() -> int:
    rng = random.Random(os.getpid() * 1000 + next(_counter) + int(time.time() * 1000))
    return rng.randint(40000, 60000)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The CLI prints its UP line without flush: unbuffered so arrival times mean something.
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class _Peer:
    process: subprocess.Popen[str]
    lines: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.monotonic()
            self.raw.append(line)
            if line.strip():
                self.lines.append((now, json.loads(line)))

    def start_reader(self) -> None:
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def events(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, line) for t, line in list(self.lines) if line["event"] == kind]

    def up(self) -> tuple[float, str] | None:
        ups = self.events("UP")
        return (ups[0][0], ups[0][1]["agent_id"]) if ups else None


def _spawn(argv: list[str]) -> _Peer:
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    peer = _Peer(process)
    peer.start_reader()
    return peer


def _finish(peers: list[_Peer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for peer in peers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.process.wait(max(0.1, deadline - time.monotonic()))
    for peer in peers:
        if peer.thread is not None:
            peer.thread.join(max(0.1, deadline - time.monotonic()))


def _kill(peers: list[_Peer]) -> None:
    for peer in peers:
        if peer.process.poll() is None:
            peer.process.kill()
    for peer in peers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.process.wait(5)
        for stream in (peer.process.stdout, peer.process.stderr):
            if stream is not None:
                stream.close()


def test_twenty_processes_on_loopback_find_each_other() -> None:
    count, interval, duration = 20, 0.5, 8.0
    port = _port()
    argv = [sys.executable, "-m", "zmqcomm", "peers", "--port", str(port)]
    argv += ["--interval", str(interval), "--duration", str(duration), "--json"]
    peers: list[_Peer] = []
    try:
        for _ in range(count):
            peers.append(_spawn(argv))
        # 20 interpreters importing at once on 2 cores take ~10 s to get going (more on a
        # loaded machine); each runs `duration` s from its own start, so they still overlap.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(p.up() for p in peers):
            time.sleep(0.02)
        ups = [p.up() for p in peers]
        assert all(ups), "not every process printed UP within 30 s"
        _finish(peers, duration + 5)
        for peer in peers:
            assert peer.process.returncode == 0, peer.process.stderr
    finally:
        _kill(peers)
    up_at = {agent: at for at, agent in (u for u in ups if u is not None)}
    ids = set(up_at)
    assert len(ids) == count
    last_up = max(up_at.values())
    slack = 0.5
    for peer in peers:
        up = peer.up()
        assert up is not None
        me = up[1]
        enters = peer.events("ENTER")
        assert peer.lines[0][1]["event"] == "UP"
        assert peer.lines[-1][1]["event"] == "SUMMARY"
        heard = [line["agent_id"] for _, line in enters]
        assert sorted(heard) == sorted(ids - {me}), f"{me} heard {len(set(heard))} of {count - 1}"
        for seen_at, line in enters:
            other = line["agent_id"]
            assert line["address"] == "127.0.0.1"
            # Each pair: A hears B within 2 beacon intervals once both are up.
            assert seen_at <= max(up_at[me], up_at[other]) + 2 * interval + slack, (me, other)
            assert seen_at <= last_up + 2 * interval + slack
        summary = peer.lines[-1][1]
        assert summary["agent_id"] == me
        assert {p["agent_id"] for p in summary["peers"]} == ids - {me}
        assert summary["dropped"] == {}
        # Every process is one life: nothing refused as another life's, no restart taken.
        assert (summary["not_fresh"], summary["restarts"]) == (0, 0)
        assert summary["errors"] == {}


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


def test_three_hosts_in_network_namespaces() -> None:
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = f"zc-{os.getpid()}-{next(_counter)}"
    bridge_ns = f"{tag}-br"
    hosts = [f"{tag}-{n}" for n in range(3)]
    subnet_k = random.Random(os.getpid() + time.time()).randint(1, 254)
    subnet = ipaddress.IPv4Network(f"10.213.{subnet_k}.0/24")
    created: list[str] = []
    peers: list[_Peer] = []
    try:
        for ns in [bridge_ns, *hosts]:
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                if "permission" in done.stderr.lower() or "not permitted" in done.stderr.lower():
                    pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
                raise AssertionError(f"ip netns add {ns}: {done.stderr}")
            created.append(ns)
        _must("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _must("-n", bridge_ns, "link", "set", "br0", "up")
        for n, ns in enumerate(hosts):
            port_name = f"p{n}"
            _must("-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", port_name,
                  "netns", bridge_ns)  # fmt: skip
            _must("-n", bridge_ns, "link", "set", port_name, "master", "br0")
            _must("-n", bridge_ns, "link", "set", port_name, "up")
            _must("-n", ns, "addr", "add", f"{subnet[n + 1]}/24", "brd", "+", "dev", "veth0")
            _must("-n", ns, "link", "set", "lo", "up")
            _must("-n", ns, "link", "set", "veth0", "up")
        interval, duration = 0.3, 4.0
        port = _port()
        for ns in hosts:
            argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "zmqcomm", "peers"]
            argv += ["--interface", "veth0", "--port", str(port), "--interval", str(interval)]
            argv += ["--duration", str(duration), "--json"]
            peers.append(_spawn(argv))
        _finish(peers, duration + 8)
        for peer in peers:
            assert peer.process.returncode == 0, peer.process.stderr
    finally:
        _kill(peers)
        for ns in created:
            _ip("netns", "del", ns)
    assert all(_ip("netns", "list").stdout.find(ns) < 0 for ns in created)
    ids = {}
    for n, peer in enumerate(peers):
        up = peer.up()
        assert up is not None, peer.raw
        ids[up[1]] = str(subnet[n + 1])
    for peer in peers:
        up = peer.up()
        assert up is not None
        me = up[1]
        heard = {line["agent_id"]: line["address"] for _, line in peer.events("ENTER")}
        assert set(heard) == set(ids) - {me}, peer.raw
        for agent, address in heard.items():
            assert ipaddress.IPv4Address(address) in subnet
            assert address == ids[agent]
        summary = peer.lines[-1][1]
        assert summary["event"] == "SUMMARY"
        assert summary["errors"] == {}
