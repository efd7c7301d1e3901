"""The message store: streams, their subscribers, messages and who received them. SQLite.

It shares the users' database file (``EVENTBUS_DATABASE``). A message is
stored with the id of the request that sent it, once: storing the same
request again returns the message already stored, which is how a redelivered
``message_sender`` event never makes a second message.

Every message has a recipient, as in Zulip: a stream, or the set of users of
a private conversation; its id is the message's ``recipient_id``. The history
(``history``) reads a user's messages through a narrow (``eventbus.narrow``)
around an anchor, with indexes for each narrow: a stream's topic by
``(recipient_id, subject, id)``, a user's unread, starred and mentioned
messages by partial indexes on ``(user_id, message_id)``, and the words of
every message in an FTS5 index that triggers keep in step with the table.

Message objects, in events and in the history, are built here, once
(``StoredMessage.event_message`` and ``history_message``), with every field
Zulip's API describes for them, their reactions (a table of their own) too.

Changes to messages a client asks for (flags, edits, deletes, reactions:
the ``message_actions`` processor) are made once per request: each is made
in one transaction with its outcome recorded by request id
(``message_actions``), so a redelivered request changes nothing again and
finds what it changed, and whether its events went out (``Outcome``).
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventbus import codec, sqlite
from eventbus.channels import ChannelInfo
from eventbus.narrow import NarrowError, NarrowTerm, fts_query, highlight, highlight_text, search_words
from eventbus.users import UserStore, gravatar_url
from eventbus.validation import excerpt

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    email_token TEXT NOT NULL UNIQUE,
    date_created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    stream_id INTEGER NOT NULL REFERENCES streams(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    PRIMARY KEY (stream_id, user_id)
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE  -- 'stream:<id>', or 'private:<user ids, sorted, comma-separated>'
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT UNIQUE,
    sender_id INTEGER NOT NULL REFERENCES users(id),
    type TEXT NOT NULL,
    stream_id INTEGER REFERENCES streams(id),
    display_recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    content TEXT NOT NULL,
    rendered_content TEXT NOT NULL,
    timestamp REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    recipient_id INTEGER REFERENCES recipients(id),
    client TEXT NOT NULL DEFAULT '',
    last_edit_timestamp REAL
);
CREATE TABLE IF NOT EXISTS user_messages (
    user_id INTEGER NOT NULL REFERENCES users(id),
    message_id INTEGER NOT NULL REFERENCES messages(id),
    flags TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX IF NOT EXISTS user_messages_by_message ON user_messages(message_id);
CREATE TABLE IF NOT EXISTS reactions (
    message_id INTEGER NOT NULL REFERENCES messages(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    reaction_type TEXT NOT NULL,
    emoji_code TEXT NOT NULL,
    emoji_name TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id, reaction_type, emoji_code)
);
-- What each processed request changed (message_actions), once per request id: a redelivered request finds
-- its outcome here instead of changing anything again, and delivers its events if they were not yet.
CREATE TABLE IF NOT EXISTS message_actions (
    request_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    timestamp REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
"""

#: Columns added to ``messages`` since its first release: a database made before gets them when opened.
ADDED_COLUMNS = {"recipient_id": "INTEGER REFERENCES recipients(id)", "client": "TEXT NOT NULL DEFAULT ''",
                 "last_edit_timestamp": "REAL"}

#: Flag tests on ``user_messages.flags`` (a JSON list of names), written once: a partial index is used only by
#: a query holding the very same test. ``mentioned"`` matches Zulip's wildcard mention flags too.
FLAG_TESTS = {"unread": """flags NOT LIKE '%"read"%'""", "starred": """flags LIKE '%"starred"%'""",
              "mentioned": """flags LIKE '%mentioned"%'""", "alerted": """flags LIKE '%"has_alert_word"%'"""}
#: The flags a message's content sets (Zulip's mention flags): an edit recomputes them.
MENTION_FLAGS = frozenset({"mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned", "wildcard_mentioned"})
#: The flag tests that have an index of their own: few of a user's messages pass them.
INDEXED_FLAGS = ("unread", "starred", "mentioned")

