"""Nearest-rank percentiles, shared by the swarm report, the PBFT load generator and the
gossip metrics summary."""

from __future__ import annotations

import pytest

from zmqcomm.quantiles import nearest_rank
from zmqcomm.swarm.report import _percentile


def test_nearest_rank_names_a_measured_value_and_is_not_one_rank_high() -> None:
    hundred = [float(v) for v in range(1, 101)]
    assert nearest_rank(hundred, 0.99) == 99.0
    assert nearest_rank(hundred, 0.07) == 7.0  # 0.07 * 100 is 7.000000000000001
    assert nearest_rank([2.0, 1.0], 0.50) == 1.0
    assert nearest_rank([5.0], 0.0) == 5.0 and nearest_rank([5.0], 1.0) == 5.0


def test_nearest_rank_refuses_no_values() -> None:
    with pytest.raises(ValueError):
        nearest_rank([], 0.5)


def test_the_swarm_report_uses_it() -> None:
    assert _percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    assert _percentile([], 0.5) is None
