"""The error store: where every event that could not be processed ends up.

One file per queue, ``<var>/queue_error/<queue>.errors``, one JSON object per
line: ``time``, ``queue``, ``error``, ``tries``, ``traceback`` and what failed,
as one of:

- ``event``: the event, when it can be written as JSON (only these can be replayed);
- ``event_repr``: its Python ``repr``, when it cannot (NaN, a lone surrogate, a
  nesting too deep for the encoder: what a decoder or a processor let through);
- ``raw``: a body that was not JSON, as text when it is UTF-8;
- ``raw_base64``: such a body that is not even UTF-8, byte for byte.

Recording cannot fail on what the event holds: every text is made encodable
first and anything else falls back to ``event_repr``. Only the file system
can make it fail (OSError), and then the caller must not ack the event.

Several processes append at once: each entry is one ``write`` on an
``O_APPEND`` file under an exclusive ``flock``, and taking entries out holds
the same lock.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import reprlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from traceback import format_exception
from typing import Any

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.errors import EventEncodingError

logger = logging.getLogger(__name__)

#: Counts of tries are clamped to this: a bigger integer would be written, then refused when read back.
MAX_TRIES = 2**31


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
        """Append one failed event (or an undecodable ``raw`` body) with its error; whatever the event holds.

        Raises OSError only, when the file cannot be written.
        """
        tries = min(max(int(tries), 0), MAX_TRIES)
        entry: dict[str, Any] = {"time": time.time(), "queue": queue, "error": encodable_text(error), "tries": tries}
        if traceback:
            entry["traceback"] = encodable_text(traceback)
        if raw is not None:
            entry.update(raw_fields(raw))
            line = codec.encode(entry)
        else:
            line = encode_with_event(entry, event)
        with self._locked(queue) as fd:
            _write_all(fd, line + b"\n")
        logger.error("queue %s: event moved to the error store %s: %s", queue, self.path(queue), entry["error"])

    def read(self, queue: str) -> list[dict[str, Any]]:
        """Every entry of ``queue``, oldest first (a torn or corrupt line is skipped and logged)."""
        if not self.path(queue).exists():
            return []
        with self._locked(queue) as fd:
            return [entry for _, entry in self._lines(queue, _read_all(fd)) if entry is not None]

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
            lines = list(self._lines(queue, _read_all(fd)))
            entries = [entry for _, entry in lines if entry is not None]
            left = (handle(entries) if entries else None) or []
            # Entries left, and lines that are not JSON, are written back as they were, byte for byte: the
            # file is rewritten only once all of it is ready, so nothing is lost if that fails.
            kept, read = {id(entry) for entry in left}, {id(entry) for entry in entries}
            data = [line for line, entry in lines if entry is None or id(entry) in kept]
            data += [codec.encode(entry) for entry in left if id(entry) not in read]
            os.ftruncate(fd, 0)
            _write_all(fd, b"".join(line + b"\n" for line in data))
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

    def _lines(self, queue: str, data: bytes) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
        """Each line with its entry (None for a torn or corrupt line, which is logged)."""
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield line, codec.decode(line)
            except EventEncodingError:
                logger.error("queue %s: line %d of %s is not JSON; left out", queue, number, self.path(queue))
                yield line, None


def encodable_text(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (lone surrogates) written as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(error: BaseException) -> tuple[str, str]:
    """``"Type: message"`` and the traceback of ``error``, both encodable whatever the error holds."""
    try:
        message = str(error)
    except Exception:  # an exception whose __str__ raises still has a name and a traceback
        message = "<the error's message could not be made>"
    description = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return encodable_text(description), encodable_text("".join(format_exception(error)))


def raw_fields(body: bytes) -> dict[str, str]:
    """A body that was not JSON, kept whole: as text if it is UTF-8, else as base64."""
    try:
        return {"raw": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_base64": base64.b64encode(body).decode("ascii")}


def encode_with_event(entry: dict[str, Any], event: Any) -> bytes:
    """``entry`` with ``event`` as JSON; with its repr instead if the encoder refuses it."""
    try:
        return codec.encode({**entry, "event": event})
    except Exception as e:  # EventEncodingError, or whatever an object in the event raised when asked
        # The encoder refuses what a decoder or a processor may still produce: keep the event as text.
        return codec.encode({**entry, "event_repr": safe_repr(event), "encoding_error": describe(e)[0]})


def encoding_problem(event: Any) -> str | None:
    """Why ``event`` cannot be published as JSON (None: it can)."""
    try:
        codec.encode(event)
    except Exception as e:  # not only EventEncodingError: the encoder lets an object's own errors through
        return describe(e)[0]
    return None


def _short_repr() -> reprlib.Repr:
    """A repr for events too deep or too odd for repr(): bounded in depth, and it never raises."""
    short = reprlib.Repr()
    short.maxlevel = 20
    short.maxstring = short.maxother = 10_000
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = 10_000
    return short


_SHORT_REPR = _short_repr()


def safe_repr(value: Any) -> str:
    """``repr(value)``, encodable; a shortened repr if the whole one cannot be made (too deeply nested)."""
    try:
        text = repr(value)
    except Exception:  # RecursionError, or an object whose __repr__ raises
        text = _SHORT_REPR.repr(value)
    return encodable_text(text)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
