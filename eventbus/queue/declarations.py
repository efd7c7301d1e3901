"""How each queue is declared: its type and arguments, the one place both clients and ``migrate_queues`` read.

With ``EVENTBUS_QUEUE_TYPE=classic`` (the default) a queue is a plain durable
queue, and a delay queue carries its TTL and target (see ``delay``).

With ``quorum`` every queue is a quorum queue, replicated over the cluster:

- a worker's queue ``<queue>`` gets a delivery limit. RabbitMQ counts the
  deliveries of an event that were never acked (its consumer died holding
  it); past the limit it dead-letters the event into ``<queue>.dead``, whose
  consumer (the queue's own consumer, see ``AmqpClient``) writes it to the
  error store. A poison event that kills its worker every time ends there
  instead of looping forever;
- a delay queue keeps its per-queue TTL and dead-letters into its target:
  quorum queues support both since RabbitMQ 3.10;
- dead-lettering is at-least-once (RabbitMQ 3.10's ``at-least-once``
  strategy, which needs ``reject-publish`` overflow): an event leaves the
  source queue only once its target confirmed it, so a node lost on the way
  loses nothing.
"""

from __future__ import annotations

from typing import Any

from eventbus.queue.delay import DELAY_QUEUE

#: Unacked deliveries of one event before it is dead-lettered: a worker restarted this often, killed each time
#: by the same event, has met a poison event. (A worker with a bug that raises retries through delay queues,
#: not through redelivery, so this counts crashes only.)
DELIVERY_LIMIT = 5
#: The error an event dead-lettered after the delivery limit is stored with.
DEAD_LETTER_REASON = (f"delivered more than {DELIVERY_LIMIT} times without being acked: its worker died each time "
                      "(or it sat in the prefetch window of one that did)")
#: The queue a quorum queue dead-letters into after the delivery limit.
DEAD_SUFFIX = ".dead"


def dead_letter_queue_name(queue: str) -> str:
    """Where RabbitMQ moves the events of ``queue`` delivered more than ``DELIVERY_LIMIT`` times."""
    return queue + DEAD_SUFFIX


def is_dead_letter_queue(queue: str) -> bool:
    return queue.endswith(DEAD_SUFFIX)


def takes_dead_letters(queue: str, queue_type: str) -> bool:
    """Whether ``queue`` dead-letters its poison events (so its consumer must also consume its dead queue)."""
    return queue_type == "quorum" and not is_dead_letter_queue(queue) and DELAY_QUEUE.fullmatch(queue) is None


def queue_arguments(queue: str, queue_type: str) -> dict[str, Any]:
    """The arguments ``queue`` is declared with (always durable) for ``EVENTBUS_QUEUE_TYPE=queue_type``."""
    arguments: dict[str, Any] = {}
    delay = DELAY_QUEUE.fullmatch(queue)
    if delay is not None:
        arguments.update(_dead_letter_to(delay["queue"]), **{"x-message-ttl": int(delay["ms"])})
    if queue_type != "quorum":
        return arguments
    arguments["x-queue-type"] = "quorum"
    if takes_dead_letters(queue, queue_type):
        arguments.update(_dead_letter_to(dead_letter_queue_name(queue)), **{"x-delivery-limit": DELIVERY_LIMIT})
    if "x-dead-letter-routing-key" in arguments:
        arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return arguments


def _dead_letter_to(queue: str) -> dict[str, Any]:
    # The default exchange routes by queue name: no exchange or binding to declare.
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}
