"""Browser sessions, server-side, and the CSRF token bound to each.

A session id is 32 random bytes (``secrets.token_urlsafe``): unguessable, so
the id itself is the credential and the cookie needs no signature (a
signature would only prove that this server made a value nobody can guess
anyway). The database keeps the id's SHA-256, never the id: a copy of the
database (a backup, a leaked file) holds no usable session.

A session lasts a fixed ``EVENTBUS_SESSION_LIFETIME_SECONDS`` from login
(14 days by default), not renewed by use: a stolen cookie is worth a bounded
time whatever its thief does. Logout ends one session, deactivation all of a
user's; expired rows are deleted at the next login.

The CSRF token of a session is an HMAC of its id under a key derived from the
server's secret: a page reads it (``/accounts/login`` answers it, the pages
set it as the ``csrftoken`` cookie) and sends it back as ``X-CSRFToken``.
Another site can neither read it nor compute it, and planting a cookie of its
own choosing does not help: the token is checked against the session, not
against a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select

from eventbus.database import Store
from eventbus.schema import sessions

#: Random bytes in a session id: as many as a SHA-256 key, beyond any guessing.
SESSION_ID_BYTES = 32
#: A longer cookie is no session id of ours: refused before any hashing or database lookup.
MAX_SESSION_ID_LENGTH = 64
#: The read of every request with a session cookie (not cached yet), built once: building a statement costs more
#: than running it.
_LIVE = select(sessions.c.user_id, sessions.c.expires).where(sessions.c.id_hash == bindparam("id_hash"),
                                                            sessions.c.expires > bindparam("now"))

def session_key(session_id: str) -> str:
    """What the database (and a server's cache) knows a session by: the SHA-256 of its id."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A session just started: the id goes into the cookie, which expires when the session does."""

    id: str
    user_id: int
    expires: float


class SessionStore(Store):
    """Sessions in the database of the users (see the module docstring)."""

    def start(self, user_id: int, lifetime_seconds: float) -> Session:
        """A new session of ``user_id`` for ``lifetime_seconds``; expired sessions of anyone are deleted."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = time.time()
        with self._db(write=True) as db:
            db.execute(delete(sessions).where(sessions.c.expires <= now))
            db.execute(insert(sessions).values(id_hash=session_key(session_id), user_id=user_id, created=now,
                                               expires=now + lifetime_seconds))
        return Session(session_id, user_id, now + lifetime_seconds)

    def live(self, session_id: str) -> tuple[int, float] | None:
        """The user and expiry time of a live session, else None (unknown, ended or expired)."""
        if not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
            return None
        with self._db() as db:
            row = db.execute(_LIVE, {"id_hash": session_key(session_id), "now": time.time()}).first()
        return (int(row.user_id), float(row.expires)) if row else None

    def end(self, session_id: str) -> bool:
        """End one session (logout); whether it was there."""
        with self._db(write=True) as db:
            return db.execute(delete(sessions).where(sessions.c.id_hash == session_key(session_id))).rowcount > 0

    def end_all(self, user_id: int) -> int:
        """End every session of ``user_id`` (deactivation); how many there were."""
        with self._db(write=True) as db:
            return int(db.execute(delete(sessions).where(sessions.c.user_id == user_id)).rowcount)


class CsrfTokens:
    """The CSRF token of a session: an HMAC-SHA256 of the session id, checked in constant time."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own: a token reveals nothing about the secret the cookies or internal endpoints use.
        self._key = hmac.new(secret, b"eventbus csrf tokens", hashlib.sha256).digest()

    def token(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def check(self, session_id: str, given: str) -> bool:
        """Whether ``given`` is the token of ``session_id`` (any string: bytes are compared, never str)."""
        return hmac.compare_digest(self.token(session_id).encode(), given.encode("utf-8", "surrogatepass"))
