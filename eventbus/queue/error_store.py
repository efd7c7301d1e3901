"""The error store: where every event that could not be processed ends up.

One file per queue, ``<var>/queue_error/<queue>.errors``, one JSON object per
line: ``time``, ``queue``, ``event`` (or ``raw``, the body as text, when it
was not JSON), ``error``, ``tries`` and ``traceback``. Several processes
append at once: each entry is one ``write`` on an ``O_APPEND`` file under an
exclusive ``flock``, and taking entries out holds the same lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventbus import codec
from eventbus.errors import EventEncodingError

logger = logging.getLogger(__name__)

#: Queue names become file names: no separators, no leading dot, a sane length.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")


def check_queue_name(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name, else raise ValueError saying what is allowed."""
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise ValueError(
            f"invalid queue name {queue!r}: use 1 to 200 letters, digits, '_', '.', ':' or '-', "
            "not starting with '.', ':' or '-'"
        )
    return queue


class ErrorStore:
    """The error files of all queues under one var folder."""

    def __init__(self, var_dir: Path | str) -> None:
        self.dir = Path(var_dir) / "queue_error"

    def path(self, queue: str) -> Path:
        return self.dir / f"{check_queue_name(queue)}.errors"

    def record(
        self,
        queue: str,
        event: Any = None,
        *,
        raw: bytes | None = None,
        error: str,
        tries: int = 1,
        traceback: str | None = None,
    ) -> None:
        """Append one failed event (or an undecodable ``raw`` body) with its error."""
        entry: dict[str, Any] = {"time": time.time(), "queue": queue, "error": error, "tries": tries}
        if raw is not None:
            entry["raw"] = raw.decode("utf-8", errors="replace")
        else:
            entry["event"] = event
        if traceback:
            entry["traceback"] = traceback
        try:
            line = codec.encode(entry) + b"\n"
        except EventEncodingError:
            entry["event"] = repr(event)
            line = codec.encode(entry) + b"\n"
        with self._locked(queue) as fd:
            os.write(fd, line)
        logger.error("queue %s: event moved to the error store %s: %s", queue, self.path(queue), error)

    def read(self, queue: str) -> list[dict[str, Any]]:
        """Every entry of ``queue``, oldest first (a torn or corrupt line is skipped and logged)."""
        if not self.path(queue).exists():
            return []
        with self._locked(queue) as fd:
            return list(self._parse(queue, _read_all(fd)))

    def count(self, queue: str) -> int:
        return len(self.read(queue))

    def queues(self) -> list[str]:
        """Names of the queues that have an error file."""
        return sorted(p.name[: -len(".errors")] for p in self.dir.glob("*.errors"))

    def take(self, queue: str, handle: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None]) -> int:
        """Pass every entry to ``handle`` and remove those it took; return how many it took.

        ``handle`` returns the entries it leaves (None: it took them all); if it
        raises, nothing is removed. Writers wait for the lock meanwhile.
        """
        if not self.path(queue).exists():
            return 0
        with self._locked(queue) as fd:
            entries = list(self._parse(queue, _read_all(fd)))
            left = (handle(entries) if entries else None) or []
            os.ftruncate(fd, 0)
            for entry in left:
                os.write(fd, codec.encode(entry) + b"\n")
        return len(entries) - len(left)

    @contextmanager
    def _locked(self, queue: str) -> Iterator[int]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(queue), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _parse(self, queue: str, data: bytes) -> Iterator[dict[str, Any]]:
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield codec.decode(line)
            except EventEncodingError:
                logger.error("queue %s: line %d of %s is not JSON; left out", queue, number, self.path(queue))


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
