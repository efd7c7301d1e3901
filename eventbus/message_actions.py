"""The ``message_actions`` queue's contract: changes a client asks for to messages it has.

Flags (``update_message_flags``, ``mark_all_as_read``), edits
(``update_message``), deletes (``delete_message``) and reactions
(``add_reaction``, ``remove_reaction``) are taken by the Tornado server,
checked for their shape here (``MessageAction.check``: Zulip's errors for a
flag or an operation that does not exist), and submitted to the
``message_actions`` processor, which checks them against the store (the
message, its sender, its reactions), makes the change once per request and
sends the events. A submission is the event server's envelope
(``tornado_events.submissions``) around ``MessageAction.event()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from eventbus.contracts import MESSAGE_ACTIONS
from eventbus.messages import ActionError
from eventbus.validation import excerpt, is_id

#: The flags a user sets themselves (Zulip's editable flags); the others follow from a message's content.
EDITABLE_FLAGS = frozenset({"read", "starred", "collapsed"})
#: Flags Zulip knows that a user cannot set (``Flag not editable``).
OTHER_FLAGS = frozenset({"mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned", "wildcard_mentioned",
                         "has_alert_word", "historical", "is_private", "active_mobile_push_notification"})
#: The one kind of emoji here: no custom (realm) emoji exist.
UNICODE_EMOJI = "unicode_emoji"
#: Zulip's topic moves: only the one message is here.
PROPAGATE_MODES = ("change_one",)


class Op(StrEnum):
    UPDATE_FLAGS = "update_message_flags"
    MARK_ALL_AS_READ = "mark_all_as_read"
    EDIT = "update_message"
    DELETE = "delete_message"
    ADD_REACTION = "add_reaction"
    REMOVE_REACTION = "remove_reaction"


@dataclass(frozen=True)
class MessageAction:
    """One change a user asks for; which fields mean something depends on ``op``."""

    op: Op
    #: The message edited, deleted or reacted to.
    message_id: int | None = None
    #: Flags: the messages, the flag, and whether it is added.
    messages: tuple[int, ...] = ()
    flag: str = ""
    add: bool = True
    #: An edit: the new content and/or topic (None: unchanged).
    content: str | None = None
    topic: str | None = None
    #: A reaction: the emoji by name, and optionally its code (which must be the name's).
    emoji_name: str = ""
    emoji_code: str | None = None
    reaction_type: str = UNICODE_EMOJI

    def check(self) -> MessageAction:
        """This action, if Zulip would take its shape; ActionError with Zulip's message if not."""
        if self.op is Op.UPDATE_FLAGS:
            if self.flag in OTHER_FLAGS:
                raise ActionError(f"Flag not editable: '{self.flag}'")
            if self.flag not in EDITABLE_FLAGS:
                raise ActionError(f"Invalid flag: '{excerpt(self.flag)}'")
        if self.op in (Op.EDIT, Op.DELETE, Op.ADD_REACTION, Op.REMOVE_REACTION) and not is_id(self.message_id):
            raise ActionError("Invalid message(s)")
        if self.op is Op.EDIT and self.content is None and self.topic is None:
            raise ActionError("Nothing to change")
        if self.op in (Op.ADD_REACTION, Op.REMOVE_REACTION) and self.reaction_type != UNICODE_EMOJI:
            raise ActionError(f"Invalid 'reaction_type' argument: only '{UNICODE_EMOJI}' emoji exist here")
        return self

    def event(self) -> dict[str, Any]:
        """The action as the ``request`` of a submission."""
        return {**dataclasses.asdict(self), "messages": list(self.messages)}

    @classmethod
    def from_event(cls, request: Any) -> MessageAction:
        """The action a submission's ``request`` holds; ValueError if it is not one (ActionError: as ``check``)."""
        if not isinstance(request, dict) or set(request) - FIELDS:
            raise ValueError(f"a {MESSAGE_ACTIONS} request is an object of {', '.join(sorted(FIELDS))}")
        try:
            messages = tuple(request.get("messages", ()))
            action = cls(**{**request, "op": Op(str(request.get("op"))), "messages": messages})
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a {MESSAGE_ACTIONS} request: {e}") from None
        for name, kinds in TYPES.items():
            value = getattr(action, name)
            if isinstance(value, bool) != (kinds == (bool,)) or not isinstance(value, kinds):
                raise ValueError(f"a {MESSAGE_ACTIONS} request's {name!r} is {type(value).__name__}")
        if not all(is_id(i) for i in action.messages):
            raise ValueError(f"a {MESSAGE_ACTIONS} request's 'messages' are message ids")
        return action.check()


FIELDS = frozenset(f.name for f in dataclasses.fields(MessageAction))
#: What each field may hold in a submission (``from_event`` checks them: the event crossed a queue).
TYPES: dict[str, tuple[type, ...]] = {
    "message_id": (int, type(None)), "flag": (str,), "add": (bool,), "content": (str, type(None)),
    "topic": (str, type(None)), "emoji_name": (str,), "emoji_code": (str, type(None)), "reaction_type": (str,)}
