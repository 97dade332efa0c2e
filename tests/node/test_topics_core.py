"""The pure pub/sub core: origin signatures, replay windows, topic keys and their policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zmqcomm.access import Policy
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import (
    AuthenticationError,
    NotPermittedError,
    RemoteProtocolError,
    ReplayError,
    UnknownPeerError,
)
from zmqcomm.node import topics
from zmqcomm.node.topics import MAX_HELD, MAX_PENDING, Topics
from zmqcomm.wire import MessageType

NOW = 1_800_000_000.0
POLICY = Policy.from_toml(
    """
[roles.reader]
subscribe = ["news/*"]
"""
)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Topics, Topics, Identity, Identity]:
    publisher, subscriber = Identity.generate("pub"), Identity.generate("sub")
    publisher_trust = TrustStore(tmp_path / "p")
    publisher_trust.add(subscriber.public, roles=["reader"])
    subscriber_trust = TrustStore(tmp_path / "s")
    subscriber_trust.add(publisher.public, roles=["writer"])
    mine = Topics(identity=publisher, trust=publisher_trust, random_bytes=os.urandom, policy=POLICY)
    theirs = Topics(identity=subscriber, trust=subscriber_trust, random_bytes=os.urandom)
    return mine, theirs, publisher, subscriber


def _key_exchange(mine: Topics, theirs: Topics, publisher: Identity, subscriber: Identity,
                  topic: str, body: list[object]) -> list[object]:  # fmt: skip
    asks, opened = theirs.on_publication(topic, [publisher.agent_id, body], now=NOW)
    assert opened == [] and len(asks) == 1 and asks[0][0] == publisher.agent_id
    answer = mine.grant(subscriber.agent_id, frozenset({"reader"}), asks[0][1])
    return [m.payload for m in theirs.on_key(publisher.agent_id, answer, now=NOW)]


def test_publications_open_after_the_key_arrives_and_then_directly(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    first = mine.publish("news/today", {"n": 0})
    assert _key_exchange(mine, theirs, publisher, subscriber, "news/today", first) == [{"n": 0}]
    second = mine.publish("news/today", {"n": 1})
    asks, opened = theirs.on_publication("news/today", [publisher.agent_id, second], now=NOW)
    assert asks == [] and [(m.payload, m.kind, m.sender) for m in opened] == [
        ({"n": 1}, MessageType.PUBLISH, publisher.agent_id)
    ]


def test_the_ciphertext_does_not_contain_the_payload(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, *_ = pair
    body = mine.publish("news/today", "the secret plan")
    assert b"the secret plan" not in b"".join(x for x in body if isinstance(x, bytes))


def test_forged_altered_moved_and_replayed_publications_are_refused(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    _key_exchange(mine, theirs, publisher, subscriber, "news/a", mine.publish("news/a", 0))
    good = mine.publish("news/a", 1)
    altered = list(good)
    altered[2] = bytes([good[2][0] ^ 1]) + good[2][1:]  # type: ignore[index]
    with pytest.raises(AuthenticationError):
        theirs.on_publication("news/a", [publisher.agent_id, altered], now=NOW)
    forged = list(good)
    forged[3] = subscriber.sign(b"not the publisher")
    with pytest.raises(AuthenticationError):
        theirs.on_publication("news/a", [publisher.agent_id, forged], now=NOW)
    with pytest.raises(AuthenticationError):  # relabelled to another topic by a broker
        theirs.on_publication("news/b", [publisher.agent_id, good], now=NOW)
    _, opened = theirs.on_publication("news/a", [publisher.agent_id, good], now=NOW)
    assert [m.payload for m in opened] == [1]
    with pytest.raises(ReplayError):
        theirs.on_publication("news/a", [publisher.agent_id, good], now=NOW)


def test_a_publication_claimed_by_another_agent_is_refused(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, _, _ = pair
    stranger = Identity.generate("stranger")
    with pytest.raises(UnknownPeerError):
        theirs.on_publication("news/a", [stranger.agent_id, mine.publish("news/a", 0)], now=NOW)
    theirs.trust.add(stranger.public, roles=["writer"])
    with pytest.raises(AuthenticationError):  # signed by the publisher, claimed by stranger
        theirs.on_publication("news/a", [stranger.agent_id, mine.publish("news/a", 1)], now=NOW)


def test_the_key_goes_only_to_whom_the_policy_lets_subscribe(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, _, _, subscriber = pair
    mine.publish("secret/x", 0)
    with pytest.raises(NotPermittedError):
        mine.grant(subscriber.agent_id, frozenset({"reader"}), ["secret/x", 1])
    with pytest.raises(NotPermittedError):
        mine.grant(subscriber.agent_id, frozenset(), ["news/today", 1])
    assert mine.grant(subscriber.agent_id, frozenset({"reader"}), ["news/none", 1])[2] is None


def test_held_publications_are_bounded_and_asked_for_once(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, _ = pair
    asks_total = 0
    for index in range(MAX_HELD + 10):
        asks, opened = theirs.on_publication(
            "news/a", [publisher.agent_id, mine.publish("news/a", index)], now=NOW
        )
        asks_total += len(asks)
        assert opened == []
    assert asks_total == 1
    assert theirs.dropped["key_pending"] == 10


def test_held_publications_are_bounded_in_bytes_across_keys(
    pair: tuple[Topics, Topics, Identity, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher that never answers key requests holds at most MAX_HELD_BYTES of a
    subscriber's memory, whatever the count bound would allow; a key that comes frees it."""
    mine, theirs, publisher, subscriber = pair
    monkeypatch.setattr(topics, "MAX_HELD_BYTES", 10_000)
    asks = []
    for topic in ("news/a", "news/b"):
        for _ in range(20):
            body = mine.publish(topic, b"x" * 1000)
            new, _ = theirs.on_publication(topic, [publisher.agent_id, body], now=NOW)
            asks += [request for _, request in new]
    assert theirs._held_bytes <= 10_000
    held = sum(len(queue) for queue in theirs._pending.values())
    assert held < 40 and held + theirs.dropped["key_pending"] == 40
    answer = mine.grant(subscriber.agent_id, frozenset({"reader"}), asks[0])
    opened = theirs.on_key(publisher.agent_id, answer, now=NOW)
    assert opened and theirs._held_bytes == sum(
        len(body[2]) for queue in theirs._pending.values() for body in queue
    )


