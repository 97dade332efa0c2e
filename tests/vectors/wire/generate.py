"""Write v1.json, the golden vectors of wire format v1.

    python tests/vectors/wire/generate.py          # rewrite v1.json
    python tests/vectors/wire/generate.py --check  # exit 1 if v1.json differs

Regenerating changes the committed bytes: that is a change of the wire format, which needs a
new version number and a note in docs/protocol.md. Payloads are written in a typed JSON form
(see ``to_json``) so a codec in another language can check itself against the file.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from zmqcomm.wire import CompressionConfig, Flags, MessageType, WireCodec

OUTPUT = Path(__file__).with_name("v1.json")
SENDER = bytes(range(16))


def to_json(value: Any) -> Any:
    """Typed JSON for a payload: bytes as {"bin": hex}, arrays as {"ndarray": {...}}."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bin": bytes(value).hex()}
    if isinstance(value, np.ndarray):
        return {
            "ndarray": {
                "dtype": value.dtype.str,
                "shape": list(value.shape),
                "hex": np.ascontiguousarray(value).tobytes().hex(),
            }
        }
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("golden payloads use string map keys only")
        return {"map": {key: to_json(item) for key, item in value.items()}}
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, dict):
        if "bin" in value:
            return bytes.fromhex(value["bin"])
        if "ndarray" in value:
            spec = value["ndarray"]
            raw = bytes.fromhex(spec["hex"])
            return np.frombuffer(raw, dtype=spec["dtype"]).reshape(spec["shape"])
        return {key: from_json(item) for key, item in value["map"].items()}
    return value


def _case(
    name: str,
    description: str,
    msg_type: MessageType,
    payloads: list[Any],
    *,
    batch: bool = False,
    codec: WireCodec | None = None,
    exact: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    codec = codec or WireCodec()
    if batch:
        frames = codec.encode_batch(msg_type, payloads, **fields)
    else:
        (payload,) = payloads
        frames = codec.encode(msg_type, payload, **fields)
    header = codec.parse(frames).header
    return {
        "name": name,
        "description": description,
        "frames": [bytes(frame).hex() for frame in frames],
        # zstd output may differ between libzstd versions: compressed vectors are checked by
        # decoding only.
        "encode_exact": exact,
        "expected": {
            "type": int(header.type),
            "flags": int(header.flags),
            "minor": header.minor,
            "topic": header.topic,
            "session": header.session,
            "epoch": header.epoch,
            "counter": header.counter,
            "sender": header.sender.hex(),
            "batch": batch,
            "payloads": [to_json(p) for p in payloads],
        },
    }


def _extended_minor_frame() -> bytes:
    """A v1.3 frame whose header carries 8 bytes a v1.0 reader must skip."""
    extension = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    body = b"\xa5hello"
    head = struct.pack(
        ">2sBBBBBBIIQ16sI", b"ZC", 1, 3, 44 + len(extension), int(MessageType.DATA), 0, 3,
        0, 0, 9, SENDER, len(body),
    )  # fmt: skip
    return head + extension + b"new" + body


def _error_case(name: str, description: str, frames: list[bytes], reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "frames": [frame.hex() for frame in frames],
        "error": reason,
    }


def build_cases() -> list[dict[str, Any]]:
    ids = {"sender": SENDER, "session": 7, "epoch": 1}
    valid = WireCodec().encode(MessageType.DATA, None)
    cases = [
        _case("data-nil", "DATA carrying nil, anonymous sender", MessageType.DATA, [None]),
        _case(
            "data-map",
            "DATA with a map of every scalar kind",
            MessageType.DATA,
            [
                {
                    "int": -3,
                    "big": 2**63,
                    "float": 1.5,
                    "str": "héllo",
                    "bin": b"\x00\xff",
                    "true": True,
                    "nil": None,
                    "list": [1, [2, 3]],
                }
            ],
            counter=42,
            **ids,
        ),
        _case(
            "request-topic",
            "REQUEST with a UTF-8 topic",
            MessageType.REQUEST,
            ["ping"],
            topic="agents/7/ctl",
            counter=2**64 - 1,
            **ids,
        ),
        _case(
            "publish-compressed",
            "PUBLISH whose body is zstd-compressed (level 3)",
            MessageType.PUBLISH,
            ["swarm status nominal; " * 80],
            codec=WireCodec(compression=CompressionConfig(level=3)),
            exact=False,
            topic="status",
            **ids,
        ),
        _case(
            "batch",
            "a batch frame of four DATA messages",
            MessageType.DATA,
            [1, "two", b"three", {"four": 4}],
            batch=True,
            counter=5,
            **ids,
        ),
        _case(
            "tensor-inline",
            "a small little-endian float32 2x3 array inside the body",
            MessageType.DATA,
            [np.arange(6, dtype="<f4").reshape(2, 3)],
            **ids,
        ),
        _case(
            "tensor-out-of-band",
            "an int16 array sent as its own frame (out-of-band threshold lowered to 16 bytes)",
            MessageType.DATA,
            [{"weights": np.arange(12, dtype="<i2").reshape(3, 4), "step": 3}],
            codec=WireCodec(oob_threshold=16),
            **ids,
        ),
    ]
    extended = _extended_minor_frame()
    cases.append(
        {
            "name": "minor-extended-header",
            "description": "v1.3 header with 8 unknown extra header bytes, readable by v1.0",
            "frames": [extended.hex()],
            "encode_exact": False,
            "expected": {
                "type": int(MessageType.DATA),
                "flags": 0,
                "minor": 3,
                "topic": "new",
                "session": 0,
                "epoch": 0,
                "counter": 9,
                "sender": SENDER.hex(),
                "batch": False,
                "payloads": ["hello"],
            },
        }
    )
    first = bytes(valid[0])
    cases += [
        _error_case("bad-magic", "wrong magic bytes", [b"XC" + first[2:]], "bad_magic"),
        _error_case(
            "major-2",
            "an unknown major version",
            [first[:2] + b"\x02" + first[3:]],
            "unsupported_version",
        ),
        _error_case("truncated", "one byte short", [first[:-1]], "truncated"),
        _error_case("trailing", "one byte too many", [first + b"\x00"], "trailing_data"),
        _error_case(
            "unknown-flag", "flag bit 0x80 set", [first[:6] + b"\x80" + first[7:]], "unknown_flags"
        ),
        _error_case(
            "encrypted-without-session",
            "ENCRYPTED flag on a frame decoded without a session",
            [bytes(WireCodec().assemble(MessageType.DATA, b"\x00" * 20, flags=Flags.ENCRYPTED)[0])],
            "unexpected_encrypted",
        ),
    ]
    return cases


def render() -> str:
    return json.dumps({"format": "zmqcomm wire v1", "cases": build_cases()}, indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print("v1.json is up to date" if same else "v1.json differs from the generator")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
