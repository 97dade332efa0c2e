"""What every section gets: the settings, a progress display, a work directory and keys."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from zmqcomm.bench.common import BenchKeys
from zmqcomm.bench.settings import BenchSettings


class Progress:
    """One line per finished step on stderr: ``[  12.3 s] [ 3/40] throughput ...``.

    Lines, not a redrawn bar, so CI logs read the same as a terminal. ``quiet`` keeps it for
    tests and ``--json`` runs that want a silent stderr.
    """

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out if out is not None else sys.stderr
        self.quiet = quiet
        self.started = time.monotonic()
        self._section = ""
        self._done = 0
        self._total = 0

    def section(self, name: str, steps: int) -> None:
        self._section, self._done, self._total = name, 0, steps
        self._write(f"{name}: {steps} step{'s' if steps != 1 else ''}")

    def step(self, text: str) -> None:
        self._done += 1
        width = len(str(self._total))
        self._write(f"[{self._done:>{width}}/{self._total}] {self._section} {text}")

    def note(self, text: str) -> None:
        self._write(text)

    def _write(self, text: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:7.1f} s] {text}", file=self.out, flush=True)


@dataclass
class BenchContext:
    settings: BenchSettings
    progress: Progress
    workdir: Path
    _keys: BenchKeys | None = field(default=None, repr=False)

    @property
    def keys(self) -> BenchKeys:
        """Throw-away identities and CURVE keys, made on first use."""
        if self._keys is None:
            self._keys = BenchKeys.create(self.workdir / "bench-keys")
        return self._keys
