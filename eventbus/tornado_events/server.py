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
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback

from eventbus import __version__
from eventbus.messages import MessageStore
from eventbus.queue import Broker, MemoryTornadoClient, make_broker, tornado_client_for
from eventbus.settings import Settings
from eventbus.tornado_events.away import AwayNotifier
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.handlers import (
    SESSION_COOKIE,
    EventsHandler,
    LoginHandler,
    LogoutHandler,
    MessagesHandler,
    NotFoundHandler,
    NotifyHandler,
    PresenceHandler,
    RegisterHandler,
    ReportErrorHandler,
    ServerSettingsHandler,
)
from eventbus.tornado_events.notify import MESSAGE_SENDER_QUEUE, check_notice, notify_queue_name, return_queue_name
from eventbus.tornado_events.rate_limit import RateLimiter
from eventbus.tornado_events.websocket import EventSocket
from eventbus.users import User

logger = logging.getLogger(__name__)

#: How long an authenticated user is trusted before the store is asked again.
AUTH_CACHE_SECONDS = 60.0
#: How often the counted API requests go to user_activity, and how many events per loop iteration.
ACTIVITY_FLUSH_SECONDS = 5.0
ACTIVITY_SLICE = 100
#: Websocket close code: the server restarts (RFC 6455's registry).
SERVICE_RESTART = 1012
#: Browser error reports a user may send per minute.
REPORTS_PER_MINUTE = 10
#: Websocket keepalive: a ping this often, and the socket is dropped without a pong in time.
PING_INTERVAL = 25.0

#: How long a submitted request waits for the message_sender processor's answer.
REQUEST_TIMEOUT_SECONDS = 30.0
#: The answer a request gets when that time is up.
REQUEST_TIMED_OUT = {"result": "error", "code": "REQUEST_TIMEOUT",
                     "msg": "The message was queued but not processed in time"}

Responder = Callable[[Any], None]


