"""Who is asking: API keys, browser sessions, CSRF tokens, the internal endpoint, and trust withdrawn.

A handler says how its requests authenticate with an ``Auth`` kind:
``API`` (HTTP Basic ``email:api_key``), ``SESSION`` (the session cookie, plus
the session's CSRF token in ``X-CSRFToken`` for anything but GET; see
``eventbus.sessions``), ``INTERNAL`` (loopback and the shared secret) or
``NONE``. The ``Authenticator`` answers for all of them.

The store is asked off the IOLoop, and its answers are trusted for
``AUTH_CACHE_SECONDS`` (never longer than a session lives). Logout and
deactivation end that trust at once (``end_session``, ``forget_user``): the
cached entries go, the websockets opened with the session close with
``SESSION_ENDED``, and a lookup that was under way while trust was withdrawn
is asked again (``_fresh``), so that it cannot cache what the store said
before.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import tornado.web
from tornado.ioloop import IOLoop

from eventbus.sessions import CsrfTokens, SessionStore, session_key
from eventbus.settings import Settings
from eventbus.tornado_events.sockets import OpenSockets
from eventbus.users import User, UserStore

logger = logging.getLogger(__name__)

#: How long an authenticated user is trusted before the store is asked again. Logout and deactivation
#: end the trust at once (``end_session``, ``forget_user``); this bounds what a missed notice could leave.
AUTH_CACHE_SECONDS = 60.0
#: The session id (HttpOnly), and the session's CSRF token for the pages' scripts (readable; Django's name).
SESSION_COOKIE = "eventbus_session"
CSRF_COOKIE = "csrftoken"
#: Websocket close code: the session this socket was opened with ended (4000 + HTTP's 401).
SESSION_ENDED = 4401

T = TypeVar("T")


class Auth(enum.Enum):
    """How a handler's requests authenticate (see the module docstring)."""

    API = "api"
    SESSION = "session"
    INTERNAL = "internal"
    NONE = "none"


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is this machine's loopback (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def without_secret(user: User) -> User:
    """The user as the server keeps it for a while: handlers never need the API key once it was checked."""
    return dataclasses.replace(user, api_key="")


