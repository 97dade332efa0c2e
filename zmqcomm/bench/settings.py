"""What a benchmark run measures: modes, transports, sizes, counts and rounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from zmqcomm.errors import UsageError

#: raw pyzmq (the limit), pyzmq with CURVE on the hop (what a user would pick instead), and
#: zmqcomm: plain wire, end-to-end encrypted, and encrypted with zstd compression.
MODES: tuple[str, ...] = ("raw", "curve", "plain", "encrypted", "compressed")
MODE_LABELS: dict[str, str] = {
    "raw": "raw pyzmq",
    "curve": "pyzmq + CURVE",
    "plain": "zmqcomm plain",
    "encrypted": "zmqcomm encrypted",
    "compressed": "zmqcomm encrypted+zstd",
}
TRANSPORTS: tuple[str, ...] = ("inproc", "ipc", "tcp")
KiB = 1024
MiB = 1024 * KiB
FULL_SIZES: tuple[int, ...] = (64, 1 * KiB, 16 * KiB, 64 * KiB, 1 * MiB)
QUICK_SIZES: tuple[int, ...] = (64, 64 * KiB)


@dataclass(frozen=True)
class BenchSettings:
    """Every knob of a run; stored in results.json so a run can be repeated exactly."""

    quick: bool = False
    sections: tuple[str, ...] = ()  # empty: every section
    transports: tuple[str, ...] = TRANSPORTS
    sizes: tuple[int, ...] = FULL_SIZES
    modes: tuple[str, ...] = MODES
    rounds: int = 3
    #: Stream: messages per run are about this many payload bytes, within the two bounds.
    stream_bytes: int = 64 * MiB
    stream_max_count: int = 500_000
    stream_min_count: int = 64
    #: Round trip: timed trips per run (after a few untimed warm-up trips).
    trips: int = 2_000
    trips_large: int = 200  # for messages of 64 KiB and more
    trips_huge: int = 50  # for messages of 1 MiB and more
    #: Memory: connected peers held by one process.
    connections: int = 1_000
    #: Handshakes: sessions opened one after the other per run.
    handshakes: int = 300
    #: Broker relay: messages per run.
    relay_count: int = 300_000
    #: Gossip: swarm sizes.
    gossip_sizes: tuple[int, ...] = (100, 1_000)
    #: PBFT: committee sizes, operations per run, clients in flight, durable (fsync) stores.
    pbft_committees: tuple[int, ...] = (4, 7, 10)
    pbft_ops: int = 6_000
    pbft_clients: int = 512
    pbft_fsync: bool = True
    seed: int = 1

    @classmethod
    def quick_settings(cls) -> BenchSettings:
        """A small run that finishes in seconds and still writes every output."""
        return cls(
            quick=True,
            transports=("inproc", "ipc"),
            sizes=QUICK_SIZES,
            rounds=1,
            stream_bytes=2 * MiB,
            stream_max_count=20_000,
            stream_min_count=32,
            trips=200,
            trips_large=50,
            trips_huge=20,
            connections=50,
            handshakes=30,
            relay_count=10_000,
            gossip_sizes=(50,),
            pbft_ops=200,
            pbft_clients=64,
        )

    def __post_init__(self) -> None:
        for transport in self.transports:
            if transport not in TRANSPORTS:
                raise UsageError(
                    f"unknown transport {transport!r}: choose from {', '.join(TRANSPORTS)}"
                )
        for mode in self.modes:
            if mode not in MODES:
                raise UsageError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        if "raw" not in self.modes:
            raise UsageError("mode 'raw' is needed: every ratio is taken against it")
        if not self.sizes or any(size < 1 or size > 16 * MiB for size in self.sizes):
            raise UsageError("message sizes must be between 1 byte and 16 MiB")
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")

    def with_changes(self, **changes: Any) -> BenchSettings:
        return replace(self, **changes)

    def stream_count(self, size: int) -> int:
        """Messages per stream run for ``size``-byte messages."""
        wanted = self.stream_bytes // size
        return max(self.stream_min_count, min(self.stream_max_count, wanted))

    def trip_count(self, size: int) -> int:
        if size >= MiB:
            return self.trips_huge
        return self.trips_large if size >= 64 * KiB else self.trips

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


def parse_size(text: str) -> int:
    """``64``, ``1k``/``1KiB``, ``1m``/``1MiB`` -> bytes."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    if cleaned.endswith("k"):
        factor, cleaned = KiB, cleaned[:-1]
    elif cleaned.endswith("m"):
        factor, cleaned = MiB, cleaned[:-1]
    try:
        value = int(cleaned) * factor
    except ValueError:
        raise UsageError(f"cannot read the size {text!r}: write e.g. 64, 1k, 64KiB or 1m") from None
    if value < 1:
        raise UsageError(f"a message size must be at least 1 byte, got {text!r}")
    return value


def format_size(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= KiB and size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} B"
