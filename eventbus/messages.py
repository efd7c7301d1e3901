"""The message store: streams, their subscribers, messages and who received them. SQLite or PostgreSQL.

It lives in the database of every store (``EVENTBUS_DATABASE``; its tables
are ``eventbus.schema``'s), queried with SQLAlchemy Core, one set of queries
for both engines. A message is stored with the id of the request that sent
it, once: storing the same request again returns the message already
stored, which is how a redelivered ``message_sender`` event never makes a
second message. The check and the insert are one write transaction (under
the database's write lock), so two workers storing the same request at once,
on one machine or two, make one message, and both get it.

Every message has a recipient, as in Zulip: a stream, or the set of users of
a private conversation; its id is the message's ``recipient_id``. The history
(``history``) reads a user's messages through a narrow (``eventbus.narrow``)
around an anchor, with indexes for each narrow: a stream's topic by
``(recipient_id, subject, id)`` (the subject without case: SQLite's NOCASE,
PostgreSQL's ``lower``), a user's unread, starred and mentioned messages by
partial indexes on ``(user_id, message_id)``, and the words of every message
in a full-text index the database keeps in step with the table: SQLite's
FTS5 table, PostgreSQL's ``tsvector`` column under a GIN index
(``eventbus.migrations``). Search highlights are made here, in Python, alike.

Message objects, in events and in the history, are built here, once
(``StoredMessage.event_message`` and ``history_message``), with every field
Zulip's API describes for them, their reactions (a table of their own,
oldest first) too.

Changes to messages a client asks for (flags, edits, deletes, reactions:
the ``message_actions`` processor) are made once per request: each is made
in one transaction with its outcome recorded by request id
(``message_actions``), so a redelivered request changes nothing again and
finds what it changed, and whether its events went out (``Outcome``).
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Integer,
    Row,
    RowMapping,
    Select,
    Text,
    TextClause,
    bindparam,
    case,
    column,
    delete,
    exists,
    func,
    literal,
    literal_column,
    not_,
    select,
    table,
    text,
    update,
)

from eventbus import codec, schema
from eventbus.channels import ChannelInfo
from eventbus.database import Database, Store, ci_equal, explain, ordered_join
from eventbus.migrations import FLAG_TESTS, TEXT_SEARCH_CONFIG
from eventbus.narrow import NarrowError, NarrowTerm, fts_query, highlight, highlight_text, search_words, tsquery
from eventbus.schema import recipient_key
from eventbus.users import UserStore, gravatar_url
from eventbus.validation import excerpt

#: The flags a message's content sets (Zulip's mention flags): an edit recomputes them.
MENTION_FLAGS = frozenset({"mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned", "wildcard_mentioned"})

#: Zulip's anchor for "newest": larger than any message id (its API answers it as the anchor, too).
LARGER_THAN_MAX_MESSAGE_ID = 10_000_000_000_000_000
#: The named anchors, as message ids (``first_unread`` is looked up).
ANCHORS = {"newest": LARGER_THAN_MAX_MESSAGE_ID, "oldest": 0}
#: At most this many messages per history request, as Zulip caps it.
MAX_MESSAGES_PER_REQUEST = 5000
#: Zulip's longest stream name (``max_stream_name_length``).
MAX_STREAM_NAME_CHARS = 60
#: The realm every sender is in: one organization, served at the root of its domain (Zulip's ``string_id``
#: of such a realm is the empty string).
REALM_STR = ""


def is_me_message(content: str) -> bool:
    """Whether a message is a ``/me`` status message, as Zulip decides: one line starting ``/me ``."""
    return content.startswith("/me ") and "\n" not in content


def check_stream_name(name: str) -> str:
    """A stream's name as given, stripped; ValueError saying why it cannot be one."""
    name = name.strip()
    if not name or len(name) > MAX_STREAM_NAME_CHARS or any(c in name for c in "*`\n\x00"):
        raise ValueError(f"invalid stream name {excerpt(name)!r}: 1 to {MAX_STREAM_NAME_CHARS} characters, "
                         "no '*', '`', newline or NUL")
    return name


@dataclass(frozen=True)
class Stream:
    id: int
    name: str
    email_token: str
    date_created: float = 0.0


