"""The swarm summary and its table (zmqcomm/swarm/report.py), from agents' results."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from zmqcomm.swarm.report import format_table, summarize

OPTIONS = SimpleNamespace(
    mode="broker", agents=2, duration=1.0, transport="ipc", size=64, rate=3.0
)  # each agent's 3 messages in 1 s: as planned


def _result(name: str, agent_id: str, peer: str, rejected: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "agent_id": agent_id,
        "sent": {peer: 3},
        "received": {peer: 3},
        "latencies": [0.001, 0.002],
        "published": 0,
        "publications": {},
        "request_failures": 0,
        "rekeys": 1,
        "rejected": rejected,
        "duplicates": 0,
        "sending_time": 1.0,
    }


def test_rejects_are_summed_and_broken_down_by_reason_most_frequent_first() -> None:
    """A reject count alone looks alarming; late handshake answers on a loaded host are
    recovered by retries, so the table says which reasons the count holds."""
    results = [
        _result("a", "aaa", "bbb", {"handshake_timeout": 2, "unexpected_handshake": 5}),
        _result("b", "bbb", "aaa", {"unexpected_handshake": 1, "no_session": 1, "x": 1}),
    ]
    summary = summarize(results, {}, OPTIONS)
    assert summary["rejected"] == 10 and summary["lost"] == 0
    assert summary["rejected_reasons"] == {
        "unexpected_handshake": 6,
        "handshake_timeout": 2,
        "no_session": 1,
        "x": 1,
    }
    assert list(summary["rejected_reasons"])[:2] == ["unexpected_handshake", "handshake_timeout"]
    footer = format_table(summary).splitlines()[-1]
    assert "10 rejects (unexpected_handshake 6, handshake_timeout 2, " in footer
    assert footer.count(",") >= 3 and ", ...)" in footer


def test_no_rejects_no_breakdown() -> None:
    results = [_result("a", "aaa", "bbb", {}), _result("b", "bbb", "aaa", {})]
    summary = summarize(results, {}, OPTIONS)
    assert summary["rejected_reasons"] == {}
    assert "0 rejects, 0 duplicates" in format_table(summary)


def test_a_run_that_fell_short_of_its_rate_says_the_host_was_overloaded() -> None:
    """100 agents on two cores sent a tenth of what they were asked to, and the table said
    nothing: its latencies read as the software's, not the overload's."""
    results = [_result("a", "aaa", "bbb", {}), _result("b", "bbb", "aaa", {})]
    kept_up = summarize(results, {}, OPTIONS)
    assert kept_up["planned"] == 6 and "planned" not in format_table(kept_up)
    behind = summarize(results, {}, SimpleNamespace(**{**vars(OPTIONS), "rate": 30.0}))
    assert behind["planned"] == 60
    last = format_table(behind).splitlines()[-1]
    assert "sent 6 of the 60 messages planned (10%" in last and "overloaded" in last
