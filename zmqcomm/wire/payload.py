"""msgpack payload encoding with safe limits, and numpy arrays as tensors.

Payloads are any msgpack value: None, bool, int (to 64 bits), float, str, bytes, list (tuples
go out as lists), dict, and timezone-aware datetime (msgpack timestamps). bytes, bytearray
and memoryview are packed once into the body with no intermediate copy. Never pickle.

When numpy is installed, arrays travel as extension types:

- ext 1, inline: msgpack ``[dtype, shape, raw bytes]`` inside the body (arrays under the
  out-of-band threshold);
- ext 2, out of band: msgpack ``[dtype, shape, frame index]``; the raw bytes travel as their own
  ZeroMQ frame after the first one, sent and received without a copy.

Only plain numeric dtypes cross the wire (bool, signed/unsigned int, float, complex; the
``dtype.str`` form such as ``"<f4"``): object dtypes would mean pickle and are refused both
ways. Received arrays are read-only views over the received bytes; call ``.copy()`` to modify.

Decoding peer data first walks the msgpack structure with ``Unpacker.skip`` (C speed, no
allocation), so a "bomb" that declares huge lengths it does not back with bytes is refused
before msgpack preallocates anything; then it unpacks with every msgpack limit set, then checks
the nesting depth.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgpack

from zmqcomm.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from zmqcomm.wire.limits import DEFAULT_LIMITS, Limits

# numpy is optional: tensors are a feature, not a dependency. Typed as Any so the module
# type-checks the same with and without numpy installed.
_np: Any
try:
    _np = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - exercised only where numpy is absent
    _np = None

EXT_NDARRAY = 1
EXT_NDARRAY_OOB = 2
#: Arrays at least this large (bytes) travel as their own frame; below it a copy is cheaper.
OOB_THRESHOLD = 64 * 1024

_DTYPE_RE = re.compile(r"^[<>|][biufc](1|2|4|8|16)$")
_MAX_NDIM = 32

Buffer = bytes | bytearray | memoryview


def numpy_available() -> bool:
    return _np is not None


class PayloadPacker:
    """Packs payloads to msgpack, collecting out-of-band buffers for large arrays.

    Not thread-safe: keep one per thread (they are cheap).
    """

    def __init__(self, *, oob_threshold: int = OOB_THRESHOLD) -> None:
        self.oob_threshold = oob_threshold
        self.out_of_band: list[memoryview] = []
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True, datetime=True)
        self._ext_packer = msgpack.Packer(use_bin_type=True)

    def pack(self, payload: object) -> bytes:
        """Pack one payload; LocalProtocolError if it is not a msgpack value."""
        mark = len(self.out_of_band)
        try:
            data: bytes = self._packer.pack(payload)
        except LocalProtocolError:
            self.pack_failed(mark)  # arrays of the refused payload must not go out
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self.pack_failed(mark)
            raise LocalProtocolError(
                f"cannot encode payload: {exc}. Payloads must be msgpack values "
                "(None, bool, int, float, str, bytes, list, dict, aware datetime, numpy array)"
            ) from exc
        return data

    def unchecked(self) -> Callable[[object], bytes]:
        """msgpack's own ``pack``, for a caller packing many small payloads (a batch
        builder): on any error it must call :meth:`pack_failed`, then :meth:`pack` again
        for the typed error."""
        return cast("Callable[[object], bytes]", self._packer.pack)

    def pack_failed(self, mark: int) -> None:
        """Forget a failed pack: the packer's half-written buffer and the arrays it collected
        since ``out_of_band`` held ``mark`` buffers."""
        self._packer.reset()
        del self.out_of_band[mark:]

    def array_header(self, count: int) -> bytes:
        data: bytes = self._ext_packer.pack_array_header(count)
        return data

    def take_out_of_band(self) -> list[memoryview]:
        """Return and forget the buffers collected since the last call."""
        buffers, self.out_of_band = self.out_of_band, []
        return buffers

    def _default(self, obj: object) -> object:
        if _np is not None and isinstance(obj, _np.ndarray):
            return self._pack_array(obj)
        if isinstance(obj, _np.generic if _np is not None else ()):
            return obj.item()
        raise TypeError(f"type {type(obj).__name__} is not serializable")

    def _pack_array(self, array: Any) -> msgpack.ExtType:
        dtype_str = array.dtype.str
        if not _DTYPE_RE.match(dtype_str):
            raise LocalProtocolError(
                f"numpy dtype {array.dtype} cannot travel: only bool, int, uint, float and "
                "complex arrays are supported (object arrays would need pickle)"
            )
        if array.ndim > _MAX_NDIM:
            raise LocalProtocolError(f"array has {array.ndim} dimensions; at most {_MAX_NDIM}")
        contiguous = _np.ascontiguousarray(array)
        # Take the shape from the original: ascontiguousarray turns a 0-d array into 1-d.
        shape = list(array.shape)
        # A flat uint8 view exports a plain byte buffer for every dtype (complex included).
        raw = memoryview(contiguous.reshape(-1).view(_np.uint8))
        if contiguous.nbytes >= self.oob_threshold:
            self.out_of_band.append(raw)
            index = len(self.out_of_band) - 1
            return msgpack.ExtType(
                EXT_NDARRAY_OOB, self._ext_packer.pack([dtype_str, shape, index])
            )
        return msgpack.ExtType(EXT_NDARRAY, self._ext_packer.pack([dtype_str, shape, raw]))


def _unpack_kwargs(limits: Limits) -> dict[str, Any]:
    return {
        "raw": False,
        "use_list": True,
        "strict_map_key": False,
        "timestamp": 3,  # timestamps come back as aware datetime
        "max_bin_len": limits.max_bin_len,
        "max_str_len": limits.max_str_len,
        "max_array_len": limits.max_array_len,
        "max_map_len": limits.max_map_len,
        "max_ext_len": limits.max_ext_len,
    }


#: Bodies up to this size are decoded by two long-lived Unpackers (constructing one costs more
#: than decoding a small message); larger ones get fresh objects so no big buffer lingers.
_REUSE_MAX = 1024 * 1024
_INITIAL_BUFFER = 16 * 1024
#: First bytes of msgpack values that hold no other value and no extension: nil, bool, the
#: ints, floats, str and bin (containers 0x80-0x9f, 0xdc-0xdf and ext 0xc7-0xc9, 0xd4-0xd8
#: are not in it).
_FLAT_LEADS = frozenset(
    {*range(0x80), *range(0xA0, 0xC1), *range(0xC2, 0xC7), *range(0xCA, 0xD4)}
    | {0xD9, 0xDA, 0xDB, *range(0xE0, 0x100)}
)


def _array_count(body: Buffer) -> int | None:
    """The item count a msgpack array header at the start of ``body`` declares; None if
    ``body`` does not start with one."""
    view = memoryview(body)
    if not view.nbytes:
        return None
    lead = view[0]
    if 0x90 <= lead <= 0x9F:
        return lead & 0x0F
    width = {0xDC: 2, 0xDD: 4}.get(lead)
    if width is None or view.nbytes < 1 + width:
        return None
    return int.from_bytes(view[1 : 1 + width], "big")


class PayloadUnpacker:
    """Decodes peer msgpack bodies under :class:`Limits`; only RemoteProtocolError escapes.

    Not thread-safe: keep one per thread.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._kwargs = _unpack_kwargs(limits)
        self._ext_kwargs = dict(self._kwargs, max_array_len=_MAX_NDIM, max_map_len=0)
        self._extra_frames: Sequence[Buffer] = ()
        self._reset()

    def _reset(self) -> None:
        # After any error an Unpacker may hold half a value: start over with fresh ones.
        # A small read_size keeps the initial buffer small (it defaults to the full
        # max_buffer_size); the buffer grows on demand up to _REUSE_MAX.
        self._scanner = msgpack.Unpacker(
            max_buffer_size=_REUSE_MAX, read_size=_INITIAL_BUFFER, **self._kwargs
        )
        self._reader = msgpack.Unpacker(
            max_buffer_size=_REUSE_MAX,
            read_size=_INITIAL_BUFFER,
            ext_hook=self._ext_hook,
            **self._kwargs,
        )

    def unpack(self, body: Buffer, extra_frames: Sequence[Buffer] = ()) -> Any:
        """Decode one msgpack value that must fill ``body`` exactly."""
        if body and body[0] in _FLAT_LEADS:
            # A lone scalar, str or bin preallocates nothing it does not read and cannot
            # nest: the structure walk and the depth check have nothing to catch.
            try:
                return msgpack.unpackb(body, **self._kwargs)
            except Exception as exc:  # peer bytes: whatever msgpack raises is their fault
                raise RemoteProtocolError(
                    f"body is not valid msgpack: {exc}", reason="bad_msgpack"
                ) from exc
        self._extra_frames = extra_frames
        try:
            if len(body) <= _REUSE_MAX:
                self._check_structure(self._scanner, body)
                self._reader.feed(body)
                value = self._reader.unpack()
            else:
                scanner = msgpack.Unpacker(max_buffer_size=len(body), **self._kwargs)
                self._check_structure(scanner, body)
                value = msgpack.unpackb(body, ext_hook=self._ext_hook, **self._kwargs)
        except RemoteProtocolError:
            self._reset()
            raise
        except Exception as exc:
            # Any error at all (msgpack's ExtraData, FormatError and StackError, bad UTF-8, an
            # unhashable map key, a timestamp out of datetime's range, ...) must reset: the
            # long-lived reader would otherwise keep the rest of this body and hand it out as
            # the next message, which may be another peer's.
            self._reset()
            raise RemoteProtocolError(
                f"body is not valid msgpack: {exc}", reason="bad_msgpack"
            ) from exc
        finally:
            self._extra_frames = ()
        self._check_depth(value)
        return value

    def unpack_batch(self, body: Buffer, extra_frames: Sequence[Buffer] = ()) -> list[Any]:
        """Decode a batch body: a msgpack array of payloads."""
        # The count comes from the array header, before anything is decoded: a small frame
        # declaring a million empty items would otherwise cost a second of CPU first.
        count = _array_count(body)
        if count is None:
            raise RemoteProtocolError("batch body is not an array", reason="bad_batch")
        if count > self.limits.max_batch_items:
            raise LimitExceededError(
                f"batch of {count} messages exceeds the limit of {self.limits.max_batch_items}",
                reason="batch_too_large",
            )
        items = self.unpack(body, extra_frames)
        if not isinstance(items, list):  # the header said array: a bug in msgpack, not a peer
            raise RemoteProtocolError("batch body is not an array", reason="bad_batch")
        return items

    @staticmethod
    def _check_structure(scanner: msgpack.Unpacker, body: Buffer) -> None:
        # skip() walks the whole structure without building objects, so lengths that the body
        # does not back with bytes fail here instead of being preallocated by the real unpack.
        start = scanner.tell()
        scanner.feed(body)
        try:
            scanner.skip()
        except msgpack.OutOfData as exc:
            raise RemoteProtocolError(
                "body ends inside a msgpack value (declared lengths are not backed by data)",
                reason="truncated_msgpack",
            ) from exc
        consumed = scanner.tell() - start
        if consumed != len(body):
            raise RemoteProtocolError(
                f"{len(body) - consumed} bytes follow the msgpack value", reason="trailing_data"
            )

    def _check_depth(self, value: object) -> None:
        limit = self.limits.max_depth
        stack: list[tuple[object, int]] = [(value, 1)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, list):
                children: Any = node
            elif isinstance(node, dict):
                children = [*node.keys(), *node.values()]
            else:
                continue
            if depth > limit:
                raise LimitExceededError(
                    f"payload nests deeper than {limit} levels", reason="too_deep"
                )
            stack.extend((child, depth + 1) for child in children if isinstance(child, list | dict))

    def _ext_hook(self, code: int, data: bytes) -> object:
        if code in (EXT_NDARRAY, EXT_NDARRAY_OOB):
            return self._decode_array(code, data, self._extra_frames)
        raise RemoteProtocolError(f"unknown msgpack extension type {code}", reason="unknown_ext")

    def _decode_array(self, code: int, data: bytes, extra_frames: Sequence[Buffer]) -> object:
        if _np is None:
            raise RemoteProtocolError(
                "peer sent a numpy array but numpy is not installed here "
                "(pip install 'zmqcomm[numpy]')",
                reason="numpy_missing",
            )
        try:
            fields = msgpack.unpackb(data, **self._ext_kwargs)
        except Exception as exc:
            raise RemoteProtocolError("malformed array header", reason="bad_array") from exc
        if not (isinstance(fields, list) and len(fields) == 3):
            raise RemoteProtocolError(
                "array extension must hold [dtype, shape, data]", reason="bad_array"
            )
        dtype_str, shape, source = fields
        if not (isinstance(dtype_str, str) and _DTYPE_RE.match(dtype_str)):
            raise RemoteProtocolError(
                "array dtype is not an allowed numeric type", reason="bad_array"
            )
        if not (
            isinstance(shape, list)
            and len(shape) <= _MAX_NDIM
            and all(type(dim) is int and dim >= 0 for dim in shape)
        ):
            raise RemoteProtocolError("array shape is not a list of sizes", reason="bad_array")
        raw: Buffer
        if code == EXT_NDARRAY:
            if not isinstance(source, bytes):
                raise RemoteProtocolError("inline array data must be bin", reason="bad_array")
            raw = source
        else:
            if not (type(source) is int and 0 <= source < len(extra_frames)):
                raise RemoteProtocolError("array refers to a missing frame", reason="bad_array")
            raw = extra_frames[source]
        dtype = _np.dtype(dtype_str)
        count = 1
        for dim in shape:
            count *= dim
        if count * dtype.itemsize != len(raw):
            raise RemoteProtocolError(
                f"array of shape {shape} and dtype {dtype_str} needs {count * dtype.itemsize} "
                f"bytes, got {len(raw)}",
                reason="bad_array",
            )
        if type(raw) is not bytes:  # a decrypted frame is a bytearray: still read-only
            raw = memoryview(raw).toreadonly()
        return _np.frombuffer(raw, dtype=dtype).reshape(shape)
