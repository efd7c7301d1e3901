"""Checks on what clients send, shared by the server's handlers and the processors.

Ids are SQLite integers: a larger one would raise OverflowError where it is
bound into a query, so an id from a request is checked where it enters. Error
answers quote input only through ``excerpt``: an answer never echoes a
client's input whole (a 10 MB ``to`` would come back as 10 MB).
"""

from __future__ import annotations

from typing import Any

#: The largest id SQLite stores (a signed 64-bit INTEGER); ids start at 1.
MAX_ID = 2**63 - 1
#: How much of a client's input an error message quotes.
EXCERPT_CHARS = 100


def is_id(value: Any) -> bool:
    """Whether ``value`` is an integer id (1 to MAX_ID), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``value`` as text (a string as it is, anything else as its repr), cut to ``limit`` characters with an
    ellipsis, for quoting a client's input in an error message."""
    text = value if isinstance(value, str) else _short_repr(value, limit)
    return text if len(text) <= limit else text[:limit] + "…"


def _short_repr(value: Any, limit: int) -> str:
    # repr of a huge int is slow (quadratic) and refused past 4300 digits: name its size instead.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return repr(value)
