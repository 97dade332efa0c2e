"""One process per data directory: an exclusive ``flock`` held while it runs.

Two brokers (or two PBFT replicas) pointed at one directory would share a mailbox or a
vote log and overwrite each other's statistics; the second one is refused at start with a
message that says what to change. The lock goes with the process (even on SIGKILL), so a
crashed owner never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from zmqcomm.errors import UsageError


def lock_data_directory(data: Path, *, lock_file: str, owner: str) -> IO[bytes]:
    """Create ``data`` (owner-only) if needed and lock it; keep the returned file open for as
    long as the lock should hold. ``owner`` names the kind of process, for the message."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(data / lock_file, "ab")  # noqa: SIM115 - held until the owner stops
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise UsageError(
            f"{data} is in use by another {owner} process (it holds {lock_file}): give each "
            f"{owner} its own data directory"
        ) from exc
    return lock
