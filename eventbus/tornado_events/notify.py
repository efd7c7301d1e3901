"""Producers' side of the event server: ``send_event``, and checking what arrives on notify_tornado.

``send_event`` is the one place that decides which Tornado process gets an
event: today the one ``notify_tornado`` queue; with several processes each
owning a share of the users, this is where the routing goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eventbus.queue import Broker

NOTIFY_QUEUE = "notify_tornado"
RETURN_QUEUE = "tornado_return"
MESSAGE_SENDER_QUEUE = "message_sender"

#: One recipient: a user id, or ``{"id": N, "flags": [...]}`` for a message's per-user flags.
Recipient = int | dict[str, Any]


def notify_queue_name(server_id: str | None = None) -> str:
    """The queue the Tornado process ``server_id`` consumes (one process today: one queue)."""
    return NOTIFY_QUEUE


def return_queue_name(server_id: str) -> str:
    """The queue where processors put their answers for the Tornado process ``server_id``."""
    return RETURN_QUEUE if server_id == "tornado" else f"{RETURN_QUEUE}.{server_id}"


def send_event(broker: Broker, event: dict[str, Any], user_ids: Iterable[Recipient]) -> None:
    """Deliver ``event`` to every client of the users through ``broker``; returns once the broker has it.

    The broker is the caller's (a processor's ``self.broker``): a process-wide one only at an entry point.
    """
    send_events(broker, [(event, user_ids)])


def send_events(broker: Broker, events: Sequence[tuple[dict[str, Any], Iterable[Recipient]]]) -> None:
    """``send_event`` for several events, in order, with pipelined confirms: one round trip for the lot.

    Every notice is checked before any is published: a bad one raises ValueError and none goes out.
    """
    notices = [{"event": event, "users": list(user_ids)} for event, user_ids in events]
    for notice in notices:
        check_notice(notice)
    if notices:
        broker.publish_many(notify_queue_name(), notices)


def check_notice(notice: Any) -> tuple[dict[str, Any], list[Recipient]]:
    """The event and recipients of a notify_tornado payload; ValueError saying what is wrong."""
    if not isinstance(notice, dict):
        raise ValueError("a notice must be a JSON object with 'event' and 'users'")
    event, users = notice.get("event"), notice.get("users")
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("'event' must be a JSON object with a string 'type'")
    if "id" in event:
        raise ValueError("'event' must not carry an 'id': each client queue numbers its own events")
    if event["type"] == "message":
        message = event.get("message")
        if not isinstance(message, dict) or isinstance(message.get("id"), bool) or not isinstance(
                message.get("id"), int):
            raise ValueError("a 'message' event must carry a 'message' object with an integer 'id'")
    if not isinstance(users, list):
        raise ValueError("'users' must be a list of user ids")
    for user in users:
        if isinstance(user, bool) or not (isinstance(user, int) or _flagged(user)):
            raise ValueError(f"'users' holds {user!r}: each must be a user id or {{\"id\": N, \"flags\": [...]}}")
    return event, users


def recipient(user: Recipient) -> tuple[int, list[str] | None]:
    """A checked recipient's user id, and its message flags (None for a plain user id)."""
    return (user, None) if isinstance(user, int) else (user["id"], user.get("flags", []))


def _flagged(user: Any) -> bool:
    return (isinstance(user, dict) and isinstance(user.get("id"), int) and not isinstance(user["id"], bool)
            and isinstance(user.get("flags", []), list))
