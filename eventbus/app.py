"""The event server's process: its URLs, its HTTP server, and ``serve`` until SIGTERM.

The top layer wires the components together: the event core
(``eventbus.tornado_events``) with the metrics, the web pages and the
development pages, served by one Tornado HTTP server. ``make_app`` hands
each handler, through Tornado's ``initialize``, the parts of the
``EventServer`` it uses (``handlers.handler_args`` for what every handler
gets) and the ``auth.Auth`` kind its requests authenticate by.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer

from eventbus.metrics import metrics_handlers
from eventbus.queue import Broker
from eventbus.settings import Settings
from eventbus.tornado_events.auth import Auth
from eventbus.tornado_events.body_limit import BodyLimit
from eventbus.tornado_events.channels_api import StreamsHandler, SubscriptionsHandler
from eventbus.tornado_events.handlers import (
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
    handler_args,
)
from eventbus.tornado_events.message_actions import (
    MarkAllAsReadHandler,
    MessageFlagsHandler,
    MessageHandler,
    ReactionsHandler,
)
from eventbus.tornado_events.proxies import ProxiedHTTPServer
from eventbus.tornado_events.server import EventServer
from eventbus.tornado_events.typing_notices import TypingHandler
from eventbus.tornado_events.users_api import OwnUserHandler, RealmPresenceHandler, UserHandler, UsersHandler
from eventbus.tornado_events.websocket import EventSocket
from eventbus.web import web_handlers
from eventbus.web.devtools import devtools_handlers

logger = logging.getLogger(__name__)

#: Websocket keepalive: a ping this often, and the socket is dropped without a pong in time.
PING_INTERVAL = 25.0
#: A request's body must arrive within this long: a sender trickling bytes holds a connection and a buffer.
BODY_TIMEOUT_SECONDS = 60.0
#: Room in the read buffer beyond the largest body, for the request's headers (Tornado's own header limit).
HEADER_BYTES = 64 * 1024


def extra_handlers(server: EventServer) -> list[Any]:
    """Everything the Tornado process serves besides the event API: metrics, web pages, development pages."""
    return [*metrics_handlers(server), *devtools_handlers(server), *web_handlers(server)]


def message_actions(server: EventServer) -> list[Any]:
    """Flags, edits, deletes and reactions, under /api/v1 and /json: each handed the submissions to
    message_actions."""
    specs = [(r"/messages/flags", MessageFlagsHandler), (r"/mark_all_as_read", MarkAllAsReadHandler),
             (r"/messages/([0-9]+)", MessageHandler), (r"/messages/([0-9]+)/reactions", ReactionsHandler)]
    return [(prefix + path, handler, handler_args(server, auth, submissions=server.submissions))
            for prefix, auth in (("/api/v1", Auth.API), ("/json", Auth.SESSION)) for path, handler in specs]


def zulip_api(server: EventServer) -> list[Any]:
    """The URL specs of Zulip's users, streams, presence and typing endpoints: each under /api/v1 (API keys)
    and /json (the pages' session)."""
    endpoints: list[tuple[str, Any, dict[str, Any]]] = [
        (r"/users", UsersHandler, {"users": server.messages.users}),
        (r"/users/me", OwnUserHandler, {"messages": server.messages}),
        (r"/users/([0-9]+)", UserHandler, {"users": server.messages.users}),
        (r"/realm/presence", RealmPresenceHandler, {"presence": server.presence}),
        (r"/streams", StreamsHandler, {"server": server}),
        (r"/users/me/subscriptions", SubscriptionsHandler, {"server": server}),
        (r"/typing", TypingHandler, {"server": server}),
    ]
    return [(prefix + path, handler, handler_args(server, auth, **more)) for path, handler, more in endpoints
            for prefix, auth in (("/api/v1", Auth.API), ("/json", Auth.SESSION))]


def make_app(server: EventServer, extra_handlers: list[Any] | None = None) -> tornado.web.Application:
    """The Tornado application: every URL of the event server, each handler handed what it uses."""
    args = functools.partial(handler_args, server)
    sending = {"submissions": server.submissions, "messages": server.messages}
    publish = server.queue_client.publish
    handlers: list[Any] = [
        (r"/api/v1/register", RegisterHandler, args(Auth.API, server=server)),
        (r"/json/register", RegisterHandler, args(Auth.SESSION, server=server)),
        (r"/api/v1/events", EventsHandler, args(Auth.API, server=server)),
        (r"/json/events", EventsHandler, args(Auth.SESSION, server=server)),
        (r"/json/events/websocket", EventSocket, {
            "server": server, "authenticator": server.authenticator, "rate_limits": server.rate_limits,
            "submissions": server.submissions, "sockets": server.sockets}),
        (r"/api/internal/notify_tornado", NotifyHandler, args(Auth.INTERNAL, server=server)),
        (r"/api/v1/messages", MessagesHandler, args(Auth.API, **sending)),
        (r"/json/messages", MessagesHandler, args(Auth.SESSION, **sending)),
        *message_actions(server),
        (r"/json/report/error", ReportErrorHandler, args(Auth.SESSION, publish=publish)),
        (r"/json/users/me/presence", PresenceHandler, args(Auth.SESSION, publish=publish)),
        (r"/api/v1/users/me/presence", PresenceHandler, args(Auth.API, publish=publish)),
        (r"/api/v1/server_settings", ServerSettingsHandler, args(Auth.NONE, server=server)),
        *zulip_api(server),
        (r"/accounts/login", LoginHandler, args(Auth.NONE)),
        (r"/accounts/logout", LogoutHandler, args(Auth.SESSION, server=server)),
        *(extra_handlers or []),
    ]
    return tornado.web.Application(
        handlers,
        cookie_secret=server.authenticator.cookie_secret,
        default_handler_class=NotFoundHandler,
        default_handler_args=args(Auth.NONE),
        websocket_ping_interval=PING_INTERVAL,
        websocket_ping_timeout=PING_INTERVAL,
        websocket_max_message_size=server.settings.max_body_bytes,  # a frame is a request like any other
    )


def http_server(app: tornado.web.Application, settings: Settings) -> HTTPServer:
    """The HTTP server of ``app``: bodies over ``EVENTBUS_MAX_BODY_BYTES`` answered 413 unread, and bounded
    in time, instead of Tornado's 100 MB buffered before any authentication; client addresses from
    ``EVENTBUS_TRUSTED_PROXIES`` only."""
    return ProxiedHTTPServer(BodyLimit(app, settings.max_body_bytes), trusted_proxies=settings.trusted_proxies,
                      max_body_size=settings.max_body_bytes, max_buffer_size=settings.max_body_bytes + HEADER_BYTES,
                      body_timeout=BODY_TIMEOUT_SECONDS)


async def serve(settings: Settings, port: int, host: str = "127.0.0.1", broker: Broker | None = None) -> None:
    """Run the event server with every page until SIGTERM or SIGINT, then save the queues and return."""
    server = EventServer(settings, broker)
    server.start()
    http = http_server(make_app(server, extra_handlers(server)), settings)
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
    await server.shutdown(http)
