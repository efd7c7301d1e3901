"""Delayed delivery through RabbitMQ alone: delay queues that expire into their queue.

An event published to ``<queue>.delay.<ms>`` waits there ``ms`` milliseconds
(the delay queue's ``x-message-ttl``), then RabbitMQ dead-letters it into
``<queue>`` through the default exchange. Every event of a delay queue has the
same time to live, so they expire in order and none waits behind another.
Their declare arguments are in ``declarations`` (classic and quorum alike).
"""

from __future__ import annotations

import re

#: Name of a delay queue: the target queue, then the delay in milliseconds.
DELAY_QUEUE = re.compile(r"(?P<queue>.+)\.delay\.(?P<ms>\d+)")


def delay_queue_name(queue: str, delay: float) -> str:
    """The queue that holds events for ``delay`` seconds before they enter ``queue``."""
    return f"{queue}.delay.{max(1, round(delay * 1000))}"
