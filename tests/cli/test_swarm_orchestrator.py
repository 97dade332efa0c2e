"""What ``zmqcomm swarm`` waits for, with fake agent processes: no broker, no agents, no sockets.

In p2p mode the orchestrator once took the first process for the broker, as in broker mode,
and so never waited for agent-0: a slower agent-0 was still running when the results were
read, and the run failed with "agents agent-0 wrote no result".
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from zmqcomm.errors import TransportError
from zmqcomm.swarm import demo
from zmqcomm.swarm.layout import AgentSettings, write_json


def test_with_a_broker_the_first_process_is_not_an_agent() -> None:
    processes = ["broker", "agent-0", "agent-1"]
    assert demo.agent_processes(processes, peer_to_peer=False) == ["agent-0", "agent-1"]


def test_peer_to_peer_every_process_is_an_agent() -> None:
    processes = ["agent-0", "agent-1", "agent-2"]
    assert demo.agent_processes(processes, peer_to_peer=True) == processes


class FakeAgent:
    """Ready at once; writes its result and exits 0 ``runs_for`` seconds after it started."""

    def __init__(self, settings: AgentSettings, runs_for: float) -> None:
        self.settings = settings
        self.ends_at = time.monotonic() + runs_for
        self.returncode: int | None = None
        write_json(settings.status_path, {"endpoint": settings.listen, "phase": "running"})

    def poll(self) -> int | None:
        if self.returncode is None and time.monotonic() >= self.ends_at:
            write_json(self.settings.result_path, {"name": self.settings.name})
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.returncode = -signum  # stopped before it wrote its result

    def kill(self) -> None:
        self.returncode = -9


def test_peer_to_peer_waits_for_a_slower_agent_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def start(arguments: list[str], directory: Path) -> FakeAgent:
        settings = AgentSettings.load(arguments[-1])
        return FakeAgent(settings, runs_for=0.6 if settings.index == 0 else 0.0)

    monkeypatch.setattr(demo, "_start", start)
    monkeypatch.setattr(demo, "summarize", lambda results, broker, options: {"results": results})
    options = demo.SwarmOptions(agents=3, duration=1.0, mode="p2p", keep=str(tmp_path / "run"))
    try:
        summary = demo.run_swarm(options, out=io.StringIO())
    except TransportError as exc:  # what the run reported when it skipped agent-0
        pytest.fail(f"the swarm did not wait for agent-0: {exc}")
    names = sorted(result["name"] for result in summary["results"])
    assert names == ["agent-0", "agent-1", "agent-2"]
