"""An AMQP client over one of pika's asynchronous connections, reconnecting by itself.

``AmqpClient`` is the one place that speaks to RabbitMQ. It owns a connection
and one channel in confirm mode, and it:

- connects to one of the URLs of ``EVENTBUS_AMQP_URL`` (the nodes of a
  cluster), starting at a random one so that clients spread over the nodes;
  after a failure it tries the next URL at once, and waits (with backoff)
  only once every URL failed in a row, logging each failure (warnings at
  first, errors once failures repeat);
- holds publishes made while disconnected, and sends them again, in order,
  when a connection dies before RabbitMQ confirmed them; a publish RabbitMQ
  refuses (a nack: a quorum queue electing a new leader) is sent again on a
  new channel, a few times, before its publisher hears of it;
- drops a connection whose node sent nothing for two heartbeat timeouts (a
  node that stopped answering), rather than wait for the TCP connection to
  fail;
- declares each queue (durable, with the type and arguments of
  ``declarations``) once per channel before its first use; a queue that
  exists with other arguments (a classic queue where quorum queues are
  asked for) is a ``QueueMismatchError`` naming the queue and the command
  that migrates it: publishes to it fail with it, and its consumer is told
  (``on_queue_error``) or, without that hook, tried again after a backoff;
- re-registers its consumers on every new channel; with quorum queues the
  consumer of a queue also consumes its dead-letter queue, for
  ``on_dead_letter`` to move poison events into the error store.

It does not care which loop drives it: the Tornado client runs it on Tornado's
IOLoop through pika's TornadoConnection, the synchronous publisher and
consumer on pika's own select loop. Thread rule: every method must be called
from the thread that runs the loop.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import pika
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.spec

from eventbus.errors import NackedError, QueueMismatchError, UnroutableError
from eventbus.queue.backoff import Backoff
from eventbus.queue.declarations import dead_letter_queue_name, queue_arguments, takes_dead_letters
from eventbus.queue.frames import FastDeliveries
from eventbus.settings import Settings, redact_url

logger = logging.getLogger(__name__)

#: Consecutive failed connection attempts logged as warnings before they are logged as errors.
ESCALATE_AFTER = 5
#: Persistent (delivery_mode=2) JSON: events survive a broker restart in durable queues.
PERSISTENT_JSON = pika.BasicProperties(delivery_mode=2, content_type="application/json")

#: Called with None once RabbitMQ confirmed a publish, or with the error that stopped it.
DoneCallback = Callable[[BaseException | None], None]
#: Called with (channel generation, delivery tag, body) for each delivery.
MessageCallback = Callable[[int, int, bytes], None]
#: Called with (queue, channel generation, delivery tag, body) for an event dead-lettered out of ``queue``.
DeadLetterCallback = Callable[[str, int, int, bytes], None]
#: A nack means RabbitMQ could not store an event: a quorum queue had no leader while the cluster elected one (a
#: node was lost), or an internal error. It is sent again this many times, on a new channel after a growing delay
#: (about 15 s in all, longer than an election), before the publisher is told.
NACK_RETRIES = 10
NACK_RETRY_SECONDS = 0.1
NACK_RETRY_MAX_SECONDS = 2.0
#: Publishes are sent again on a new channel (see ``_watch_confirms``) when the channel confirmed nothing for
#: this many seconds while some waited, or when one publish waited this long (others being confirmed); looked at
#: this often.
SILENT_CHANNEL_SECONDS = 1.5
CONFIRM_PATIENCE_SECONDS = 5.0
CONFIRM_CHECK_SECONDS = 0.5
#: Heartbeat timeouts without a byte from the broker after which a connection counts as dead.
SILENT_HEARTBEATS = 2
#: RabbitMQ's reply code for a declare whose arguments differ from the existing queue's.
PRECONDITION_FAILED = 406
#: Seconds before a queue refused for a mismatch is declared again (by a consumer nobody is told about).
MISMATCH_RETRY_SECONDS = 30.0
#: The queue named in RabbitMQ's "inequivalent arg" reply to such a declare.
INEQUIVALENT = re.compile(r"inequivalent arg .* for queue '(?P<queue>[^']+)'")


class Loop(Protocol):
    """What the client needs of a loop: Tornado's IOLoop and pika's IOLoop both have it."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...

    def remove_timeout(self, timeout: Any) -> None: ...


