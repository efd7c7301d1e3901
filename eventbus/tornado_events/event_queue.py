"""Per-client event queues: what one registered client has not acknowledged yet.

A ``ClientDescriptor`` is one registration: its unguessable ``queue_id``
(uuid4), its user, its filters (``event_types``, ``narrow``,
``apply_markdown``) and its ``EventQueue``. Event ids start at 0 and grow by
one; an event stays until the client asks with a ``last_event_id`` at or past
it, so a client that comes back gets exactly what it missed, once, in order.

A client is served by at most one listener at a time: a held long-poll (one
answer, then it detaches) or a websocket (every event as it comes). Each
event is encoded to JSON once, whatever the number of clients that get it.

A queue keeps its events as that JSON only (``bytes``, shared by the clients
that got the same event), not as dicts or an object per event: thousands of
idle clients hold millions of queued events between them, and the cyclic
garbage collector walks every container it tracks on each full pass. With a
frozen dataclass per queued event, 2,000 idle queues filling up gave a live
client a p99 latency of 196 ms and pauses up to 460 ms, the length of the
longest collection. Bytes are no containers, and the queue seals them by
``CHUNK`` into tuples, which the collector stops tracking once it has seen
that they hold nothing it tracks: a full pass then costs 2 to 4 ms over 20
million queued events, against 130 ms over 2 million event objects, and
queueing allocates no tracked object per event, so full passes come seldom
(none in a run of ``python -m bench pauses``, against 7 to 10 of 160 to 250
ms of CPU each before; see docs/benchmarks.md). Tuning the
collector's thresholds or ``gc.freeze()`` would only have spaced the passes
out: what stays queued is always new, and each pass would still walk it
all. An event is decoded again only where a dict is needed (the
missed-message notices of an expired queue; saving the queues splices
their JSON); the ids are not stored either: they are consecutive, from
``next_id - len(queue)``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventbus import codec

#: Events every client gets, whatever its event_types.
ALWAYS_DELIVERED = frozenset({"heartbeat", "restart"})
#: The operators of a register narrow, and the ``is`` operands (Zulip's event narrows): ``is:dm`` is the type
#: of the message, the others its recipient's flags, any of those named (Zulip's wildcard mentions are mentions).
EVENT_NARROWS = frozenset({"stream", "channel", "topic", "sender", "is"})
IS_FLAGS = {"starred": ("starred",), "alerted": ("has_alert_word",),
            "mentioned": ("mentioned", "wildcard_mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned")}
IS_OPERANDS = frozenset({"dm", "private", *IS_FLAGS})
#: Message ids a client remembers, so that a message delivered twice upstream reaches it once.
RECENT_MESSAGES = 1000
#: Queued events are sealed in tuples of this many: a full garbage collection visits a queue's chunks and its
#: tail, not its events. Shorter chunks mean more of them to visit, longer ones a longer tail (a list the collector
#: walks item by item): over 2,000 queues of 10,000 events, a full pass took 10 ms with chunks of 64, 2 ms with 256,
#: 8 ms with 1,024 (tails of 783); with 1,000 events (tails of 232), 4 ms with 256.
CHUNK = 256


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event of one client's queue, as handed to its listener: its id there, and its JSON without the id.

    Made when the queue is read, not kept in it (see the module docstring).
    """

    id: int
    body: bytes  # the event's JSON object, without "id" (shared by clients)

    def to_json(self) -> bytes:
        """The event's JSON with its id first."""
        if self.body == b"{}":
            return b'{"id":%d}' % self.id
        return b'{"id":%d,' % self.id + self.body[1:]

    @property
    def event(self) -> dict[str, Any]:
        """The event without its id, decoded anew at each call."""
        event: dict[str, Any] = codec.decode(self.body)
        return event

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.event}