#: What needs the columns above, or a table of its own: made after ``ADDED_COLUMNS`` are there.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_by_topic ON messages(recipient_id, subject COLLATE NOCASE, id)",
    "CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages(recipient_id, id)",
    "CREATE INDEX IF NOT EXISTS messages_by_sender ON messages(sender_id, id)",
    *(f"CREATE INDEX IF NOT EXISTS user_messages_{name} ON user_messages(user_id, message_id)"
      f" WHERE {FLAG_TESTS[name]}" for name in INDEXED_FLAGS),
    # The words of every message's topic and Markdown, in an external-content FTS5 index: the text is not
    # stored twice, and these triggers keep the index in step with every insert, update and delete.
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(subject, content, content='messages',"
    " content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_fts(rowid, subject, content) VALUES (new.id, new.subject, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, subject, content)"
    " VALUES ('delete', old.id, old.subject, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF subject, content ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, subject, content)"
    " VALUES ('delete', old.id, old.subject, old.content);"
    " INSERT INTO messages_fts(rowid, subject, content) VALUES (new.id, new.subject, new.content); END",
)

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
    if not name or len(name) > MAX_STREAM_NAME_CHARS or any(c in name for c in "*`\n"):
        raise ValueError(f"invalid stream name {excerpt(name)!r}: 1 to {MAX_STREAM_NAME_CHARS} characters, "
                         "no '*', '`' or newline")
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