class ConnectionFactory(Protocol):
    def __call__(
        self,
        parameters: pika.connection.Parameters,
        on_open_callback: Callable[[Any], None],
        on_open_error_callback: Callable[[Any, BaseException], None],
        on_close_callback: Callable[[Any, BaseException], None],
    ) -> pika.connection.Connection: ...


@dataclass(eq=False)
class Publish:
    """One event on its way to RabbitMQ, until the broker confirms it."""

    queue: str
    body: bytes
    on_done: DoneCallback
    returned: bool = False
    nacks: int = 0
    sent_at: float = 0.0  # monotonic time it was last written to a channel


@dataclass(eq=False)
class _Consumer:
    queue: str
    on_message: MessageCallback
    tag: str | None = None


class AmqpClient:
    """One self-healing connection and confirm-mode channel; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        loop: Loop,
        connection_factory: ConnectionFactory,
        *,
        prefetch: int | None = None,
        name: str = "eventbus",
        on_ready: Callable[[], None] | None = None,
        on_dead_letter: DeadLetterCallback | None = None,
        on_queue_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.prefetch = prefetch or settings.prefetch
        self.queue_type = settings.queue_type
        #: Grows with each new channel; acks for deliveries of an older channel are dropped.
        self.generation = 0
        self.last_error: BaseException | None = None
        self._parameters = [pika.URLParameters(url) for url in settings.connection_urls]
        self._urls = [redact_url(url) for url in settings.amqp_urls]
        # A random first node spreads clients (and the quorum queues they declare first) over the cluster.
        self._node = random.randrange(len(self._urls))
        self._failed_in_a_row = 0  # attempts since the last connection; backoff once every URL failed
        self._loop = loop
        self._factory = connection_factory
        self._on_ready = on_ready
        self._on_dead_letter = on_dead_letter
        self._on_queue_error = on_queue_error
        self._backoff = Backoff()
        self._connection: pika.connection.Connection | None = None
        self._channel: pika.channel.Channel | None = None  # open or still being set up
        self._ready = False
        self._reconnect_timer: Any = None
        self._closing = False
        self._on_closed: Callable[[], None] | None = None
        self._held: deque[Publish] = deque()
        self._unconfirmed: OrderedDict[int, Publish] = OrderedDict()
        self._last_confirm_at = 0.0  # when the last ack or nack came, on any channel
        self._nacked: list[Publish] = []  # refused; sent again on a new channel
        self._renew_timer: Any = None
        self._next_tag = 1
        self._declared: set[str] = set()
        self._declaring: dict[str, list[Callable[[], None]]] = {}
        self._consumers: dict[str, _Consumer] = {}

    # -- public API ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL (password hidden) of the node this client is connected to, or will try next."""
        return self._urls[self._node]

    @property
    def connects(self) -> int:
        """Channels set up so far (one per connection, and one per channel the broker closed)."""
        return self.generation

    @property
    def ready(self) -> bool:
        """Whether a channel is open and set up."""
        return self._ready

    def start(self) -> None:
        """Begin connecting; returns at once."""
        self._closing = False
        if self._connection is None and self._reconnect_timer is None:
            self._connect()

    def close(self, on_closed: Callable[[], None] | None = None) -> None:
        """Stop consuming, close the connection and stop reconnecting; ``on_closed()`` runs once it is gone.

        Held publishes stay held.
        """
        self.cancel_consumers()
        self._closing = True
        self._on_closed = on_closed
        if self._reconnect_timer is not None:
            self._loop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        conn = self._connection
        if conn is None:
            self._notify_closed()
        elif not (conn.is_closing or conn.is_closed):
            conn.close()

    def _notify_closed(self) -> None:
        callback, self._on_closed = self._on_closed, None
        if callback is not None:
            callback()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was asked for and the connection is gone."""
        return self._closing and self._connection is None

    def publish(self, queue: str, body: bytes, on_done: DoneCallback) -> Publish:
        """Send ``body`` to ``queue`` now, or as soon as a channel is ready."""
        pub = Publish(queue, body, on_done)
        self._held.append(pub)
        if self._ready:
            self._send_held()
        return pub

    def abandon(self, pubs: list[Publish]) -> None:
        """Forget publishes whose caller gave up: they are not sent again, nor reported."""
        gone = set(map(id, pubs))
        self._held = deque(p for p in self._held if id(p) not in gone)
        self._nacked = [p for p in self._nacked if id(p) not in gone]
        for tag in [t for t, p in self._unconfirmed.items() if id(p) in gone]:
            del self._unconfirmed[tag]

    def add_consumer(self, queue: str, on_message: MessageCallback) -> None:
        """Consume ``queue`` on this and every later channel."""
        if queue in self._consumers:
            raise ValueError(f"already consuming {queue!r}")
        consumers = [_Consumer(queue, on_message)]
        if self._on_dead_letter is not None and takes_dead_letters(queue, self.queue_type):
            consumers.append(_Consumer(dead_letter_queue_name(queue), partial(self._on_dead_letter, queue)))
        for consumer in consumers:
            self._consumers[consumer.queue] = consumer
            if self._ready:
                self._start_consumer(consumer)

    def cancel_consumers(self, queues: Iterable[str] | None = None,
                         on_cancelled: Callable[[], None] | None = None) -> None:
        """Stop consuming ``queues`` (all by default), for good: no delivery of theirs reaches a callback after this.

        Deliveries RabbitMQ sent before it saw the cancel, read from the
        socket or not, are not handed out: pika rejects them back to their
        queue, for the next consumer. Deliveries handed out before stay
        the caller's to ack. ``on_cancelled()`` runs once RabbitMQ
        confirmed every cancel (at once when there is nothing to cancel).
        """
        wanted = None if queues is None else {name for q in queues for name in (q, dead_letter_queue_name(q))}
        names = [q for q in self._consumers if wanted is None or q in wanted]
        consumers = [self._consumers.pop(name) for name in names]
        channel = self._channel
        tags = {c.tag for c in consumers if c.tag is not None}
        for consumer in consumers:
            self._forget_consumer_tag(consumer, channel)  # the fast path first: it bypasses pika's channel
        if channel is None or not channel.is_open or not tags:
            if on_cancelled is not None:
                on_cancelled()
            return

        def on_cancel_ok(frame: pika.frame.Method) -> None:
            # pika calls every CancelOk callback of the channel on each CancelOk: count the tags.
            tags.discard(frame.method.consumer_tag)
            if not tags and on_cancelled is not None:
                on_cancelled()

        for tag in list(tags):
            channel.basic_cancel(tag, callback=on_cancel_ok)

    def ack(self, generation: int, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge a delivery; a no-op if its channel is gone (RabbitMQ requeued it)."""
        channel = self._channel_of(generation)
        if channel is not None:
            channel.basic_ack(delivery_tag, multiple=multiple)

    def nack(self, generation: int, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        """Reject a delivery; a no-op if its channel is gone (RabbitMQ requeued it)."""
        channel = self._channel_of(generation)
        if channel is not None:
            channel.basic_nack(delivery_tag, multiple=multiple, requeue=requeue)

    def _channel_of(self, generation: int) -> pika.channel.Channel | None:
        """The channel, if it is ready and still the one of ``generation``."""
        channel = self._channel
        if self._ready and generation == self.generation and channel is not None and channel.is_open:
            return channel
        return None

    @property
    def publishing(self) -> int:
        """Publishes not confirmed yet: held, sent and waiting for RabbitMQ's confirm, or refused and waiting to be
        sent again."""
        return len(self._held) + len(self._unconfirmed) + len(self._nacked)

    def statistics(self) -> dict[str, Any]:
        """A plain record of the client's state, for logs, metrics and tests."""
        return {
            "ready": self.ready,
            "connects": self.connects,
            "url": self.url,
            "failures": self._backoff.failures,
            "held": len(self._held) + len(self._nacked),
            "unconfirmed": len(self._unconfirmed),
            "consumers": sorted(self._consumers),
            "last_error": repr(self.last_error) if self.last_error else None,
        }

    # -- connecting ---------------------------------------------------------------

    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._closing:
            return
        logger.debug("%s: connecting to %s", self.name, self.url)
        self._connection = self._factory(
            self._parameters[self._node],
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )

    def _on_connection_open(self, connection: pika.connection.Connection) -> None:
        """Invoked by pika when the connection is open."""
        connection.channel(on_open_callback=self._on_channel_open)
        heartbeat = connection.params.heartbeat
        if heartbeat:
            self._watch_silence(connection, heartbeat / 2, connection.bytes_received, 0.0)

    def _watch_silence(self, connection: pika.connection.Connection, tick: float, seen: int, silent: float) -> None:
        """Every half heartbeat timeout: abort ``connection`` once the broker was silent ``SILENT_HEARTBEATS``
        timeouts.

        RabbitMQ sends a heartbeat every half timeout when it has nothing else
        to send, so silence means the node stopped answering (a frozen VM, a
        network cut) while the TCP connection looks alive. pika's own check
        needs a whole window of timeout + 5 s without a byte, up to twice that
        in all: too slow to move to another node of a cluster.
        """
        stale = connection is not self._connection  # a test of its own: mypy would narrow connection to Optional
        if stale or not connection.is_open:
            return
        received = connection.bytes_received
        silent = 0.0 if received != seen else silent + tick
        if silent >= SILENT_HEARTBEATS * 2 * tick:
            logger.warning("%s: RabbitMQ at %s sent nothing for %.1f s; dropping the connection",
                           self.name, self.url, silent)
            # pika has no public abort; a close() would wait for an answer that does not come.
            connection._terminate_stream(pika.exceptions.AMQPHeartbeatTimeout(
                f"no heartbeat from RabbitMQ at {self.url} for {silent:.1f} s"))
            return
        self._loop.call_later(tick, partial(self._watch_silence, connection, tick, received, silent))

    def _on_connection_open_error(self, _connection: Any, error: BaseException) -> None:
        """Invoked by pika when a connection attempt fails."""
        self._connection = None
        if self._closing:
            self._notify_closed()
        else:
            self._retry_later(error)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        """Invoked by pika when an open connection closes, by us, the broker or the network."""
        self._connection = None
        self._lose_channel()
        if self._closing:
            logger.debug("%s: connection to %s closed", self.name, self.url)
            self._notify_closed()
        else:
            self._retry_later(reason)

    def _retry_later(self, error: BaseException) -> None:
        """Try the next URL at once; once every URL failed in a row, wait a backoff delay first."""
        self.last_error = error
        if self._closing:
            return
        failed_url = self.url
        self._node = (self._node + 1) % len(self._urls)
        self._failed_in_a_row += 1
        delay = 0.0
        if self._failed_in_a_row >= len(self._urls):
            self._failed_in_a_row = 0
            delay = self._backoff.next_delay()
        level = logging.WARNING if self._backoff.failures < ESCALATE_AFTER else logging.ERROR
        logger.log(level, "%s: no connection to RabbitMQ at %s (%s: %s); trying %s in %.1f s",
                   self.name, failed_url, type(error).__name__, error, self.url, delay)
        self._reconnect_timer = self._loop.call_later(delay, self._connect)

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        """Invoked by pika when our channel is open: turn on confirms, then set the prefetch."""
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm,
            callback=lambda _frame: channel.basic_qos(
                prefetch_count=self.prefetch, callback=lambda _f: self._on_channel_ready(channel)
            ),
        )

    def _on_channel_ready(self, channel: pika.channel.Channel) -> None:
        if channel is not self._channel:
            return
        self._ready = True
        self.generation += 1
        if self.last_error is not None:
            logger.warning("%s: connected to RabbitMQ at %s again (%d backoff waits), after %s: %s", self.name,
                           self.url, self._backoff.failures, type(self.last_error).__name__, self.last_error)
        self._backoff.reset()
        self._failed_in_a_row = 0
        self.last_error = None
        for consumer in self._consumers.values():
            self._start_consumer(consumer)
        self._send_held()
        self._loop.call_later(CONFIRM_CHECK_SECONDS, partial(self._watch_confirms, channel))
        if self._on_ready is not None:
            self._on_ready()

    def _watch_confirms(self, channel: pika.channel.Channel) -> None:
        """While ``channel`` is ours: renew it once it stopped confirming, or its oldest publish waited too long.

        A quorum queue confirms in milliseconds once it has a leader. A channel
        of RabbitMQ 3.10 that sent publishes to a leader the cluster lost can
        leave them unanswered, neither confirmed nor refused, after the queue
        has a new leader: sent again on a new channel, they go through. A
        channel that keeps confirming is healthy however long its backlog, so
        the short wait counts from its last confirm; the long one covers a
        channel that confirms for one queue and not for another.
        """
        if channel is not self._channel or not self._ready:
            return
        oldest = next(iter(self._unconfirmed.values()), None)
        if oldest is not None:
            now = time.monotonic()
            waited, silent = now - oldest.sent_at, now - max(self._last_confirm_at, oldest.sent_at)
            if silent > SILENT_CHANNEL_SECONDS or waited > CONFIRM_PATIENCE_SECONDS:
                logger.warning("%s: RabbitMQ at %s confirmed nothing for %.1f s, and the oldest publish waited "
                               "%.1f s; sending %d again on a new channel", self.name, self.url, silent, waited,
                               len(self._unconfirmed))
                self._renew_channel()
                return
        self._loop.call_later(CONFIRM_CHECK_SECONDS, partial(self._watch_confirms, channel))

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        """Invoked by pika when the channel closes: a broker error, or the connection going away."""
        if channel is not self._channel:
            return
        self._lose_channel()
        conn = self._connection
        if self._closing or conn is None or conn.is_closing or conn.is_closed:
            return
        # The broker closed the channel (a bad declare, say) but kept the connection: reopen it.
        mismatch = self._mismatch(reason)
        if mismatch is not None:
            self._refuse_queue(*mismatch)
        else:
            logger.error("%s: RabbitMQ closed the channel: %s", self.name, reason)
        self.last_error = mismatch[1] if mismatch is not None else reason
        # A mismatch lasts until an operator migrates the queue: no point asking again every fraction of a second.
        delay = MISMATCH_RETRY_SECONDS if mismatch is not None else self._backoff.next_delay()
        self._reconnect_timer = self._loop.call_later(delay, partial(self._reopen_channel, conn))

    def _mismatch(self, reason: BaseException) -> tuple[str, QueueMismatchError] | None:
        """The queue and error, when ``reason`` is RabbitMQ refusing our declare of a queue that exists otherwise."""
        code, text = getattr(reason, "reply_code", None), str(getattr(reason, "reply_text", ""))
        match = INEQUIVALENT.search(text)
        if code != PRECONDITION_FAILED or match is None:
            return None
        queue = match["queue"]
        return queue, QueueMismatchError(
            f"queue {queue!r} exists on RabbitMQ with other arguments than eventbus declares it with "
            f"(EVENTBUS_QUEUE_TYPE={self.queue_type}): {text}. Run `eventbus migrate_queues` to move its events "
            f"into a queue declared the new way."
        )

    def _refuse_queue(self, queue: str, error: QueueMismatchError) -> None:
        """Fail the publishes held for ``queue``; tell its consumer, if someone listens (else it is tried again)."""
        logger.error("%s: %s", self.name, error)
        refused = [pub for pub in self._held if pub.queue == queue]
        self.abandon(refused)
        for pub in refused:
            try:
                pub.on_done(error)
            except Exception:
                logger.exception("%s: publish callback failed", self.name)
        if self._on_queue_error is not None and queue in self._consumers:
            del self._consumers[queue]
            self._on_queue_error(queue, error)

    def _reopen_channel(self, connection: pika.connection.Connection) -> None:
        self._reconnect_timer = None
        if connection.is_open and connection is self._connection:
            connection.channel(on_open_callback=self._on_channel_open)  # type: ignore[union-attr]

    def _lose_channel(self) -> None:
        """Forget the channel: unconfirmed publishes go back to the front of the held ones."""
        channel, self._channel = self._channel, None
        self._ready = False
        for pub in self._unconfirmed.values():
            pub.returned = False
        self._held.extendleft(reversed(self._unconfirmed.values()))
        self._unconfirmed.clear()
        self._next_tag = 1
        self._declared.clear()
        self._declaring.clear()
        for consumer in self._consumers.values():
            self._forget_consumer_tag(consumer, channel)

    def _forget_consumer_tag(self, consumer: _Consumer, channel: pika.channel.Channel | None) -> None:
        if consumer.tag is not None and channel is not None and isinstance(self._connection, FastDeliveries):
            self._connection.remove_fast_consumer(channel.channel_number, consumer.tag)
        consumer.tag = None

    # -- queues, publishing, confirms ---------------------------------------------

    def _declare(self, queue: str, then: Callable[[], None]) -> None:
        waiting = self._declaring.get(queue)
        if waiting is not None:
            if then not in waiting:  # publishes to a queue being declared all wait on one _send_held
                waiting.append(then)
            return
        self._declaring[queue] = [then]
        channel = self._channel
        assert channel is not None

        def on_declared(_frame: pika.frame.Method) -> None:
            if channel is not self._channel:
                return
            self._declared.add(queue)
            for callback in self._declaring.pop(queue, []):
                callback()

        channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue, self.queue_type),
                              callback=on_declared)

    def _send_held(self) -> None:
        channel = self._channel
        # A channel that is closing (close() was asked while a declare was on its way) takes no publish: pika
        # would raise and abort the connection. The held ones go out on the next channel, or stay held.
        while self._held and self._ready and channel is not None and channel.is_open:
            pub = self._held[0]
            if pub.queue not in self._declared:
                self._declare(pub.queue, self._send_held)
                return
            channel.basic_publish("", pub.queue, pub.body, PERSISTENT_JSON, mandatory=True)
            self._held.popleft()  # only once sent: a publish that raised stays held, never silently dropped
            pub.sent_at = time.monotonic()
            self._unconfirmed[self._next_tag] = pub
            self._next_tag += 1

    def _on_return(self, _channel: Any, method: pika.spec.Basic.Return, _props: Any, body: bytes) -> None:
        """Invoked by pika when RabbitMQ returns a mandatory publish it could not route.

        The return comes before the publish's ack and carries no delivery tag:
        it belongs to the oldest unconfirmed publish with the same queue and body.
        """
        for pub in self._unconfirmed.values():
            if not pub.returned and pub.queue == method.routing_key and pub.body == body:
                pub.returned = True
                self._declared.discard(pub.queue)  # declare it again before the next publish
                return

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        """Invoked by pika when RabbitMQ acks or nacks one publish, or all up to a tag."""
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        self._last_confirm_at = time.monotonic()
        tag = method.delivery_tag
        if method.multiple:
            done = []
            while self._unconfirmed and next(iter(self._unconfirmed)) <= tag:
                done.append(self._unconfirmed.popitem(last=False)[1])
        else:
            pub = self._unconfirmed.pop(tag, None)
            done = [pub] if pub is not None else []
        for pub in done:
            self._finish(pub, nacked)

    def _finish(self, pub: Publish, nacked: bool) -> None:
        error: BaseException | None = None
        if pub.returned:
            error = UnroutableError(f"RabbitMQ at {self.url} had no queue {pub.queue!r} to route the event to")
        elif nacked and pub.nacks < NACK_RETRIES:
            delay = min(NACK_RETRY_MAX_SECONDS, NACK_RETRY_SECONDS * 2**pub.nacks)
            pub.nacks += 1
            logger.warning("%s: RabbitMQ at %s refused an event for %r; sending it again on a new channel in %.1f s "
                           "(retry %d)", self.name, self.url, pub.queue, delay, pub.nacks)
            self._nacked.append(pub)
            if self._renew_timer is None:
                self._renew_timer = self._loop.call_later(delay, self._on_renew_timer)
            return
        elif nacked:
            error = NackedError(f"RabbitMQ at {self.url} refused an event for queue {pub.queue!r}")
        try:
            pub.on_done(error)
        except Exception:
            logger.exception("%s: publish callback failed", self.name)

    def _on_renew_timer(self) -> None:
        self._renew_timer = None
        self._renew_channel()

    def _renew_channel(self) -> None:
        """Send the refused publishes again, on a new channel.

        Not on the same one: a channel of RabbitMQ 3.10 that began publishing
        to a quorum queue while the queue's record still named a lost leader
        keeps sending to it, and every publish is refused until the channel
        closes (upstream fixed in 3.11, rabbitmq-server pull request 9241).
        """
        if self._renew_timer is not None:  # asked for by a nack, and now by the confirm watch: once is enough
            self._loop.remove_timeout(self._renew_timer)
            self._renew_timer = None
        self._held.extendleft(reversed(self._nacked))
        self._nacked.clear()
        channel, connection = self._channel, self._connection
        if channel is None or connection is None or not channel.is_open or not connection.is_open:
            return  # a new channel comes anyway, and sends the held publishes
        self._lose_channel()  # the unconfirmed ones too go back to the held ones, first
        channel.close()  # its close callback finds it is no longer ours
        connection.channel(on_open_callback=self._on_channel_open)

    # -- consuming ----------------------------------------------------------------

    def _start_consumer(self, consumer: _Consumer) -> None:
        channel = self._channel

        def on_delivery(_ch: Any, method: pika.spec.Basic.Deliver, _props: Any, body: bytes) -> None:
            consumer.on_message(self.generation, method.delivery_tag, body)

        def begin() -> None:
            if (channel is self._channel and channel is not None and consumer.tag is None
                    and self._consumers.get(consumer.queue) is consumer):  # not cancelled while declaring
                consumer.tag = channel.basic_consume(consumer.queue, on_delivery, auto_ack=False)
                if isinstance(self._connection, FastDeliveries):
                    self._connection.add_fast_consumer(channel.channel_number, consumer.tag,
                                                       partial(consumer.on_message, self.generation))

        self._declare(consumer.queue, begin)

    def _on_consumer_cancelled(self, frame: pika.frame.Method) -> None:
        """Invoked by pika when RabbitMQ cancels a consumer (its queue was deleted)."""
        tag = frame.method.consumer_tag
        for consumer in self._consumers.values():
            if consumer.tag == tag:
                logger.warning("%s: RabbitMQ cancelled the consumer of %r; declaring it again",
                               self.name, consumer.queue)
                self._forget_consumer_tag(consumer, self._channel)
                self._declared.discard(consumer.queue)
                if self._ready:
                    self._start_consumer(consumer)