class EventServer:
    """The state of one Tornado event process; see the module docstring."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.registry = ClientRegistry(settings.max_queue_events, settings.max_queue_bytes)
        self.queue_client = tornado_client_for(settings, broker, name=f"tornado {settings.server_id}")
        self.away = AwayNotifier(self.registry, self.queue_client.publish_nowait)
        self.registry.after_last_queue_expired.append(self.away.on_queues_expired)
        self.messages = MessageStore(settings.database)
        self.users = self.messages.users
        self.error_reports = RateLimiter(REPORTS_PER_MINUTE, 60.0)
        self.queues_file = Path(settings.var_dir) / "event_queues.json"
        self.pending: dict[str, Responder] = {}
        self.request_timeout = REQUEST_TIMEOUT_SECONDS
        self.sockets: dict[str, EventSocket] = {}
        self.started = time.time()
        self.slow_consumers_closed = 0
        self._auth_cache: dict[str, tuple[User, float]] = {}  # by Authorization header
        self._users_by_id: dict[int, tuple[User, float]] = {}
        self._gc: PeriodicCallback | None = None
        self._heartbeats: PeriodicCallback | None = None
        self._activity: dict[tuple[int, str, str], tuple[int, float]] = {}
        self._activity_flush: PeriodicCallback | None = None
        if settings.shared_secret:
            secret = settings.shared_secret.encode()
            self.cookie_secret = hmac.new(secret, b"session cookies", hashlib.sha256).hexdigest()
        else:
            logger.warning("no shared_secret in %s: sessions last until restart, /api/internal is closed",
                           settings.secrets_file)
            self.cookie_secret = secrets.token_hex(32)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Restore saved queues, start consuming, start collecting expired queues. Call inside the IOLoop."""
        restored = self.registry.load(self.queues_file)
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
        now = time.monotonic()
        self._auth_cache = {key: entry for key, entry in self._auth_cache.items() if entry[1] > now}
        self._users_by_id = {key: entry for key, entry in self._users_by_id.items() if entry[1] > now}

    async def shutdown(self) -> None:
        """Save every queue, close the websockets (1012: come back soon), then close the queue client."""
        if self._gc is not None:
            self._gc.stop()
        if self._heartbeats is not None:
            self._heartbeats.stop()
        if self._activity_flush is not None:
            self._activity_flush.stop()
        self.flush_activity(at_once=True)
        for socket in list(self.sockets.values()):
            socket.close(SERVICE_RESTART, "the server is restarting; reconnect and resume")
        saved = self.registry.dump(self.queues_file)
        logger.info("saved %d event queue(s) to %s", saved, self.queues_file)
        await self.queue_client.close()

    # -- queues in and out ----------------------------------------------------------

    def on_notice(self, notice: Any) -> None:
        """Invoked for each notify_tornado event."""
        self.notify(notice)

    def notify(self, notice: Any) -> int:
        """A notice, from notify_tornado or POSTed: queue its event for every client that wants it, and
        notify its away recipients. How many clients got it; ValueError for a bad notice."""
        event, users = check_notice(notice)
        delivered = self.registry.deliver(event, users)
        self.away.on_message(event, users)
        return delivered

    def on_return(self, message: Any) -> None:
        """Invoked for each answer a processor put on the return queue."""
        if not isinstance(message, dict) or not isinstance(message.get("request_id"), str):
            raise ValueError("a return message must be an object with a 'request_id'")
        responder = self.pending.pop(message["request_id"], None)
        if responder is None:
            logger.info("answer to request %s came after its requester left", message["request_id"])
            return
        responder(message.get("response"))

    async def submit(self, user: User, request: dict[str, Any], respond: Responder, **tags: Any) -> str:
        """Send a client's request to the message_sender processor; ``respond`` gets its answer, once.

        Without an answer within ``request_timeout`` seconds, ``respond`` gets
        a ``REQUEST_TIMEOUT`` error instead, and the request is forgotten (a
        late answer is logged and dropped).
        """
        request_id = str(uuid.uuid4())
        self.pending[request_id] = respond
        try:
            await self.queue_client.publish(MESSAGE_SENDER_QUEUE, {
                "request_id": request_id, "server_id": self.settings.server_id,
                "return_queue": return_queue_name(self.settings.server_id),
                "user_id": user.id, "request": request, **tags,
            })
        except Exception:
            self.pending.pop(request_id, None)
            raise
        IOLoop.current().call_later(self.request_timeout, self._expire, request_id)
        return request_id

    def _expire(self, request_id: str) -> None:
        respond = self.pending.pop(request_id, None)
        if respond is not None:
            logger.warning("request %s got no answer from %s within %.0f s", request_id, MESSAGE_SENDER_QUEUE,
                           self.request_timeout)
            respond(dict(REQUEST_TIMED_OUT))

    def monitoring_broker(self) -> Broker:
        """A blocking broker for reading queue depths (in an executor): the in-process one this server uses,
        or one on this server's RabbitMQ."""
        if isinstance(self.queue_client, MemoryTornadoClient):
            return self.queue_client.broker
        return make_broker(self.settings)

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
        events = [{"user_id": user_id, "client": client, "query": query, "time": last, "count": count}
                  for (user_id, client, query), (count, last) in activity.items()]
        if at_once:
            for event in events:
                self.queue_client.publish_nowait("user_activity", event)
        else:
            self._publish_activity(events, 0)

    def _publish_activity(self, events: list[dict[str, Any]], start: int) -> None:
        for event in events[start:start + ACTIVITY_SLICE]:
            self.queue_client.publish_nowait("user_activity", event)
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
        user = await self.authenticate(email, api_key) if sep else None
        if user is not None:
            user = without_secret(user)
            self._auth_cache[header] = (user, time.monotonic() + AUTH_CACHE_SECONDS)
        return user

    def start_session(self, handler: tornado.web.RequestHandler, user: User) -> None:
        handler.set_signed_cookie(SESSION_COOKIE, str(user.id), httponly=True, samesite="Lax")

    async def session_user(self, handler: tornado.web.RequestHandler) -> User | None:
        raw = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=30)
        if raw is None:
            return None
        try:
            user_id = int(raw)
        except ValueError:
            return None
        cached = self._users_by_id.get(user_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        user = await IOLoop.current().run_in_executor(None, self.users.get, user_id)
        if user is None or not user.is_active:
            return None
        user = without_secret(user)
        self._users_by_id[user_id] = (user, time.monotonic() + AUTH_CACHE_SECONDS)
        return user


def without_secret(user: User) -> User:
    """The user as the server keeps it for a while: handlers never need the API key once it was checked."""
    return User(user.id, user.email, user.full_name, "", user.is_active)


def make_app(server: EventServer, extra_handlers: list[Any] | None = None) -> tornado.web.Application:
    """The Tornado application: every URL of the event server."""
    api = {"server": server, "auth": "api"}
    session = {"server": server, "auth": "session"}
    handlers: list[Any] = [
        (r"/api/v1/register", RegisterHandler, api),
        (r"/json/register", RegisterHandler, session),
        (r"/api/v1/events", EventsHandler, api),
        (r"/json/events", EventsHandler, session),
        (r"/json/events/websocket", EventSocket, {"server": server}),
        (r"/api/internal/notify_tornado", NotifyHandler, {"server": server, "auth": "internal"}),
        (r"/api/v1/messages", MessagesHandler, api),
        (r"/json/messages", MessagesHandler, session),
        (r"/json/report/error", ReportErrorHandler, session),
        (r"/json/users/me/presence", PresenceHandler, session),
        (r"/api/v1/users/me/presence", PresenceHandler, api),
        (r"/api/v1/server_settings", ServerSettingsHandler, {"server": server, "auth": "none"}),
        (r"/accounts/login", LoginHandler, {"server": server, "auth": "none"}),
        (r"/accounts/logout", LogoutHandler, {"server": server, "auth": "none"}),
        *(extra_handlers or []),
    ]
    return tornado.web.Application(
        handlers,
        cookie_secret=server.cookie_secret,
        default_handler_class=NotFoundHandler,
        default_handler_args={"server": server, "auth": "none"},
        websocket_ping_interval=PING_INTERVAL,
        websocket_ping_timeout=PING_INTERVAL,
        websocket_max_message_size=1 << 20,
    )


#: Makes more URL specs for a server (the metrics, the web pages), so the layers above plug in.
ExtraHandlers = Callable[[EventServer], list[Any]]


async def serve(settings: Settings, port: int, host: str = "127.0.0.1", broker: Broker | None = None,
                extra_handlers: ExtraHandlers | None = None) -> None:
    """Run the event server until SIGTERM or SIGINT, then save the queues and return."""
    server = EventServer(settings, broker)
    server.start()
    http = HTTPServer(make_app(server, extra_handlers(server) if extra_handlers else None), xheaders=False)
    http.listen(port, address=host)
    logger.info("event server %s listening on http://%s:%d", settings.server_id, host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info("%s: saving the event queues and exiting", signal.Signals(signum).name)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stopping.wait()
    http.stop()  # no new connections
    await server.shutdown()
