"""Typing notifications: ``POST /typing`` (Zulip's set-typing-status), sending ``typing`` events.

``op`` is ``start`` or ``stop``. For a direct message (``type`` ``direct``,
the default) ``to`` holds the recipients' user ids; the event names the sender
and every recipient, the sender included, and goes to all of them. For a
stream message (``type`` ``stream`` or ``channel``) ``stream_id`` and
``topic`` say where; the event goes to the stream's subscribers. As in Zulip,
the server keeps no typing state: clients send ``start`` again every
``TYPING_STARTED_WAIT_MS`` while their user types, ``stop`` after
``TYPING_STOPPED_WAIT_MS`` without input, and forget a typist not heard of
for ``TYPING_STARTED_EXPIRY_MS``. The events go through the event server's
``route`` (``notify`` here, each other shard's part to that shard), the one
way events reach client queues; requests count against their user's
``typing`` rate limit.
"""

from __future__ import annotations

from typing import Any

from tornado.ioloop import IOLoop

from eventbus.tornado_events import rate_limit
from eventbus.tornado_events.handlers import CoreHandler, bad_request, ignored_parameters, missing_argument
from eventbus.validation import excerpt, is_id

#: Zulip's typing protocol intervals (its ``server_typing_*`` register values), in milliseconds.
TYPING_STARTED_WAIT_MS = 10_000
TYPING_STOPPED_WAIT_MS = 5_000
TYPING_STARTED_EXPIRY_MS = 15_000
#: Most recipients a direct message typing notification may name (a group conversation of that size is rare).
MAX_TYPING_RECIPIENTS = 100
#: ``type`` values: Zulip's, "channel" the newer name of "stream" (the older "private" was dropped in Zulip 8.0).
MESSAGE_TYPES = {"direct": "direct", "stream": "stream", "channel": "stream"}
#: The longest topic a typing notification names (Zulip's ``max_topic_length``).
MAX_TOPIC_CHARS = 60


class TypingHandler(CoreHandler):
    """POST /typing; see the module docstring."""

    rate_limit_category = rate_limit.TYPING
    FIELDS = ("type", "op", "to", "stream_id", "topic")

    async def post(self) -> None:
        op = self.get_argument("op", None)
        if op is None:
            raise missing_argument("op")
        if op not in ("start", "stop"):
            raise bad_request("Invalid 'op' argument: must be 'start' or 'stop'")
        kind = MESSAGE_TYPES.get(self.get_argument("type", "direct"))
        if kind is None:
            raise bad_request("Invalid 'type' argument: must be 'direct', 'stream' or 'channel'")
        sender = {"user_id": self.user.id, "email": self.user.email}
        event: dict[str, Any] = {"type": "typing", "op": op, "message_type": kind, "sender": sender}
        if kind == "direct":
            recipients = await self.direct_recipients()
            event["recipients"] = recipients
            users = [r["user_id"] for r in recipients]
        else:
            stream_id, topic = await self.stream_and_topic()
            event.update(stream_id=stream_id, topic=topic)
            users = await IOLoop.current().run_in_executor(None, self.server.messages.subscribers, stream_id)
        await self.server.route({"event": event, "users": users})  # with shards, to each user's own
        self.success(**ignored_parameters(self, self.FIELDS))

    async def direct_recipients(self) -> list[dict[str, Any]]:
        """``{"user_id", "email"}`` of the sender and every user ``to`` names; BAD_REQUEST naming a bad one."""
        if self.get_argument("to", None) is None:
            raise missing_argument("to")
        to = self.json_arg("to")
        if not (isinstance(to, list) and 0 < len(to) <= MAX_TYPING_RECIPIENTS and all(is_id(u) for u in to)):
            raise bad_request(f"Invalid 'to' argument: a list of 1 to {MAX_TYPING_RECIPIENTS} user ids")
        recipients = {self.user.id: self.user.email}
        users = self.server.messages.users
        for user_id in dict.fromkeys(to):
            user = await IOLoop.current().run_in_executor(None, users.get, user_id)
            if user is None or not user.is_active:
                raise bad_request(f"Invalid user ID {user_id}")
            recipients[user.id] = user.email
        return [{"user_id": uid, "email": email} for uid, email in sorted(recipients.items())]

    async def stream_and_topic(self) -> tuple[int, str]:
        """The stream and topic of a stream typing notification; BAD_REQUEST as Zulip words it."""
        if self.get_argument("stream_id", None) is None:
            raise bad_request("Missing channel ID")
        stream_id = self.json_arg("stream_id")
        topic = self.get_argument("topic", None)
        if topic is None:
            raise bad_request("Missing topic")
        if len(topic) > MAX_TOPIC_CHARS:
            raise bad_request(f"Invalid 'topic' argument: at most {MAX_TOPIC_CHARS} characters")
        stream = None
        if is_id(stream_id):
            stream = await IOLoop.current().run_in_executor(None, self.server.messages.get_stream_by_id, stream_id)
        if stream is None:
            raise bad_request(f"Invalid channel ID {excerpt(str(stream_id))}")
        return stream.id, topic
