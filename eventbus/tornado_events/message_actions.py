"""Changes to messages, as Zulip's API takes them: flags, edits, deletes and reactions.

- ``POST /api/v1/messages/flags`` (``messages``, ``op`` add or remove,
  ``flag``) and ``POST /api/v1/mark_all_as_read``;
- ``PATCH`` and ``DELETE /api/v1/messages/{id}`` (an edit's ``content``
  and/or ``topic``; only the sender edits or deletes);
- ``POST`` and ``DELETE /api/v1/messages/{id}/reactions`` (``emoji_name``,
  a unicode emoji by name).

The handlers check each request's shape (an error names the parameter) and
submit it to the ``message_actions`` processor (``eventbus.message_actions``
is the contract), which checks it against the store, makes the change and
sends the events; its answer, or its error with Zulip's code, is the
request's. Nothing here touches the store: the IOLoop only waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventbus import codec
from eventbus.contracts import MESSAGE_ACTIONS
from eventbus.message_actions import PROPAGATE_MODES, UNICODE_EMOJI, MessageAction, Op
from eventbus.messages import MAX_MESSAGES_PER_REQUEST, ActionError
from eventbus.tornado_events.handlers import (
    ApiError,
    BaseHandler,
    bad_request,
    client_name,
    ignored_parameters,
    processor_answer,
)
from eventbus.tornado_events.submissions import Submissions
from eventbus.validation import excerpt, is_id

#: Zulip's flag operations.
FLAG_OPS = ("add", "remove")
#: An emoji name or code longer than this names none (the longest standard name has 60-odd characters).
MAX_EMOJI_CHARS = 100


class MessageActionHandler(BaseHandler):
    """A handler that submits a ``MessageAction`` to the message_actions processor: handed ``Submissions``."""

    def initialize(self, submissions: Submissions, **base: Any) -> None:
        super().initialize(**base)
        self.submissions = submissions

    async def act(self, action: MessageAction, known: Iterable[str]) -> None:
        """Submit ``action`` (checked first: Zulip's error at once) and answer as its processor does, naming the
        request's parameters other than ``known`` as ignored."""
        try:
            action.check()
        except ActionError as e:
            raise ApiError(400, e.code, str(e)) from None
        response = await self.submissions.ask(self.user, action.event(), MESSAGE_ACTIONS,
                                              client=client_name(self))
        self.success(**processor_answer(response, "Nothing was changed"), **ignored_parameters(self, known))


class MessageFlagsHandler(MessageActionHandler):
    """POST /api/v1/messages/flags: add or remove a flag (read, starred, collapsed) on some of the user's messages."""

    async def post(self) -> None:
        messages = self.required_arg("messages", parse_message_ids)
        op, flag = self.required_arg("op"), self.required_arg("flag")
        if op not in FLAG_OPS:
            raise bad_request(f"Invalid message flag operation: '{excerpt(op)}'")
        await self.act(MessageAction(Op.UPDATE_FLAGS, messages=messages, flag=flag, add=op == "add"),
                       ("messages", "op", "flag"))


class MarkAllAsReadHandler(MessageActionHandler):
    """POST /api/v1/mark_all_as_read: every unread message of the user's read."""

    async def post(self) -> None:
        await self.act(MessageAction(Op.MARK_ALL_AS_READ), ())


class MessageHandler(MessageActionHandler):
    """PATCH /api/v1/messages/{id}: edit its content and/or topic; DELETE: delete it. The sender's only."""

    #: zulip-js sends the message id again as a parameter; moving a topic tells nobody here, so Zulip's
    #: ``send_notification_to_*`` are named as ignored when given.
    EDIT_FIELDS = ("content", "topic", "subject", "propagate_mode", "message_id")

    async def patch(self, message_id: str) -> None:
        topic = self.get_argument("topic", None)
        if topic is None:
            topic = self.get_argument("subject", None)  # Zulip's older name
        if self.get_argument("stream_id", None) is not None:
            raise bad_request("Invalid 'stream_id' argument: moving messages to another channel is not supported")
        mode = self.arg("propagate_mode", str, PROPAGATE_MODES[0])
        if mode not in PROPAGATE_MODES:
            raise bad_request(f"Invalid 'propagate_mode' argument: only {', '.join(PROPAGATE_MODES)} is supported")
        action = MessageAction(Op.EDIT, message_id=int(message_id), content=self.get_argument("content", None),
                               topic=topic)
        await self.act(action, self.EDIT_FIELDS)

    async def delete(self, message_id: str) -> None:
        await self.act(MessageAction(Op.DELETE, message_id=int(message_id)), ("message_id",))


class ReactionsHandler(MessageActionHandler):
    """POST /api/v1/messages/{id}/reactions: react with a unicode emoji, by name; DELETE: take it back."""

    FIELDS = ("emoji_name", "emoji_code", "reaction_type", "message_id")

    async def post(self, message_id: str) -> None:
        await self.act(self.reaction(Op.ADD_REACTION, message_id), self.FIELDS)

    async def delete(self, message_id: str) -> None:
        await self.act(self.reaction(Op.REMOVE_REACTION, message_id), self.FIELDS)

    def reaction(self, op: Op, message_id: str) -> MessageAction:
        name = self.required_arg("emoji_name", parse_emoji)
        return MessageAction(op, message_id=int(message_id), emoji_name=name,
                             emoji_code=self.arg("emoji_code", parse_emoji, None),
                             reaction_type=self.arg("reaction_type", parse_emoji, UNICODE_EMOJI))


def parse_message_ids(raw: str) -> tuple[int, ...]:
    """``messages``: a JSON list of message ids, at most as many as a history request may fetch."""
    ids = codec.decode(raw)
    if not (isinstance(ids, list) and len(ids) <= MAX_MESSAGES_PER_REQUEST and all(is_id(i) for i in ids)):
        raise ValueError(raw)
    return tuple(ids)


def parse_emoji(raw: str) -> str:
    if not raw or len(raw) > MAX_EMOJI_CHARS:
        raise ValueError(raw)
    return raw
