"""``message_actions``: flags, edits, deletes and reactions that clients submitted through the Tornado server.

Each request (``eventbus.message_actions.MessageAction``) is checked against
the store (a message is the user's if they received it; only its sender edits
or deletes it), made once per request id (``MessageStore`` records each
request's outcome: a redelivered request changes nothing again, and delivers
its events if they were not yet), and told with Zulip's events to whom Zulip
tells it: ``update_message_flags`` to the user, ``update_message`` (with each
recipient's new flags), ``delete_message`` and ``reaction`` to everyone who
received the message. An edit's content is rendered here, by the same
Markdown renderer as a sent message, and its mention flags recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventbus.contracts import MESSAGE_ACTIONS
from eventbus.message_actions import MessageAction, Op
from eventbus.messages import ActionError, MessageStore, Outcome, StoredMessage, is_me_message
from eventbus.processors.markdown_inline import EMOJI_CHARACTERS, emoji_code
from eventbus.processors.message_send import MAX_CONTENT, MAX_TOPIC, mention_flags, render_content
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, PermanentError, QueueProcessingWorker
from eventbus.tornado_events import send_event
from eventbus.tornado_events.notify import Recipient
from eventbus.users import User

logger = logging.getLogger(__name__)

#: What an edit to empty content leaves, as in Zulip (an edit never makes a message that cannot be shown).
DELETED_CONTENT = "(deleted)"


@dataclass
class Told:
    """A processed action's events (each with its recipients) and the answer's fields besides result and msg."""

    notices: list[tuple[dict[str, Any], list[Recipient]]] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)


@assign_queue(MESSAGE_ACTIONS, tries=5, retry_delay=0.5)
class MessageActionsWorker(QueueProcessingWorker):
    """Makes a submitted change to messages, tells whom it concerns, then answers on the request's return queue."""

    def before_start(self) -> None:
        self.store = MessageStore(self.broker.settings.database)

    def consume(self, event: Event) -> None:
        request_id, user_id = event.get("request_id"), event.get("user_id")
        if not isinstance(request_id, str) or isinstance(user_id, bool) or not isinstance(user_id, int):
            raise PermanentError(f"a {MESSAGE_ACTIONS} event needs a 'request_id' and an integer 'user_id'")
        try:
            action = MessageAction.from_event(event.get("request"))
            response = self.process(request_id, user_id, action)
        except ActionError as e:
            response = {"result": "error", "msg": str(e), "code": e.code}
        except ValueError as e:  # ActionError is one too: caught first
            raise PermanentError(str(e)) from None
        if event.get("return_queue"):
            tags = {k: event[k] for k in ("server_id", "socket_id", "req_id") if k in event}
            self.broker.publish(event["return_queue"], {"request_id": request_id, **tags, "response": response})

    def process(self, request_id: str, user_id: int, action: MessageAction) -> dict[str, Any]:
        """Make ``action`` of user ``user_id`` (once), deliver its events (once); the success answer."""
        user = self.store.users.get(user_id)
        if user is None or not user.is_active:
            raise ActionError("Unknown user")
        make, tell = ACTIONS[action.op]
        outcome = make(self.store, user, action, request_id)
        told = tell(outcome, user, action)
        if not outcome.delivered:
            for event, users in told.notices:
                send_event(self.broker, event, users)
            self.store.mark_action_delivered(request_id)
        return {"result": "success", "msg": "", **told.answer}


# -- each action: make it (checked, once), then tell it -----------------------------------------------


def own_message(store: MessageStore, user: User, message_id: int | None, *, sent: str = "") -> StoredMessage:
    """The message if the user received it (Zulip's "Invalid message(s)" if not); with ``sent`` (what they
    want to do), only if they sent it too."""
    message = store.get(message_id) if message_id is not None else None
    if message is None or user.id not in message.flags:
        raise ActionError("Invalid message(s)")
    if sent and message.sender_id != user.id:
        raise ActionError(f"You don't have permission to {sent} this message")
    return message


def make_flags(store: MessageStore, user: User, action: MessageAction, request_id: str) -> Outcome:
    return store.update_flags(request_id, user.id, action.messages, action.flag, action.add)


def tell_flags(outcome: Outcome, user: User, action: MessageAction) -> Told:
    op = "add" if action.add else "remove"
    event = {"type": "update_message_flags", "op": op, "operation": op, "flag": action.flag,
             "messages": outcome.data["messages"], "all": False}
    answer: dict[str, Any] = {"messages": list(action.messages)}
    if "details" in outcome.data:  # marked unread: what the client needs for its unread counts
        event["message_details"] = outcome.data["details"]
        answer["ignored_because_not_subscribed_channels"] = outcome.data["skipped_streams"]
    return Told([(event, [user.id])], answer)


def make_all_read(store: MessageStore, user: User, action: MessageAction, request_id: str) -> Outcome:
    return store.mark_all_as_read(request_id, user.id)


