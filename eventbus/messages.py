"""The message store: streams, their subscribers, messages and who received them. SQLite.

It shares the users' database file (``EVENTBUS_DATABASE``). A message is
stored with the id of the request that sent it, once: storing the same
request again returns the message already stored, which is how a redelivered
``message_sender`` event never makes a second message.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventbus import codec, sqlite
from eventbus.users import UserStore

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
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS user_messages (
    user_id INTEGER NOT NULL REFERENCES users(id),
    message_id INTEGER NOT NULL REFERENCES messages(id),
    flags TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX IF NOT EXISTS user_messages_by_message ON user_messages(message_id);
"""


@dataclass(frozen=True)
class Stream:
    id: int
    name: str
    email_token: str


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored, with what a message event needs."""

    id: int
    request_id: str | None
    sender_id: int
    sender_email: str
    sender_full_name: str
    type: str
    display_recipient: Any  # the stream's name, or the private recipients as [{"id", "email", "full_name"}]
    subject: str
    content: str
    rendered_content: str
    timestamp: float
    delivered: bool
    flags: Mapping[int, list[str]]  # recipient user id -> flags

    def event_message(self) -> dict[str, Any]:
        """The ``message`` of a message event, with both contents (Tornado picks one per client)."""
        return {
            "id": self.id, "sender_id": self.sender_id, "sender_email": self.sender_email,
            "sender_full_name": self.sender_full_name, "type": self.type,
            "display_recipient": self.display_recipient, "subject": self.subject,
            "timestamp": int(self.timestamp), "content": self.content, "rendered_content": self.rendered_content,
        }


class MessageStore(sqlite.Store):
    """Streams and messages in SQLite; safe from any thread and process."""

    SCHEMA = SCHEMA

    def __init__(self, path: Path | str) -> None:
        self.users = UserStore(path)
        super().__init__(path)

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

    def store(self, *, request_id: str | None, sender_id: int, type: str, stream: Stream | None,
              display_recipient: Any, subject: str, content: str, rendered_content: str,
              flags: Mapping[int, list[str]]) -> StoredMessage:
        """Store a message for its recipients (``flags``: recipient id -> flags), once per request id."""
        with self._db() as db:
            if request_id is not None:
                row = db.execute("SELECT id FROM messages WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return self._stored(db, row["id"])
            cursor = db.execute(
                "INSERT INTO messages (request_id, sender_id, type, stream_id, display_recipient, subject, content,"
                " rendered_content, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, sender_id, type, stream.id if stream else None, codec.encode(display_recipient),
                 subject, content, rendered_content, time.time()),
            )
            message_id = cursor.lastrowid
            db.executemany("INSERT INTO user_messages (user_id, message_id, flags) VALUES (?, ?, ?)",
                           [(uid, message_id, codec.encode(f).decode()) for uid, f in flags.items()])
            return self._stored(db, message_id)

    def mark_delivered(self, message_id: int) -> None:
        with self._db() as db:
            db.execute("UPDATE messages SET delivered = 1 WHERE id = ?", (message_id,))

    def topic_participants(self, stream_id: int, topic: str) -> set[int]:
        """Who has sent to this topic (Zulip's topic participants, whom ``@**topic**`` mentions)."""
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT sender_id FROM messages WHERE stream_id = ? AND subject = ?"
                              " COLLATE NOCASE", (stream_id, topic))
            return {row[0] for row in rows}

    def get(self, message_id: int) -> StoredMessage | None:
        with self._db() as db:
            return self._load(db, message_id)

    def recent(self, user_id: int, num_before: int = 50) -> list[dict[str, Any]]:
        """The user's latest ``num_before`` messages, oldest first, as the messages API shows them.

        One query, with the user's own flags only: loading each message with every recipient's flags cost
        two queries a message and a thousand flag rows for a message to a stream of a thousand.
        """
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS}, um.flags AS own_flags FROM user_messages um"
                " JOIN messages m ON m.id = um.message_id JOIN users u ON u.id = m.sender_id"
                " WHERE um.user_id = ? ORDER BY um.message_id DESC LIMIT ?", (user_id, num_before)).fetchall()
        return [{**_message(row, {}).event_message(), "flags": codec.decode(row["own_flags"])}
                for row in reversed(rows)]

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


#: A message's columns and its sender's, for ``_message``.
_MESSAGE_COLUMNS = "m.*, u.email, u.full_name"


def _message(row: sqlite3.Row, flags: Mapping[int, list[str]]) -> StoredMessage:
    return StoredMessage(
        id=row["id"], request_id=row["request_id"], sender_id=row["sender_id"], sender_email=row["email"],
        sender_full_name=row["full_name"], type=row["type"],
        display_recipient=codec.decode(row["display_recipient"]),
        subject=row["subject"], content=row["content"], rendered_content=row["rendered_content"],
        timestamp=row["timestamp"], delivered=bool(row["delivered"]), flags=flags,
    )


def _stream(row: sqlite3.Row) -> Stream:
    return Stream(row["id"], row["name"], row["email_token"])
