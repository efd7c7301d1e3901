"""The one way the stores open their SQLite file (``EVENTBUS_DATABASE``): a short connection per call.

A connection per call keeps every store safe from any thread and any process.
The file is in WAL mode, so readers never wait for a writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

#: Seconds a connection waits for another writer's lock before giving up.
BUSY_TIMEOUT = 30.0


@contextmanager
def connect(path: Path, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection in one transaction, committed when the block ends (rolled back if it raises).

    ``write`` takes the write lock at once, so that a read followed by a write is atomic.
    """
    with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as db:
        db.row_factory = sqlite3.Row
        with db:
            if write:
                db.execute("BEGIN IMMEDIATE")
            yield db


def create(path: Path | str, schema: str) -> Path:
    """Make sure the file exists in WAL mode with ``schema`` (``CREATE ... IF NOT EXISTS`` statements)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _use_wal(path)
    with connect(path) as db:
        db.executescript(schema)
    return path


def _use_wal(path: Path) -> None:
    # Switching to WAL needs a moment alone with the file and ignores the busy timeout: processes that open a
    # new database together retry. Once switched, the mode stays in the file and this is a read.
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
