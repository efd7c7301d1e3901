"""The user store: who may connect, and with which API key. The ``users`` table of ``EVENTBUS_DATABASE``.

Shared by the Tornado server (authentication) and the processors (senders,
recipients, mentions). Every method is one short transaction, so the store
is safe from any thread and any process; the Tornado server calls it from
its executor, never from the IOLoop. Emails are compared without case.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, bindparam, exc, func, insert, select, update

from eventbus.database import Store, ci_equal
from eventbus.schema import users
from eventbus.validation import is_id

#: A plain check: something@something.something, no spaces. Real validation is sending mail.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
#: Zulip's role of every user here: a member. There are no owners, administrators, moderators or guests.
MEMBER_ROLE = 400
#: Nobody uploads an avatar here: every avatar is the first version of a Gravatar.
AVATAR_VERSION = 1
#: The reads of every authentication and of every message's sender and recipients, built once: building a
#: statement costs more than running it.
_BY_ID = select(users).where(users.c.id == bindparam("value"))
_BY_EMAIL = select(users).where(ci_equal(users.c.email, bindparam("value")))
_ACTIVE_BY_FULL_NAME = select(users).where(ci_equal(users.c.full_name, bindparam("value")), users.c.is_active)
_BY_IDS = select(users).where(users.c.id.in_(bindparam("ids", expanding=True)))
_ACTIVE_BY_FULL_NAMES = select(users).where(func.lower(users.c.full_name).in_(bindparam("names", expanding=True)),
                                            users.c.is_active)


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


class UserStore(Store):
    """Users in the database (``eventbus.schema.users``)."""

    def create_user(self, email: str, full_name: str | None = None) -> User:
        """Create a user with a new random API key; UserError for a bad or taken email."""
        email = email.strip()
        if not EMAIL.fullmatch(email):
            raise UserError(f"not an email address: {email!r}")
        name = (full_name or email.split("@")[0]).strip()
        api_key = secrets.token_urlsafe(24)
        joined = time.time()
        try:
            with self._db(write=True) as db:
                user_id = db.scalar(insert(users).values(email=email, full_name=name, api_key=api_key,
                                                         date_joined=joined).returning(users.c.id))
        except exc.IntegrityError:
            raise UserError(f"a user with email {email!r} exists already") from None
        return User(user_id, email, name, api_key, date_joined=joined)

    def ensure_user(self, email: str, full_name: str | None = None) -> User:
        """The user with ``email``, created if there is none (idempotent)."""
        return self.get_by_email(email) or self.create_user(email, full_name)

    def get_by_email(self, email: str) -> User | None:
        email = email.strip()
        return self._remember(("user_by_email", email), lambda: self._one(_BY_EMAIL, email))

    def get(self, user_id: int) -> User | None:
        return self._remember(("user", user_id), lambda: self._one(_BY_ID, user_id))

    def get_by_full_name(self, full_name: str) -> User | None:
        return self._remember(("user_by_full_name", full_name), lambda: self._one(_ACTIVE_BY_FULL_NAME, full_name))

    def read_ahead(self, ids: Iterable[int] = (), full_names: Iterable[str] = ()) -> None:
        """Inside a ``remembering`` block, read these users in one query for the ids and one for the names, so that
        ``get`` and ``get_by_full_name`` then find them without a read each (a batch's senders, and the users its
        messages mention). A name that matches no active user, or several, is left to its own lookup."""
        ids, names = sorted({i for i in ids if is_id(i)}), sorted({n for n in full_names if "\x00" not in n})
        if not self._remembering or not (ids or names):
            return
        with self._db() as db:
            found = {row.id: _user(row) for row in db.execute(_BY_IDS, {"ids": ids})} if ids else {}
            named = list(db.execute(_ACTIVE_BY_FULL_NAMES, {"names": [n.lower() for n in names]})) if names else []
        for user_id in ids:
            self._keep(("user", user_id), found.get(user_id))
        for name in names:
            matches = [row for row in named if row.full_name.lower() == name.lower()]
            if len(matches) == 1:
                self._keep(("user_by_full_name", name), _user(matches[0]))

    def all(self) -> list[User]:
        with self._db() as db:
            return [_user(row) for row in db.execute(select(users).order_by(users.c.id))]

    def active_ids(self, *, besides: int | None = None) -> list[int]:
        """The ids of the active users (but ``besides``), ascending."""
        query = select(users.c.id).where(users.c.is_active).order_by(users.c.id)
        if besides is not None:
            query = query.where(users.c.id != besides)
        with self._db() as db:
            return list(db.scalars(query))

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
            return db.execute(update(users).where(users.c.id == user_id).values(is_active=False)).rowcount > 0

    def _one(self, query: Select[Any], value: object) -> User | None:
        with self._db() as db:
            row = db.execute(query, {"value": value}).first()
        return _user(row) if row else None


def _user(row: Row[Any]) -> User:
    return User(row.id, row.email, row.full_name, row.api_key, bool(row.is_active), row.date_joined)
