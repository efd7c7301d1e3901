"""The user store: who may connect, and with which API key. SQLite, one file under var/.

Shared by the Tornado server (authentication) and the processors (senders,
recipients, mentions). Every method opens its own short connection, so the
store is safe from any thread and any process; the Tornado server calls it
from its executor, never from the IOLoop.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from eventbus import sqlite

#: A plain check: something@something.something, no spaces. Real validation is sending mail.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
#: Zulip's role of every user here: a member. There are no owners, administrators, moderators or guests.
MEMBER_ROLE = 400
#: Nobody uploads an avatar here: every avatar is the first version of a Gravatar.
AVATAR_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    full_name TEXT NOT NULL,
    api_key TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    date_joined REAL NOT NULL
);
"""


class UserError(ValueError):
    """A user cannot be created as asked (bad email, taken email)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    full_name: str
    api_key: str
    is_active: bool = True
    date_joined: float = 0.0

    def public(self) -> dict[str, object]:
        """What other users may see."""
        return {"user_id": self.id, "email": self.email, "full_name": self.full_name}

    def api_object(self, client_gravatar: bool = False) -> dict[str, Any]:
        """The user as Zulip's API shows users (its ``User`` object), to every user alike: one organization, in
        which everyone sees everyone's email; nobody is a bot, and no custom profile fields exist. A client that
        computes Gravatars itself (``client_gravatar``) gets ``avatar_url`` null, as Zulip answers it."""
        return {
            "user_id": self.id, "delivery_email": self.email, "email": self.email, "full_name": self.full_name,
            "date_joined": datetime.datetime.fromtimestamp(self.date_joined, datetime.UTC).isoformat(),
            "is_active": self.is_active, "is_owner": False, "is_admin": False, "is_guest": False, "is_bot": False,
            "bot_type": None, "role": MEMBER_ROLE, "timezone": "",
            "avatar_url": None if client_gravatar else gravatar_url(self.email), "avatar_version": AVATAR_VERSION,
        }


def gravatar_url(email: str) -> str:
    """A user's avatar: no one uploads one here, so it is the Gravatar of their email, as Zulip makes it."""
    digest = hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()
    return f"https://secure.gravatar.com/avatar/{digest}?d=identicon&version={AVATAR_VERSION}"


class UserStore(sqlite.Store):
    """Users in a SQLite file."""

    SCHEMA = SCHEMA

    def create_user(self, email: str, full_name: str | None = None) -> User:
        """Create a user with a new random API key; UserError for a bad or taken email."""
        email = email.strip()
        if not EMAIL.fullmatch(email):
            raise UserError(f"not an email address: {email!r}")
        name = (full_name or email.split("@")[0]).strip()
        api_key = secrets.token_urlsafe(24)
        joined = time.time()
        try:
            with self._db() as db:
                cursor = db.execute(
                    "INSERT INTO users (email, full_name, api_key, date_joined) VALUES (?, ?, ?, ?)",
                    (email, name, api_key, joined),
                )
        except sqlite3.IntegrityError:
            raise UserError(f"a user with email {email!r} exists already") from None
        assert cursor.lastrowid is not None
        return User(cursor.lastrowid, email, name, api_key, date_joined=joined)

    def ensure_user(self, email: str, full_name: str | None = None) -> User:
        """The user with ``email``, created if there is none (idempotent)."""
        return self.get_by_email(email) or self.create_user(email, full_name)

    def get_by_email(self, email: str) -> User | None:
        return self._one("SELECT * FROM users WHERE email = ?", (email.strip(),))

    def get(self, user_id: int) -> User | None:
        return self._one("SELECT * FROM users WHERE id = ?", (user_id,))

    def get_by_full_name(self, full_name: str) -> User | None:
        return self._one("SELECT * FROM users WHERE full_name = ? COLLATE NOCASE AND is_active", (full_name,))

    def all(self) -> list[User]:
        with self._db() as db:
            return [_user(row) for row in db.execute("SELECT * FROM users ORDER BY id")]

    def active_ids(self, *, besides: int | None = None) -> list[int]:
        """The ids of the active users (but ``besides``), ascending."""
        with self._db() as db:
            return [row[0] for row in db.execute("SELECT id FROM users WHERE is_active AND id IS NOT ? ORDER BY id",
                                                 (besides,))]

    def authenticate(self, email: str, api_key: str) -> User | None:
        """The active user whose email and API key these are, else None (the key compared in constant time)."""
        # Bytes, not strings: compare_digest refuses non-ASCII strings (a TypeError, a 500, for any such key).
        given = api_key.encode("utf-8", "surrogatepass")
        user = self.get_by_email(email)
        if user is None or not user.is_active:
            hmac.compare_digest(given, given)  # the same work whether or not the email exists
            return None
        return user if hmac.compare_digest(user.api_key.encode(), given) else None

    def deactivate(self, user_id: int) -> bool:
        """Mark the user inactive (their API key stops working, their data stays); whether the user exists.

        Ending their sessions and connections is ``accounts.deactivate_user``'s: call that, not this alone.
        """
        with self._db(write=True) as db:
            return db.execute("UPDATE users SET is_active = 0 WHERE id = ?", (user_id,)).rowcount > 0

    def _one(self, sql: str, args: tuple[object, ...]) -> User | None:
        with self._db() as db:
            row = db.execute(sql, args).fetchone()
        return _user(row) if row else None


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["email"], row["full_name"], row["api_key"], bool(row["is_active"]), row["date_joined"])
