"""Every registered client of this Tornado process: lookup, delivery, expiry, persistence."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from eventbus import codec
from eventbus.contracts import Recipient, recipient
from eventbus.tornado_events.event_queue import ClientDescriptor

logger = logging.getLogger(__name__)

#: What a message event carries for the sender's queue alone (``deliver`` turns it into ``local_message_id``).
LOCAL_ECHO_FIELDS = ("sender_queue_id", "local_id")
#: Called with a user id and the queues that expired, when that user's last queue expired (they went away).
ExpiryHook = Callable[[int, list[ClientDescriptor]], None]


class TooManyQueues(Exception):
    """A user at their cap of queues registers one more, and none of theirs is idle to make room."""


class ClientRegistry:
    """The clients of this process, by queue id and by user."""

    def __init__(self, max_queue_events: int = 10_000, max_queue_bytes: int = 4 * 1024 * 1024,
                 max_queues_per_user: int = 100, new_queue_id: Callable[[], str] | None = None) -> None:
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.max_queues_per_user = max_queues_per_user
        #: Makes the id of each new queue: a bare uuid, or one naming this process's shard (``Sharding``).
        self.new_queue_id = new_queue_id or (lambda: str(uuid.uuid4()))
        self._clients: dict[str, ClientDescriptor] = {}
        self._by_user: defaultdict[int, dict[str, ClientDescriptor]] = defaultdict(dict)
        self.after_last_queue_expired: list[ExpiryHook] = []
        self.events_delivered = 0

    # -- clients ----------------------------------------------------------------

    def add(self, client: ClientDescriptor) -> ClientDescriptor:
        """Register ``client``. A user at ``max_queues_per_user`` loses their queue idle the longest to make
        room (its client gets BAD_EVENT_QUEUE_ID at its next poll, and re-registers, as Zulip clients do);
        TooManyQueues if every one of their queues is being served."""
        mine = self._by_user.get(client.user_id)
        if mine is not None and len(mine) >= self.max_queues_per_user:
            idle = [c for c in mine.values() if c.idle]
            if not idle:
                raise TooManyQueues(f"Too many event queues: {len(mine)} of this user's are in use; close one")
            oldest = min(idle, key=lambda c: c.last_connection_time)
            logger.info("user %d registers more than %d queues: dropping queue %s, idle the longest",
                        client.user_id, self.max_queues_per_user, oldest.queue_id)
            self.remove(oldest, "the user registered too many queues")
        self._clients[client.queue_id] = client
        self._by_user[client.user_id][client.queue_id] = client
        return client

    def get(self, queue_id: str, user_id: int) -> ClientDescriptor | None:
        """The client with ``queue_id`` if it belongs to ``user_id``; a foreign queue looks like no queue."""
        client = self._clients.get(queue_id)
        return client if client is not None and client.user_id == user_id else None

    def remove(self, client: ClientDescriptor, reason: str | None = None) -> None:
        """Forget ``client``; with a reason, its listener is told the queue is gone."""
        self._clients.pop(client.queue_id, None)
        mine = self._by_user.get(client.user_id)
        if mine is not None:
            mine.pop(client.queue_id, None)
            if not mine:
                del self._by_user[client.user_id]
        if reason is not None and client.listener is not None:
            client.listener.drop(client, reason)

    def has_live_queue(self, user_id: int) -> bool:
        return bool(self._by_user.get(user_id))

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Any:
        return iter(list(self._clients.values()))

    # -- delivery ---------------------------------------------------------------

    def deliver(self, event: dict[str, Any], users: Iterable[Recipient]) -> int:
        """Queue ``event`` for every client of ``users`` that accepts it; how many clients got it.

        ``users`` holds user ids, or ``{"id": N, "flags": [...]}`` for per-user
        message flags, as a checked ``Notice`` holds them. Each variant of the event is encoded once.
        A queue left holding more than ``max_queue_events`` events, or more than
        ``max_queue_bytes`` bytes of them in more than one event, is dropped: its
        listener is told (BAD_EVENT_QUEUE_ID), and so is the client when it comes
        back. One event alone never overflows a queue, whatever its size.
        """
        bodies: dict[tuple[bool, tuple[str, ...]], tuple[dict[str, Any], bytes]] = {}
        count = 0
        message_id = event["message"].get("id") if event.get("type") == "message" else None
        # Zulip's local echo: the sender's queue named by the send request learns which message was its own.
        echo_queue = event.get("sender_queue_id") if message_id is not None else None
        for user in users:
            user_id, flags = recipient(user)
            mine = self._by_user.get(user_id)
            if not mine:
                continue
            for client in list(mine.values()):  # a copy: an overflowing queue is removed on the way
                if not client.accepts(event, flags):
                    continue
                if isinstance(message_id, int) and not client.first_time(message_id):
                    continue  # the processor delivered it twice (a redelivery); the client has it
                key = (client.apply_markdown, tuple(flags) if flags is not None else ())
                if key not in bodies:
                    variant = client_view(event, client.apply_markdown, flags)
                    bodies[key] = (variant, codec.encode(variant))
                variant, body = bodies[key]
                if client.queue_id == echo_queue and client.user_id == event["message"].get("sender_id"):
                    client.add({**variant, "local_message_id": event.get("local_id")})  # this client's alone
                else:
                    client.add(variant, body)
                count += 1
                if self._overflows(client):
                    self.remove(client, "the queue overflowed")
        self.events_delivered += count
        return count

    def _overflows(self, client: ClientDescriptor) -> bool:
        """Whether ``client``'s queue is past a bound (and say which, in the log)."""
        queue = client.queue
        if len(queue) > self.max_queue_events:
            bound = f"{self.max_queue_events} events"
        elif queue.size > self.max_queue_bytes and len(queue) > 1:
            bound = f"{self.max_queue_bytes} bytes"
        else:
            return False
        logger.warning("queue %s of user %d holds over %s (%d events, %d bytes); dropping it",
                       client.queue_id, client.user_id, bound, len(queue), queue.size)
        return True

    def send_heartbeats(self, interval: float, now: float | None = None) -> int:
        """A heartbeat event to each listener that wants them and has waited long enough; how many.

        One sweep for every held request instead of a timer each: called every
        tenth of ``interval``, it heartbeats a client 0.9 to 1.1 intervals after
        its listener attached. The spread, fixed per queue, keeps clients that
        came together from all coming back together.
        """
        now = time.monotonic() if now is None else now
        due = [c for c in self._clients.values() if c.listener is not None and c.listener.wants_heartbeats
               and now - c.last_connection_time >= interval * (0.9 + 0.1 * (hash(c.queue_id) % 1000) / 1000)]
        for client in due:
            client.add({"type": "heartbeat"})
        return len(due)

    # -- expiry -----------------------------------------------------------------

    def collect_garbage(self, now: float | None = None) -> list[ClientDescriptor]:
        """Remove the idle queues past their lifespan; fire the hooks for users left with none."""
        now = time.monotonic() if now is None else now
        expired = [c for c in self._clients.values() if c.expired(now)]
        for client in expired:
            self.remove(client)
        for user_id in sorted({c.user_id for c in expired}):
            if not self.has_live_queue(user_id):
                self._fire(user_id, [c for c in expired if c.user_id == user_id])
        if expired:
            logger.info("collected %d expired event queue(s)", len(expired))
        return expired

    def _fire(self, user_id: int, clients: list[ClientDescriptor]) -> None:
        for hook in self.after_last_queue_expired:
            try:
                hook(user_id, clients)
            except Exception:
                logger.exception("after_last_queue_expired hook %r failed for user %d", hook, user_id)

    # -- persistence ------------------------------------------------------------

    def dump(self, path: Path) -> int:
        """Write every queue that can be written to ``path`` (atomically); how many.

        Each queue is encoded on its own: one that JSON cannot carry (a NaN
        lifespan, a lone surrogate in a filter) is logged and left out (its
        client gets BAD_EVENT_QUEUE_ID from the next process and registers
        again), and every other one is saved.
        """
        saved = []
        for client in self._clients.values():
            try:
                saved.append(client.to_json())  # each event's JSON spliced in: nothing decoded again
            except (ValueError, TypeError) as e:  # EventEncodingError is a ValueError
                logger.error("event queue %s of user %d cannot be saved, left out: %s",
                             client.queue_id, client.user_id, e)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"[" + b",".join(saved) + b"]")
        os.replace(tmp, path)
        return len(saved)

    def load(self, path: Path, restart_event: dict[str, Any]) -> int:
        """Restore the queues saved in ``path``, each with ``restart_event``; rename the file. How many."""
        if not path.exists():
            return 0
        try:
            saved = codec.decode(path.read_bytes())
            clients = [ClientDescriptor.from_dict(data) for data in saved]
        except (ValueError, KeyError, TypeError) as e:
            logger.error("cannot restore event queues from %s (%s); starting without them", path, e)
            path.rename(path.with_name(path.name + ".bad"))
            return 0
        for client in clients:
            self.add(client)
            client.add(dict(restart_event))
        path.rename(path.with_name(path.name + ".loaded"))
        return len(clients)


def client_view(event: dict[str, Any], apply_markdown: bool, flags: list[str] | None) -> dict[str, Any]:
    """The event as one client sees it: message content per apply_markdown, the user's flags (of a message
    event, and of an ``update_message`` event: the flags after the edit)."""
    if event.get("type") == "update_message" and flags is not None:
        return {**event, "flags": list(flags)}
    if event.get("type") != "message" or not isinstance(event.get("message"), dict):
        return event
    message = dict(event["message"])
    rendered = message.pop("rendered_content", None)
    if apply_markdown and rendered is not None:
        message["content"], message["content_type"] = rendered, "text/html"
    else:
        message["content_type"] = "text/x-markdown"
    view = {key: value for key, value in event.items() if key not in LOCAL_ECHO_FIELDS}
    view["message"] = message
    if flags is not None:
        view["flags"] = list(flags)
    return view
