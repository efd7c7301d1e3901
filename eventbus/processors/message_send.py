"""Sending a message: check the request, render, store once, deliver to every recipient.

Used by the ``message_sender`` processor (messages clients submit), and by
processors that post messages themselves (email mirror, slow query reports).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Any

from eventbus import codec
from eventbus.errors import EventEncodingError
from eventbus.messages import MessageStore, NewMessage, StoredMessage, Stream
from eventbus.processors.markdown import Rendered, render
from eventbus.queue import Broker
from eventbus.tornado_events import send_events
from eventbus.tornado_events.notify import Recipient
from eventbus.users import User
from eventbus.validation import excerpt, is_id

#: Zulip's limits.
MAX_TOPIC = 60
MAX_CONTENT = 10_000
#: A client's ``local_id`` and ``queue_id`` come back to it in an event: longer than a uuid is not one.
MAX_ECHO_CHARS = 100
#: What a message sent by a processor, not by a client, says sent it (Zulip's client for its own messages).
INTERNAL_CLIENT = "Internal"
#: The values of ``type``, as Zulip accepts them, and what each means.
TYPES = {"stream": "stream", "channel": "stream", "private": "private", "direct": "private"}


class MessageError(ValueError):
    """The request cannot become a message; the text says why, for the sender, with Zulip's error ``code``
    and the fields Zulip adds to that error (``var_name`` of a missing parameter, ``stream`` not found)."""

    def __init__(self, msg: str, code: str = "BAD_REQUEST", **fields: Any) -> None:
        super().__init__(msg)
        self.code = code
        self.fields = fields

    def response(self) -> dict[str, Any]:
        """The error as the sender is answered."""
        return {"result": "error", "msg": str(self), "code": self.code, **self.fields}


def missing(name: str) -> MessageError:
    return MessageError(f"Missing '{name}' argument", "REQUEST_VARIABLE_MISSING", var_name=name)


@dataclass(frozen=True)
class Draft:
    """A checked request: who sends what to whom."""

    sender: User
    type: str  # "stream" or "private"
    stream: Stream | None
    recipients: list[User]  # private recipients, sender included; empty for a stream
    subject: str
    content: str
    client: str = INTERNAL_CLIENT
    #: Zulip's local echo: the sender's event queue that gets the message event with ``local_message_id``.
    sender_queue_id: str | None = None
    local_id: str | None = None


def check_request(store: MessageStore, sender: User, request: dict[str, Any],
                  client: str = INTERNAL_CLIENT) -> Draft:
    """A draft from a submitted request (Zulip's form fields) sent by ``client``; MessageError naming the
    problem."""
    for name in ("type", "to", "content"):
        if request.get(name) is None:
            raise missing(name)
    kind = TYPES.get(request["type"]) if isinstance(request["type"], str) else None
    content = request["content"]
    if kind is None:
        raise MessageError("Invalid 'type' argument: must be 'stream', 'channel', 'direct' or 'private'")
    if not isinstance(content, str) or not content.strip():
        raise MessageError("Message must not be empty")
    if len(content) > MAX_CONTENT:
        raise MessageError(f"Message is longer than {MAX_CONTENT} characters")
    echo = {name: _echo_field(request, name) for name in ("queue_id", "local_id")}
    if echo["queue_id"] is not None and echo["local_id"] is None:
        raise missing("local_id")
    draft = (_stream_draft(store, sender, request, content) if kind == "stream"
             else _private_draft(store, sender, request, content))
    return dataclasses.replace(draft, client=client, sender_queue_id=echo["queue_id"], local_id=echo["local_id"])


def _echo_field(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_ECHO_CHARS):
        raise MessageError(f"Invalid '{name}' argument: a string of at most {MAX_ECHO_CHARS} characters")
    return value


def _private_draft(store: MessageStore, sender: User, request: dict[str, Any], content: str) -> Draft:
    to = _recipients(request["to"])
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


def _stream_draft(store: MessageStore, sender: User, request: dict[str, Any], content: str) -> Draft:
    stream = _stream(store, request["to"])
    topic = request.get("topic", request.get("subject"))
    if topic is None:
        raise missing("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise MessageError("Invalid 'topic' argument: a stream message needs a topic")
    if len(topic) > MAX_TOPIC:
        raise MessageError(f"Topic is longer than {MAX_TOPIC} characters")
    return Draft(sender, "stream", stream, [], topic.strip(), content)


def _stream(store: MessageStore, to: Any) -> Stream:
    """The stream ``to`` names: its name or its id, as such, in a JSON string, or in a JSON list of one."""
    if isinstance(to, str) and (to.strip()[:1] in ("[", "{", '"') or to.strip().isdigit()):
        try:
            to = codec.decode(to)
        except EventEncodingError as e:
            raise MessageError(f"Invalid 'to' argument: {e}") from None
    if isinstance(to, list) and len(to) == 1:
        to = to[0]
    if is_id(to):  # checked first: a larger integer cannot even be looked up in SQLite
        stream = store.get_stream_by_id(to)
        if stream is None:
            raise MessageError(f"Channel with ID '{to}' does not exist", "STREAM_DOES_NOT_EXIST", stream_id=to)
        return stream
    if not isinstance(to, str) or not to.strip():
        raise MessageError("Invalid 'to' argument: a stream message goes to one stream, by name or id")
    stream = store.get_stream(to)
    if stream is None:
        name = excerpt(to)
        raise MessageError(f"Channel '{name}' does not exist", "STREAM_DOES_NOT_EXIST", stream=name)
    return stream


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
    return send_batch(broker, store, [(draft, request_id)])[0]


def send_batch(broker: Broker, store: MessageStore, drafts: Sequence[tuple[Draft, str | None]],
               confirmed: Callable[[list[StoredMessage]], None] | None = None) -> list[StoredMessage]:
    """``send`` for many drafts (each with its request id) at the cost of about one: rendered, stored in one
    transaction, their events published with pipelined confirms, then marked delivered in one transaction.

    Returns once every event is confirmed by the broker (the senders may then be answered). ``confirmed`` gets
    the messages as soon as they are, before they are marked delivered: the senders are answered a commit sooner,
    and a worker killed before the mark only makes a redelivered request send its event again, which the event
    server drops. Ids follow the order of ``drafts``, and the events go out in the order of the ids: each client
    queue gets them in id order (a request stored before, whose event a killed worker may or may not have sent,
    comes in its place; the event server drops a message event its queue already had).
    """
    participants: dict[tuple[int, bytes], set[int]] = {}  # a topic's senders earlier in this batch
    new_messages = []
    for draft, request_id in drafts:
        earlier = participants.setdefault(_topic_key(draft), set()) if draft.stream is not None else set()
        new_messages.append(_new_message(store, draft, request_id, earlier))
        earlier.add(draft.sender.id)
    messages = store.store_many(new_messages)
    undelivered = sorted((m.id, i) for i, m in enumerate(messages) if not m.delivered)
    send_events(broker, [_event(messages[i], drafts[i][0]) for _, i in undelivered])
    if confirmed is not None:
        confirmed(messages)
    if undelivered:
        store.mark_delivered(*(message_id for message_id, _ in undelivered))
    return messages


def _new_message(store: MessageStore, draft: Draft, request_id: str | None, earlier_senders: Set[int]
                 ) -> NewMessage:
    """The draft rendered, with its recipients and their flags; ``earlier_senders`` are senders to its topic not
    stored yet (earlier in the batch), whom ``@**topic**`` mentions too."""
    rendered = render_content(store, draft.content)
    if draft.stream is not None:
        recipient_ids = store.subscribers(draft.stream.id)
        display: Any = draft.stream.name
    else:
        recipient_ids = [u.id for u in draft.recipients]
        display = [{"id": u.id, "email": u.email, "full_name": u.full_name} for u in draft.recipients]
    if draft.sender.id not in recipient_ids:
        recipient_ids.append(draft.sender.id)
    participants = _topic_participants(store, draft, rendered) | earlier_senders
    flags = {uid: (["read"] if uid == draft.sender.id else []) + mention_flags(uid, rendered, participants)
             for uid in recipient_ids}
    return NewMessage(request_id=request_id, sender_id=draft.sender.id, type=draft.type, stream=draft.stream,
                      display_recipient=display, subject=draft.subject, content=draft.content,
                      rendered_content=rendered.html, flags=flags, client=draft.client)


def _event(message: StoredMessage, draft: Draft) -> tuple[dict[str, Any], list[Recipient]]:
    """The message event of a stored message, and its recipients with their flags."""
    event: dict[str, Any] = {"type": "message", "message": message.event_message()}
    if draft.sender_queue_id is not None:  # Tornado gives local_id to that queue alone (clients.client_view)
        event.update(sender_queue_id=draft.sender_queue_id, local_id=draft.local_id)
    return event, [{"id": uid, "flags": f} for uid, f in message.flags.items()]


def _topic_key(draft: Draft) -> tuple[int, bytes]:
    """A stream topic as the store compares topics: SQLite's NOCASE folds ASCII letters only, as ``bytes.lower``."""
    assert draft.stream is not None
    return draft.stream.id, draft.subject.encode().lower()


def render_content(store: MessageStore, content: str) -> Rendered:
    """A message's Markdown rendered, its mentions and stream links resolved in ``store``: sent or edited."""
    return render(content, functools.partial(_find_user, store), functools.partial(_find_stream, store))


def mention_flags(user_id: int, rendered: Rendered, topic_participants: Set[int] = frozenset()) -> list[str]:
    """A recipient's mention flags, as Zulip sets them (API feature level 224 on).

    ``@**all**`` and the other channel wildcards flag every recipient;
    ``@**topic**`` flags those who have sent to the topic. ``wildcard_mentioned``
    is either, for clients older than the two flags.
    """
    flags = ["mentioned"] if user_id in rendered.mentioned_user_ids else []
    stream_wildcard = rendered.mentions_stream_wildcard
    topic_wildcard = rendered.mentions_topic_wildcard and user_id in topic_participants
    if stream_wildcard:
        flags.append("stream_wildcard_mentioned")
    if topic_wildcard:
        flags.append("topic_wildcard_mentioned")
    if stream_wildcard or topic_wildcard:
        flags.append("wildcard_mentioned")
    return flags


def _topic_participants(store: MessageStore, draft: Draft, rendered: Rendered) -> Set[int]:
    """Whom ``@**topic**`` mentions: the topic's senders, this one included (none outside a stream)."""
    if not rendered.mentions_topic_wildcard or draft.stream is None:
        return frozenset()
    return store.topic_participants(draft.stream.id, draft.subject) | {draft.sender.id}


def _find_user(store: MessageStore, full_name: str) -> tuple[int, str] | None:
    user = store.users.get_by_full_name(full_name)
    return (user.id, user.full_name) if user else None


def _find_stream(store: MessageStore, name: str) -> tuple[int, str] | None:
    stream = store.get_stream(name)
    return (stream.id, stream.name) if stream else None