class MessageStore(sqlite.Store):
    """Streams and messages in SQLite; safe from any thread and process."""

    SCHEMA = SCHEMA

    def __init__(self, path: Path | str) -> None:
        self.users = UserStore(path)
        super().__init__(path)
        with self._db(write=True) as db:
            _upgrade(db)

    # -- streams ------------------------------------------------------------------

    def create_stream(self, name: str, subscriber_ids: Sequence[int] = ()) -> Stream:
        """The stream ``name`` (created if missing), with these users subscribed too."""
        [stream], _ = self.subscribe([name], subscriber_ids)
        return stream

    def subscribe(self, names: Sequence[str], user_ids: Sequence[int]) -> tuple[list[Stream], dict[int, list[int]]]:
        """Subscribe the users to the streams ``names``, each created if missing, in one transaction: the
        streams, and by stream id the users who were not subscribed before. ValueError for a bad name."""
        names = [check_stream_name(name) for name in names]
        streams, added = [], {}
        with self._db(write=True) as db:
            for name in names:
                db.execute("INSERT OR IGNORE INTO streams (name, email_token, date_created) VALUES (?, ?, ?)",
                           (name, secrets.token_hex(8), time.time()))
                stream = _stream(db.execute("SELECT * FROM streams WHERE name = ?", (name,)).fetchone())
                streams.append(stream)
                added[stream.id] = [uid for uid in dict.fromkeys(user_ids) if db.execute(
                    "INSERT OR IGNORE INTO subscriptions (stream_id, user_id) VALUES (?, ?)",
                    (stream.id, uid)).rowcount]
        return streams, added

    def unsubscribe(self, stream_ids: Sequence[int], user_ids: Sequence[int]) -> dict[int, list[int]]:
        """Unsubscribe the users from the streams, in one transaction: by stream id, the users who were subscribed."""
        with self._db(write=True) as db:
            return {stream_id: [uid for uid in dict.fromkeys(user_ids) if db.execute(
                "DELETE FROM subscriptions WHERE stream_id = ? AND user_id = ?", (stream_id, uid)).rowcount]
                for stream_id in dict.fromkeys(stream_ids)}

    def all_streams(self) -> list[Stream]:
        with self._db() as db:
            return [_stream(row) for row in db.execute("SELECT * FROM streams ORDER BY name")]

    def channel_info(self, streams: Sequence[Stream], with_subscribers: bool = False) -> list[ChannelInfo]:
        """What Zulip's channel objects show of ``streams`` (``eventbus.channels``): their first message and
        latest activity, read through the recipient index, and their subscribers if asked for."""
        infos = []
        with self._db() as db:
            for stream in streams:
                first = last = None
                recipient_id = _recipient_id(db, f"stream:{stream.id}")
                if recipient_id is not None:
                    first, last = db.execute("SELECT MIN(id), MAX(id) FROM messages WHERE recipient_id = ?",
                                             (recipient_id,)).fetchone()
                last_time = (db.execute("SELECT timestamp FROM messages WHERE id = ?", (last,)).fetchone()[0]
                             if last is not None else None)
                subscribers = ([row[0] for row in db.execute(
                    "SELECT user_id FROM subscriptions WHERE stream_id = ? ORDER BY user_id", (stream.id,))]
                    if with_subscribers else None)
                infos.append(ChannelInfo(stream.id, stream.name, stream.date_created, first, last_time, subscribers))
        return infos

    def received_from(self, user_id: int, stream_id: int) -> bool:
        """Whether the user has a message of the stream (one they were subscribed to, then)."""
        with self._db() as db:
            recipient_id = _recipient_id(db, f"stream:{stream_id}")
            return recipient_id is not None and db.execute(
                "SELECT 1 FROM messages m CROSS JOIN user_messages um ON um.message_id = m.id AND um.user_id = ?"
                " WHERE m.recipient_id = ? LIMIT 1", (user_id, recipient_id)).fetchone() is not None

    def max_message_id(self, user_id: int) -> int:
        """The id of the user's newest message; -1 if they have none (as Zulip answers it)."""
        with self._db() as db:
            row = db.execute("SELECT MAX(message_id) FROM user_messages WHERE user_id = ?", (user_id,)).fetchone()
        return -1 if row[0] is None else int(row[0])

    def unread(self, user_id: int, limit: int) -> list[UnreadMessage]:
        """The user's newest ``limit`` unread messages, newest first (through the partial index of unread ones)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT m.id, m.type, m.stream_id, m.subject, m.display_recipient, um.flags FROM user_messages um"
                f" CROSS JOIN messages m ON m.id = um.message_id WHERE um.user_id = ? AND um.{FLAG_TESTS['unread']}"
                " ORDER BY um.message_id DESC LIMIT ?", (user_id, limit)).fetchall()
        return [UnreadMessage(row["id"], row["stream_id"], row["subject"],
                              () if row["type"] == "stream" else tuple(sorted(
                                  int(u["id"]) for u in codec.decode(row["display_recipient"]))),
                              tuple(codec.decode(row["flags"]))) for row in rows]

    def get_stream(self, name: str) -> Stream | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM streams WHERE name = ?", (name.strip(),)).fetchone()
        return _stream(row) if row else None

    def get_stream_by_id(self, stream_id: int) -> Stream | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM streams WHERE id = ?", (stream_id,)).fetchone()
        return _stream(row) if row else None

    def stream_by_token(self, token: str) -> Stream | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM streams WHERE email_token = ?", (token,)).fetchone()
        return _stream(row) if row else None

    def subscribers(self, stream_id: int) -> list[int]:
        with self._db() as db:
            rows = db.execute("SELECT user_id FROM subscriptions WHERE stream_id = ? ORDER BY user_id", (stream_id,))
            return [row[0] for row in rows]

    def subscriptions(self, user_id: int) -> list[Stream]:
        with self._db() as db:
            rows = db.execute("SELECT s.* FROM streams s JOIN subscriptions sub ON sub.stream_id = s.id "
                              "WHERE sub.user_id = ? ORDER BY s.name", (user_id,))
            return [_stream(row) for row in rows]

    # -- messages -----------------------------------------------------------------

    def store(self, message: NewMessage) -> StoredMessage:
        """Store a message for its recipients, once per request id (see ``store_many``)."""
        return self.store_many([message])[0]

    def store_many(self, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store ``messages`` in one transaction, in their order (their ids increase in it), each once per
        request id: a request stored before gives the message stored then (``delivered`` says whether its
        event went out). One commit for the lot: a batch pays one fsync."""
        with self._db(write=True) as db:
            return [self._stored(db, self._insert(db, message)) for message in messages]

    def _insert(self, db: sqlite3.Connection, message: NewMessage) -> int | None:
        """The id of the message of ``message.request_id`` if there is one, else of ``message`` inserted."""
        if message.request_id is not None:
            row = db.execute("SELECT id FROM messages WHERE request_id = ?", (message.request_id,)).fetchone()
            if row is not None:
                return int(row["id"])
        stream = message.stream
        key = (f"stream:{stream.id}" if stream is not None
               else "private:" + ",".join(str(uid) for uid in sorted(u["id"] for u in message.display_recipient)))
        cursor = db.execute(
            "INSERT INTO messages (request_id, sender_id, type, stream_id, display_recipient, subject, content,"
            " rendered_content, timestamp, recipient_id, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.request_id, message.sender_id, message.type, stream.id if stream else None,
             codec.encode(message.display_recipient), message.subject, message.content, message.rendered_content,
             time.time(), _recipient_id(db, key, create=True), message.client),
        )
        message_id = cursor.lastrowid
        db.executemany("INSERT INTO user_messages (user_id, message_id, flags) VALUES (?, ?, ?)",
                       [(uid, message_id, codec.encode(f).decode()) for uid, f in message.flags.items()])
        return message_id

    def mark_delivered(self, *message_ids: int) -> None:
        """Record that the events of these messages went out (a redelivered request does not send them again)."""
        with self._db() as db:
            db.executemany("UPDATE messages SET delivered = 1 WHERE id = ?", [(i,) for i in message_ids])

    def topic_participants(self, stream_id: int, topic: str) -> set[int]:
        """Who has sent to this topic (Zulip's topic participants, whom ``@**topic**`` mentions)."""
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT sender_id FROM messages WHERE stream_id = ? AND subject = ?"
                              " COLLATE NOCASE", (stream_id, topic))
            return {row[0] for row in rows}

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
        def change(db: sqlite3.Connection) -> dict[str, Any]:
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
        """Every unread message of the user's marked read, in one statement (the unread index finds them)."""
        def change(db: sqlite3.Connection) -> dict[str, Any]:
            cursor = db.execute("UPDATE user_messages SET flags = json_insert(flags, '$[#]', 'read')"
                                f" WHERE user_id = ? AND {FLAG_TESTS['unread']}", (user_id,))
            return {"count": cursor.rowcount}

        return self._once(request_id, change)

    def edit(self, request_id: str, message_id: int, *, content: str | None, rendered_content: str | None,
             subject: str | None, mention_flags: Mapping[int, list[str]]) -> Outcome:
        """A new content (rendered) and/or topic, and each recipient's new mention flags (``MENTION_FLAGS``
        replaced, the others kept): the message before and after, its recipients' flags, when."""
        def change(db: sqlite3.Connection) -> dict[str, Any]:
            before = self._load(db, message_id)
            if before is None:
                raise ActionError("Invalid message(s)")
            now = time.time()
            after = {"content": before.content if content is None else content,
                     "rendered_content": before.rendered_content if rendered_content is None else rendered_content,
                     "subject": before.subject if subject is None else subject}
            db.execute("UPDATE messages SET content = ?, rendered_content = ?, subject = ?, last_edit_timestamp = ?"
                       " WHERE id = ?", (*after.values(), now, message_id))
            flags = {uid: [f for f in old if f not in MENTION_FLAGS] + list(mention_flags.get(uid, []))
                     if content is not None else old for uid, old in before.flags.items()}
            db.executemany("UPDATE user_messages SET flags = ? WHERE user_id = ? AND message_id = ?",
                           [(codec.encode(f).decode(), uid, message_id) for uid, f in flags.items()])
            return {"message_id": message_id, "sender_id": before.sender_id, "type": before.type,
                    "stream_id": before.stream_id, "stream_name": before.display_recipient, "edit_timestamp": now,
                    "orig_content": before.content, "orig_rendered_content": before.rendered_content,
                    "orig_subject": before.subject, **after, "flags": [[u, f] for u, f in flags.items()]}

        return self._once(request_id, change)

    def delete(self, request_id: str, message_id: int) -> Outcome:
        """The message gone, with its reactions and who had it (``users``), whom to tell."""
        def change(db: sqlite3.Connection) -> dict[str, Any]:
            message = self._load(db, message_id)
            if message is None:
                raise ActionError("Invalid message(s)")
            for table, column in (("reactions", "message_id"), ("user_messages", "message_id"), ("messages", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (message_id,))
            return {"message_id": message_id, "type": message.type, "stream_id": message.stream_id,
                    "topic": message.subject, "users": sorted(message.flags)}

        return self._once(request_id, change)

    def react(self, request_id: str, message_id: int, user_id: int, reaction: Mapping[str, str],
              add: bool) -> Outcome:
        """Add or remove the user's ``reaction`` (emoji_name, emoji_code, reaction_type) to a message of theirs;
        the message's recipients (``users``), whom to tell. ActionError: not theirs, already there, not there."""
        def change(db: sqlite3.Connection) -> dict[str, Any]:
            users = [row[0] for row in db.execute("SELECT user_id FROM user_messages WHERE message_id = ?"
                                                   " ORDER BY user_id", (message_id,))]
            if user_id not in users:
                raise ActionError("Invalid message(s)")
            key = (message_id, user_id, reaction["reaction_type"], reaction["emoji_code"])
            if add:
                cursor = db.execute("INSERT OR IGNORE INTO reactions (message_id, user_id, reaction_type, emoji_code,"
                                    " emoji_name) VALUES (?, ?, ?, ?, ?)", (*key, reaction["emoji_name"]))
            else:
                cursor = db.execute("DELETE FROM reactions WHERE message_id = ? AND user_id = ?"
                                    " AND reaction_type = ? AND emoji_code = ?", key)
            if cursor.rowcount == 0:
                raise (ActionError("Reaction already exists.", "REACTION_ALREADY_EXISTS") if add
                       else ActionError("Reaction doesn't exist.", "REACTION_DOES_NOT_EXIST"))
            return {"users": users}

        return self._once(request_id, change)

    def mark_action_delivered(self, request_id: str) -> None:
        with self._db() as db:
            db.execute("UPDATE message_actions SET delivered = 1 WHERE request_id = ?", (request_id,))

    def _once(self, request_id: str, change: Callable[[sqlite3.Connection], dict[str, Any]]) -> Outcome:
        """``change`` made in one transaction with its outcome recorded, unless ``request_id`` was processed
        before: then its recorded outcome, changing nothing. An ActionError records nothing."""
        with self._db(write=True) as db:
            row = db.execute("SELECT outcome, delivered FROM message_actions WHERE request_id = ?",
                             (request_id,)).fetchone()
            if row is not None:
                return Outcome(request_id, codec.decode(row["outcome"]), bool(row["delivered"]))
            outcome = change(db)
            db.execute("INSERT INTO message_actions (request_id, outcome, timestamp) VALUES (?, ?, ?)",
                       (request_id, codec.encode(outcome).decode(), time.time()))
            return Outcome(request_id, outcome, False)

    def recent(self, user_id: int, num_before: int = 50) -> list[dict[str, Any]]:
        """The user's latest ``num_before`` messages, oldest first, as their events carried them, with their flags."""
        with self._db() as db:
            rows = _Narrow(db, user_id, ()).fetch("1", (), "DESC", num_before)
            reactions = _reactions(db, [row["id"] for row in rows])
        return [{**_message(row, {}, reactions).event_message(), "flags": codec.decode(row["own_flags"])}
                for row in rows[::-1]]

    def history(self, user_id: int, query: HistoryQuery) -> dict[str, Any]:
        """GET /messages for ``user_id``: the answer's fields besides ``result`` and ``msg``; NarrowError
        for a term naming a stream or user that does not exist, or a bad message id.

        Only the user's own messages (those they received): streams' history before they subscribed is not
        searched. Each side of the anchor is one query that reads at most as many rows as it returns (an
        index serves the narrow and the order); see ``_Narrow``.
        """
        with self._db() as db:
            narrow = _Narrow(db, user_id, query.narrow)
            if query.message_ids is not None:
                rows = narrow.fetch(f"{narrow.id} IN ({','.join('?' * len(query.message_ids))})",
                                    query.message_ids, "ASC", len(query.message_ids))
                return {"messages": narrow.objects(rows, query), "history_limited": False}
            anchor = query.anchor
            if anchor == "first_unread":
                first = narrow.fetch(f"um.{FLAG_TESTS['unread']}", (), "ASC", 1)
                anchor = first[0]["id"] if first else LARGER_THAN_MAX_MESSAGE_ID
            anchor = ANCHORS[anchor] if isinstance(anchor, str) else anchor
            at_newest, at_oldest = anchor >= LARGER_THAN_MAX_MESSAGE_ID, anchor <= 0
            before = narrow.fetch(f"{narrow.id} < ?", (anchor,), "DESC", query.num_before)[::-1]
            after = narrow.fetch(f"{narrow.id} > ?", (anchor,), "ASC", query.num_after)
            at = (narrow.fetch(f"{narrow.id} = ?", (anchor,), "ASC", 1)
                  if query.include_anchor and not (at_oldest or at_newest) else [])
            return {
                "messages": narrow.objects([*before, *at, *after], query), "anchor": anchor,
                "found_anchor": bool(at), "found_oldest": at_oldest or len(before) < query.num_before,
                "found_newest": at_newest or len(after) < query.num_after, "history_limited": False,
            }

    def explain(self, user_id: int, narrow: Sequence[NarrowTerm]) -> list[str]:
        """How SQLite reads the newest messages of ``narrow`` (its query plan, a line a step): which index
        serves each narrow, for the tests and the benchmark."""
        with self._db() as db:
            return _Narrow(db, user_id, narrow).explain()

    def _stored(self, db: sqlite3.Connection, message_id: int | None) -> StoredMessage:
        """A message this transaction has just found or written."""
        message = self._load(db, message_id)
        assert message is not None, message_id
        return message

    def _load(self, db: sqlite3.Connection, message_id: int | None) -> StoredMessage | None:
        row = db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id"
                         " WHERE m.id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        flags = {r["user_id"]: codec.decode(r["flags"]) for r in db.execute(
            "SELECT user_id, flags FROM user_messages WHERE message_id = ?", (message_id,))}
        return _message(row, flags, _reactions(db, [row["id"]]))


