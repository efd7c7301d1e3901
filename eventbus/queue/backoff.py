"""Growing, bounded delays between reconnect attempts."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter, capped at ``maximum`` seconds.

    ``next_delay()`` gives the delay before the next attempt and counts the
    failure; ``reset()`` starts over after a success.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        # Jitter keeps many clients that lost the broker together from reconnecting in lockstep.
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.failures = 0
