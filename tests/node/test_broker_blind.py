"""The broker routes agent traffic it cannot read.

Everything the broker's core is handed (the most the broker ever learns: its own hop layer,
already decrypted) is recorded while two agents exchange a direct message, a request, a
publication and a piece of mail. The secret text appears in none of it, and none of the
inner frames opens with any key the broker holds: its hop session keys with either agent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from zmqcomm.broker.core import Send
from zmqcomm.broker.server import Broker
from zmqcomm.crypto import aead
from zmqcomm.crypto.keys import Identity
from zmqcomm.crypto.session import nonce
from zmqcomm.crypto.trust import TrustStore
from zmqcomm.wire import MessageType, WireCodec

from .support import pump_until, serving, trusting_node

SECRET = "the-launch-code-is-0000"


def _walk(value: Any) -> Iterator[bytes]:
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, str):
        yield value.encode()
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(key)
            yield from _walk(item)


@pytest.fixture
def recorded() -> Iterator[tuple[list[tuple[int, str, Any]], Broker, list[Identity], Path]]:
    directory = Path(tempfile.mkdtemp(prefix="zc-", dir="/tmp"))
    broker_id, alice, bob = (Identity.generate(n) for n in ("broker", "alice", "bob"))
    trust = TrustStore(directory / "broker")
    for agent in (alice, bob):
        trust.add(agent.public, roles=["agent"])
    broker = Broker(
        [f"ipc://{directory}/b.sock"], identity=broker_id, trust=trust, data=directory / "data"
    )
    seen: list[tuple[int, str, Any]] = []
    handle = broker.core.handle

    def spy(
        agent: str, msg_type: int, topic: str, payload: object, *, now: float, **options: Any
    ) -> list[Send]:
        seen.append((msg_type, topic, payload))
        return handle(agent, msg_type, topic, payload, now=now, **options)

    broker.core.handle = spy  # type: ignore[method-assign]
    with serving(broker):
        yield seen, broker, [broker_id, alice, bob], directory


def test_the_broker_never_sees_or_can_open_agent_payloads(
    recorded: tuple[list[tuple[int, str, Any]], Broker, list[Identity], Path],
) -> None:
    seen, broker, (broker_id, alice, bob), directory = recorded
    endpoint = broker.endpoints[0]
    a = trusting_node(alice, [broker_id, bob], directory, endpoint)
    # Mail first, while bob is offline.
    a.send(bob.agent_id, {"mail": SECRET})
    pump_until([a], lambda: a.statistics()["mailed"] == 1)
    b = trusting_node(bob, [broker_id, alice], directory, endpoint)
    b.request_handler = lambda message: {"reply": SECRET}
    b.subscribe("news/*")
    pump_until([a, b], lambda: len(b.inbox) == 1)
    a.send(bob.agent_id, {"direct": SECRET})
    asked = a.start_request(bob.agent_id, {"request": SECRET})
    replies: list[Any] = []
    pump_until([a, b], lambda: bool(replies.append(a.take_reply(asked)) or replies[-1]))
    assert replies[-1].payload == {"reply": SECRET}
    pump_until([a, b], lambda: len(b.inbox) == 2)
    a.publish("news/today", {"news": SECRET})
    pump_until([a, b], lambda: len(b.inbox) == 3)
    assert [m.payload for m in b.inbox] == [
        {"mail": SECRET},
        {"direct": SECRET},
        {"news": SECRET},
    ]

    # 1. The plaintext never reached the broker's core, in any message it handled.
    blobs = [blob for entry in seen for blob in _walk(entry[2])]
    assert len(seen) > 10 and blobs
    assert not any(SECRET.encode() in blob for blob in blobs)

    # 2. No key the broker holds opens any inner frame: its hop session keys with both agents.
    keys = []
    for channel in broker.router.table.channels.values():
        session = channel.session
        assert session is not None
        keys.append(session._send.key)
        keys += [state.key for state in session._receive.values()]
    codec = WireCodec()
    inner = [
        p for msg_type, _, p in seen if msg_type == MessageType.FORWARD and isinstance(p, list)
    ]
    assert inner
    opened = 0
    for frames in inner:
        parsed = codec.parse(frames)
        header = parsed.header
        for key in keys:
            if (
                aead.decrypt(
                    key,
                    nonce(header.counter),
                    bytes(parsed.associated_data),
                    bytes(parsed.body),
                )
                is not None
            ):
                opened += 1
    assert opened == 0

    # 3. The mail is a sealed box to bob's key; the broker's own static key does not open it.
    mails = [p for msg_type, _, p in seen if msg_type == MessageType.MAIL]
    assert len(mails) == 1
    broker_box = SealedBox(PrivateKey(broker_id.static_keypair.private))
    with pytest.raises(CryptoError):
        broker_box.decrypt(mails[0])
    a.close()
    b.close()
