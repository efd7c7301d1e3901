"""Per-user rate limits: a token bucket per user and kind of request.

A ``RateLimiter`` allows ``limit`` actions at once per key, and one more each
``period / limit`` seconds after that (a token bucket: bursts up to ``limit``,
``limit`` per ``period`` sustained). A refused action is not counted, and the
refusal says how long to wait: what Zulip answers as ``retry-after``.

``RateLimits`` holds one limiter per kind of request (``CATEGORIES``), read
from the settings: the event server counts each authenticated request and
websocket frame against its user's bucket of its kind. Each bucket is two
numbers; a bucket that refilled is forgotten (``forget_refilled``), so memory
follows the users active in the last period, not every user ever seen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from eventbus.settings import Settings

#: Every authenticated request not of another kind (messages, events polls that are not re-polls, deletes).
API = "api"
REGISTER = "register"
PRESENCE = "presence"
#: Browser tracebacks (``/json/report/error``): each one may become an email to the administrators.
ERROR_REPORTS = "error_reports"
#: Typing notifications (``POST /typing``): each one reaches every recipient's clients.
TYPING = "typing"
CATEGORIES = (API, REGISTER, PRESENCE, ERROR_REPORTS, TYPING)
#: Browser error reports a user may send per minute (not a setting: nobody needs more).
ERROR_REPORTS_RATE = (10, 60.0)
#: Typing notifications a user may send per minute: a client sends a start every 10 s per conversation it
#: composes in and a stop after 5 s idle (Zulip's protocol), so 60 is several busy compose boxes at once.
TYPING_RATE = (60, 60.0)
#: Development mode multiplies every limit by this: a developer reloading pages must not hit them.
DEVELOPMENT_FACTOR = 10


class RateLimiter:
    """At most ``limit`` actions at once per key, refilled at ``limit / period`` per second."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._per_second = limit / period
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def acquire(self, key: object, now: float | None = None) -> float:
        """Count one action of ``key``: 0.0 if allowed; if not, the seconds until one would be (not counted)."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(key, now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        return (1.0 - tokens) / self._per_second

    def forget_refilled(self, now: float | None = None) -> int:
        """Forget the keys whose bucket is full again (they are as if never seen); how many."""
        now = time.monotonic() if now is None else now
        full = [key for key in self._buckets if self._tokens(key, now) >= self.limit]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: object, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.limit)
        tokens, then = bucket
        return min(float(self.limit), tokens + max(0.0, now - then) * self._per_second)


class RateLimits:
    """One ``RateLimiter`` per category of ``CATEGORIES``, keyed by user id."""

    def __init__(self, rates: Mapping[str, tuple[int, float]]) -> None:
        self.limiters = {category: RateLimiter(count, seconds) for category, (count, seconds) in rates.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        """The limits of ``EVENTBUS_RATE_LIMIT_*``, ``DEVELOPMENT_FACTOR`` times higher in development mode."""
        factor = DEVELOPMENT_FACTOR if settings.development else 1
        rates = {API: settings.rate_limit_api, REGISTER: settings.rate_limit_register,
                 PRESENCE: settings.rate_limit_presence, ERROR_REPORTS: ERROR_REPORTS_RATE, TYPING: TYPING_RATE}
        return cls({category: (count * factor, seconds) for category, (count, seconds) in rates.items()})

    def acquire(self, category: str, user_id: int) -> float:
        """Count a request of ``category`` by ``user_id``: 0.0 if allowed, else the seconds to wait."""
        return self.limiters[category].acquire(user_id)

    def forget_refilled(self) -> int:
        return sum(limiter.forget_refilled() for limiter in self.limiters.values())
