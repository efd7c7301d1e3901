"""The web pages and the JSON they read: login, live chat, queue dashboard.

The pages are static files of ``static/``: HTML, CSS and JavaScript modules,
no build step. A page handler only checks the session (sending a visitor
without one to ``/login``), sets the session's CSRF token as the
``csrftoken`` cookie the scripts send back as ``X-CSRFToken``, and serves
the file with a Content-Security-Policy that lets no inline script run:
message HTML from the server's Markdown renderer is inserted as HTML, and
the policy is the second wall behind its sanitizer.

``/accounts/login/dev`` (log in as anyone, no API key) exists only with
``EVENTBUS_DEVELOPMENT=1``. The queue dashboard is open to every logged-in
user in development mode; otherwise to ``EVENTBUS_ADMIN_EMAILS`` only, and
without administrators it is not served at all.

Each handler is handed what it uses (``web_handlers`` wires them): the
``Authenticator`` for the session and its CSRF token, the stores, the
settings, the dashboard.
"""

from __future__ import annotations

import contextlib
import functools
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.ioloop import IOLoop

from eventbus.queue import Broker
from eventbus.settings import Settings
from eventbus.tornado_events.auth import Auth, Authenticator
from eventbus.tornado_events.handlers import ApiError, BaseHandler, JsonErrors, handler_args
from eventbus.users import UserStore
from eventbus.web.dashboard import QueueDashboard, may_watch_queues

if TYPE_CHECKING:
    from eventbus.tornado_events.server import EventServer

STATIC_DIR = Path(__file__).parent / "static"


def content_security_policy(host: str) -> str:
    """Scripts, styles and connections of this origin only (the websocket named, as older browsers need)."""
    return "; ".join([
        "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' https: http: data:",
        f"connect-src 'self' ws://{host} wss://{host}", "object-src 'none'", "base-uri 'none'",
        "form-action 'self'", "frame-ancestors 'none'",
    ])


class PageHandler(JsonErrors):
    """GET one HTML page of ``static/``; with ``login_required``, a visitor without a session goes to /login;
    with ``admin_only``, a user who may not watch the queues gets a 403."""

    def initialize(self, authenticator: Authenticator, config: Settings, page: str, login_required: bool = True,
                   admin_only: bool = False) -> None:
        self.authenticator = authenticator
        self.config = config
        self.page = STATIC_DIR / page
        self.login_required = login_required
        self.admin_only = admin_only

    async def get(self) -> None:
        user = await self.authenticator.session_user(self)
        if user is None and self.login_required:
            self.redirect("/login?" + urllib.parse.urlencode({"next": self.request.uri}))
            return
        if user is not None:
            if self.admin_only and not may_watch_queues(self.config, user):
                raise tornado.web.HTTPError(403)
            self.authenticator.set_csrf_cookie(self)
        body = await IOLoop.current().run_in_executor(None, self.page.read_bytes)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", content_security_policy(self.request.host))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")
        self.finish(body)


class StaticHandler(JsonErrors, tornado.web.StaticFileHandler):
    """The pages' scripts and styles; revalidated on each load, so an edited file shows at once.

    A path that names no file of ``static/`` is a 404, whatever it holds: a NUL byte (which the
    file system calls refuse with ValueError: a 500 in Tornado's own handler), bytes that are not
    UTF-8, a way out of the folder, a folder.
    """

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise tornado.web.HTTPError(404) from None

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        with _unservable_is_404():
            return super().get_absolute_path(root, path)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        with _unservable_is_404():
            return super().validate_absolute_path(root, absolute_path)


@contextlib.contextmanager
def _unservable_is_404() -> Iterator[None]:
    """Tornado's refusals of a static path (403: outside the folder, not a file) and the file system's
    (ValueError for a NUL byte, OSError) as a 404: nothing here to serve."""
    try:
        yield
    except tornado.web.HTTPError as e:
        if e.status_code != 403:
            raise
        raise tornado.web.HTTPError(404) from None
    except (OSError, ValueError):
        raise tornado.web.HTTPError(404) from None


class DevLoginHandler(BaseHandler):
    """/accounts/login/dev, development mode only: GET lists the users, POST ``email`` logs in as that user."""

    def initialize(self, users: UserStore, **base: Any) -> None:
        super().initialize(**base)
        self.users = users

    async def get(self) -> None:
        users = await IOLoop.current().run_in_executor(None, self.users.all)
        self.success(users=[user.public() for user in users if user.is_active])

    async def post(self) -> None:
        self.check_same_origin("Login")  # another site cannot log a visitor in as someone else
        user = await IOLoop.current().run_in_executor(None, self.users.get_by_email, self.arg("email"))
        if user is None or not user.is_active:
            raise ApiError(401, "UNAUTHORIZED", "No such user")
        csrf_token = await self.authenticator.start_session(self, user)
        self.success(**user.public(), csrf_token=csrf_token)


class QueuesFeedHandler(BaseHandler):
    """GET /devtools/queues.json: what the queue dashboard shows."""

    def initialize(self, config: Settings, dashboard: QueueDashboard, **base: Any) -> None:
        super().initialize(**base)
        self.config = config
        self.dashboard = dashboard

    async def get(self) -> None:
        if not may_watch_queues(self.config, self.user):
            raise ApiError(403, "UNAUTHORIZED", "The queue dashboard is for the administrators")
        self.success(**await self.dashboard.snapshot())

    def on_finish(self) -> None:
        """A dashboard polling every two seconds is not user activity: nothing is recorded."""


def web_handlers(server: EventServer, broker: Broker | None = None) -> list[Any]:
    """The pages' URL specs, for ``make_app(server, extra_handlers=...)``.

    ``broker`` is where the dashboard reads queue depths (default: ``server.monitoring_broker()``).
    """
    session = functools.partial(handler_args, server, Auth.SESSION)
    pages = {"authenticator": server.authenticator, "config": server.settings}
    handlers: list[Any] = [
        (r"/", PageHandler, {**pages, "page": "chat.html"}),
        (r"/login", PageHandler, {**pages, "page": "login.html", "login_required": False}),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
    ]
    settings = server.settings
    if settings.development or settings.admin_emails:
        dashboard = QueueDashboard(server, broker or server.monitoring_broker())
        handlers += [
            (r"/devtools/queues", PageHandler, {**pages, "page": "queues.html", "admin_only": True}),
            (r"/devtools/queues\.json", QueuesFeedHandler, session(config=settings, dashboard=dashboard)),
        ]
    if settings.development:
        handlers.append((r"/accounts/login/dev", DevLoginHandler,
                         handler_args(server, Auth.NONE, users=server.messages.users)))
    return handlers
