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
Zulip's API describes for them.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventbus import codec, sqlite
from eventbus.narrow import NarrowError, NarrowTerm, fts_query, highlight, highlight_text, search_words
from eventbus.users import UserStore
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
"""

#: Columns added to ``messages`` since its first release: a database made before gets them when opened.
ADDED_COLUMNS = {"recipient_id": "INTEGER REFERENCES recipients(id)", "client": "TEXT NOT NULL DEFAULT ''",
                 "last_edit_timestamp": "REAL"}

#: Flag tests on ``user_messages.flags`` (a JSON list of names), written once: a partial index is used only by
#: a query holding the very same test. ``mentioned"`` matches Zulip's wildcard mention flags too.
FLAG_TESTS = {"unread": """flags NOT LIKE '%"read"%'""", "starred": """flags LIKE '%"starred"%'""",
              "mentioned": """flags LIKE '%mentioned"%'""", "alerted": """flags LIKE '%"has_alert_word"%'"""}
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
#: The realm every sender is in: one organization, served at the root of its domain (Zulip's ``string_id``
#: of such a realm is the empty string).
REALM_STR = ""


def is_me_message(content: str) -> bool:
    """Whether a message is a ``/me`` status message, as Zulip decides: one line starting ``/me ``."""
    return content.startswith("/me ") and "\n" not in content


def gravatar_url(email: str) -> str:
    """The sender's avatar: no one uploads one here, so it is the Gravatar of their email, as Zulip makes it."""
    digest = hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()
    return f"https://secure.gravatar.com/avatar/{digest}?d=identicon&version=1"


@dataclass(frozen=True)
class Stream:
    id: int
    name: str
    email_token: str


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
            "is_me_message": is_me_message(self.content), "reactions": [], "submessages": [],
        }
        if self.stream_id is not None:
            fields["stream_id"] = self.stream_id
        if self.last_edit_timestamp is not None:
            fields["last_edit_timestamp"] = int(self.last_edit_timestamp)
        return fields


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
        name = name.strip()
        if not name or len(name) > 60 or any(c in name for c in "*`\n"):
            raise ValueError(f"invalid stream name {name!r}: 1 to 60 characters, no '*', '`' or newline")
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO streams (name, email_token, date_created) VALUES (?, ?, ?)",
                       (name, secrets.token_hex(8), time.time()))
            row = db.execute("SELECT * FROM streams WHERE name = ?", (name,)).fetchone()
            db.executemany("INSERT OR IGNORE INTO subscriptions (stream_id, user_id) VALUES (?, ?)",
                           [(row["id"], uid) for uid in subscriber_ids])
        return _stream(row)

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
        changed = []
        with self._db(write=True) as db:
            for message_id in message_ids:
                row = db.execute("SELECT flags FROM user_messages WHERE user_id = ? AND message_id = ?",
                                 (user_id, message_id)).fetchone()
                if row is None:
                    continue
                flags = codec.decode(row["flags"])
                if (flag in flags) != on:
                    flags = [*flags, flag] if on else [f for f in flags if f != flag]
                    db.execute("UPDATE user_messages SET flags = ? WHERE user_id = ? AND message_id = ?",
                               (codec.encode(flags).decode(), user_id, message_id))
                    changed.append(message_id)
        return changed

    def recent(self, user_id: int, num_before: int = 50) -> list[dict[str, Any]]:
        """The user's latest ``num_before`` messages, oldest first, as their events carried them, with their flags."""
        with self._db() as db:
            rows = _Narrow(db, user_id, ()).fetch("1", (), "DESC", num_before)
        return [{**_message(row, {}).event_message(), "flags": codec.decode(row["own_flags"])} for row in rows[::-1]]

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
        return _message(row, flags)


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
        return [_message(row, {}).history_message(codec.decode(row["own_flags"]), query.apply_markdown,
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


def _message(row: sqlite3.Row, flags: Mapping[int, list[str]]) -> StoredMessage:
    return StoredMessage(
        id=row["id"], request_id=row["request_id"], sender_id=row["sender_id"], sender_email=row["email"],
        sender_full_name=row["full_name"], type=row["type"],
        display_recipient=codec.decode(row["display_recipient"]),
        subject=row["subject"], content=row["content"], rendered_content=row["rendered_content"],
        timestamp=row["timestamp"], delivered=bool(row["delivered"]), flags=flags,
        recipient_id=row["recipient_id"], stream_id=row["stream_id"], client=row["client"],
        last_edit_timestamp=row["last_edit_timestamp"],
    )


def _stream(row: sqlite3.Row) -> Stream:
    return Stream(row["id"], row["name"], row["email_token"])
