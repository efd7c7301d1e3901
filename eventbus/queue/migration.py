"""Moving queues to the type and arguments the settings ask for, without losing events (``eventbus migrate_queues``).

RabbitMQ cannot change the type of a queue: a classic queue becomes a quorum
queue by being deleted and declared again. For each queue, ``migrate_queue``:

1. if the queue exists with other arguments than ``declarations`` gives it,
   moves its events into ``<queue>.migrating`` (a queue of the new type),
   then deletes it (only if it is empty and nobody consumes it);
2. declares it the new way;
3. if ``<queue>.migrating`` exists, moves its events back, then deletes it.

A move takes one event at a time: get it, publish it to the target and wait
for RabbitMQ's confirm, then ack it in the source. An event is therefore in
at least one queue at every moment: interrupted anywhere, running the
migration again finishes the job, and at worst moves an event twice (a
duplicate, which consumers already absorb). Events keep their order.

Stop the workers, the Tornado server and producers of the old kind first
(they would declare the queue back, or publish to it while it is deleted): a
queue that still has consumers is not deleted, and the migration says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.exceptions

from eventbus.contracts import check_queue_name
from eventbus.errors import BrokerError, BrokerUnreachable
from eventbus.queue.declarations import queue_arguments
from eventbus.settings import Settings

logger = logging.getLogger(__name__)

#: Where a queue's events wait while it is declared again.
MIGRATING_SUFFIX = ".migrating"
#: RabbitMQ's reply codes: no such queue; a declare whose arguments differ from the queue's.
NOT_FOUND, PRECONDITION_FAILED = 404, 406


@dataclass(frozen=True)
class Migration:
    """What ``migrate_queue`` did to one queue."""

    queue: str
    existed: bool
    redeclared: bool  # it had other arguments, and was deleted and declared again
    moved: int  # events moved back from <queue>.migrating into the queue

    @property
    def changed(self) -> bool:
        return self.redeclared or self.moved > 0

    def describe(self) -> str:
        if not self.existed:
            return f"{self.queue}: no such queue, nothing to do"
        if not self.changed:
            return f"{self.queue}: already declared the current way"
        return f"{self.queue}: declared again the current way, {self.moved} event(s) moved into it"


class QueueMigrator:
    """Migrates queues on the RabbitMQ of ``settings`` (any node of a cluster) to ``settings.queue_type``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: pika.BlockingConnection | None = None

    @contextmanager
    def connected(self) -> Iterator[QueueMigrator]:
        try:
            self._connection = pika.BlockingConnection([pika.URLParameters(u) for u in self.settings.connection_urls])
        except pika.exceptions.AMQPError as e:
            raise BrokerUnreachable(f"cannot reach RabbitMQ at {self.settings.redacted_url}: {e!r}") from None
        try:
            yield self
        except pika.exceptions.AMQPError as e:
            raise BrokerError(f"migrating queues on RabbitMQ at {self.settings.redacted_url} failed: {e!r}") from None
        finally:
            if self._connection.is_open:
                self._connection.close()
            self._connection = None

    def migrate_queue(self, queue: str) -> Migration:
        """Bring ``queue`` to the current declaration; see the module docstring."""
        check_queue_name(queue)
        holding = queue + MIGRATING_SUFFIX
        arguments = queue_arguments(queue, self.settings.queue_type)
        existed = self._exists(queue)
        held = self._exists(holding)
        if not existed and not held:
            return Migration(queue, existed=False, redeclared=False, moved=0)
        redeclared = False
        if existed and not self._declares(queue, arguments):
            logger.info("%s exists with other arguments: moving its events to %s", queue, holding)
            self._declare_holding(holding, held)
            held = True
            self._move(queue, holding)
            self._delete(queue)
            redeclared = True
        moved = 0
        if held:
            # Also declares the queue again when an interrupted run had deleted it.
            self._declares(queue, arguments)
            redeclared = redeclared or not existed
            moved = self._move(holding, queue)
            self._delete(holding)
        return Migration(queue, existed=True, redeclared=redeclared, moved=moved)

    def _channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        assert self._connection is not None, "use migrate_queue inside connected()"
        return self._connection.channel()

    def _exists(self, queue: str) -> bool:
        return self._declare(queue, NOT_FOUND, passive=True)

    def _declares(self, queue: str, arguments: dict[str, object]) -> bool:
        """Declare ``queue`` with ``arguments``: False if it exists with others (nothing changes then)."""
        return self._declare(queue, PRECONDITION_FAILED, durable=True, arguments=arguments)

    def _declare(self, queue: str, refusal: int, **options: Any) -> bool:
        """Declare ``queue``: False if RabbitMQ refuses with ``refusal`` (no such queue, other arguments)."""
        channel = self._channel()
        try:
            channel.queue_declare(queue, **options)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != refusal:
                raise
            return False
        channel.close()
        return True

    def _declare_holding(self, holding: str, exists: bool) -> None:
        # Of the new type (replicated, with quorum queues); no dead-lettering: nobody consumes it. One left by an
        # interrupted run is used as it is.
        if not exists:
            self._declares(holding, {"x-queue-type": self.settings.queue_type})

    def _move(self, source: str, target: str) -> int:
        """Move every event of ``source`` to the end of ``target``, each confirmed there before it leaves ``source``."""
        channel = self._channel()
        channel.confirm_delivery()
        moved = 0
        while True:
            method, properties, body = channel.basic_get(source, auto_ack=False)
            if method is None:
                break
            # Mandatory: were the target gone, the publish would raise instead of dropping the event.
            channel.basic_publish("", target, body, properties, mandatory=True)
            channel.basic_ack(method.delivery_tag)
            moved += 1
        channel.close()
        if moved:
            logger.info("moved %d event(s) from %s to %s", moved, source, target)
        return moved

    def _delete(self, queue: str) -> None:
        """Delete ``queue`` once it has no events and no consumer.

        Quorum queues refuse ``if_empty`` and ``if_unused``: both are looked at
        just before, which leaves a moment for a client of the old kind to
        publish in between. Hence: stop the old clients first.
        """
        channel = self._channel()
        ok = channel.queue_declare(queue, passive=True).method
        if ok.consumer_count or ok.message_count:
            raise BrokerError(
                f"queue {queue!r} was not deleted: it has {ok.consumer_count} consumer(s) and {ok.message_count} "
                "event(s) that came in meanwhile. Stop its workers, the Tornado server and the producers of the old "
                "kind, then run `eventbus migrate_queues` again: no event was lost."
            )
        channel.queue_delete(queue)
        channel.close()