class EventQueue:
    """Events of one client with consecutive ids, from the oldest unacknowledged, as their JSON.

    Full chunks are tuples in ``_sealed``, the newest events a list in
    ``_tail``; the first ``_start`` events of the first chunk are pruned
    already (a chunk goes once it is pruned whole). Lists, not deques: an
    empty deque costs 600 bytes, and thousands of idle clients hold one each.
    """

    __slots__ = ("_sealed", "_start", "_tail", "next_id", "size")

    def __init__(self, next_id: int = 0) -> None:
        self._sealed: list[tuple[bytes, ...]] = []
        self._start = 0
        self._tail: list[bytes] = []
        self.next_id = next_id
        #: The bytes of JSON queued: what the client would be sent (bodies shared with other clients count here too).
        self.size = 0

    def push(self, body: bytes) -> int:
        """Queue the event whose JSON (without its id) is ``body``; its id."""
        tail = self._tail
        tail.append(body)
        if len(tail) == CHUNK:
            self._sealed.append(tuple(tail))
            tail.clear()
        self.size += len(body)
        self.next_id += 1
        return self.next_id - 1

    @property
    def first_id(self) -> int:
        """The id of the oldest event queued (``next_id`` when there is none)."""
        return self.next_id - len(self)

    @property
    def events(self) -> list[QueuedEvent]:
        """The events queued, oldest first: a new list at each call."""
        return [QueuedEvent(id, body) for id, body in enumerate(self._bodies(), self.first_id)]

    def _bodies(self) -> Iterator[bytes]:
        sealed = self._sealed
        if sealed:
            yield from itertools.islice(sealed[0], self._start, None)
            yield from itertools.chain.from_iterable(itertools.islice(sealed, 1, None))
        yield from self._tail

    def prune(self, last_event_id: int) -> None:
        """Forget every event with an id up to ``last_event_id``: the client has them."""
        drop = min(len(self), last_event_id + 1 - self.first_id)
        sealed = self._sealed
        while drop > 0 and sealed:
            chunk, start = sealed[0], self._start
            end = min(len(chunk), start + drop)
            self.size -= sum(map(len, chunk[start:end]))
            drop -= end - start
            if end == len(chunk):
                del sealed[0]
                self._start = 0
            else:
                self._start = end
        if drop > 0:
            self.size -= sum(map(len, self._tail[:drop]))
            del self._tail[:drop]

    def __len__(self) -> int:
        return len(self._sealed) * CHUNK - self._start + len(self._tail)


class Listener(Protocol):
    """Who serves a client now: a held long-poll or a websocket."""

    #: Whether it is sent a heartbeat event after a while without events (long-polls: for proxies and NATs).
    wants_heartbeats: bool

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        """Send ``events`` (new ones, oldest first)."""

    def drop(self, client: ClientDescriptor, reason: str) -> None:
        """The queue is gone (expired, overflowed, deleted): tell the client so."""

    def replace(self, client: ClientDescriptor) -> None:
        """A newer listener takes over this client."""