class _Narrow:
    """A narrow of one user's messages as SQL: the conditions, and which index drives the query.

    A search reads the full-text index's matches in id order; a narrow to a stream, a private conversation
    or a sender reads those messages by index, newest or oldest first; either checks that the user has each
    (the user_messages primary key). Any other narrow reads the user's own messages by (user_id, message_id)
    -- through a partial index for is:unread, is:starred and is:mentioned -- and checks each message.
    ``CROSS JOIN`` fixes that order: SQLite never reorders it.
    """

    def __init__(self, db: sqlite3.Connection, user_id: int, terms: Sequence[NarrowTerm]) -> None:
        self.db = db
        self.conditions: list[str] = ["um.user_id = ?"]
        self.params: list[Any] = [user_id]
        self.search: list[str] = []
        by_messages = False
        for term in terms:
            condition, params = self._condition(user_id, term)
            if condition:
                self.conditions.append(f"NOT ({condition})" if term.negated else condition)
                self.params += params
            by_messages |= term.operator in ("channel", "dm", "sender") and not term.negated
        if self.search:  # read in the full-text index's order, newest or oldest match first: a common word too
            self.conditions.append("messages_fts MATCH ?")
            self.params.append(fts_query(self.search))
            self.joins = ("messages_fts CROSS JOIN messages m ON m.id = messages_fts.rowid"
                          " CROSS JOIN user_messages um ON um.message_id = m.id")
            self.id = "messages_fts.rowid"
        elif by_messages:
            self.joins = "messages m CROSS JOIN user_messages um ON um.message_id = m.id"
            self.id = "m.id"  # the driving index's column, for its order
        else:
            self.joins = "user_messages um CROSS JOIN messages m ON m.id = um.message_id"
            self.id = "um.message_id"

    def fetch(self, where: str, params: Sequence[Any], order: str, limit: int) -> list[sqlite3.Row]:
        """At most ``limit`` of the narrow's messages that also meet ``where``, by id in ``order``."""
        if limit <= 0:
            return []
        return self.db.execute(self._select(where, order), (*self.params, *params, limit)).fetchall()

    def explain(self) -> list[str]:
        plan = self.db.execute("EXPLAIN QUERY PLAN " + self._select(f"{self.id} < ?", "DESC"),
                               (*self.params, LARGER_THAN_MAX_MESSAGE_ID, 100))
        return [row["detail"] for row in plan]

    def _select(self, where: str, order: str) -> str:
        return (f"SELECT {_MESSAGE_COLUMNS}, um.flags AS own_flags FROM {self.joins} JOIN users u ON u.id = m.sender_id"
                f" WHERE {' AND '.join([*self.conditions, where])} ORDER BY {self.id} {order} LIMIT ?")

    def objects(self, rows: list[sqlite3.Row], query: HistoryQuery) -> list[dict[str, Any]]:
        reactions = _reactions(self.db, [row["id"] for row in rows])
        return [_message(row, {}, reactions).history_message(codec.decode(row["own_flags"]), query.apply_markdown,
                                                             query.client_gravatar, self.search) for row in rows]

    def _condition(self, user_id: int, term: NarrowTerm) -> tuple[str, list[Any]]:
        operator, operand = term.operator, term.operand
        if operator == "channel":
            stream_id = self._stream_id(operand)
            return "m.recipient_id = ?", [_recipient_id(self.db, f"stream:{stream_id}") or 0]
        if operator == "topic":
            return "m.subject = ? COLLATE NOCASE", [str(operand)]
        if operator == "sender":
            return "m.sender_id = ?", [self._user_id(operand)]
        if operator == "dm":
            users = operand if isinstance(operand, tuple) else (
                [operand] if isinstance(operand, int) else [e for e in operand.split(",") if e.strip()])
            ids = sorted({self._user_id(u) for u in users} | {user_id})
            return "m.recipient_id = ?", [_recipient_id(self.db, "private:" + ",".join(map(str, ids))) or 0]
        if operator == "is":
            return ("m.type = 'private'" if operand == "dm" else f"um.{FLAG_TESTS[str(operand)]}"), []
        if operator == "search":
            words = search_words(str(operand))
            if not words:
                return "", []
            if not term.negated:
                self.search += words  # matched by the index that drives the query
                return "", []
            return "m.id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)", [fts_query(words)]
        if operator == "id":
            if not (isinstance(operand, int) or (isinstance(operand, str) and operand.isdigit())):
                raise NarrowError("Invalid message ID")
            return "m.id = ?", [min(int(operand), LARGER_THAN_MAX_MESSAGE_ID)]
        return "", []  # near: where the client looks, not a filter

    def _stream_id(self, operand: Any) -> int:
        return self._id_of("streams", "name", operand, "channel")

    def _user_id(self, operand: Any) -> int:
        return self._id_of("users", "email", operand, "user")

    def _id_of(self, table: str, name_column: str, operand: Any, what: str) -> int:
        """The id of the stream or user ``operand`` names, by id or by name (email); NarrowError if none."""
        column, value = ("id", _bounded(operand)) if isinstance(operand, int) else (name_column, str(operand).strip())
        row = self.db.execute(f"SELECT id FROM {table} WHERE {column} = ?", (value,)).fetchone()
        if row is None:
            raise NarrowError(f"unknown {what} {excerpt(str(operand))}")
        return int(row["id"])


