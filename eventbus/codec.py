"""The JSON codec for events: ujson, with the project's own errors."""

from __future__ import annotations

from typing import Any

import ujson

from eventbus.errors import EventEncodingError


def encode(event: Any) -> bytes:
    """Encode an event as compact UTF-8 JSON."""
    try:
        return ujson.dumps(event, ensure_ascii=False, reject_bytes=True, allow_nan=False).encode()
    except (TypeError, OverflowError, ValueError) as e:
        raise EventEncodingError(f"event is not JSON-serializable: {e}") from None


def decode(body: bytes | str) -> Any:
    """Decode one JSON body; anything that is not JSON is an EventEncodingError."""
    try:
        return ujson.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise EventEncodingError(f"body is not valid JSON: {e}") from None
