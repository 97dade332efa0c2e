"""Golden vectors: the committed bytes of wire format v1 must decode, and encode, exactly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from zmqcomm.errors import RemoteProtocolError
from zmqcomm.wire import MessageType, WireCodec

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "wire"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wire_vectors", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
CASES: list[dict[str, Any]] = json.loads((VECTORS / "v1.json").read_text())["cases"]
VALID = [case for case in CASES if "expected" in case]
INVALID = [case for case in CASES if "error" in case]


def _frames(case: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(frame) for frame in case["frames"]]


def test_the_vectors_cover_every_kind() -> None:
    names = {case["name"] for case in CASES}
    assert {"batch", "publish-compressed", "tensor-out-of-band", "minor-extended-header"} <= names
    assert len(INVALID) >= 5


@pytest.mark.parametrize("case", VALID, ids=lambda case: case["name"])
def test_golden_frames_decode_to_the_expected_message(case: dict[str, Any]) -> None:
    message = WireCodec().decode(_frames(case))
    expected = case["expected"]
    header = message.header
    assert header.type == expected["type"]
    assert header.flags == expected["flags"]
    assert header.minor == expected["minor"]
    assert header.topic == expected["topic"]
    assert (header.session, header.epoch, header.counter) == (
        expected["session"],
        expected["epoch"],
        expected["counter"],
    )
    assert header.sender.hex() == expected["sender"]
    assert header.is_batch is expected["batch"]
    assert [GENERATOR.to_json(p) for p in message.payloads] == expected["payloads"]


@pytest.mark.parametrize(
    "case", [c for c in VALID if c["encode_exact"]], ids=lambda case: case["name"]
)
def test_encoding_the_expected_message_gives_the_golden_bytes(case: dict[str, Any]) -> None:
    expected = case["expected"]
    oob = 16 if case["name"] == "tensor-out-of-band" else 65536
    codec = WireCodec(oob_threshold=oob)
    payloads = GENERATOR.from_json(expected["payloads"])
    fields = {
        "topic": expected["topic"],
        "sender": bytes.fromhex(expected["sender"]),
        "session": expected["session"],
        "epoch": expected["epoch"],
        "counter": expected["counter"],
    }
    msg_type = MessageType(expected["type"])
    if expected["batch"]:
        frames = codec.encode_batch(msg_type, payloads, **fields)
    else:
        frames = codec.encode(msg_type, payloads[0], **fields)
    assert [bytes(frame) for frame in frames] == _frames(case)


@pytest.mark.parametrize("case", INVALID, ids=lambda case: case["name"])
def test_golden_bad_frames_are_refused_with_their_reason(case: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        WireCodec().decode(_frames(case))
    assert caught.value.reason == case["error"]


def test_the_generator_still_writes_the_committed_file() -> None:
    # Compressed frames depend on the libzstd version, so they are compared by decoding only.
    fresh = json.loads(GENERATOR.render())["cases"]
    for case in (*fresh, *CASES):
        if not case.get("encode_exact", True):
            case["frames"] = None
    assert fresh == CASES