def _own_flags(db: sqlite3.Connection, user_id: int, message_ids: Sequence[int]) -> dict[int, list[str]]:
    """The user's flags on those of ``message_ids`` they have, by message id."""
    rows = db.execute("SELECT message_id, flags FROM user_messages WHERE user_id = ? AND message_id IN"
                      f" ({','.join('?' * len(message_ids))})", (user_id, *message_ids))
    return {row["message_id"]: codec.decode(row["flags"]) for row in rows}


def _set_flag(db: sqlite3.Connection, user_id: int, own: Mapping[int, list[str]], flag: str, on: bool) -> list[int]:
    """Add or remove ``flag`` where the user's flags (``own``, by message id) need it; the ids changed, sorted."""
    changed = sorted(i for i, flags in own.items() if (flag in flags) != on)
    db.executemany("UPDATE user_messages SET flags = ? WHERE user_id = ? AND message_id = ?", [
        (codec.encode([*own[i], flag] if on else [f for f in own[i] if f != flag]).decode(), user_id, i)
        for i in changed])
    return changed


def _left_streams(db: sqlite3.Connection, user_id: int, message_ids: Sequence[int]) -> dict[int, int]:
    """Those of the messages sent to a stream the user is no longer subscribed to: message id -> stream id."""
    rows = db.execute("SELECT id, stream_id FROM messages WHERE stream_id IS NOT NULL AND id IN"
                      f" ({','.join('?' * len(message_ids))}) AND stream_id NOT IN"
                      " (SELECT stream_id FROM subscriptions WHERE user_id = ?)", (*message_ids, user_id))
    return {row["id"]: row["stream_id"] for row in rows}


