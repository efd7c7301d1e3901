"""The Tornado event server: one process holding every client's event queue.

``EventServer`` owns the clients, the users cache, the queue client (which
consumes ``notify_tornado`` and the return queue inside the IOLoop) and the
requests waiting for a processor's answer. ``make_app`` maps the URLs to the
handlers; ``serve`` runs it all until SIGTERM or SIGINT, then stops
accepting, saves every queue to ``<var>/event_queues.json`` and exits. The
next start restores them, each with a ``restart`` event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback

from eventbus import __version__
from eventbus.accounts import deactivated_user
from eventbus.contracts import (
    MESSAGE_SENDER,
    USER_ACTIVITY,
    MessageRequest,
    MessageResponse,
    Notice,
    UserActivity,
    notify_queue_name,
    return_queue_name,
)
from eventbus.messages import MessageStore
from eventbus.queue import Broker, MemoryTornadoClient, make_broker, tornado_client_for
from eventbus.sessions import CsrfTokens, SessionStore, session_key
from eventbus.settings import Settings
from eventbus.tornado_events.away import AwayNotifier
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor
from eventbus.tornado_events.handlers import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    EventsHandler,
)
from eventbus.tornado_events.rate_limit import RateLimits
from eventbus.tornado_events.websocket import SESSION_ENDED, EventSocket
from eventbus.users import User

logger = logging.getLogger(__name__)

#: How long an authenticated user is trusted before the store is asked again. Logout and deactivation
#: end the trust at once (``end_session``, ``forget_user``); this bounds what a missed notice could leave.
AUTH_CACHE_SECONDS = 60.0
#: How often the counted API requests go to user_activity, and how many events per loop iteration.
ACTIVITY_FLUSH_SECONDS = 5.0
ACTIVITY_SLICE = 100
#: Websocket close code: the server restarts (RFC 6455's registry).
SERVICE_RESTART = 1012

#: How long a stopping server waits for its answers to be written, its websockets to close and message_sender to
#: answer the requests it was sent: clients resume either way, this only spares them a retry.
SHUTDOWN_GRACE_SECONDS = 5.0
#: How often it looks.
SHUTDOWN_POLL_SECONDS = 0.02

#: How long a submitted request waits for the message_sender processor's answer.
REQUEST_TIMEOUT_SECONDS = 30.0
#: The answer a request gets when that time is up.
REQUEST_TIMED_OUT = {"result": "error", "code": "REQUEST_TIMEOUT",
                     "msg": "The message was queued but not processed in time"}

Responder = Callable[[Any], None]
T = TypeVar("T")


class EventServer:
    """The state of one Tornado event process; see the module docstring."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.registry = ClientRegistry(settings.max_queue_events, settings.max_queues_per_user)
        self.queue_client = tornado_client_for(settings, broker, name=f"tornado {settings.server_id}")
        self.away = AwayNotifier(self.registry, self.queue_client.publish_nowait)
        self.registry.after_last_queue_expired.append(self.away.on_queues_expired)
        self.messages = MessageStore(settings.database)
        self.users = self.messages.users
        self.rate_limits = RateLimits.from_settings(settings)
        self.queues_file = Path(settings.var_dir) / "event_queues.json"
        self.pending: dict[str, Responder] = {}
        self.request_timeout = REQUEST_TIMEOUT_SECONDS
        self.sockets: dict[str, EventSocket] = {}
        self.started = time.time()
        self.slow_consumers_closed = 0
        self.sessions = SessionStore(settings.database)
        #: Set once shutdown() stopped consuming: no request is held from then on.
        self.stopping = False
        self._auth_cache: dict[str, tuple[User, float]] = {}  # by Authorization header
        self._session_cache: dict[str, tuple[User, float]] = {}  # by session key (the id's hash)
        # Bumped whenever trust is withdrawn: a lookup under way then is asked again (see _fresh).
        self._auth_epoch = 0
        self._gc: PeriodicCallback | None = None
        self._heartbeats: PeriodicCallback | None = None
        self._activity: dict[tuple[int, str, str], tuple[int, float]] = {}
        self._activity_flush: PeriodicCallback | None = None
        if settings.shared_secret:
            secret = settings.shared_secret.encode()
            self.cookie_secret = hmac.new(secret, b"session cookies", hashlib.sha256).hexdigest()
        else:
            logger.warning("no shared_secret in %s: CSRF tokens change at each restart (open pages must be "
                           "reloaded), /api/internal is closed", settings.secrets_file)
            self.cookie_secret = secrets.token_hex(32)
        self.csrf = CsrfTokens(self.cookie_secret.encode())

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Restore saved queues, start consuming, start collecting expired queues. Call inside the IOLoop."""
        restored = self.registry.load(self.queues_file, self.restart_event())
        if restored:
            logger.info("restored %d event queue(s) from %s", restored, self.queues_file)
        self.queue_client.consume(notify_queue_name(self.settings.server_id), self.on_notice)
        self.queue_client.consume(return_queue_name(self.settings.server_id), self.on_return)
        self.queue_client.start()
        self._gc = PeriodicCallback(self._collect_garbage, self.settings.queue_gc_seconds * 1000)
        self._gc.start()
        self._heartbeats = PeriodicCallback(self._send_heartbeats, self.settings.heartbeat_seconds * 100)
        self._heartbeats.start()
        self._activity_flush = PeriodicCallback(self.flush_activity, ACTIVITY_FLUSH_SECONDS * 1000)
        self._activity_flush.start()

    def _send_heartbeats(self) -> None:
        self.registry.send_heartbeats(self.settings.heartbeat_seconds)

    def _collect_garbage(self) -> None:
        self.registry.collect_garbage()
        self.rate_limits.forget_refilled()
        now = time.monotonic()
        self._auth_cache = {key: entry for key, entry in self._auth_cache.items() if entry[1] > now}
        self._session_cache = {key: entry for key, entry in self._session_cache.items() if entry[1] > now}

    async def shutdown(self, http: HTTPServer | None = None) -> None:
        """Stop in the order that neither loses nor repeats an event for any client (SIGTERM, SIGINT).

        1. Stop accepting connections (``http``), and the timers.
        2. Stop consuming notify_tornado: no event comes into a client queue after
           this, and what came is acked; deliveries read but not handed out go back
           to RabbitMQ, for the next process.
        3. Stop answering: every held GET gets a heartbeat (Zulip clients poll again at
           once, and the next process answers), every websocket a 1012 close (reconnect);
           requests waiting for message_sender get its answer while the return queue is
           still consumed (``SHUTDOWN_GRACE_SECONDS`` at most), then it stops too. Then
           every HTTP connection closes: no request can touch a queue any more.
        4. Save every queue that can be saved.
        5. Publish the activity counts, close the queue client.
        """
        for timer in (self._gc, self._heartbeats, self._activity_flush):
            if timer is not None:
                timer.stop()
        if http is not None:
            http.stop()
        await self.queue_client.stop_consuming([notify_queue_name(self.settings.server_id)])
        self.stopping = True
        answers = [w for w in (listener.restart(client) for client, listener in self._held_polls()) if w is not None]
        for socket in list(self.sockets.values()):
            socket.close(SERVICE_RESTART, "the server is restarting; reconnect and resume")
        await self._wait_stopped_answering(answers)
        await self.queue_client.stop_consuming([return_queue_name(self.settings.server_id)])
        for request_id in list(self.pending):
            self._expire(request_id)
        if http is not None:
            await http.close_all_connections()
        saved = self.registry.dump(self.queues_file)
        logger.info("saved %d event queue(s) to %s", saved, self.queues_file)
        self.flush_activity(at_once=True)
        await self.queue_client.close()

    def _held_polls(self) -> list[tuple[ClientDescriptor, EventsHandler]]:
        return [(client, client.listener) for client in self.registry if isinstance(client.listener, EventsHandler)]

    async def _wait_stopped_answering(self, answers: list[asyncio.Future[None]]) -> None:
        """Wait until the answers are written, the websockets closed and the submitted requests answered."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        if answers:
            await asyncio.wait(answers, timeout=SHUTDOWN_GRACE_SECONDS)
        while (self.sockets or self.pending) and time.monotonic() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_SECONDS)
        if self.sockets or self.pending:
            logger.warning("stopping with %d websocket(s) not closed and %d request(s) not answered by %s",
                           len(self.sockets), len(self.pending), MESSAGE_SENDER)

    # -- queues in and out ----------------------------------------------------------

    def on_notice(self, notice: Any) -> None:
        """Invoked for each notify_tornado event."""
        self.notify(notice)

    def notify(self, notice: Any) -> int:
        """A notice, from notify_tornado or POSTed: queue its event for every client that wants it, and
        notify its away recipients. How many clients got it; ContractError (a ValueError) for a bad notice."""
        checked = Notice.from_event(notice)
        event, users = checked.client_event, checked.users
        deactivated = deactivated_user(event)
        if deactivated is not None:
            self.forget_user(deactivated)
        delivered = self.registry.deliver(event, users)
        self.away.on_message(event, users)
        return delivered

    def on_return(self, message: Any) -> None:
        """Invoked for each answer a processor put on the return queue."""
        answer = MessageResponse.from_event(message)
        responder = self.pending.pop(answer.request_id, None)
        if responder is None:
            logger.info("answer to request %s came after its requester left", answer.request_id)
            return
        responder(answer.response)

    async def submit(self, user: User, request: dict[str, Any], respond: Responder, **tags: Any) -> str:
        """Send a client's request to the message_sender processor; ``respond`` gets its answer, once.

        Without an answer within ``request_timeout`` seconds, ``respond`` gets
        a ``REQUEST_TIMEOUT`` error instead, and the request is forgotten (a
        late answer is logged and dropped).
        """
        request_id = str(uuid.uuid4())
        server_id = self.settings.server_id
        submitted = MessageRequest(request_id, user.id, request, return_queue_name(server_id), server_id, **tags)
        self.pending[request_id] = respond
        try:
            await self.queue_client.publish(MESSAGE_SENDER, submitted.event())
        except Exception:
            self.pending.pop(request_id, None)
            raise
        IOLoop.current().call_later(self.request_timeout, self._expire, request_id)
        return request_id

    def _expire(self, request_id: str) -> None:
        respond = self.pending.pop(request_id, None)
        if respond is not None:
            logger.warning("request %s got no answer from %s within %.0f s", request_id, MESSAGE_SENDER,
                           self.request_timeout)
            respond(dict(REQUEST_TIMED_OUT))

    def monitoring_broker(self) -> Broker:
        """A blocking broker for reading queue depths (in an executor): the in-process one this server uses,
        or one on this server's RabbitMQ."""
        if isinstance(self.queue_client, MemoryTornadoClient):
            return self.queue_client.broker
        return make_broker(self.settings)

    def restart_event(self) -> dict[str, Any]:
        """The event each restored queue gets first, as Zulip's: when this process started (whole seconds)."""
        return {"type": "restart", "server_generation": int(self.started), **self.server_settings()}

    def server_settings(self) -> dict[str, Any]:
        """This server's version, as Zulip clients ask for it."""
        return {"zulip_version": f"eventbus-{__version__}", "zulip_feature_level": 0}

    def record_activity(self, user: User, handler: tornado.web.RequestHandler) -> None:
        """Count an API request; the counts go to user_activity every few seconds (see flush_activity)."""
        # Interned: thousands of clients share a handful of user agents and paths.
        key = (user.id, sys.intern(handler.request.headers.get("User-Agent", "")[:100]),
               sys.intern(handler.request.path))
        count, _ = self._activity.get(key, (0, 0.0))
        self._activity[key] = (count + 1, time.time())

    def flush_activity(self, *, at_once: bool = False) -> None:
        """One user_activity event per user, client and query seen since the last flush, with its count.

        A publish per request cost a third of answering a long-poll (three frames and sends each).
        The events go out ``ACTIVITY_SLICE`` per loop iteration, so that a flush of
        thousands of users does not hold up the loop; at shutdown, all at once.
        """
        activity, self._activity = self._activity, {}
        events = [UserActivity(user_id, query, client, last, count).event()
                  for (user_id, client, query), (count, last) in activity.items()]
        if at_once:
            for event in events:
                self.queue_client.publish_nowait(USER_ACTIVITY, event)
        else:
            self._publish_activity(events, 0)

    def _publish_activity(self, events: list[dict[str, Any]], start: int) -> None:
        for event in events[start:start + ACTIVITY_SLICE]:
            self.queue_client.publish_nowait(USER_ACTIVITY, event)
        if start + ACTIVITY_SLICE < len(events):
            IOLoop.current().add_callback(self._publish_activity, events, start + ACTIVITY_SLICE)

    def initial_state(self, user: User) -> dict[str, Any]:
        """What register answers besides the queue: who the user is, and this server's version."""
        return {"user_id": user.id, "email": user.email, "full_name": user.full_name, **self.server_settings()}

    def statistics(self) -> dict[str, Any]:
        return {
            "clients": len(self.registry),
            "sockets": len(self.sockets),
            "long_polls": sum(1 for c in self.registry if isinstance(c.listener, EventsHandler)),
            "events_delivered": self.registry.events_delivered,
            "pending_requests": len(self.pending),
            "slow_consumers_closed": self.slow_consumers_closed,
            "queue_client": self.queue_client.statistics(),
        }

    # -- authentication -------------------------------------------------------------

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

    async def _fresh(self, lookup: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The answer of ``lookup`` (a store read in the executor), and whether it may be cached.

        A read that overlapped a withdrawal of trust (logout, deactivation) may
        have seen the store before it changed: it is asked again, and its
        answer is cached only if no other withdrawal overlapped that one.
        """
        epoch = self._auth_epoch
        found = await lookup()
        if epoch != self._auth_epoch:
            epoch = self._auth_epoch
            found = await lookup()
        return found, epoch == self._auth_epoch

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

    async def end_session(self, handler: tornado.web.RequestHandler) -> None:
        """Log out: the session is deleted, forgotten by this process, its websockets closed, its cookies cleared."""
        session_id = handler.get_cookie(SESSION_COOKIE)
        if session_id:
            await IOLoop.current().run_in_executor(None, self.sessions.end, session_id)
            key = session_key(session_id)
            self._withdraw_trust(lambda cached_key, _user: cached_key == key, "logged out")
        handler.clear_cookie(SESSION_COOKIE)
        handler.clear_cookie(CSRF_COOKIE)

    def forget_user(self, user_id: int) -> None:
        """A deactivated user: their queues dropped (held polls answered), sockets closed, credentials forgotten."""
        # Sockets first: a socket told its queue is gone would register a new one before it is closed.
        closed = self._withdraw_trust(lambda _key, user: user.id == user_id, "the user was deactivated")
        dropped = [client for client in self.registry if client.user_id == user_id]
        for client in dropped:
            self.registry.remove(client, "the user was deactivated")
        logger.info("user %d deactivated: %d event queue(s) dropped, %d websocket(s) closed", user_id, len(dropped),
                    closed)

    def _withdraw_trust(self, revoked: Callable[[str, User], bool], reason: str) -> int:
        """Forget every cached session and API key ``revoked`` (by cache key and user) and close the websockets
        opened with such a session; how many websockets were closed."""
        self._auth_epoch += 1
        self._auth_cache = {key: entry for key, entry in self._auth_cache.items() if not revoked(key, entry[0])}
        self._session_cache = {key: entry for key, entry in self._session_cache.items()
                               if not revoked(key, entry[0])}
        sockets = [socket for socket in self.sockets.values() if revoked(socket.session_key, socket.user)]
        for socket in sockets:
            socket.close(SESSION_ENDED, f"session ended: {reason}; log in again")
        return len(sockets)


def without_secret(user: User) -> User:
    """The user as the server keeps it for a while: handlers never need the API key once it was checked."""
    return User(user.id, user.email, user.full_name, "", user.is_active)