class Authenticator:
    """API keys, sessions and CSRF tokens of one event process, with their caches. Use from the IOLoop only."""

    def __init__(self, settings: Settings, users: UserStore, sockets: OpenSockets) -> None:
        self.settings = settings
        self.users = users
        self.sessions = SessionStore(settings.database)
        self.sockets = sockets
        self._auth_cache: dict[str, tuple[User, float]] = {}  # by Authorization header
        self._session_cache: dict[str, tuple[User, float]] = {}  # by session key (the id's hash)
        # Bumped whenever trust is withdrawn: a lookup under way then is asked again (see _fresh).
        self._epoch = 0
        if settings.shared_secret:
            secret = settings.shared_secret.encode()
            self.cookie_secret = hmac.new(secret, b"session cookies", hashlib.sha256).hexdigest()
        else:
            logger.warning("no shared_secret in %s: CSRF tokens change at each restart (open pages must be "
                           "reloaded), /api/internal is closed", settings.secrets_file)
            self.cookie_secret = secrets.token_hex(32)
        self.csrf = CsrfTokens(self.cookie_secret.encode())

    # -- API keys -------------------------------------------------------------------

    async def authenticate(self, email: str, api_key: str) -> User | None:
        """The user these credentials are of; the store is asked off the IOLoop."""
        return await IOLoop.current().run_in_executor(None, self.users.authenticate, email, api_key)

    async def authenticate_basic(self, header: str) -> User | None:
        """The user of an ``Authorization: Basic`` header, cached a minute by the header itself.

        The header's own string is the key: the cache then holds no copy of
        the credentials, only a reference to a string every request of that
        client brings anyway.
        """
        cached = self._auth_cache.get(header)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            email, sep, api_key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        user, cacheable = await self._fresh(lambda: self.authenticate(email, api_key))
        if user is not None:
            user = without_secret(user)
            if cacheable:
                self._auth_cache[header] = (user, time.monotonic() + AUTH_CACHE_SECONDS)
        return user

    def secret_ok(self, given: str) -> bool:
        """Whether ``given`` is the shared secret (never, without one)."""
        secret = self.settings.shared_secret
        return bool(secret) and hmac.compare_digest(given.encode(), str(secret).encode())

    def internal_ok(self, handler: tornado.web.RequestHandler, given: str) -> bool:
        """Whether a request may use the internal endpoints: from loopback, with the shared secret."""
        return is_loopback(handler.request.remote_ip) and self.secret_ok(given)

    async def _fresh(self, lookup: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The answer of ``lookup`` (a store read in the executor), and whether it may be cached.

        A read that overlapped a withdrawal of trust (logout, deactivation) may
        have seen the store before it changed: it is asked again, and its
        answer is cached only if no other withdrawal overlapped that one.
        """
        epoch = self._epoch
        found = await lookup()
        if epoch != self._epoch:
            epoch = self._epoch
            found = await lookup()
        return found, epoch == self._epoch

    # -- sessions ---------------------------------------------------------------------

    async def start_session(self, handler: tornado.web.RequestHandler, user: User) -> str:
        """Log ``user`` in on ``handler``'s answer: a new session and its cookies; the session's CSRF token."""
        session = await IOLoop.current().run_in_executor(
            None, self.sessions.start, user.id, self.settings.session_lifetime_seconds)
        handler.set_cookie(SESSION_COOKIE, session.id, expires=session.expires, httponly=True, samesite="Lax",
                           secure=self.settings.secure_cookies)
        return self.set_csrf_cookie(handler, session.id)

    def set_csrf_cookie(self, handler: tornado.web.RequestHandler, session_id: str | None = None) -> str:
        """The ``csrftoken`` cookie the pages' scripts read (so not HttpOnly) and send back as X-CSRFToken.

        A cookie of the browser session: every page load sets it again, and it means nothing without its session.
        """
        token = self.csrf.token(session_id or handler.get_cookie(SESSION_COOKIE, ""))
        handler.set_cookie(CSRF_COOKIE, token, samesite="Lax", secure=self.settings.secure_cookies)
        return token

    def csrf_ok(self, handler: tornado.web.RequestHandler) -> bool:
        """Whether the request's X-CSRFToken is its session's token (the csrftoken cookie is not consulted)."""
        session_id = handler.get_cookie(SESSION_COOKIE)
        given = handler.request.headers.get("X-CSRFToken", "")
        return session_id is not None and self.csrf.check(session_id, given)

    async def session_user(self, handler: tornado.web.RequestHandler) -> User | None:
        """The active user of the request's session cookie, cached a while by the session's key."""
        session_id = handler.get_cookie(SESSION_COOKIE)
        if not session_id:
            return None
        key = session_key(session_id)
        cached = self._session_cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        found, cacheable = await self._fresh(
            lambda: IOLoop.current().run_in_executor(None, self._session_user, session_id))
        if found is None:
            return None
        user, expires = found
        if cacheable:  # and no longer than the session lives
            self._session_cache[key] = (user, time.monotonic() + min(AUTH_CACHE_SECONDS, expires - time.time()))
        return user

    def _session_user(self, session_id: str) -> tuple[User, float] | None:
        """In the executor: the session's user, if the session is live and the user active, and its expiry."""
        live = self.sessions.live(session_id)
        user = self.users.get(live[0]) if live is not None else None
        return (without_secret(user), live[1]) if live is not None and user is not None and user.is_active else None

    # -- trust withdrawn --------------------------------------------------------------

    async def end_session(self, handler: tornado.web.RequestHandler) -> str | None:
        """Log out: the session is deleted, forgotten by this process, its websockets closed, its cookies cleared;
        the session's key, for the other processes to forget it too (None without a session cookie)."""
        session_id = handler.get_cookie(SESSION_COOKIE)
        key = None
        if session_id:
            await IOLoop.current().run_in_executor(None, self.sessions.end, session_id)
            key = session_key(session_id)
            self.forget_session(key)
        handler.clear_cookie(SESSION_COOKIE)
        handler.clear_cookie(CSRF_COOKIE)
        return key

    def forget_session(self, key: str) -> int:
        """A session ended (here, or on another process: ``accounts.ended_session``): forgotten, its websockets
        closed; how many."""
        return self._withdraw_trust(lambda cached_key, _user: cached_key == key, "logged out")

    def forget_user(self, user_id: int) -> int:
        """A deactivated user: their sessions and API keys forgotten, their websockets closed; how many."""
        return self._withdraw_trust(lambda _key, user: user.id == user_id, "the user was deactivated")

    def _withdraw_trust(self, revoked: Callable[[str, User], bool], reason: str) -> int:
        """Forget every cached session and API key ``revoked`` (by cache key and user) and close the websockets
        opened with such a session; how many websockets were closed."""
        self._epoch += 1
        self._auth_cache = {key: entry for key, entry in self._auth_cache.items() if not revoked(key, entry[0])}
        self._session_cache = {key: entry for key, entry in self._session_cache.items()
                               if not revoked(key, entry[0])}
        return self.sockets.close(SESSION_ENDED, f"session ended: {reason}; log in again",
                                  lambda socket: revoked(socket.session_key, socket.user))

    def collect_garbage(self) -> None:
        """Forget the cached users whose time is up (called with the server's queue collection)."""
        now = time.monotonic()
        self._auth_cache = {key: entry for key, entry in self._auth_cache.items() if entry[1] > now}
        self._session_cache = {key: entry for key, entry in self._session_cache.items() if entry[1] > now}