def _unread_details(db: sqlite3.Connection, user_id: int, message_id: int, flags: list[str]) -> dict[str, Any]:
    """Zulip's ``message_details`` entry of a message marked unread: where it is, and whether it mentions the
    user, for the client's unread counts."""
    row = db.execute("SELECT type, stream_id, subject, display_recipient FROM messages WHERE id = ?",
                     (message_id,)).fetchone()
    details: dict[str, Any] = {"type": row["type"]}
    if row["type"] == "stream":
        details.update(stream_id=row["stream_id"], topic=row["subject"])
    else:
        details["user_ids"] = sorted(u["id"] for u in codec.decode(row["display_recipient"]) if u["id"] != user_id)
    if any(f in MENTION_FLAGS for f in flags):
        details["mentioned"] = True
    return details


def _bounded(value: int) -> int:
    """An id from a request, within what SQLite can bind (a larger one matches nothing anyway)."""
    return max(-1, min(value, LARGER_THAN_MAX_MESSAGE_ID))


def _recipient_id(db: sqlite3.Connection, key: str, create: bool = False) -> int | None:
    """The id of the recipient ``key`` (``stream:<id>`` or ``private:<ids>``); None if it has no message yet."""
    if create:
        db.execute("INSERT OR IGNORE INTO recipients (key) VALUES (?)", (key,))
    row = db.execute("SELECT id FROM recipients WHERE key = ?", (key,)).fetchone()
    return int(row["id"]) if row else None


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a database made by an older release up to this one (idempotent; under the write lock)."""
    columns = {row["name"] for row in db.execute("PRAGMA table_info(messages)")}
    for name, declaration in ADDED_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE messages ADD COLUMN {name} {declaration}")
    for row in db.execute("SELECT id, stream_id, display_recipient FROM messages WHERE recipient_id IS NULL")\
            .fetchall():
        key = (f"stream:{row['stream_id']}" if row["stream_id"] is not None else
               "private:" + ",".join(str(u["id"]) for u in sorted(codec.decode(row["display_recipient"]),
                                                                   key=lambda u: int(u["id"]))))
        db.execute("UPDATE messages SET recipient_id = ? WHERE id = ?", (_recipient_id(db, key, create=True),
                                                                         row["id"]))
    had_index = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone() is not None
    for statement in INDEXES:
        db.execute(statement)
    if not had_index:  # messages stored before the index existed
        db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


#: A message's columns and its sender's, for ``_message``.
_MESSAGE_COLUMNS = "m.*, u.email, u.full_name"


def _reactions(db: sqlite3.Connection, message_ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], ...]]:
    """The reactions to these messages (by message id; none: no key), oldest first: one query by primary key."""
    found: dict[int, list[dict[str, Any]]] = {}
    rows = db.execute("SELECT rowid, * FROM reactions WHERE message_id IN"
                      f" ({','.join('?' * len(message_ids))}) ORDER BY rowid", tuple(message_ids))
    for row in rows:
        found.setdefault(row["message_id"], []).append(
            {"emoji_name": row["emoji_name"], "emoji_code": row["emoji_code"],
             "reaction_type": row["reaction_type"], "user_id": row["user_id"]})
    return {message_id: tuple(reactions) for message_id, reactions in found.items()}


def _message(row: sqlite3.Row, flags: Mapping[int, list[str]],
             reactions: Mapping[int, tuple[dict[str, Any], ...]] | None = None) -> StoredMessage:
    return StoredMessage(
        id=row["id"], request_id=row["request_id"], sender_id=row["sender_id"], sender_email=row["email"],
        sender_full_name=row["full_name"], type=row["type"],
        display_recipient=codec.decode(row["display_recipient"]),
        subject=row["subject"], content=row["content"], rendered_content=row["rendered_content"],
        timestamp=row["timestamp"], delivered=bool(row["delivered"]), flags=flags,
        recipient_id=row["recipient_id"], stream_id=row["stream_id"], client=row["client"],
        last_edit_timestamp=row["last_edit_timestamp"], reactions=(reactions or {}).get(row["id"], ()),
    )


def _stream(row: sqlite3.Row) -> Stream:
    return Stream(row["id"], row["name"], row["email_token"], row["date_created"])
