"""Secure publish/subscribe through a broker (pure, sans-I/O).

A publisher encrypts each publication under its own key for the topic and signs it with its
Ed25519 identity; the broker fans the ciphertext out by the clear topic and cannot read it.
A subscriber accepts a publication only if:

1. the publisher is in its trust store and the signature (over the topic, key id, sequence
   number and ciphertext) verifies: origin authenticity, so neither the broker nor another
   agent can forge or alter a publication;
2. the sequence number is new in that publisher's replay window for the topic; and
3. it holds the publisher's topic key, which it asks the publisher for over their end-to-end
   session (the publisher checks the policy lets the asker subscribe to the topic).

Publications that arrive before the key are held (bounded) and opened when it comes. Gaps in
sequence numbers are fine: a broker or PUB socket may drop publications for a slow
subscriber, and the window only refuses repeats and the very old.

Memory is bounded: a replay window exists only beside a key the publisher really sent us,
and at most :data:`MAX_KEYS` of those are kept (least recently used first out). A forgotten
key's later publications ask for it again. So that asking again cannot reopen publications
already delivered (a broker can replay any it relayed), the highest sequence number seen
under a forgotten key is remembered (:data:`MAX_FORGOTTEN` of those, oldest first out): once
the key is back, nothing at or below it is accepted, not even a gap the old window would
still have taken.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from zmqcomm.access import Policy
from zmqcomm.crypto import aead
from zmqcomm.crypto.handshake import RandomBytes
from zmqcomm.crypto.keys import Identity, sender_from_agent_id, verify_signature
from zmqcomm.crypto.replay import ReplayWindow
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.errors import AuthenticationError, RemoteProtocolError, ReplayError, SecurityError
from zmqcomm.node.messages import Incoming, unwrap
from zmqcomm.wire import MessageType, WireCodec

_TAG = b"zmqcomm/1 publish"
#: Publications held per (publisher, topic, key id) while its key is on the way.
MAX_HELD = 1000
#: Keys asked for and not answered yet; past this, the oldest is given up (with what it held).
MAX_PENDING = 64
#: Bytes of publications held over all keys on the way: a publisher that never answers key
#: requests must not fill a subscriber's memory (64 keys x 1,000 frames could be terabytes).
MAX_HELD_BYTES = 64 * 1024 * 1024
KEY_SIZE = 32
#: Seconds a publisher keeps a topic key before it makes a new one: an agent whose right to
#: the topic ended (a policy change, an entry removed) stops reading within this time.
KEY_LIFETIME = 3600.0
#: Publishers' topic keys kept (each with its replay window, about 3 KB); past this, the
#: least recently used is forgotten and its next publication asks for it again.
MAX_KEYS = 4096
#: High-water marks of forgotten keys, so that a key asked for again does not reopen what
#: was delivered under it; past this, the oldest mark is forgotten too.
MAX_FORGOTTEN = 16_384
REPLAY_WINDOW = 4096
#: Seconds a refused key is not asked for again (its publications are dropped at once): not
#: forever, as the publisher's policy may change; not at once, or every publication on a
#: topic we may not read would cost the publisher a request.
REFUSED_FOR = 30.0
#: Refused keys remembered; past this, the oldest refusal is forgotten (and asked again).
MAX_REFUSED = 1024
#: (publisher, topic, key id): one publisher's key for one topic.
_Slot = tuple[str, str, int]


@dataclass
class _Published:
    key_id: int
    key: bytes
    #: The trust store's revocations when the key was made: a new revocation retires it.
    revoked: frozenset[str]
    #: When it was made (None: no time given, it ages out never).
    made_at: float | None
    sequence: int = 0


@dataclass
class _Subscribed:
    """A publisher's topic key we hold, and which of its publications we accepted."""

    key: bytes
    window: ReplayWindow
    #: Sequence numbers up to this were seen under a window since forgotten: refused.
    floor: int = -1

    def fresh(self, sequence: int) -> bool:
        return sequence > self.floor and self.window.check(sequence)

    def highest(self) -> int:
        return max(self.floor, self.window.highest)


def _signed(publisher: bytes, topic: str, key_id: int, sequence: int, sealed: bytes) -> bytes:
    topic_bytes = topic.encode()
    return b"".join(
        (
            _TAG,
            publisher,
            len(topic_bytes).to_bytes(1, "big"),
            topic_bytes,
            key_id.to_bytes(4, "big"),
            sequence.to_bytes(8, "big"),
            sealed,
        )
    )


def _nonce(sequence: int) -> bytes:
    return bytes(4) + sequence.to_bytes(8, "little")


def _held_size(held: deque[list[Any]]) -> int:
    return sum(len(body[2]) for body in held)


