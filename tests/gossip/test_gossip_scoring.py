"""Peer scores: rate limits, penalties, rewards, decay, graylisting and its end."""

from __future__ import annotations

import pytest

from zmqcomm.errors import UsageError
from zmqcomm.patterns.gossip.scoring import PeerScores, Prune, Restore, ScoreParams


def scores(**changes: float) -> PeerScores:
    options: dict[str, float] = {
        "rate": 10.0,
        "burst": 10.0,
        "graylist_below": -20.0,
        "graylist_seconds": 5.0,
        "decay_half_life": 10.0,
    }
    options.update(changes)
    return PeerScores(ScoreParams(**options))  # type: ignore[arg-type]


def test_rate_limit_drops_and_penalises_a_flood_until_graylisted() -> None:
    s = scores(flood_penalty=1.0)
    assert s.admit("p", now=0.0, cost=10) == (True, [])
    admitted, prunes = s.admit("p", now=0.0, cost=5)
    assert not admitted and prunes == []
    assert s.score("p", now=0.0) == pytest.approx(-5.0)
    _, prunes = s.admit("p", now=0.0, cost=20)
    assert prunes == [Prune("p", 5.0)] and s.is_graylisted("p")
    assert s.counters["rate_limited"] == 25 and s.counters["graylisted_peers"] == 1
    # Graylisted: dropped at once, no further prune records.
    assert s.admit("p", now=1.0) == (False, [])
    assert s.peer_counters("p")["graylisted"] == 1
    assert s.admit("q", now=1.0) == (True, [])  # another peer is unaffected


def test_bucket_refills_with_time() -> None:
    s = scores()
    assert s.admit("p", now=0.0, cost=10)[0]
    assert not s.admit("p", now=0.0)[0]
    assert s.admit("p", now=0.5, cost=5)[0]  # 10/s for 0.5 s


def test_invalid_messages_graylist_and_restore_after_the_timeout() -> None:
    s = scores(invalid_penalty=10.0)
    assert s.invalid("p", "bad_signature", now=0.0) == []
    prunes = s.invalid("p", "bad_signature", now=0.0, count=2)
    assert prunes == [Prune("p", 5.0)]
    assert s.peer_counters("p") == {"bad_signature": 3}
    assert s.next_deadline() == 5.0
    assert s.on_timer(now=4.9) == []
    assert s.on_timer(now=5.0) == [Restore("p")]
    assert not s.is_graylisted("p") and s.score("p", now=5.0) == 0.0
    assert s.next_deadline() is None


def test_duplicates_are_free_within_their_bucket_then_cost() -> None:
    s = scores(duplicate_rate=1.0, duplicate_burst=3.0, duplicate_penalty=2.0)
    assert s.duplicate("p", now=0.0, count=3) == []
    assert s.score("p", now=0.0) == 0.0
    s.duplicate("p", now=0.0, count=2)
    assert s.score("p", now=0.0) == pytest.approx(-4.0)
    assert s.counters["excess_duplicates"] == 2


def test_useful_deliveries_raise_the_score_up_to_a_cap_and_scores_decay() -> None:
    s = scores(useful_reward=1.0, max_score=5.0)
    s.useful("p", now=0.0, count=3)
    assert s.score("p", now=0.0) == pytest.approx(3.0)
    s.useful("p", now=0.0, count=10)
    assert s.score("p", now=0.0) == pytest.approx(5.0)
    assert s.score("p", now=10.0) == pytest.approx(2.5)  # one half-life later
    assert s.snapshot(now=20.0) == {"p": pytest.approx(1.25, abs=1e-3)}


def test_a_good_record_absorbs_some_bad_input() -> None:
    s = scores(useful_reward=1.0, max_score=20.0, invalid_penalty=10.0)
    s.useful("p", now=0.0, count=20)
    assert s.invalid("p", "malformed", now=0.0, count=3) == []  # 20 - 30 = -10 > -20
    assert not s.is_graylisted("p")


def test_memory_is_bounded_and_graylisted_peers_are_kept() -> None:
    s = scores(max_peers=3, invalid_penalty=100.0)
    s.invalid("bad", "malformed", now=0.0)
    for peer in ("a", "b", "c", "d"):
        s.useful(peer, now=0.0)
    assert s.is_graylisted("bad")
    assert len(s.snapshot(now=0.0)) == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"rate": 0.0},
        {"invalid_penalty": -1.0},
        {"graylist_below": 1.0},
        {"graylist_seconds": 0.0},
        {"max_peers": 0},
    ],
)
def test_bad_params_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        ScoreParams(**changes)  # type: ignore[arg-type]


def test_broken_promises_cost_a_little_each_and_graylist_a_liar() -> None:
    scores = PeerScores(ScoreParams())
    assert scores.broken_promises("honest", now=0.0, count=5) == []
    assert -1.0 < scores.score("honest", now=0.0) < 0.0
    [prune] = scores.broken_promises("liar", now=0.0, count=1000)
    assert prune.peer == "liar" and scores.is_graylisted("liar")
    assert scores.peer_counters("liar")["broken_promises"] == 1000
