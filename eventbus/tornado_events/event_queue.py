"""Per-client event queues: what one registered client has not acknowledged yet.

A ``ClientDescriptor`` is one registration: its unguessable ``queue_id``
(uuid4), its user, its filters (``event_types``, ``narrow``,
``apply_markdown``) and its ``EventQueue``. Event ids start at 0 and grow by
one; an event stays until the client asks with a ``last_event_id`` at or past
it, so a client that comes back gets exactly what it missed, once, in order.

A client is served by at most one listener at a time: a held long-poll (one
answer, then it detaches) or a websocket (every event as it comes). Each
event is encoded to JSON once, whatever the number of clients that get it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterable
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


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event in one client's queue: its id there, and its JSON without the id (shared by clients)."""

    id: int
    event: dict[str, Any]
    body: bytes  # the event's JSON object, without "id"

    def to_json(self) -> bytes:
        """The event's JSON with its id first."""
        if self.body == b"{}":
            return b'{"id":%d}' % self.id
        return b'{"id":%d,' % self.id + self.body[1:]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.event}


class EventQueue:
    """Events of one client with consecutive ids, from the oldest unacknowledged.

    A list, not a deque: an empty deque costs 600 bytes, and thousands of idle clients hold one each.
    """

    __slots__ = ("events", "next_id")

    def __init__(self, next_id: int = 0) -> None:
        self.events: list[QueuedEvent] = []
        self.next_id = next_id

    def push(self, event: dict[str, Any], body: bytes | None = None) -> QueuedEvent:
        queued = QueuedEvent(self.next_id, event, codec.encode(event) if body is None else body)
        self.events.append(queued)
        self.next_id += 1
        return queued

    def prune(self, last_event_id: int) -> None:
        """Forget every event with an id up to ``last_event_id``: the client has them."""
        events = self.events
        if events and events[0].id <= last_event_id:
            # Ids are consecutive: the first one left is at last_event_id + 1 - the first id.
            del events[: max(0, last_event_id + 1 - events[0].id)]

    def __len__(self) -> int:
        return len(self.events)


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

    def add(self, event: dict[str, Any], body: bytes | None = None) -> QueuedEvent:
        """Queue ``event`` and hand it to the listener, if one is attached."""
        queued = self.queue.push(event, body)
        if self.listener is not None:
            self.listener.deliver(self, [queued])
        return queued

    def pending(self) -> list[QueuedEvent]:
        return self.queue.events.copy()

    # -- persistence ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "user_id": self.user_id,
            "event_types": sorted(self.event_types) if self.event_types is not None else None,
            "narrow": [list(term) for term in self.narrow],
            "apply_markdown": self.apply_markdown,
            "lifespan": self.lifespan,
            "next_id": self.queue.next_id,
            "events": [q.as_dict() for q in self.queue.events],
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
            client.queue.push(saved)
        client.queue.next_id = int(data.get("next_id", client.queue.next_id))
        return client


def _same(value: Any, operand: str) -> bool:
    return isinstance(value, str) and value.casefold() == operand.casefold()
