"""Notifications for users who are away: a mention or a private message that no open client will show.

When a message event mentions a user (by name, or with a wildcard such as
``@**all**``), or is private to them, and that user
has no live event queue, Tornado asks the processors to notify them: a
mobile push (``missedmessage_mobile_notifications``) and an email
(``missedmessage_emails``). The same happens for the unacknowledged mentions
and private messages left in a user's last queues when those expire.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from eventbus.contracts import (
    MISSEDMESSAGE_EMAILS,
    MISSEDMESSAGE_MOBILE_NOTIFICATIONS,
    MissedMessage,
    Recipient,
    recipient,
)
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor

#: publish_nowait(queue, event): failures are logged by the queue client.
Publish = Callable[[str, dict[str, Any]], None]


def trigger_for(user_id: int, message: dict[str, Any], flags: Collection[str]) -> str | None:
    """Why ``user_id`` should hear of ``message`` when away, or None.

    A wildcard mention notifies as a mention does, named as Zulip names the
    trigger (every user has Zulip's default ``wildcard_mentions_notify``: on);
    a topic wildcard before a channel one, as in Zulip. A flag list with only
    the older ``wildcard_mentioned`` (a producer before Zulip 8.0) counts as
    a channel wildcard, as Zulip's API description tells clients to read it.
    """
    if user_id == message.get("sender_id"):
        return None
    if "mentioned" in flags:
        return "mentioned"
    if message.get("type") == "private":
        return "private_message"
    if "topic_wildcard_mentioned" in flags:
        return "topic_wildcard_mentioned"
    if "stream_wildcard_mentioned" in flags or "wildcard_mentioned" in flags:
        return "stream_wildcard_mentioned"
    return None


class AwayNotifier:
    """Asks for notifications for the recipients who are away."""

    def __init__(self, registry: ClientRegistry, publish: Publish) -> None:
        self.registry = registry
        self.publish = publish
        self.sent = 0

    def on_message(self, event: dict[str, Any], users: Iterable[Recipient]) -> None:
        """After a message event was delivered (a checked ``Notice``): notify its recipients that have
        no live queue."""
        if event["type"] != "message":
            return
        message = event["message"]
        for user in users:
            user_id, flags = recipient(user)
            trigger = trigger_for(user_id, message, flags or [])
            if trigger and not self.registry.has_live_queue(user_id):
                self._notify(user_id, message["id"], trigger)

    def on_queues_expired(self, user_id: int, clients: list[ClientDescriptor]) -> None:
        """A user's last queues expired: notify them of the mentions and private messages they never saw."""
        notified: set[int] = set()
        for client in clients:
            for queued in client.pending():
                event = queued.event
                message = event.get("message")
                if event.get("type") != "message" or not isinstance(message, dict) or message["id"] in notified:
                    continue
                trigger = trigger_for(user_id, message, event.get("flags", []))
                if trigger:
                    notified.add(message["id"])
                    self._notify(user_id, message["id"], trigger)

    def _notify(self, user_id: int, message_id: int, trigger: str) -> None:
        self.sent += 1
        notice = MissedMessage(user_id, message_id, trigger).event()
        for queue in (MISSEDMESSAGE_MOBILE_NOTIFICATIONS, MISSEDMESSAGE_EMAILS):
            self.publish(queue, notice)