class Topics:
    """Our publications and our subscriptions."""

    def __init__(
        self,
        *,
        identity: Identity,
        trust: TrustStore,
        random_bytes: RandomBytes,
        policy: Policy | None = None,
        codec: WireCodec | None = None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.policy = policy
        self.codec = codec if codec is not None else WireCodec()
        self._random = random_bytes
        self._mine: dict[str, _Published] = {}
        #: Each topic's previous key, granted still for publications sealed under it.
        self._retired: dict[str, _Published] = {}
        #: Keys learnt from publishers' answers, least recently used first.
        self._keys: OrderedDict[_Slot, _Subscribed] = OrderedDict()
        #: Forgotten keys -> the highest sequence number seen under them.
        self._forgotten: OrderedDict[_Slot, int] = OrderedDict()
        #: Keys refused -> until when their publications are dropped without asking again.
        self._refused: OrderedDict[_Slot, float] = OrderedDict()
        #: Keys asked for, and the publications held for each: one slot never crowds out
        #: another (a key refused or never answered holds up only its own topic).
        self._pending: OrderedDict[_Slot, deque[list[Any]]] = OrderedDict()
        #: Sealed bytes of the publications in ``_pending``.
        self._held_bytes = 0
        #: Publications dropped, by reason.
        self.dropped: Counter[str] = Counter()
        self.forgotten_keys = 0

    # -- publishing --------------------------------------------------------------------------

    def publish(self, topic: str, payload: object, *, now: float | None = None) -> list[object]:
        """The PUBLISH payload for the broker: ``[key_id, sequence, ciphertext, signature]``.

        The topic's key is replaced by a new one once an agent is revoked in the trust store
        (the broker may still fan out to it, and it holds the old key) and, given ``now``,
        once the key is :data:`KEY_LIFETIME` seconds old. Subscribers ask for the new key,
        which the publisher grants only to those it still trusts and the policy lets in."""
        mine = self._mine.get(topic)
        revoked = self.trust.revoked()
        if (
            mine is None
            or (mine.revoked is not revoked and mine.revoked != revoked)
            or (now is not None and mine.made_at is not None and now - mine.made_at >= KEY_LIFETIME)
        ):
            key_id = int.from_bytes(self._random(4), "big")
            if mine is not None:
                # Still granted (to whom the checks let in) for what is on its way under it.
                self._retired[topic] = mine
            mine = _Published(key_id, self._random(KEY_SIZE), revoked, now)
            self._mine[topic] = mine
        sequence = mine.sequence
        mine.sequence += 1
        frames = self.codec.encode(MessageType.PUBLISH, payload, topic=topic)
        if len(frames) != 1:
            raise RemoteProtocolError("publications cannot carry out-of-band arrays")
        associated = _signed(self.identity.sender_id, topic, mine.key_id, sequence, b"")
        sealed = aead.encrypt(mine.key, _nonce(sequence), associated, bytes(frames[0]))
        signature = self.identity.sign(
            _signed(self.identity.sender_id, topic, mine.key_id, sequence, sealed)
        )
        return [mine.key_id, sequence, sealed, signature]

    def grant(self, asker: str, roles: frozenset[str], request: object) -> object:
        """Answer a subscriber's key request (sent to us over our end-to-end session).

        NotPermittedError if the policy does not let the asker subscribe to the topic: send it
        :func:`refusal` then, so that it drops what it holds for the key at once."""
        topic, key_id = _key_request(request)
        if self.policy is not None:
            self.policy.check_subscribe(asker, roles, topic)
        for mine in (self._mine.get(topic), self._retired.get(topic)):
            if mine is not None and mine.key_id == key_id:
                return [topic, key_id, mine.key]
        return refusal(request)

    # -- subscribing -------------------------------------------------------------------------

    def on_publication(
        self, topic: str, payload: object, *, now: float
    ) -> tuple[list[tuple[str, object]], list[Incoming]]:
        """A publication fanned out by the broker: ``[publisher, [key_id, seq, ct, sig]]``.

        Returns key requests to send (publisher, request) and the publications it opened."""
        publisher, body = _parse(payload)
        key_id, sequence, sealed, signature = body
        entry = self.trust.lookup(publisher, now=now)
        verify_signature(
            entry.verify_key, _signed(entry.sender_id, topic, key_id, sequence, sealed), signature
        )
        slot = (publisher, topic, key_id)
        subscribed = self._keys.get(slot)
        if subscribed is None:
            if sequence <= self._forgotten.get(slot, -1):
                raise ReplayError(f"publication {sequence} from {publisher} seen before")
            if self._refused.get(slot, now) > now:
                self.dropped["key_refused"] += 1
                return [], []
            self._refused.pop(slot, None)
            return self._hold(slot, body), []
        if not subscribed.fresh(sequence):
            raise ReplayError(f"publication {sequence} from {publisher} seen before")
        self._keys.move_to_end(slot)
        subscribed.window.accept(sequence)
        return [], [self._open(publisher, topic, subscribed.key, body, entry.roles)]

    def _hold(self, slot: _Slot, body: list[Any]) -> list[tuple[str, object]]:
        """Keep a publication until its key comes; the key request to send, if not yet sent."""
        publisher, topic, key_id = slot
        asks: list[tuple[str, object]] = []
        held = self._pending.get(slot)
        if held is None:
            held = self._pending[slot] = deque()
            asks.append((publisher, [topic, key_id]))
            while len(self._pending) > MAX_PENDING:
                _, given_up = self._pending.popitem(last=False)
                self._held_bytes -= _held_size(given_up)
                self.dropped["key_pending"] += len(given_up)
        size = len(body[2])
        if len(held) >= MAX_HELD or self._held_bytes + size > MAX_HELD_BYTES:
            self.dropped["key_pending"] += 1
        else:
            held.append(body)
            self._held_bytes += size
        return asks

    def _open(
        self, publisher: str, topic: str, key: bytes, body: list[Any], roles: frozenset[str]
    ) -> Incoming:
        key_id, sequence, sealed, _ = body
        associated = _signed(sender_from_agent_id(publisher), topic, key_id, sequence, b"")
        plaintext = aead.decrypt(key, _nonce(sequence), associated, sealed)
        if plaintext is None:
            raise AuthenticationError("publication failed authentication", reason="bad_tag")
        inner = self.codec.decode([plaintext])
        if inner.header.type != MessageType.PUBLISH or inner.header.topic != topic:
            raise AuthenticationError("publication moved to another topic", reason="bad_topic")
        return unwrap(publisher, MessageType.PUBLISH, inner.payload, topic=topic, roles=roles)

    def on_key(self, publisher: str, answer: object, *, now: float) -> list[Incoming]:
        """A publisher's answer to our key request: open what was held for it."""
        if (
            not isinstance(answer, list)
            or len(answer) != 3
            or not isinstance(answer[0], str)
            or type(answer[1]) is not int
        ):
            raise RemoteProtocolError("bad topic key answer", reason="bad_key_answer")
        topic, key_id, key = answer
        slot = (publisher, topic, key_id)
        if slot not in self._pending:  # never asked, or given up: not kept, so not unbounded
            raise RemoteProtocolError("a topic key not asked for", reason="unsolicited_key")
        roles = self.trust.lookup(publisher, now=now).roles
        held = self._pending.pop(slot)
        self._held_bytes -= _held_size(held)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            self.dropped["key_refused"] += len(held)
            self._refused[slot] = now + REFUSED_FOR
            while len(self._refused) > MAX_REFUSED:
                self._refused.popitem(last=False)
            return []
        subscribed = _Subscribed(key, ReplayWindow(REPLAY_WINDOW), self._forgotten.get(slot, -1))
        opened, failed = [], 0
        for body in held:
            if not subscribed.fresh(body[1]):
                continue
            try:
                opened.append(self._open(publisher, topic, key, body, roles))
            except (RemoteProtocolError, SecurityError):
                failed += 1
                continue
            subscribed.window.accept(body[1])
        if failed:
            self.dropped["unopened"] += failed
            if not opened:  # it opens none of what the publisher signed: a wrong key
                raise AuthenticationError("a topic key that opens nothing", reason="bad_key")
        self._keep(slot, subscribed)
        return opened

    def _keep(self, slot: _Slot, subscribed: _Subscribed) -> None:
        """Hold a key, forgetting the least recently used past :data:`MAX_KEYS` (keeping
        only its high-water mark, so that it reopens nothing if it is asked for again)."""
        self._forgotten.pop(slot, None)  # its floor travels in the new window
        self._keys[slot] = subscribed
        while len(self._keys) > MAX_KEYS:
            old_slot, old = self._keys.popitem(last=False)
            self._forgotten[old_slot] = old.highest()
            self.forgotten_keys += 1
            while len(self._forgotten) > MAX_FORGOTTEN:
                self._forgotten.popitem(last=False)


def _key_request(request: object) -> tuple[str, object]:
    if not isinstance(request, list) or len(request) != 2 or not isinstance(request[0], str):
        raise RemoteProtocolError("bad topic key request", reason="bad_key_request")
    return request[0], request[1]


def refusal(request: object) -> list[object]:
    """The answer to a well-formed key request that gets no key (the topic is not ours, the
    key id is old, or the policy refuses): the asker drops the publications it held for it."""
    topic, key_id = _key_request(request)
    return [topic, key_id, None]


def _parse(payload: object) -> tuple[str, list[Any]]:
    bad = RemoteProtocolError("malformed publication", reason="bad_publication")
    if not isinstance(payload, list) or len(payload) != 2 or not isinstance(payload[0], str):
        raise bad
    publisher, body = payload
    if (
        not isinstance(body, list)
        or len(body) != 4
        or type(body[0]) is not int
        or not 0 <= body[0] < 2**32
        or type(body[1]) is not int
        or not 0 <= body[1] < 2**63
        or not isinstance(body[2], bytes)
        or not isinstance(body[3], bytes)
    ):
        raise bad
    return publisher, body
