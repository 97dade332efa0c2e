"""Publish/subscribe between directly connected nodes, without a broker (pure).

Each node tells its direct peers which topics it subscribes to (SUBSCRIBE and UNSUBSCRIBE
inside their sessions); a publication goes, over each session, to the peers whose
subscriptions match. The sessions already prove who published, so no signature is added;
the policy is checked on both sides: a subscriber must be allowed to subscribe to the topic
(checked by the publisher) and a publisher to publish on it (checked by the subscriber).
"""

from __future__ import annotations

from collections import defaultdict

from zmqcomm.access import Policy, topic_matches
from zmqcomm.errors import LimitExceededError
from zmqcomm.wire import MessageType

CONTROL = frozenset({MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE})
#: Topics (or patterns) one peer may subscribe to: each costs memory and a match per publish.
MAX_SUBSCRIPTIONS = 1000


class DirectTopics:
    """Our subscriptions, and those our direct peers told us about."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy
        self.mine: set[str] = set()
        self._theirs: dict[str, set[str]] = defaultdict(set)

    def on_control(self, peer: str, roles: frozenset[str], kind: int, topic: str) -> None:
        """A peer's SUBSCRIBE or UNSUBSCRIBE (NotPermittedError if the policy says no,
        LimitExceededError past :data:`MAX_SUBSCRIPTIONS`)."""
        if kind == MessageType.SUBSCRIBE:
            if self.policy is not None:
                self.policy.check_subscribe(peer, roles, topic)
            theirs = self._theirs[peer]
            if topic not in theirs and len(theirs) >= MAX_SUBSCRIPTIONS:
                raise LimitExceededError(
                    f"{peer} has {len(theirs)} subscriptions already",
                    reason="too_many_subscriptions",
                )
            theirs.add(topic)
        else:
            self._theirs[peer].discard(topic)

    def forget(self, peer: str) -> None:
        self._theirs.pop(peer, None)

    def subscribers(self, topic: str) -> list[str]:
        return sorted(
            peer
            for peer, patterns in self._theirs.items()
            if any(topic_matches(pattern, topic) for pattern in patterns)
        )

    def accept(self, peer: str, roles: frozenset[str], topic: str) -> bool:
        """Whether a peer's publication on ``topic`` is for us (NotPermittedError if the
        policy does not let that peer publish there)."""
        if self.policy is not None:
            self.policy.check_publish(peer, roles, topic)
        return any(topic_matches(pattern, topic) for pattern in self.mine)
