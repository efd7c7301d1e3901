"""Producers' side of the event server: ``send_event``, and checking what arrives on the notify queues.

``send_event`` is the one place that decides which Tornado process gets an
event: it groups the recipients by the shard that owns them
(``eventbus.sharding``, from the broker's settings) and publishes one notice
per shard, to that shard's notify queue, confirms pipelined. Without
sharding that is one notice on ``notify_tornado``. A shard given a notice
with recipients of other shards (POSTed to its notify endpoint, or put on
the plain ``notify_tornado`` queue, which every shard also consumes) routes
it on the same way (``split_notice``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventbus.accounts import deactivated_user
from eventbus.queue import Broker
from eventbus.sharding import NOTIFY_QUEUE, RETURN_QUEUE, Sharding

__all__ = ["MESSAGE_SENDER_QUEUE", "NOTIFY_QUEUE", "RETURN_QUEUE", "Recipient", "check_notice", "recipient",
           "send_event", "split_notice"]

MESSAGE_SENDER_QUEUE = "message_sender"

#: One recipient: a user id, or ``{"id": N, "flags": [...]}`` for a message's per-user flags.
Recipient = int | dict[str, Any]


def send_event(broker: Broker, event: dict[str, Any], user_ids: Iterable[Recipient]) -> None:
    """Deliver ``event`` to every client of the users through ``broker``; returns once the broker has it.

    The broker is the caller's (a processor's ``self.broker``): a process-wide one only at an entry point.
    An event for 10,000 users on 4 shards is 4 publishes, confirmed in one round trip.
    """
    users = list(user_ids)
    check_notice({"event": event, "users": users})
    sharding = broker.settings.sharding
    broker.publish_routed((sharding.notify_queue(shard), part)
                          for shard, part in split_notice(sharding, event, users).items())


def split_notice(sharding: Sharding, event: dict[str, Any], users: list[Recipient]) -> dict[int, dict[str, Any]]:
    """The notice of ``event`` for each shard that owns some of ``users`` (checked recipients), in their order.

    Without sharding: one notice, as given. A deactivation goes to every shard: a shard that does not own the
    user may still trust their credentials for a while, or hold a websocket they submit messages through.
    """
    if not sharding.sharded:
        return {0: {"event": event, "users": users}}
    by_shard: dict[int, list[Recipient]] = {}
    for user in users:
        by_shard.setdefault(sharding.shard_for(recipient(user)[0]), []).append(user)
    if deactivated_user(event) is not None:
        for shard in range(sharding.count):
            by_shard.setdefault(shard, [])
    return {shard: {"event": event, "users": mine} for shard, mine in sorted(by_shard.items())}


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
