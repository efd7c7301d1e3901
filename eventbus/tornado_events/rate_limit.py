"""A per-key rate limit: at most ``limit`` actions per ``period`` seconds, a sliding window."""

from __future__ import annotations

import time
from collections import defaultdict, deque


class RateLimiter:
    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._times: defaultdict[object, deque[float]] = defaultdict(deque)

    def allow(self, key: object, now: float | None = None) -> bool:
        """Count one action of ``key`` if it is within the limit; False (and not counted) if over."""
        now = time.monotonic() if now is None else now
        times = self._times[key]
        while times and times[0] <= now - self.period:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
