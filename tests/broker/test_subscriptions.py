"""The broker's subscription index (zmqcomm/broker/subscriptions.py), and the fan-out that
uses it checked against asking every online agent, through random membership changes."""

from __future__ import annotations

import random

from zmqcomm.access import Policy, RoleGrant, topic_matches
from zmqcomm.broker.core import BrokerCore
from zmqcomm.broker.subscriptions import SubscriptionIndex
from zmqcomm.wire import MessageType


def test_exact_topics_and_patterns_find_their_subscribers_once() -> None:
    index = SubscriptionIndex()
    index.add("a", ["alerts"])
    index.add("b", ["alerts.*", "alerts"])
    index.add("c", ["*"])
    index.add("d", ["other"])
    assert index.subscribers("alerts") == ["a", "b", "c"]
    assert sorted(index.subscribers("alerts.fire")) == ["b", "c"]
    assert index.subscribers("alert") == ["c"]
    assert index.subscribers("") == ["c"]
    index.discard("b", ["alerts"])
    assert sorted(index.subscribers("alerts")) == ["a", "c"]
    index.discard("c", ["*"])
    index.discard("c", ["*"])  # twice: nothing
    index.discard("zed", ["alerts"])  # never subscribed: nothing
    assert index.subscribers("alerts.fire") == ["b"]
    index.discard("b", ["alerts.*"])
    index.discard("a", ["alerts"])
    index.discard("d", ["other"])
    assert index._exact == {} and index._prefixes == {}  # nothing left behind


def test_both_ways_of_matching_patterns_agree() -> None:
    """With fewer patterns than the topic is long the index tries each pattern; with more,
    each prefix of the topic. Either way the agents whose patterns match, each once."""
    rng = random.Random(3)
    words = ["a", "ab", "abc", "b", "ba", "", "abcd"]
    index = SubscriptionIndex()
    subscribed: dict[str, list[str]] = {}
    for n in range(60):
        patterns = [rng.choice(words) + rng.choice(["", "*"]) for _ in range(3)]
        index.add(f"agent{n}", patterns)
        subscribed[f"agent{n}"] = patterns
        for topic in ["abcd", "a", "", "ba", "zz", "abcdefghij"]:
            expected = {
                agent
                for agent, theirs in subscribed.items()
                if any(topic_matches(p, topic) for p in theirs)
            }
            found = index.subscribers(topic)
            assert set(found) == expected and len(found) == len(expected)


def _asking_everyone(core: BrokerCore, sender: str, topic: str) -> set[str]:
    """The fan-out as the broker computed it before the index: every online agent."""
    return {
        name
        for name, state in core.agents.items()
        if name != sender and any(topic_matches(p, topic) for p in state.subscriptions)
    }


def test_fan_out_reaches_what_asking_every_online_agent_would() -> None:
    """Subscriptions, unsubscriptions, reconnects (with and without the old session's
    subscriptions), disconnects, idle expiry and a policy that ends some subscriptions: after
    each, every publication reaches exactly the online agents that a scan of each agent's
    subscriptions finds."""
    rng = random.Random(11)
    topics = ["jobs", "jobs.a", "jobs.b", "alerts", "alerts.x", "misc"]
    patterns = [*topics, "jobs.*", "alerts*", "*"]
    limited = Policy(
        roles={
            "agent": RoleGrant(send_any=True, publish=("*",), subscribe=("*",)),
            "narrow": RoleGrant(send_any=True, publish=("*",), subscribe=("jobs*",)),
        }
    )
    core = BrokerCore(policy=limited)
    names = [f"agent{n}" for n in range(12)]
    now = 0.0
    delivered = 0
    for step in range(1500):
        now += 1.0
        name = rng.choice(names)
        action = rng.random()
        if action < 0.15:
            roles = ["narrow"] if rng.random() < 0.2 else ["agent"]
            core.connected(name, roles, now=now, resumed=rng.random() < 0.5)
        elif name not in core.agents:
            continue
        elif action < 0.45:
            core.handle(name, MessageType.SUBSCRIBE, rng.choice(patterns), None, now=now)
        elif action < 0.55:
            core.handle(name, MessageType.UNSUBSCRIBE, rng.choice(patterns), None, now=now)
        elif action < 0.6:
            core.disconnected(name)
        elif action < 0.63:
            core.expire_idle(now=now, max_idle=rng.choice([2.0, 30.0]))
        elif action < 0.65:
            core.update_roles(name, frozenset({"narrow"}), now=now)
        else:
            topic = rng.choice(topics)
            sent = core.handle(name, MessageType.PUBLISH, topic, b"x", now=now)
            assert all(s.msg_type == MessageType.PUBLISH for s in sent), sent
            assert {s.to for s in sent} == _asking_everyone(core, name, topic), step
            assert len(sent) == len({s.to for s in sent})
            delivered += len(sent)
        for topic in topics:  # the index, not only the publications above
            assert set(core._subscribers.subscribers(topic)) - {name} == _asking_everyone(
                core, name, topic
            ) - {name}
    assert delivered > 100 and core.rejected["subscription_ended"] > 0, (delivered, core.rejected)
