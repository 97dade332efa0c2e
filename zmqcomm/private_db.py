"""Opening the project's SQLite files (broker mail, PBFT stores) privately and explicitly.

One place for what both need: their schema-version policy (:func:`check_schema_version`),
the parent directory created 0700, the file created 0600 by us before SQLite opens it (so
the -wal and -shm files it derives are private too: who talks to whom is metadata worth
hiding even when the contents are sealed), autocommit off (``isolation_level=None``: callers
issue BEGIN/COMMIT themselves), and a clear error.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from zmqcomm.errors import UsageError


def open_private_database(path: Path, what: str, *, timeout: float = 5.0) -> sqlite3.Connection:
    """Connect to the SQLite file at ``path`` (created 0600 if missing); ``what`` names it in
    the :class:`UsageError` raised when it cannot be opened."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot open {what} {path}: {exc}") from exc


def check_schema_version(
    db: sqlite3.Connection, path: Path, kind: str, current: int, *, older: str | None = None
) -> int:
    """The schema version of the file (``PRAGMA user_version``; 0 for a new, empty file).

    A :class:`UsageError` for a file of a newer version, for an SQLite file that is not a
    ``kind``, and, when ``older`` says what to do about it, for a file of an older version
    (None: older versions are read as they are)."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > current:
        raise UsageError(
            f"{path} has {kind} schema version {version}, written by a newer zmqcomm; "
            f"this version reads up to {current}"
        )
    if older is not None and 0 < version < current:
        raise UsageError(
            f"{path} has {kind} schema version {version}, written by an earlier zmqcomm; {older}"
        )
    if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise UsageError(f"{path} is an SQLite database but not a {kind}")
    return version