def tell_all_read(outcome: Outcome, user: User, action: MessageAction) -> Told:
    # As Zulip: no ids (there may be thousands), "all" says it; the client marks everything it has read.
    event = {"type": "update_message_flags", "op": "add", "operation": "add", "flag": "read", "messages": [],
             "all": True}
    return Told([(event, [user.id])], {"complete": True})


def make_edit(store: MessageStore, user: User, action: MessageAction, request_id: str) -> Outcome:
    message = own_message(store, user, action.message_id, sent="edit")
    content, topic, rendered, flags = action.content, action.topic, None, {}
    if topic is not None:
        topic = topic.strip()
        if message.type != "stream":
            raise ActionError("Direct messages cannot have topics.")
        if not topic:
            raise ActionError("Topic can't be empty")
        if len(topic) > MAX_TOPIC:
            raise ActionError(f"Topic is longer than {MAX_TOPIC} characters")
    if content is not None:
        content = content if content.strip() else DELETED_CONTENT
        if len(content) > MAX_CONTENT:
            raise ActionError(f"Message is longer than {MAX_CONTENT} characters")
        rendered = render_content(store, content)
        participants = (store.topic_participants(message.stream_id, topic or message.subject)
                        if rendered.mentions_topic_wildcard and message.stream_id is not None else set())
        flags = {uid: mention_flags(uid, rendered, participants) for uid in message.flags}
    return store.edit(request_id, message.id, content=content, rendered_content=rendered.html if rendered else None,
                      subject=topic, mention_flags=flags)


def tell_edit(outcome: Outcome, user: User, action: MessageAction) -> Told:
    data = outcome.data
    event: dict[str, Any] = {"type": "update_message", "user_id": data["sender_id"], "rendering_only": False,
                             "message_id": data["message_id"], "message_ids": [data["message_id"]],
                             "edit_timestamp": int(data["edit_timestamp"])}
    if data["type"] == "stream":
        event.update(stream_id=data["stream_id"], stream_name=data["stream_name"])
    if action.content is not None:
        event.update({name: data[name] for name in ("orig_content", "orig_rendered_content", "content",
                                                    "rendered_content")})
        event["is_me_message"] = is_me_message(data["content"])
    if action.topic is not None:
        event.update(orig_subject=data["orig_subject"], subject=data["subject"], topic_links=[],
                     propagate_mode="change_one")
    return Told([(event, [{"id": uid, "flags": flags} for uid, flags in data["flags"]])])


def make_delete(store: MessageStore, user: User, action: MessageAction, request_id: str) -> Outcome:
    message = own_message(store, user, action.message_id, sent="delete")
    return store.delete(request_id, message.id)


def tell_delete(outcome: Outcome, user: User, action: MessageAction) -> Told:
    data = outcome.data
    event: dict[str, Any] = {"type": "delete_message", "message_id": data["message_id"], "message_type": data["type"]}
    if data["type"] == "stream":
        event.update(stream_id=data["stream_id"], topic=data["topic"])
    return Told([(event, data["users"])])


def make_reaction(store: MessageStore, user: User, action: MessageAction, request_id: str) -> Outcome:
    character = EMOJI_CHARACTERS.get(action.emoji_name)
    if character is None:
        raise ActionError(f"Emoji '{action.emoji_name[:100]}' does not exist")
    if action.emoji_code is not None and action.emoji_code != emoji_code(character):
        raise ActionError("Invalid emoji code")
    reaction = {"emoji_name": action.emoji_name, "emoji_code": emoji_code(character),
                "reaction_type": action.reaction_type}
    return store.react(request_id, own_message(store, user, action.message_id).id, user.id, reaction,
                       action.op is Op.ADD_REACTION)


def tell_reaction(outcome: Outcome, user: User, action: MessageAction) -> Told:
    character = EMOJI_CHARACTERS[action.emoji_name]
    event = {"type": "reaction", "op": "add" if action.op is Op.ADD_REACTION else "remove", "user_id": user.id,
             "user": {"user_id": user.id, "email": user.email, "full_name": user.full_name},
             "message_id": action.message_id, "emoji_name": action.emoji_name, "emoji_code": emoji_code(character),
             "reaction_type": action.reaction_type}
    return Told([(event, outcome.data["users"])])


Make = Callable[[MessageStore, User, MessageAction, str], Outcome]
Tell = Callable[[Outcome, User, MessageAction], Told]
#: Each operation: how it is made, and how it is told.
ACTIONS: dict[Op, tuple[Make, Tell]] = {
    Op.UPDATE_FLAGS: (make_flags, tell_flags),
    Op.MARK_ALL_AS_READ: (make_all_read, tell_all_read),
    Op.EDIT: (make_edit, tell_edit),
    Op.DELETE: (make_delete, tell_delete),
    Op.ADD_REACTION: (make_reaction, tell_reaction),
    Op.REMOVE_REACTION: (make_reaction, tell_reaction),
}
