"""An interrupted encrypted round-trip run must end, not hang in context.term().

The interrupt left the echo thread's SecureDealer open; its close() raised ContextTerminated
from disable_monitor() before closing the socket, and term() then waited for that socket for
ever (``zmqcomm bench`` hung on SIGTERM and ignored the next one). Run in a subprocess with a
watchdog: a hang is reported, never waited out.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    from zmqcomm.bench import roundtrip
    from zmqcomm.bench.common import BenchKeys, Job

    def watchdog():
        time.sleep(8)
        print("HANG", flush=True)
        os._exit(3)

    def interrupt(signum, frame):
        threading.Thread(target=watchdog, daemon=True).start()
        raise KeyboardInterrupt("as a SIGTERM becomes one")

    work = sys.argv[1]
    keys = BenchKeys.create(Path(work) / "keys")
    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        roundtrip.measure_round_trip(Job("encrypted", "inproc", 65536, 1_000_000, keys, work, 1))
    except KeyboardInterrupt:
        print("ended", flush=True)
    """
)


def test_an_interrupted_encrypted_round_trip_run_ends(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "ended" in result.stdout, (result.stdout, result.stderr[-2000:])
    assert result.returncode == 0
