"""zstandard compression of bodies, used only when it pays, and bounded decompression.

A body is compressed when it is at least ``threshold`` bytes and the compressed frame is
smaller than the body. Decompression never allocates more than the limit: a frame that declares
its content size is checked against the limit before anything is allocated (zstandard's
``max_output_size`` does not cap such frames), and a frame without a declared size is read
through a bounded stream. Exactly one zstandard frame must fill the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

from zmqcomm.errors import LimitExceededError, RemoteProtocolError, UsageError

Buffer = bytes | bytearray | memoryview
_STREAM_CHUNK = 128 * 1024


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """When and how to compress bodies.

    ``dictionary`` is raw zstandard dictionary content (see ``zstandard.train_dictionary``);
    both sides must use the same one.
    """

    enabled: bool = True
    level: int = 3
    threshold: int = 1024
    dictionary: bytes | None = None

    def __post_init__(self) -> None:
        if not -7 <= self.level <= 22:
            raise UsageError(f"zstd level must be between -7 and 22, got {self.level}")
        if self.threshold < 1:
            raise UsageError(f"compression threshold must be at least 1 byte, got {self.threshold}")


class BodyCompressor:
    """Compresses and decompresses bodies with one reusable zstandard context each way.

    Not thread-safe: keep one per thread.
    """

    def __init__(self, config: CompressionConfig, *, max_body_size: int) -> None:
        self.config = config
        self.max_body_size = max_body_size
        dict_data = zstandard.ZstdCompressionDict(config.dictionary) if config.dictionary else None
        self._compressor = zstandard.ZstdCompressor(level=config.level, dict_data=dict_data)
        self._decompressor = zstandard.ZstdDecompressor(dict_data=dict_data)

    def maybe_compress(self, body: bytes) -> bytes | None:
        """The compressed body, or None when compression is off, too small or does not pay."""
        if not self.config.enabled or len(body) < self.config.threshold:
            return None
        compressed: bytes = self._compressor.compress(body)
        return compressed if len(compressed) < len(body) else None

    def decompress(self, data: Buffer) -> bytes:
        """Decompress one peer frame; only RemoteProtocolError subclasses escape."""
        limit = self.max_body_size
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise RemoteProtocolError(
                "compressed body does not start with a zstandard frame", reason="bad_compression"
            ) from exc
        if declared > limit:
            raise LimitExceededError(
                f"compressed body declares {declared} bytes; the limit is {limit}",
                reason="decompressed_too_large",
            )
        try:
            if declared > 0:
                return self._decompress_declared(data)
            if declared == 0:
                return self._decompress_checked(data)
            return self._decompress_streamed(data, limit)
        except zstandard.ZstdError as exc:
            raise RemoteProtocolError(
                f"compressed body is corrupt: {exc}", reason="bad_compression"
            ) from exc

    def _decompress_declared(self, data: Buffer) -> bytes:
        # The declared size is within the limit: one allocation of exactly that size (the
        # stream object grows its output in chunks and joins them: a second 1 MiB copy).
        # zstd refuses output beyond the declared size and output short of it, a truncated
        # frame, and (allow_extra_data=False) any byte after the frame. Not for a declared
        # size of 0: python-zstandard then returns b"" without reading the rest.
        out: bytes = self._decompressor.decompress(data, allow_extra_data=False)
        return out

    def _decompress_checked(self, data: Buffer) -> bytes:
        # The stream object sees whether this one frame fills the body whatever it declares.
        stream = self._decompressor.decompressobj()
        out: bytes = stream.decompress(data)
        if not stream.eof:
            raise RemoteProtocolError("compressed body is truncated", reason="bad_compression")
        if stream.unused_data:
            raise RemoteProtocolError("data follows the compressed frame", reason="bad_compression")
        return out

    def _decompress_streamed(self, data: Buffer, limit: int) -> bytes:
        # A frame that does not declare its size may be a bomb: first count its output in
        # chunks, keeping none (read(limit) could preallocate the whole limit for a tiny one).
        total = 0
        with self._decompressor.stream_reader(data, read_across_frames=False) as reader:
            while chunk := reader.read(_STREAM_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise LimitExceededError(
                        f"compressed body expands beyond the limit of {limit} bytes",
                        reason="decompressed_too_large",
                    )
        # Then decode it for real, now known to stay within the limit, in a way that sees
        # whether this one frame fills the body: the reader stops at the first frame's end
        # and would let more frames, or any bytes, follow it unread.
        return self._decompress_checked(data)
