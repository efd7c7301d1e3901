"""Sending a message: check the request, render, store once, deliver to every recipient.

Used by the ``message_sender`` processor (messages clients submit), and by
processors that post messages themselves (email mirror, slow query reports).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from eventbus import codec
from eventbus.errors import EventEncodingError
from eventbus.messages import MessageStore, StoredMessage, Stream
from eventbus.processors.markdown import render
from eventbus.queue import Broker
from eventbus.tornado_events import send_event
from eventbus.users import User
from eventbus.validation import excerpt, is_id

#: Zulip's limits.
MAX_TOPIC = 60
MAX_CONTENT = 10_000


class MessageError(ValueError):
    """The request cannot become a message; the text says why, for the sender."""


@dataclass(frozen=True)
class Draft:
    """A checked request: who sends what to whom."""

    sender: User
    type: str  # "stream" or "private"
    stream: Stream | None
    recipients: list[User]  # private recipients, sender included; empty for a stream
    subject: str
    content: str


def check_request(store: MessageStore, sender: User, request: dict[str, Any]) -> Draft:
    """A draft from a submitted request (Zulip's form fields); MessageError naming the problem."""
    kind = request.get("type")
    kind = "private" if kind == "direct" else kind
    content = request.get("content")
    if kind not in ("stream", "private"):
        raise MessageError("Invalid 'type': must be 'stream' or 'private'")
    if not isinstance(content, str) or not content.strip():
        raise MessageError("Message must not be empty")
    if len(content) > MAX_CONTENT:
        raise MessageError(f"Message is longer than {MAX_CONTENT} characters")
    to = _recipients(request.get("to"))
    if kind == "stream":
        return _stream_draft(store, sender, to, request, content)
    users = []
    for address in to:
        if isinstance(address, str):
            user = store.users.get_by_email(address)
        elif is_id(address):  # checked first: a larger integer cannot even be looked up in SQLite
            user = store.users.get(address)
        else:
            raise MessageError(f"Invalid 'to': {excerpt(address)} is neither an email nor a user id")
        if user is None or not user.is_active:
            raise MessageError(f"Invalid email '{excerpt(address)}'")
        users.append(user)
    if not users:
        raise MessageError("Missing 'to': a private message needs recipients")
    recipients = {u.id: u for u in [*users, sender]}
    return Draft(sender, "private", None, sorted(recipients.values(), key=lambda u: u.id), "", content)


def _stream_draft(store: MessageStore, sender: User, to: list[Any], request: dict[str, Any], content: str) -> Draft:
    if len(to) != 1 or not isinstance(to[0], str):
        raise MessageError("Missing 'to': a stream message needs one stream name")
    stream = store.get_stream(to[0])
    if stream is None:
        raise MessageError(f"Stream '{excerpt(to[0])}' does not exist")
    topic = request.get("topic", request.get("subject"))
    if not isinstance(topic, str) or not topic.strip():
        raise MessageError("Missing 'topic': a stream message needs a topic")
    if len(topic) > MAX_TOPIC:
        raise MessageError(f"Topic is longer than {MAX_TOPIC} characters")
    return Draft(sender, "stream", stream, [], topic.strip(), content)


def _recipients(to: Any) -> list[Any]:
    """``to`` as Zulip clients send it: a name, a JSON list, or comma-separated emails."""
    if isinstance(to, list):
        return to
    if not isinstance(to, str) or not to.strip():
        return []
    if to.lstrip().startswith("["):
        try:
            decoded = codec.decode(to)
        except EventEncodingError as e:
            raise MessageError(f"Invalid 'to': {e}") from None
        return decoded if isinstance(decoded, list) else [decoded]
    return [part.strip() for part in to.split(",")] if "@" in to else [to.strip()]


def send(broker: Broker, store: MessageStore, draft: Draft, request_id: str | None) -> StoredMessage:
    """Render, store (once per request id) and deliver through ``broker``; a message delivered before is not
    delivered again."""
    find_user = functools.partial(_find_user, store)
    rendered = render(draft.content, find_user, functools.partial(_find_stream, store))
    if draft.stream is not None:
        recipient_ids = store.subscribers(draft.stream.id)
        display: Any = draft.stream.name
    else:
        recipient_ids = [u.id for u in draft.recipients]
        display = [{"id": u.id, "email": u.email, "full_name": u.full_name} for u in draft.recipients]
    if draft.sender.id not in recipient_ids:
        recipient_ids.append(draft.sender.id)
    flags = {uid: _flags(uid, draft.sender.id, rendered.mentioned_user_ids) for uid in recipient_ids}
    message = store.store(request_id=request_id, sender_id=draft.sender.id, type=draft.type, stream=draft.stream,
                          display_recipient=display, subject=draft.subject, content=draft.content,
                          rendered_content=rendered.html, flags=flags)
    if not message.delivered:
        event = {"type": "message", "message": message.event_message()}
        send_event(broker, event, [{"id": uid, "flags": f} for uid, f in message.flags.items()])
        store.mark_delivered(message.id)
    return message


def _flags(user_id: int, sender_id: int, mentioned: frozenset[int]) -> list[str]:
    flags = ["read"] if user_id == sender_id else []
    if user_id in mentioned:
        flags.append("mentioned")
    return flags


def _find_user(store: MessageStore, full_name: str) -> tuple[int, str] | None:
    user = store.users.get_by_full_name(full_name)
    return (user.id, user.full_name) if user else None


def _find_stream(store: MessageStore, name: str) -> tuple[int, str] | None:
    stream = store.get_stream(name)
    return (stream.id, stream.name) if stream else None