@pytest.mark.parametrize(
    "payload",
    [None, [], ["x"], ["x", [1, 2, 3]], [7, [1, 2, b"", b""]], ["x", [2**40, 0, b"", b""]]],
)
def test_malformed_publications_raise_a_typed_error(
    pair: tuple[Topics, Topics, Identity, Identity], payload: object
) -> None:
    _, theirs, _, _ = pair
    with pytest.raises(RemoteProtocolError):
        theirs.on_publication("news/a", payload, now=NOW)


def _hold(
    theirs: Topics, mine: Topics, publisher: Identity, topic: str, count: int
) -> list[object]:
    """Publish ``count`` times on ``topic`` before the key is known; the key requests made."""
    asks: list[object] = []
    for index in range(count):
        body = mine.publish(topic, index)
        new, opened = theirs.on_publication(topic, [publisher.agent_id, body], now=NOW)
        assert opened == []
        asks += [request for _, request in new]
    return asks


def test_a_topic_whose_key_is_refused_or_wrong_holds_up_no_other_topic(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    reader = frozenset({"reader"})
    [ask_a] = _hold(theirs, mine, publisher, "news/a", MAX_HELD + 5)  # its place is full
    [ask_b] = _hold(theirs, mine, publisher, "news/b", 2)  # still asked for, and held
    [ask_c] = _hold(theirs, mine, publisher, "news/c", 2)

    # A wrong key for b opens nothing and is not kept; c's publications wait on.
    wrong = [*mine.grant(subscriber.agent_id, reader, ask_b)[:2], bytes(32)]  # type: ignore[index]
    with pytest.raises(AuthenticationError):
        theirs.on_key(publisher.agent_id, wrong, now=NOW)
    answer_c = mine.grant(subscriber.agent_id, reader, ask_c)
    assert [m.payload for m in theirs.on_key(publisher.agent_id, answer_c, now=NOW)] == [0, 1]

    # A refused key for a (the publisher no longer has it) drops only a's publications.
    refused = [*ask_a, None]  # type: ignore[list-item]
    assert theirs.on_key(publisher.agent_id, refused, now=NOW) == []
    assert theirs.dropped["key_refused"] == MAX_HELD
    _, opened = theirs.on_publication(
        "news/c", [publisher.agent_id, mine.publish("news/c", 2)], now=NOW
    )
    assert [m.payload for m in opened] == [2]


def test_a_topic_key_not_asked_for_is_refused_and_not_kept(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    body = mine.publish("news/a", 0)
    answer = mine.grant(subscriber.agent_id, frozenset({"reader"}), ["news/a", body[0]])
    with pytest.raises(RemoteProtocolError) as caught:
        theirs.on_key(publisher.agent_id, answer, now=NOW)
    assert caught.value.reason == "unsolicited_key"
    for index in range(10_000):  # a peer's flood of keys leaves nothing behind
        with pytest.raises(RemoteProtocolError):
            theirs.on_key(publisher.agent_id, [f"t/{index}", index, bytes(32)], now=NOW)
    assert theirs._keys == {}
    # Asked for now, the same answer is taken.
    asks, _ = theirs.on_publication("news/a", [publisher.agent_id, body], now=NOW)
    assert [request for _, request in asks] == [["news/a", body[0]]]
    assert [m.payload for m in theirs.on_key(publisher.agent_id, answer, now=NOW)] == [0]


def test_keys_awaited_at_once_are_bounded_and_the_oldest_given_up(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, _ = pair
    for index in range(MAX_PENDING + 3):
        assert len(_hold(theirs, mine, publisher, f"news/{index}", 1)) == 1
    assert len(theirs._pending) == MAX_PENDING
    assert theirs.dropped["key_pending"] == 3


def _subscribe_to(
    pair: tuple[Topics, Topics, Identity, Identity], topic: str, payload: object
) -> list[object]:
    """Publish on ``topic`` and hand the subscriber the key it asks for; what it opened."""
    mine, theirs, publisher, subscriber = pair
    return _key_exchange(mine, theirs, publisher, subscriber, topic, mine.publish(topic, payload))


def test_keys_and_windows_are_bounded_and_the_least_recently_used_forgotten(
    pair: tuple[Topics, Topics, Identity, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topics, "MAX_KEYS", 3, raising=False)
    monkeypatch.setattr(topics, "MAX_FORGOTTEN", 4, raising=False)
    mine, theirs, publisher, _ = pair
    for index in range(3):
        assert _subscribe_to(pair, f"news/{index}", index) == [index]
    # news/0 used again: news/1 is now the least recently used, and goes first.
    theirs.on_publication("news/0", [publisher.agent_id, mine.publish("news/0", "again")], now=NOW)
    assert _subscribe_to(pair, "news/3", 3) == [3]
    assert {slot[1] for slot in theirs._keys} == {"news/0", "news/2", "news/3"}
    for index in range(4, 40):  # many more keys, and publications whose key never comes
        _subscribe_to(pair, f"news/{index}", index)
        _hold(theirs, mine, publisher, f"news/never/{index}", 1)
    # Nothing the subscriber keeps grows past its bound.
    sizes = {name: len(value) for name, value in vars(theirs).items() if hasattr(value, "__len__")}
    assert sizes["_keys"] == 3 and sizes["_forgotten"] == 4
    assert max(sizes.values()) <= max(3, 4, MAX_PENDING), sizes
    assert theirs.forgotten_keys == 37


def test_a_forgotten_key_asked_for_again_reopens_nothing_already_delivered(
    pair: tuple[Topics, Topics, Identity, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker relays every publication, so it can replay old ones once the subscriber
    # forgot the key (and its window): they must not be accepted a second time.
    monkeypatch.setattr(topics, "MAX_KEYS", 1, raising=False)
    mine, theirs, publisher, subscriber = pair
    early = [mine.publish("news/a", n) for n in range(3)]
    assert _key_exchange(mine, theirs, publisher, subscriber, "news/a", early[0]) == [0]
    for body in early[2:]:
        theirs.on_publication("news/a", [publisher.agent_id, body], now=NOW)  # 1 is lost
    assert _subscribe_to(pair, "news/b", "b") == ["b"]  # news/a's key is forgotten
    for body in early:  # replayed: all at or below what was seen, gap 1 included
        with pytest.raises(ReplayError):
            theirs.on_publication("news/a", [publisher.agent_id, body], now=NOW)
    # A new publication asks for the key again, and opens once it is back; old ones do not.
    later = mine.publish("news/a", 3)
    asks, opened = theirs.on_publication("news/a", [publisher.agent_id, later], now=NOW)
    assert opened == [] and len(asks) == 1
    answer = mine.grant(subscriber.agent_id, frozenset({"reader"}), asks[0][1])
    assert [m.payload for m in theirs.on_key(publisher.agent_id, answer, now=NOW)] == [3]
    with pytest.raises(ReplayError):
        theirs.on_publication("news/a", [publisher.agent_id, early[1]], now=NOW)


def test_a_key_the_policy_refuses_is_answered_so_the_asker_drops_what_it_held(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    [ask] = _hold(theirs, mine, publisher, "secret/x", 3)
    with pytest.raises(NotPermittedError):
        mine.grant(subscriber.agent_id, frozenset({"reader"}), ask)
    assert theirs.on_key(publisher.agent_id, topics.refusal(ask), now=NOW) == []
    assert theirs.dropped["key_refused"] == 3 and theirs._pending == {}
    # Not asked again at every publication, only once the refusal is old.
    assert _hold(theirs, mine, publisher, "secret/x", 2) == []
    assert theirs.dropped["key_refused"] == 5 and theirs._pending == {}
    later = mine.publish("secret/x", "later")
    asks, _ = theirs.on_publication(
        "secret/x", [publisher.agent_id, later], now=NOW + topics.REFUSED_FOR
    )
    assert [request for _, request in asks] == [ask]
    with pytest.raises(RemoteProtocolError):  # nothing to answer a malformed request with
        topics.refusal(["secret/x"])


def test_a_revocation_retires_the_topic_key_so_the_revoked_agent_reads_no_more(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    """The broker may still fan out to an agent the publisher revoked, and that agent holds
    the key: the publisher's next publication is under a new key, granted only to whom it
    still trusts (a revoked agent has no session to ask over)."""
    mine, theirs, publisher, subscriber = pair
    assert _key_exchange(
        mine, theirs, publisher, subscriber, "news/a", mine.publish("news/a", 1)
    ) == [1]
    _, opened = theirs.on_publication(
        "news/a", [publisher.agent_id, mine.publish("news/a", 2)], now=NOW
    )
    assert [m.payload for m in opened] == [2]  # the same key: opens at once
    mine.trust.revoke(subscriber.agent_id)
    asks, opened = theirs.on_publication(
        "news/a", [publisher.agent_id, mine.publish("news/a", 3)], now=NOW
    )
    assert opened == [] and len(asks) == 1  # a new key: the old one opens nothing


def test_a_topic_key_ages_out_and_the_previous_one_is_still_granted(
    pair: tuple[Topics, Topics, Identity, Identity],
) -> None:
    mine, theirs, publisher, subscriber = pair
    first = mine.publish("news/a", 1, now=NOW)
    assert mine.publish("news/a", 2, now=NOW + topics.KEY_LIFETIME - 1)[0] == first[0]
    later = mine.publish("news/a", 3, now=NOW + topics.KEY_LIFETIME)
    assert later[0] != first[0]
    # A publication sealed under the previous key, still on its way, opens for a subscriber
    # the policy lets in.
    assert _key_exchange(mine, theirs, publisher, subscriber, "news/a", first) == [1]
    assert _key_exchange(mine, theirs, publisher, subscriber, "news/a", later) == [3]
