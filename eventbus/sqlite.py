"""The one way the stores use their SQLite file (``EVENTBUS_DATABASE``).

Each thread keeps one connection per file (per process: a forked child opens
its own), and every ``connect()`` block is one transaction on it. Opening and
closing a connection per call cost a worker half its time (closing the last
connection checkpoints the write-ahead log every time). The file is in WAL
mode, so readers never wait for a writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import ClassVar

#: Seconds a connection waits for another writer's lock before giving up.
BUSY_TIMEOUT = 30.0


_local = threading.local()


def _connection(path: Path) -> sqlite3.Connection:
    connections: dict[tuple[int, str], sqlite3.Connection] = _local.__dict__.setdefault("connections", {})
    key = (os.getpid(), str(path))
    db = connections.get(key)
    if db is None:
        db = connections[key] = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        db.row_factory = sqlite3.Row
    return db


@contextmanager
def connect(path: Path, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """This thread's connection, in one transaction committed when the block ends (rolled back if it raises).

    ``write`` takes the write lock at once, so that a read followed by a write is atomic.
    Blocks must not nest: the inner one would commit the outer one's transaction.
    """
    db = _connection(path)
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


class Store:
    """A store in one SQLite file: its ``SCHEMA`` made sure of when it is made, ``_db()`` one transaction.

    Safe from any thread and process (a connection per thread, see the module docstring).
    """

    SCHEMA: ClassVar[str] = ""

    def __init__(self, path: Path | str) -> None:
        self.path = create(path, self.SCHEMA)

    def _db(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection in a transaction; ``write`` takes the write lock first (a read-then-write
        is then atomic)."""
        return connect(self.path, write=write)