@dataclass(eq=False, slots=True)
class ClientDescriptor:
    """One registered client of one user; see the module docstring."""

    user_id: int
    event_types: frozenset[str] | None = None
    narrow: tuple[tuple[str, str], ...] = ()
    apply_markdown: bool = True
    lifespan: float = 600.0
    queue_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    queue: EventQueue = field(default_factory=EventQueue)
    last_connection_time: float = field(default_factory=time.monotonic)
    listener: Listener | None = None
    #: Recent message ids, oldest first (a dict as an ordered set), made on the first message.
    _recent_messages: dict[int, None] | None = field(default=None, repr=False)

    def first_time(self, message_id: int) -> bool:
        """Whether the message ``message_id`` is new to this client (and remember it)."""
        recent = self._recent_messages
        if recent is None:
            recent = self._recent_messages = {}
        elif message_id in recent:
            return False
        if len(recent) >= RECENT_MESSAGES:
            del recent[next(iter(recent))]
        recent[message_id] = None
        return True

    # -- filters ----------------------------------------------------------------

    def accepts(self, event: dict[str, Any], flags: Collection[str] | None = None) -> bool:
        """Whether this client asked for ``event`` (a message event with its recipient's ``flags``)."""
        kind = event.get("type")
        if kind in ALWAYS_DELIVERED:
            return True
        if self.event_types is not None and kind not in self.event_types:
            return False
        if kind == "message" and self.narrow:
            return self._in_narrow(event.get("message") or {}, event.get("flags", ()) if flags is None else flags)
        return True

    def _in_narrow(self, message: dict[str, Any], flags: Collection[str]) -> bool:
        """Whether a message is in every term of the narrow, as Zulip's event narrows match (``EVENT_NARROWS``)."""
        for operator, operand in self.narrow:
            if operator in ("stream", "channel"):
                if message.get("type") != "stream" or not _same(message.get("display_recipient"), operand):
                    return False
            elif operator == "topic":
                if not _same(message.get("subject"), operand):
                    return False
            elif operator == "sender":
                if not _same(message.get("sender_email"), operand):
                    return False
            elif operator == "is":
                if operand in ("dm", "private"):
                    if message.get("type") != "private":
                        return False
                elif not any(flag in flags for flag in IS_FLAGS[operand]):
                    return False
        return True

    # -- listeners --------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.listener is None

    def attach(self, listener: Listener | None) -> None:
        """``listener`` serves this client from now (None: a request answered at once);
        the previous listener is told it was replaced."""
        previous, self.listener = self.listener, listener
        self.last_connection_time = time.monotonic()
        if previous is not None and previous is not listener:
            previous.replace(self)

    def detach(self, listener: Listener) -> None:
        if self.listener is listener:
            self.listener = None
            self.last_connection_time = time.monotonic()

    def expired(self, now: float) -> bool:
        return self.idle and now - self.last_connection_time > self.lifespan

    # -- events -----------------------------------------------------------------

    def add(self, event: dict[str, Any], body: bytes | None = None) -> None:
        """Queue ``event`` (``body``: its JSON, if encoded already) and hand it to the listener, if one is attached."""
        if body is None:
            body = codec.encode(event)
        id = self.queue.push(body)
        if self.listener is not None:
            self.listener.deliver(self, [QueuedEvent(id, body)])

    def pending(self) -> list[QueuedEvent]:
        return self.queue.events

    # -- persistence ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """What ``from_dict`` restores this client from; its events decoded (``to_json`` does without)."""
        return {**self._settings(), "events": [q.as_dict() for q in self.queue.events]}

    def to_json(self) -> bytes:
        """``to_dict`` as JSON, each event's JSON spliced in as queued: saving thousands of queues decodes nothing."""
        events = b",".join(q.to_json() for q in self.queue.events)
        return codec.encode(self._settings())[:-1] + b',"events":[' + events + b"]}"

    def _settings(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "user_id": self.user_id,
            "event_types": sorted(self.event_types) if self.event_types is not None else None,
            "narrow": [list(term) for term in self.narrow],
            "apply_markdown": self.apply_markdown,
            "lifespan": self.lifespan,
            "next_id": self.queue.next_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientDescriptor:
        types = data.get("event_types")
        client = cls(
            user_id=int(data["user_id"]),
            event_types=frozenset(types) if types is not None else None,
            narrow=tuple((str(op), str(arg)) for op, arg in data.get("narrow", [])),
            apply_markdown=bool(data.get("apply_markdown", True)),
            lifespan=float(data.get("lifespan", 600.0)),
            queue_id=str(data["queue_id"]),
        )
        events: Iterable[dict[str, Any]] = data.get("events", [])
        for saved in events:
            saved = dict(saved)
            client.queue.next_id = int(saved.pop("id"))
            client.queue.push(codec.encode(saved))
        client.queue.next_id = int(data.get("next_id", client.queue.next_id))
        return client


def _same(value: Any, operand: str) -> bool:
    return isinstance(value, str) and value.casefold() == operand.casefold()