@dataclass(frozen=True)
class UnreadMessage:
    """An unread message, as register's ``unread_msgs`` groups them: its stream and topic, or the users of its
    private conversation (sorted ids, the reader included); and the reader's flags."""

    id: int
    stream_id: int | None
    topic: str
    private_users: tuple[int, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class NewMessage:
    """A message to store: what ``MessageStore.store`` takes, for a batch of them (``store_many``)."""

    request_id: str | None
    sender_id: int
    type: str
    stream: Stream | None
    display_recipient: Any  # the stream's name, or the private recipients as [{"id", "email", "full_name"}]
    subject: str
    content: str
    rendered_content: str
    flags: Mapping[int, list[str]]  # recipient user id -> flags
    client: str = ""  # what sent it: Zulip's client string ("website", "ZulipPython", ...)


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored, with what a message event needs."""

    id: int
    request_id: str | None
    sender_id: int
    sender_email: str
    sender_full_name: str
    type: str
    display_recipient: Any  # the stream's name, or the private recipients as [{"id", "email", "full_name", ...}]
    subject: str
    content: str
    rendered_content: str
    timestamp: float
    delivered: bool
    flags: Mapping[int, list[str]]  # recipient user id -> flags
    recipient_id: int = 0
    stream_id: int | None = None
    client: str = ""
    last_edit_timestamp: float | None = None
    #: Zulip's reaction objects (emoji_name, emoji_code, reaction_type, user_id), oldest first.
    reactions: tuple[dict[str, Any], ...] = ()

    def event_message(self) -> dict[str, Any]:
        """The ``message`` of a message event, with both contents (Tornado picks one per client)."""
        return {**self._fields(), "avatar_url": gravatar_url(self.sender_email), "content": self.content,
                "rendered_content": self.rendered_content}

    def history_message(self, flags: list[str], apply_markdown: bool = True, client_gravatar: bool = True,
                        search: Sequence[str] = ()) -> dict[str, Any]:
        """The message as GET /messages shows it to a user with these ``flags``; with the ``search`` words,
        its matches highlighted in ``match_content`` and ``match_subject``, as Zulip adds them."""
        content, content_type = ((self.rendered_content, "text/html") if apply_markdown
                                 else (self.content, "text/x-markdown"))
        message = {**self._fields(), "avatar_url": None if client_gravatar else gravatar_url(self.sender_email),
                   "content": content, "content_type": content_type, "flags": flags}
        if search:
            message["match_content"] = highlight(self.rendered_content, search)
            message["match_subject"] = highlight_text(self.subject, search)
        return message

    def _fields(self) -> dict[str, Any]:
        """What every message object holds, whoever reads it."""
        display = self.display_recipient
        if isinstance(display, list):  # no user is a mirror dummy here; stored before the field existed too
            display = [{**user, "is_mirror_dummy": False} for user in display]
        fields = {
            "id": self.id, "sender_id": self.sender_id, "sender_email": self.sender_email,
            "sender_full_name": self.sender_full_name, "sender_realm_str": REALM_STR, "type": self.type,
            "recipient_id": self.recipient_id, "display_recipient": display, "subject": self.subject,
            "topic_links": [], "timestamp": int(self.timestamp), "client": self.client,
            "is_me_message": is_me_message(self.content), "reactions": list(self.reactions), "submessages": [],
        }
        if self.stream_id is not None:
            fields["stream_id"] = self.stream_id
        if self.last_edit_timestamp is not None:
            fields["last_edit_timestamp"] = int(self.last_edit_timestamp)
        return fields


class ActionError(ValueError):
    """A change to a message that cannot be made, with Zulip's message and error ``code``."""

    def __init__(self, msg: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class Outcome:
    """What a request changed (a JSON object), recorded once, and whether its events were delivered."""

    request_id: str
    data: dict[str, Any]
    delivered: bool


@dataclass(frozen=True)
class HistoryQuery:
    """What GET /messages asks: a narrow, an anchor and how many messages each side, or the ids themselves,
    and how to show them. ``anchor`` is a message id, ``"newest"``, ``"oldest"`` or ``"first_unread"``."""

    narrow: tuple[NarrowTerm, ...] = ()
    anchor: int | str = "newest"
    num_before: int = 0
    num_after: int = 0
    include_anchor: bool = True
    message_ids: tuple[int, ...] | None = None
    apply_markdown: bool = True
    client_gravatar: bool = True



streams, subscriptions, recipients = schema.streams, schema.subscriptions, schema.recipients
user_messages, reactions, message_actions = schema.user_messages, schema.reactions, schema.message_actions
#: The names the history's queries give their tables, which their plans (``explain``) show.
_m, _um, _u = schema.messages.alias("m"), schema.user_messages.alias("um"), schema.users.alias("u")
#: A message's columns and its sender's, for ``_message``.
_MESSAGE_COLUMNS = (_m, _u.c.email, _u.c.full_name)
#: SQLite's full-text index of the messages (made by ``eventbus.migrations``, not a table of the schema): its
#: rowid is the message's id; a MATCH on the column named as the table searches every column.
_fts = table("messages_fts", column("rowid"), column("messages_fts"))
#: PostgreSQL's words of each message (a generated ``tsvector`` column, made by ``eventbus.migrations``).
_m_search_words: ColumnElement[Any] = literal_column(f"{_m.name}.search_words")

#: The statements every message stored and every history read run, built once: SQLAlchemy takes longer to build
#: and key a statement than SQLite takes to run it. Their values are bound at each run.
_MESSAGES_OF_REQUESTS = select(schema.messages.c.request_id, schema.messages.c.id).where(
    schema.messages.c.request_id.in_(bindparam("ids", expanding=True)))
_SENDERS = select(schema.users.c.id, schema.users.c.email, schema.users.c.full_name).where(
    schema.users.c.id.in_(bindparam("ids", expanding=True)))
_RECIPIENT = select(recipients.c.id).where(recipients.c.key == bindparam("key"))
_NEW_RECIPIENT = recipients.insert().returning(recipients.c.id)
_MESSAGE = select(*_MESSAGE_COLUMNS).select_from(_m.join(_u, _u.c.id == _m.c.sender_id)).where(
    _m.c.id == bindparam("id"))
_RECIPIENTS_FLAGS = select(user_messages.c.user_id, user_messages.c.flags).where(
    user_messages.c.message_id == bindparam("id"))
_REACTIONS = select(reactions).where(reactions.c.message_id.in_(bindparam("ids", expanding=True))).order_by(
    reactions.c.reacted_at)

#: A condition of a narrow: an expression, or a flag test (``FLAG_TESTS``, as the partial indexes hold it).
Condition = ColumnElement[bool] | TextClause


class MessageStore(Store):
    """Streams and messages in the database (SQLite or PostgreSQL); safe from any thread and process."""

    def __init__(self, database: Database | Path | str) -> None:
        self.users = UserStore(database)
        super().__init__(database)

    # -- streams ------------------------------------------------------------------

    def create_stream(self, name: str, subscriber_ids: Sequence[int] = ()) -> Stream:
        """The stream ``name`` (created if missing), with these users subscribed too."""
        [stream], _ = self.subscribe([name], subscriber_ids)
        return stream

    def subscribe(self, names: Sequence[str], user_ids: Sequence[int]) -> tuple[list[Stream], dict[int, list[int]]]:
        """Subscribe the users to the streams ``names``, each created if missing, in one transaction: the
        streams, and by stream id the users who were not subscribed before. ValueError for a bad name."""
        names = [check_stream_name(name) for name in names]
        found, added = [], {}
        with self._db(write=True) as db:
            for name in names:
                db.execute(self.database.insert(streams).values(
                    name=name, email_token=secrets.token_hex(8), date_created=time.time()).on_conflict_do_nothing())
                stream = _stream(db.execute(select(streams).where(ci_equal(streams.c.name, name))).one())
                found.append(stream)
                added[stream.id] = [uid for uid in dict.fromkeys(user_ids) if db.execute(
                    self.database.insert(subscriptions).values(stream_id=stream.id, user_id=uid)
                    .on_conflict_do_nothing().returning(subscriptions.c.user_id)).first() is not None]
        return found, added

    def unsubscribe(self, stream_ids: Sequence[int], user_ids: Sequence[int]) -> dict[int, list[int]]:
        """Unsubscribe the users from the streams, in one transaction: by stream id, the users who were subscribed."""
        with self._db(write=True) as db:
            return {stream_id: [uid for uid in dict.fromkeys(user_ids) if db.execute(
                delete(subscriptions).where(subscriptions.c.stream_id == stream_id,
                                            subscriptions.c.user_id == uid)).rowcount]
                for stream_id in dict.fromkeys(stream_ids)}

    def all_streams(self) -> list[Stream]:
        with self._db() as db:
            return [_stream(row) for row in db.execute(select(streams).order_by(*_BY_NAME))]

    def channel_info(self, streams: Sequence[Stream], with_subscribers: bool = False) -> list[ChannelInfo]:
        """What Zulip's channel objects show of ``streams`` (``eventbus.channels``): their first message and
        latest activity, read through the recipient index, and their subscribers if asked for."""
        messages = schema.messages.c
        infos = []
        with self._db() as db:
            for stream in streams:
                first = last = None
                recipient_id = _recipient_id(db, recipient_key(stream.id))
                if recipient_id is not None:
                    first, last = db.execute(select(func.min(messages.id), func.max(messages.id))
                                             .where(messages.recipient_id == recipient_id)).one()
                last_time = (db.scalar(select(messages.timestamp).where(messages.id == last))
                             if last is not None else None)
                subscribers = _subscribers(db, stream.id) if with_subscribers else None
                infos.append(ChannelInfo(stream.id, stream.name, stream.date_created, first, last_time, subscribers))
        return infos

    def received_from(self, user_id: int, stream_id: int) -> bool:
        """Whether the user has a message of the stream (one they were subscribed to, then)."""
        with self._db() as db:
            recipient_id = _recipient_id(db, recipient_key(stream_id))
            return recipient_id is not None and db.execute(
                select(literal(1)).select_from(ordered_join(_m, _um, (_um.c.message_id == _m.c.id)
                                                            & (_um.c.user_id == user_id)))
                .where(_m.c.recipient_id == recipient_id).limit(1)).first() is not None

    def max_message_id(self, user_id: int) -> int:
        """The id of the user's newest message; -1 if they have none (as Zulip answers it)."""
        with self._db() as db:
            newest = db.scalar(select(func.max(user_messages.c.message_id))
                               .where(user_messages.c.user_id == user_id))
        return -1 if newest is None else int(newest)

    def unread(self, user_id: int, limit: int) -> list[UnreadMessage]:
        """The user's newest ``limit`` unread messages, newest first (through the partial index of unread ones)."""
        with self._db() as db:
            rows = db.execute(
                select(_m.c.id, _m.c.type, _m.c.stream_id, _m.c.subject, _m.c.display_recipient, _um.c.flags)
                .select_from(ordered_join(_um, _m, _m.c.id == _um.c.message_id))
                .where(_um.c.user_id == user_id, _flag_test("unread")).order_by(_um.c.message_id.desc())
                .limit(limit)).all()
        return [UnreadMessage(row.id, row.stream_id, row.subject,
                              () if row.type == "stream" else tuple(sorted(
                                  int(u["id"]) for u in codec.decode(row.display_recipient))),
                              tuple(codec.decode(row.flags))) for row in rows]

    def get_stream(self, name: str) -> Stream | None:
        if "\x00" in name:  # no stream's name holds one (check_stream_name), and PostgreSQL refuses to compare it
            return None
        name = name.strip()
        return self._remember(("stream_by_name", name), lambda: self._stream_where(ci_equal(streams.c.name, name)))

    def get_stream_by_id(self, stream_id: int) -> Stream | None:
        return self._remember(("stream", stream_id), lambda: self._stream_where(streams.c.id == stream_id))

    def stream_by_token(self, token: str) -> Stream | None:
        return self._stream_where(streams.c.email_token == token)

    def subscribers(self, stream_id: int) -> list[int]:
        def read() -> tuple[int, ...]:
            with self._db() as db:
                return tuple(_subscribers(db, stream_id))

        return list(self._remember(("subscribers", stream_id), read))

    def subscriptions(self, user_id: int) -> list[Stream]:
        with self._db() as db:
            rows = db.execute(select(streams).join(subscriptions, subscriptions.c.stream_id == streams.c.id)
                              .where(subscriptions.c.user_id == user_id).order_by(*_BY_NAME))
            return [_stream(row) for row in rows]

    def _stream_where(self, condition: ColumnElement[bool]) -> Stream | None:
        with self._db() as db:
            row = db.execute(select(streams).where(condition)).first()
        return _stream(row) if row else None

    # -- messages -----------------------------------------------------------------

    def store(self, message: NewMessage) -> StoredMessage:
        """Store a message for its recipients, once per request id (see ``store_many``)."""
        return self.store_many([message])[0]

    def store_many(self, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store ``messages`` in one transaction, in their order (their ids increase in it), each once per
        request id: a request stored before gives the message stored then (``delivered`` says whether its
        event went out), also when another process stores it at the same moment (the transaction holds the
        write lock from its start). One commit for the lot: a batch pays one fsync."""
        # Keyed by request id, or by position for a message without one; the first of a request in the batch is
        # inserted, and its later ones get it.
        keys = [m.request_id if m.request_id is not None else n for n, m in enumerate(messages)]
        request_ids = [m.request_id for m in messages if m.request_id is not None]
        with self._db(write=True) as db:
            before = ({row.request_id: row.id for row in db.execute(_MESSAGES_OF_REQUESTS, {"ids": request_ids})}
                      if request_ids else {})
            fresh: dict[str | int, NewMessage] = {}
            for key, message in zip(keys, messages, strict=True):
                if key not in before:
                    fresh.setdefault(key, message)
            inserted = dict(zip(fresh, _insert(self.database, db, list(fresh.values())), strict=True))
            return [inserted[key] if key in inserted else self._stored(db, before[key]) for key in keys]

    def mark_delivered(self, *message_ids: int) -> None:
        """Record that the events of these messages went out (a redelivered request does not send them again)."""
        messages = schema.messages
        self.database.change(update(messages).where(messages.c.id.in_(message_ids)).values(delivered=True))

    def topic_participants(self, stream_id: int, topic: str) -> set[int]:
        """Who has sent to this topic (Zulip's topic participants, whom ``@**topic**`` mentions)."""
        messages = schema.messages.c
        with self._db() as db:
            return set(db.scalars(select(messages.sender_id).distinct().where(
                messages.stream_id == stream_id, ci_equal(messages.subject, topic))))

    def get(self, message_id: int) -> StoredMessage | None:
        with self._db() as db:
            return self._load(db, message_id)

    def set_flag(self, user_id: int, message_ids: Sequence[int], flag: str, on: bool) -> list[int]:
        """Add (``on``) or remove ``flag`` on the user's own messages among ``message_ids``; the ids changed."""
        with self._db(write=True) as db:
            return _set_flag(db, user_id, _own_flags(db, user_id, message_ids), flag, on)

    # -- changes to messages, once per request (``message_actions``) --------------------------------

    def update_flags(self, request_id: str, user_id: int, message_ids: Sequence[int], flag: str,
                     on: bool) -> Outcome:
        """Add (``on``) or remove ``flag`` on these messages of the user's: the ids changed (``messages``);
        ActionError if one is not theirs. Marking unread skips the streams the user left, as Zulip does
        (``skipped_streams``), and tells what the unread messages are (``details``, Zulip's message_details)."""
        def change(db: Connection) -> dict[str, Any]:
            own = _own_flags(db, user_id, message_ids)
            if len(own) < len(set(message_ids)):
                raise ActionError("Invalid message(s)")
            outcome: dict[str, Any] = {}
            if flag == "read" and not on:
                left = _left_streams(db, user_id, list(own))
                own = {i: f for i, f in own.items() if i not in left}
                outcome["skipped_streams"] = sorted(set(left.values()))
            outcome["messages"] = _set_flag(db, user_id, own, flag, on)
            if flag == "read" and not on:
                outcome["details"] = {str(i): _unread_details(db, user_id, i, own[i]) for i in outcome["messages"]}
            return outcome

        return self._once(request_id, change)

    def mark_all_as_read(self, request_id: str, user_id: int) -> Outcome:
        """Every unread message of the user's marked read, in one statement (the unread index finds them): "read"
        appended to each one's JSON list of flags as text, the same SQL on either database."""
        flags = user_messages.c.flags
        with_read = case((flags == "[]", '["read"]'),
                         else_=func.substr(flags, 1, func.length(flags) - 1, type_=Text).concat(',"read"]'))

        def change(db: Connection) -> dict[str, Any]:
            result = db.execute(update(user_messages).where(user_messages.c.user_id == user_id,
                                                            text(FLAG_TESTS["unread"])).values(flags=with_read))
            return {"count": result.rowcount}

        return self._once(request_id, change)

    def edit(self, request_id: str, message_id: int, *, content: str | None, rendered_content: str | None,
             subject: str | None, mention_flags: Mapping[int, list[str]]) -> Outcome:
        """A new content (rendered) and/or topic, and each recipient's new mention flags (``MENTION_FLAGS``
        replaced, the others kept): the message before and after, its recipients' flags, when."""
        def change(db: Connection) -> dict[str, Any]:
            before = self._load(db, message_id)
            if before is None:
                raise ActionError("Invalid message(s)")
            now = time.time()
            after = {"content": before.content if content is None else content,
                     "rendered_content": before.rendered_content if rendered_content is None else rendered_content,
                     "subject": before.subject if subject is None else subject}
            db.execute(update(schema.messages).where(schema.messages.c.id == message_id)
                       .values(**after, last_edit_timestamp=now))
            flags = {uid: [f for f in old if f not in MENTION_FLAGS] + list(mention_flags.get(uid, []))
                     if content is not None else old for uid, old in before.flags.items()}
            _write_flags(db, [(uid, message_id, f) for uid, f in flags.items()])
            return {"message_id": message_id, "sender_id": before.sender_id, "type": before.type,
                    "stream_id": before.stream_id, "stream_name": before.display_recipient, "edit_timestamp": now,
                    "orig_content": before.content, "orig_rendered_content": before.rendered_content,
                    "orig_subject": before.subject, **after, "flags": [[u, f] for u, f in flags.items()]}

        return self._once(request_id, change)

    def delete(self, request_id: str, message_id: int) -> Outcome:
        """The message gone, with its reactions and who had it (``users``), whom to tell."""
        def change(db: Connection) -> dict[str, Any]:
            message = self._load(db, message_id)
            if message is None:
                raise ActionError("Invalid message(s)")
            for by_message in (reactions.c.message_id, user_messages.c.message_id, schema.messages.c.id):
                db.execute(delete(by_message.table).where(by_message == message_id))
            return {"message_id": message_id, "type": message.type, "stream_id": message.stream_id,
                    "topic": message.subject, "users": sorted(message.flags)}

        return self._once(request_id, change)

    def react(self, request_id: str, message_id: int, user_id: int, reaction: Mapping[str, str],
              add: bool) -> Outcome:
        """Add or remove the user's ``reaction`` (emoji_name, emoji_code, reaction_type) to a message of theirs;
        the message's recipients (``users``), whom to tell. ActionError: not theirs, already there, not there."""
        key = {"message_id": message_id, "user_id": user_id, "reaction_type": reaction["reaction_type"],
               "emoji_code": reaction["emoji_code"]}

        def change(db: Connection) -> dict[str, Any]:
            users = list(db.scalars(select(user_messages.c.user_id).where(user_messages.c.message_id == message_id)
                                    .order_by(user_messages.c.user_id)))
            if user_id not in users:
                raise ActionError("Invalid message(s)")
            if add:
                changed = db.execute(self.database.insert(reactions).values(
                    **key, emoji_name=reaction["emoji_name"], reacted_at=time.time())
                    .on_conflict_do_nothing().returning(reactions.c.message_id)).first() is not None
            else:
                changed = db.execute(delete(reactions).where(
                    *(reactions.c[name] == value for name, value in key.items()))).rowcount > 0
            if not changed:
                raise (ActionError("Reaction already exists.", "REACTION_ALREADY_EXISTS") if add
                       else ActionError("Reaction doesn't exist.", "REACTION_DOES_NOT_EXIST"))
            return {"users": users}

        return self._once(request_id, change)

    def mark_action_delivered(self, request_id: str) -> None:
        self.database.change(update(message_actions).where(message_actions.c.request_id == request_id)
                             .values(delivered=True))

    def _once(self, request_id: str, change: Callable[[Connection], dict[str, Any]]) -> Outcome:
        """``change`` made in one transaction with its outcome recorded, unless ``request_id`` was processed
        before: then its recorded outcome, changing nothing. An ActionError records nothing. The transaction
        holds the write lock from its start: of two processes making the same request at once, the second
        finds the first's outcome."""
        with self._db(write=True) as db:
            row = db.execute(select(message_actions.c.outcome, message_actions.c.delivered)
                             .where(message_actions.c.request_id == request_id)).first()
            if row is not None:
                return Outcome(request_id, codec.decode(row.outcome), bool(row.delivered))
            outcome = change(db)
            db.execute(message_actions.insert().values(request_id=request_id, outcome=codec.encode(outcome).decode(),
                                                       timestamp=time.time()))
            return Outcome(request_id, outcome, False)

    def recent(self, user_id: int, num_before: int = 50) -> list[dict[str, Any]]:
        """The user's latest ``num_before`` messages, oldest first, as their events carried them, with their flags."""
        with self._db() as db:
            rows = _Narrow(self.database, db, user_id, ()).fetch(None, True, num_before)
            found = _reactions(db, [row["id"] for row in rows if row["reacted"]])
        return [{**_message(row, {}, found).event_message(), "flags": codec.decode(row["own_flags"])}
                for row in rows[::-1]]

    def history(self, user_id: int, query: HistoryQuery) -> dict[str, Any]:
        """GET /messages for ``user_id``: the answer's fields besides ``result`` and ``msg``; NarrowError
        for a term naming a stream or user that does not exist, or a bad message id.

        Only the user's own messages (those they received): streams' history before they subscribed is not
        searched. Each side of the anchor is one query that reads at most as many rows as it returns (an
        index serves the narrow and the order); see ``_Narrow``.
        """
        with self._db() as db:
            narrow = _Narrow(self.database, db, user_id, query.narrow)
            if query.message_ids is not None:
                rows = narrow.fetch("ids", False, len(query.message_ids), ids=list(query.message_ids))
                return {"messages": narrow.objects(rows, query), "history_limited": False}
            anchor = query.anchor
            if anchor == "first_unread":
                first = narrow.fetch("unread", False, 1)
                anchor = first[0]["id"] if first else LARGER_THAN_MAX_MESSAGE_ID
            anchor = ANCHORS[anchor] if isinstance(anchor, str) else anchor
            at_newest, at_oldest = anchor >= LARGER_THAN_MAX_MESSAGE_ID, anchor <= 0
            before = narrow.fetch("before", True, query.num_before, anchor=anchor)[::-1]
            after = narrow.fetch("after", False, query.num_after, anchor=anchor)
            at = (narrow.fetch("at", False, 1, anchor=anchor)
                  if query.include_anchor and not (at_oldest or at_newest) else [])
            return {
                "messages": narrow.objects([*before, *at, *after], query), "anchor": anchor,
                "found_anchor": bool(at), "found_oldest": at_oldest or len(before) < query.num_before,
                "found_newest": at_newest or len(after) < query.num_after, "history_limited": False,
            }

    def explain(self, user_id: int, narrow: Sequence[NarrowTerm]) -> list[str]:
        """How the database reads the newest messages of ``narrow`` (its query plan, a line a step: SQLite's
        ``EXPLAIN QUERY PLAN``, PostgreSQL's ``EXPLAIN``): which index serves each narrow, for the tests and the
        benchmark."""
        with self._db() as db:
            return _Narrow(self.database, db, user_id, narrow).explain()

    def _stored(self, db: Connection, message_id: int) -> StoredMessage:
        """A message this transaction has just found or written."""
        message = self._load(db, message_id)
        assert message is not None, message_id
        return message

    def _load(self, db: Connection, message_id: int) -> StoredMessage | None:
        row = db.execute(_MESSAGE, {"id": message_id}).mappings().first()
        if row is None:
            return None
        flags = {r.user_id: codec.decode(r.flags) for r in db.execute(_RECIPIENTS_FLAGS, {"id": message_id})}
        return _message(row, flags, _reactions(db, [message_id]))


def _insert(database: Database, db: Connection, messages: Sequence[NewMessage]) -> list[StoredMessage]:
    """``messages`` inserted, in their order, as stored: two statements for the lot, and nothing read back (their
    senders and recipients looked up once each). ValueError if a sender does not exist."""
    if not messages:
        return []
    senders = {row["id"]: row for row in db.execute(_SENDERS, {"ids": list({m.sender_id for m in messages})})
               .mappings()}
    if missing := {m.sender_id for m in messages} - senders.keys():
        raise ValueError(f"no user {min(missing)} to send a message")
    keys = [recipient_key(m.stream.id if m.stream is not None else None, (u["id"] for u in m.display_recipient))
            for m in messages]
    recipient_ids = {key: _new_recipient_id(db, key) for key in dict.fromkeys(keys)}
    now = time.time()
    ids = database.insert_rows(db, schema.messages, [{
        "request_id": m.request_id, "sender_id": m.sender_id, "type": m.type,
        "stream_id": m.stream.id if m.stream else None, "display_recipient": codec.encode(m.display_recipient).decode(),
        "subject": m.subject, "content": m.content, "rendered_content": m.rendered_content, "timestamp": now,
        "recipient_id": recipient_ids[key], "client": m.client} for m, key in zip(messages, keys, strict=True)],
        returning="id")
    flags = [{"user_id": uid, "message_id": message_id, "flags": codec.encode(f).decode()}
             for m, message_id in zip(messages, ids, strict=True) for uid, f in m.flags.items()]
    database.insert_rows(db, user_messages, flags)
    return [StoredMessage(
        id=message_id, request_id=m.request_id, sender_id=m.sender_id, sender_email=senders[m.sender_id]["email"],
        sender_full_name=senders[m.sender_id]["full_name"], type=m.type, display_recipient=m.display_recipient,
        subject=m.subject, content=m.content, rendered_content=m.rendered_content, timestamp=now, delivered=False,
        flags=m.flags, recipient_id=recipient_ids[key], stream_id=m.stream.id if m.stream else None, client=m.client,
    ) for m, key, message_id in zip(messages, keys, ids, strict=True)]


class _Narrow:
    """A narrow of one user's messages as SQL: the conditions, and which index drives the query.

    A search on SQLite reads the full-text index's matches in id order; a narrow to a stream, a private
    conversation or a sender (or a search on PostgreSQL, through its GIN index) reads those messages by index,
    newest or oldest first; either checks that the user has each (the user_messages primary key). Any other
    narrow reads the user's own messages by (user_id, message_id) -- through a partial index for is:unread,
    is:starred and is:mentioned -- and checks each message. ``ordered_join`` fixes that order on SQLite (a
    ``CROSS JOIN``, which SQLite never reorders); PostgreSQL's planner chooses by its statistics.

    The query is built once per shape of narrow (``_narrow_select``), its values bound at each run.
    """

    def __init__(self, database: Database, db: Connection, user_id: int, terms: Sequence[NarrowTerm]) -> None:
        self.dialect = database.dialect
        self.db = db
        self.params: dict[str, Any] = {"user_id": user_id}
        self.search: list[str] = []
        shape: list[tuple[str, bool, str]] = []
        by_messages = False
        for n, term in enumerate(terms):
            kind = self._condition(user_id, term, f"term_{n}")
            if kind is not None:
                shape.append((kind, term.negated, f"term_{n}"))
            by_messages |= term.operator in ("channel", "dm", "sender") and not term.negated
        if self.search:
            self.params["search"] = _search_query(self.dialect, self.search)
        self.driver = ("fts" if self.search and not database.is_postgresql else
                       "messages" if by_messages or self.search else "user_messages")
        self.shape = tuple(shape)

    def fetch(self, where: str | None, descending: bool, limit: int, **params: Any) -> Sequence[RowMapping]:
        """At most ``limit`` of the narrow's messages that also meet ``where`` (``_WHERE``; its values in
        ``params``), by id, newest first if ``descending``."""
        if limit <= 0:
            return []
        return self.db.execute(self._select(where, descending),
                               {**self.params, **params, "limit": limit}).mappings().all()

    def explain(self) -> list[str]:
        statement = self._select("before", True).params(**self.params, anchor=LARGER_THAN_MAX_MESSAGE_ID, limit=100)
        return explain(self.db, statement)

    def _select(self, where: str | None, descending: bool) -> Select[Any]:
        return _narrow_select(self.dialect, self.driver, self.shape, bool(self.search), where, descending)

    def objects(self, rows: Sequence[RowMapping], query: HistoryQuery) -> list[dict[str, Any]]:
        found = _reactions(self.db, [row["id"] for row in rows if row["reacted"]])
        return [_message(row, {}, found).history_message(codec.decode(row["own_flags"]), query.apply_markdown,
                                                         query.client_gravatar, self.search) for row in rows]

    def _condition(self, user_id: int, term: NarrowTerm, param: str) -> str | None:
        """The kind of condition of ``term`` (``_CONDITIONS``), its value set as ``param``; None if it filters
        nothing (or is the search that drives the query)."""
        operator, operand = term.operator, term.operand
        if operator == "channel":
            stream_id = self._id_of("channel", operand)
            self.params[param] = _recipient_id(self.db, recipient_key(stream_id)) or 0
            return "recipient"
        if operator == "dm":
            users = operand if isinstance(operand, tuple) else (
                [operand] if isinstance(operand, int) else [e for e in operand.split(",") if e.strip()])
            ids = {self._id_of("user", u) for u in users} | {user_id}
            self.params[param] = _recipient_id(self.db, recipient_key(None, ids)) or 0
            return "recipient"
        if operator == "topic":
            self.params[param] = str(operand)
            return "topic"
        if operator == "sender":
            self.params[param] = self._id_of("user", operand)
            return "sender"
        if operator == "is":
            return f"is:{operand}"
        if operator == "search":
            words = search_words(str(operand))
            if not words:
                return None
            if not term.negated:
                self.search += words  # matched by the index that drives the query
                return None
            self.params[param] = _search_query(self.dialect, words)
            return "search"
        if operator == "id":
            if not (isinstance(operand, int) or (isinstance(operand, str) and operand.isdigit())):
                raise NarrowError("Invalid message ID")
            self.params[param] = min(int(operand), LARGER_THAN_MAX_MESSAGE_ID)
            return "id"
        return None  # near: where the client looks, not a filter

    def _id_of(self, what: str, operand: Any) -> int:
        """The id of the stream or user ``operand`` names, by id or by name (email, without case); NarrowError if
        none."""
        by_id, by_name = _IDS[what]
        found = (self.db.scalar(by_id, {"id": _bounded(operand)}) if isinstance(operand, int)
                 else self.db.scalar(by_name, {"name": str(operand).strip()}))
        if found is None:
            raise NarrowError(f"unknown {what} {excerpt(str(operand))}")
        return int(found)


def _flag_condition(flag: str, dialect: str, value: BindParameter[Any]) -> TextClause:
    return _flag_test(flag)


#: The conditions of narrows by kind, each on its term's value (a bound parameter).
_CONDITIONS: dict[str, Callable[[str, BindParameter[Any]], Condition]] = {
    "recipient": lambda dialect, value: _m.c.recipient_id == value,
    "topic": lambda dialect, value: ci_equal(_m.c.subject, value),
    "sender": lambda dialect, value: _m.c.sender_id == value,
    "id": lambda dialect, value: _m.c.id == value,
    "is:dm": lambda dialect, value: _m.c.type == "private",
    **{f"is:{flag}": functools.partial(_flag_condition, flag) for flag in FLAG_TESTS},
    "search": lambda dialect, value: _matches(dialect, value),
}

#: The lookups of a narrow's stream or user (``_Narrow._id_of``): by id, and by name or email without case.
_IDS = {
    what: (select(table.c.id).where(table.c.id == bindparam("id")),
           select(table.c.id).where(ci_equal(name, bindparam("name", type_=Text))))
    for what, table, name in (("channel", streams, streams.c.name), ("user", schema.users, schema.users.c.email))
}


@functools.lru_cache(maxsize=1024)
def _narrow_select(dialect: str, driver: str, shape: tuple[tuple[str, bool, str], ...], search: bool,
                   where: str | None, descending: bool) -> Select[Any]:
    """The query of a narrow of this shape (``_Narrow``), built once: SQLAlchemy takes longer to build and key a
    statement than SQLite takes to run it. Its values are bound parameters: ``user_id``, one per term, ``search``,
    those of ``where`` and ``limit``."""
    conditions: list[Condition] = [_um.c.user_id == bindparam("user_id")]
    for kind, negated, param in shape:
        condition = _CONDITIONS[kind](dialect, bindparam(param, type_=_PARAM_TYPES.get(kind)))
        conditions.append(_negated(condition) if negated else condition)
    if driver == "fts":  # in the index's order, newest or oldest match first
        conditions.append(_fts.c.messages_fts.op("MATCH")(bindparam("search", type_=Text)))
        joins = ordered_join(ordered_join(_fts, _m, _m.c.id == _fts.c.rowid), _um, _um.c.message_id == _m.c.id)
        by: ColumnElement[Any] = _fts.c.rowid
    elif driver == "messages":
        if search:
            conditions.append(_matches(dialect, bindparam("search", type_=Text)))
        joins, by = ordered_join(_m, _um, _um.c.message_id == _m.c.id), _m.c.id
    else:
        joins, by = ordered_join(_um, _m, _m.c.id == _um.c.message_id), _um.c.message_id
    if where is not None:
        conditions.append(_WHERE[where](by))
    return (select(*_MESSAGE_COLUMNS, _um.c.flags.label("own_flags"), _REACTED)
            .select_from(joins.join(_u, _u.c.id == _m.c.sender_id)).where(*conditions)
            .order_by(by.desc() if descending else by.asc()).limit(bindparam("limit", type_=Integer)))


#: Whether a message has reactions: most have none, and the history then reads none (one index probe a message,
#: cheaper than a query for the reactions of every message shown).
_REACTED = exists().where(reactions.c.message_id == _m.c.id).label("reacted")

#: The types of the terms' values, where a comparison does not give it (the database must know it to bind it).
_PARAM_TYPES: dict[str, Any] = {"topic": Text(), "search": Text()}

#: What a fetch of a narrow adds to it, on the column of its order (``by``): around an ``anchor``, the messages
#: ``ids``, the first unread.
_WHERE: dict[str, Callable[[ColumnElement[Any]], Condition]] = {
    "before": lambda by: by < bindparam("anchor"),
    "after": lambda by: by > bindparam("anchor"),
    "at": lambda by: by == bindparam("anchor"),
    "ids": lambda by: by.in_(bindparam("ids", expanding=True)),
    "unread": lambda by: _flag_test("unread"),
}


#: Streams by name, as people read a list of them: without case, then as written.
_BY_NAME = (func.lower(streams.c.name), streams.c.name)


def _flag_test(name: str) -> TextClause:
    """The flag test ``name`` on the narrow's ``um``, in the very words of its partial index (``FLAG_TESTS``)."""
    return text(f"{_um.name}.{FLAG_TESTS[name]}")


def _negated(condition: Condition) -> Condition:
    """``NOT (condition)``: SQLAlchemy negates expressions, a flag test is negated as text."""
    return text(f"NOT ({condition.text})") if isinstance(condition, TextClause) else not_(condition)


def _matches(dialect: str, query: ColumnElement[str]) -> ColumnElement[bool]:
    """The messages (``m``) that the full-text ``query`` (``_search_query``) matches: FTS5's MATCH on SQLite,
    ``@@`` on the ``tsvector`` of PostgreSQL (the one query the two databases say differently)."""
    if dialect == "postgresql":
        config: ColumnElement[Any] = literal_column(f"'{TEXT_SEARCH_CONFIG}'")  # bound, it would need a cast
        return _m_search_words.bool_op("@@")(func.to_tsquery(config, query))
    return _m.c.id.in_(select(_fts.c.rowid).where(_fts.c.messages_fts.op("MATCH")(query)))


def _search_query(dialect: str, words: Sequence[str]) -> str:
    """The full-text query of messages holding every one of ``words``, in the database's syntax."""
    return tsquery(words) if dialect == "postgresql" else fts_query(words)


def _subscribers(db: Connection, stream_id: int) -> list[int]:
    return list(db.scalars(select(subscriptions.c.user_id).where(subscriptions.c.stream_id == stream_id)
                           .order_by(subscriptions.c.user_id)))


def _own_flags(db: Connection, user_id: int, message_ids: Sequence[int]) -> dict[int, list[str]]:
    """The user's flags on those of ``message_ids`` they have, by message id."""
    rows = db.execute(select(user_messages.c.message_id, user_messages.c.flags).where(
        user_messages.c.user_id == user_id, user_messages.c.message_id.in_(message_ids)))
    return {row.message_id: codec.decode(row.flags) for row in rows}


def _set_flag(db: Connection, user_id: int, own: Mapping[int, list[str]], flag: str, on: bool) -> list[int]:
    """Add or remove ``flag`` where the user's flags (``own``, by message id) need it; the ids changed, sorted."""
    changed = sorted(i for i, flags in own.items() if (flag in flags) != on)
    _write_flags(db, [(user_id, i, [*own[i], flag] if on else [f for f in own[i] if f != flag]) for i in changed])
    return changed


#: One user's flags on one message set (``_write_flags``, many at once).
_FLAGS_UPDATE = (update(user_messages).where(user_messages.c.user_id == bindparam("b_user"),
                                             user_messages.c.message_id == bindparam("b_message"))
                 .values(flags=bindparam("b_flags")))


def _write_flags(db: Connection, rows: Sequence[tuple[int, int, list[str]]]) -> None:
    """Set each ``(user_id, message_id, flags)``, in one statement run for all (executemany)."""
    if rows:
        db.execute(_FLAGS_UPDATE, [{"b_user": u, "b_message": m, "b_flags": codec.encode(f).decode()}
                                   for u, m, f in rows])


def _left_streams(db: Connection, user_id: int, message_ids: Sequence[int]) -> dict[int, int]:
    """Those of the messages sent to a stream the user is no longer subscribed to: message id -> stream id."""
    messages = schema.messages.c
    rows = db.execute(select(messages.id, messages.stream_id).where(
        messages.stream_id.is_not(None), messages.id.in_(message_ids),
        messages.stream_id.not_in(select(subscriptions.c.stream_id).where(subscriptions.c.user_id == user_id))))
    return {row.id: row.stream_id for row in rows}


def _unread_details(db: Connection, user_id: int, message_id: int, flags: list[str]) -> dict[str, Any]:
    """Zulip's ``message_details`` entry of a message marked unread: where it is, and whether it mentions the
    user, for the client's unread counts."""
    messages = schema.messages.c
    row = db.execute(select(messages.type, messages.stream_id, messages.subject, messages.display_recipient)
                     .where(messages.id == message_id)).one()
    details: dict[str, Any] = {"type": row.type}
    if row.type == "stream":
        details.update(stream_id=row.stream_id, topic=row.subject)
    else:
        details["user_ids"] = sorted(u["id"] for u in codec.decode(row.display_recipient) if u["id"] != user_id)
    if any(f in MENTION_FLAGS for f in flags):
        details["mentioned"] = True
    return details


def _bounded(value: int) -> int:
    """An id from a request, within what the database can bind (a larger one matches nothing anyway)."""
    return max(-1, min(value, LARGER_THAN_MAX_MESSAGE_ID))


def _recipient_id(db: Connection, key: str) -> int | None:
    """The id of the recipient ``key`` (``stream:<id>`` or ``private:<ids>``); None if it has no message yet."""
    found = db.scalar(_RECIPIENT, {"key": key})
    return None if found is None else int(found)


def _new_recipient_id(db: Connection, key: str) -> int:
    """The id of the recipient ``key``, made if it has none (in a write transaction: nobody else makes it
    meanwhile)."""
    found = _recipient_id(db, key)
    if found is not None:
        return found
    return int(db.execute(_NEW_RECIPIENT, {"key": key}).scalar_one())


def _reactions(db: Connection, message_ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], ...]]:
    """The reactions to these messages (by message id; none: no key), oldest first: one query by primary key."""
    if not message_ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {}
    for row in db.execute(_REACTIONS, {"ids": list(message_ids)}).mappings():
        found.setdefault(row["message_id"], []).append(
            {"emoji_name": row["emoji_name"], "emoji_code": row["emoji_code"],
             "reaction_type": row["reaction_type"], "user_id": row["user_id"]})
    return {message_id: tuple(made) for message_id, made in found.items()}


def _message(row: RowMapping, flags: Mapping[int, list[str]],
             reactions: Mapping[int, tuple[dict[str, Any], ...]] | None = None) -> StoredMessage:
    # By key from the row's mapping: several times faster than a Row's attributes, for every message of a history.
    return StoredMessage(
        id=row["id"], request_id=row["request_id"], sender_id=row["sender_id"], sender_email=row["email"],
        sender_full_name=row["full_name"], type=row["type"], display_recipient=codec.decode(row["display_recipient"]),
        subject=row["subject"], content=row["content"], rendered_content=row["rendered_content"],
        timestamp=row["timestamp"], delivered=bool(row["delivered"]), flags=flags,
        recipient_id=row["recipient_id"], stream_id=row["stream_id"], client=row["client"],
        last_edit_timestamp=row["last_edit_timestamp"], reactions=(reactions or {}).get(row["id"], ()),
    )


def _stream(row: Row[Any]) -> Stream:
    return Stream(row.id, row.name, row.email_token, row.date_created)
