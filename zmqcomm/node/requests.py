"""Requests a node sent and waits on (pure): their ids, who may answer, replies not taken.

Request ids count up from a random start (given by the node: this module stays pure), so a
node restarted does not reuse its earlier life's ids, whose replies may still be about (in
mail, say). Another peer can still guess them: a reply counts only if it comes from the
agent the request went to, and only once. A reply nobody waits for any more (its
request timed out or was abandoned) is late.
"""

from __future__ import annotations

import itertools

from zmqcomm.errors import RemoteProtocolError
from zmqcomm.node.messages import Incoming


class Requests:
    """The requests in flight, and the replies that arrived for them."""

    def __init__(self, first_id: int = 1) -> None:
        #: Request id -> the agent asked: only that agent's reply answers it.
        self.waiting: dict[int, str] = {}
        #: Request id -> its reply, until taken.
        self.replies: dict[int, Incoming] = {}
        self._ids = itertools.count(first_id)

    def start(self, peer: str) -> int:
        """A new request id, waiting for ``peer``'s reply."""
        request_id = next(self._ids)
        self.waiting[request_id] = peer
        return request_id

    def take(self, request_id: int) -> Incoming | None:
        """The reply, if it has arrived. Once taken, the request is answered: a second reply
        to it counts as late."""
        reply = self.replies.pop(request_id, None)
        if reply is not None:
            self.waiting.pop(request_id, None)
        return reply

    def abandon(self, request_id: int) -> None:
        """Stop waiting: a reply arriving later is late."""
        self.waiting.pop(request_id, None)
        self.replies.pop(request_id, None)

    def on_reply(self, reply: Incoming) -> bool:
        """Keep ``reply`` for whoever waits on it; False if nobody does (it is late).
        RemoteProtocolError (``wrong_replier``) if it comes from an agent not asked."""
        asked = None if reply.request_id is None else self.waiting.get(reply.request_id)
        if asked is None:
            return False
        if asked != reply.sender:
            raise RemoteProtocolError("a reply from an agent not asked", reason="wrong_replier")
        assert reply.request_id is not None
        self.replies[reply.request_id] = reply
        return True
