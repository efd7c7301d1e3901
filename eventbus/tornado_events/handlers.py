"""HTTP handlers of the event server, wire-compatible with Zulip's REST events API.

Every answer is JSON, errors included: ``{"result": "error", "msg": ...,
"code": ...}`` with status 400 (``BAD_REQUEST``, ``BAD_EVENT_QUEUE_ID``), 401
(``UNAUTHORIZED``) or 404, never an HTML page. Handlers get the server
through ``initialize`` and say how they authenticate: ``api`` (HTTP Basic
``email:api_key``), ``session`` (the signed session cookie, plus the CSRF
token for anything but GET), ``internal`` (loopback and the shared secret) or
``none``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
import traceback
import urllib.parse
from asyncio import Future
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.ioloop import IOLoop

from eventbus import codec
from eventbus.errors import EventEncodingError
from eventbus.tornado_events.event_queue import ClientDescriptor, QueuedEvent
from eventbus.users import User

if TYPE_CHECKING:
    from eventbus.tornado_events.server import EventServer

logger = logging.getLogger(__name__)

SESSION_COOKIE = "eventbus_session"
#: What a held GET is answered when nothing came for a while, or when the server stops: the client polls again.
HEARTBEAT = {"type": "heartbeat"}
NARROW_OPERATORS = frozenset({"stream", "topic"})


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is this machine's loopback (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


class ApiError(tornado.web.HTTPError):
    """An error answered as Zulip does: a status, a code and a message, in JSON."""

    def __init__(self, status: int, code: str, msg: str, **extra: Any) -> None:
        super().__init__(status, log_message=msg)
        self.code = code
        self.msg = msg
        self.extra = extra


def bad_request(msg: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", msg)


def bad_queue(queue_id: str) -> ApiError:
    return ApiError(400, "BAD_EVENT_QUEUE_ID", f"Bad event queue ID: {queue_id}", queue_id=queue_id)


def registration(values: dict[str, Any], server: EventServer, user: User) -> ClientDescriptor:
    """A new client from register parameters (already decoded from JSON); ApiError naming a bad one."""
    event_types = values.get("event_types")
    if event_types is not None and not (isinstance(event_types, list)
                                        and all(isinstance(t, str) for t in event_types)):
        raise bad_request("Invalid 'event_types' argument: must be a list of strings")
    narrow = values.get("narrow") or []
    if not isinstance(narrow, list) or not all(
            isinstance(term, list) and len(term) == 2 and all(isinstance(x, str) for x in term) for term in narrow):
        raise bad_request("Invalid 'narrow' argument: must be a list of [operator, operand] pairs")
    for operator, _ in narrow:
        if operator not in NARROW_OPERATORS:
            raise bad_request(f"Invalid 'narrow' argument: unknown operator {operator!r}")
    apply_markdown = values.get("apply_markdown", False)
    lifespan = values.get("queue_lifespan_secs") or server.settings.queue_lifespan_seconds
    if not isinstance(apply_markdown, bool):
        raise bad_request("Invalid 'apply_markdown' argument: must be true or false")
    if isinstance(lifespan, bool) or not isinstance(lifespan, int | float) or lifespan < 0:
        raise bad_request("Invalid 'queue_lifespan_secs' argument: must be a number of seconds")
    return ClientDescriptor(
        user_id=user.id,
        event_types=frozenset(event_types) if event_types is not None else None,
        narrow=tuple((op, arg) for op, arg in narrow),
        apply_markdown=apply_markdown,
        lifespan=min(float(lifespan), server.settings.max_queue_lifespan_seconds),
    )


def events_body(client: ClientDescriptor, events: list[QueuedEvent]) -> bytes:
    """The answer to GET /events, assembled from each event's JSON encoded once."""
    return (b'{"result":"success","msg":"","events":[' + b",".join(q.to_json() for q in events)
            + b'],"queue_id":' + codec.encode(client.queue_id) + b"}")


class BaseHandler(tornado.web.RequestHandler):
    """Authentication, arguments and JSON answers for every endpoint."""

    server: EventServer
    auth: str
    user: User

    def initialize(self, server: EventServer, auth: str = "api") -> None:
        self.server = server
        self.auth = auth

    async def prepare(self) -> None:
        if self.auth == "api":
            user = await self.server.authenticate_basic(self.request.headers.get("Authorization", ""))
        elif self.auth == "session":
            user = await self.server.session_user(self)
            if user is not None and self.request.method not in ("GET", "HEAD", "OPTIONS"):
                self.check_csrf()
        elif self.auth == "internal":
            self.check_internal()
            return
        else:
            return
        if user is None:
            raise ApiError(401, "UNAUTHORIZED", "Not logged in: API authentication or user session required")
        self.user = user

    #: Held long-polls are slow by design: they are not reported as slow requests.
    slow_requests_reported = True

    def on_finish(self) -> None:
        """Every authenticated API request is recorded as a user_activity event; a slow one is reported too."""
        user = getattr(self, "user", None)
        if user is not None and self.auth in ("api", "session"):
            self.server.record_activity(user, self)
        seconds = self.request.request_time()
        if self.slow_requests_reported and seconds >= self.server.settings.slow_request_seconds:
            self.server.queue_client.publish_nowait("slow_queries", {
                "path": self.request.path, "method": self.request.method, "time_ms": round(seconds * 1000, 1),
                "status": self.get_status(), "user_email": user.email if user else None, "time": time.time()})

    def check_csrf(self) -> None:
        try:
            self.check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise ApiError(401, "UNAUTHORIZED", "CSRF token missing or incorrect") from None

    def check_internal(self) -> None:
        secret = self.server.settings.shared_secret
        given = self.get_body_argument("secret", "")
        if not is_loopback(self.request.remote_ip) or not secret or not hmac.compare_digest(
                given.encode(), secret.encode()):
            raise ApiError(401, "UNAUTHORIZED", "Internal endpoint: loopback and the shared secret required")

    # -- arguments --------------------------------------------------------------

    def arg(self, name: str, parse: Callable[[str], Any] = str, default: Any = ..., ) -> Any:
        """Argument ``name`` parsed with ``parse``; BAD_REQUEST naming it when missing or malformed."""
        raw = self.get_argument(name, None)
        if raw is None:
            if default is ...:
                raise bad_request(f"Missing '{name}' argument")
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError, EventEncodingError):
            raise bad_request(f"Invalid '{name}' argument") from None

    def json_arg(self, name: str, default: Any = None) -> Any:
        return self.arg(name, codec.decode, default)

    def bool_arg(self, name: str, default: bool) -> bool:
        return bool(self.arg(name, parse_bool, default))

    def client(self) -> ClientDescriptor:
        queue_id = self.arg("queue_id")
        client = self.server.registry.get(queue_id, self.user.id)
        if client is None:
            raise bad_queue(queue_id)
        return client

    # -- answers ----------------------------------------------------------------

    def compute_etag(self) -> None:
        """No ETag: every answer is live data, never to be answered 304 from a client's cache.

        (Tornado would hash every GET's body for one, events polls included.)
        """
        return None

    def success(self, **data: Any) -> None:
        self.write_json({"result": "success", "msg": "", **data})

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(codec.encode(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            body = {"result": "error", "msg": error.msg, "code": error.code, **error.extra}
        elif status_code == 404:
            body = {"result": "error", "msg": "Endpoint not found", "code": "NOT_FOUND"}
        elif status_code == 405:
            body = {"result": "error", "msg": f"Method {self.request.method} not allowed", "code": "BAD_REQUEST"}
        elif status_code < 500:
            body = {"result": "error", "msg": self._reason, "code": "BAD_REQUEST"}
        else:
            body = {"result": "error", "msg": "Internal server error", "code": "INTERNAL_SERVER_ERROR"}
            self._report(kwargs.get("exc_info"))
        self.set_header("Content-Type", "application/json")
        self.finish(codec.encode(body))

    def _report(self, exc_info: Any) -> None:
        """A server error goes to the administrators through error_reports (it is logged by Tornado too)."""
        user = getattr(self, "user", None)
        stacktrace = "".join(traceback.format_exception(*exc_info)) if exc_info and exc_info[0] else ""
        self.server.queue_client.publish_nowait("error_reports", {
            "type": "server", "message": f"{self.request.method} {self.request.path}: "
                                          f"{exc_info[1] if exc_info else 'error'}"[:2000],
            "stacktrace": stacktrace[-20000:], "user_email": user.email if user else None, "time": time.time()})


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ValueError(raw)


class NotFoundHandler(BaseHandler):
    """Any URL the server does not have: a JSON 404 (``make_app`` gives it the server, like every handler)."""

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


class RegisterHandler(BaseHandler):
    """POST /api/v1/register, /json/register: a new event queue for the caller."""

    async def post(self) -> None:
        values = {name: self.json_arg(name) for name in ("event_types", "narrow", "apply_markdown",
                                                          "queue_lifespan_secs") if self.get_argument(name, None)}
        client = self.server.registry.add(registration(values, self.server, self.user))
        self.success(queue_id=client.queue_id, last_event_id=-1, **self.server.initial_state(self.user))


class EventsHandler(BaseHandler):
    """GET /api/v1/events (long-poll) and DELETE /api/v1/events, and their /json twins.

    A GET with nothing to return is held: the handler becomes its client's
    listener and is answered, once, from inside the call that has something
    for it (events, a heartbeat from the server's sweep, a newer GET taking
    over, or the queue going away), then it detaches. Thousands are held at
    once, for most of a heartbeat interval each: a held GET keeps nothing it
    no longer needs (see ``_hold``).
    """

    slow_requests_reported = False
    #: Held GETs get a heartbeat event when nothing came for a while (``ClientRegistry.send_heartbeats``).
    wants_heartbeats = True

    _held: ClientDescriptor | None = None
    _released: asyncio.Future[None] | None = None
    #: The answer's write to the socket, once answered.
    written: Future[None] | None = None

    async def get(self) -> None:
        client = self.client()
        last_event_id = self.arg("last_event_id", int, None)
        dont_block = self.bool_arg("dont_block", False)
        if last_event_id is not None:
            client.queue.prune(last_event_id)
        events = client.queue.events  # read at once, not kept: no copy
        if events or dont_block:
            client.attach(None)  # answered at once; an older held request is answered too
            return self._answer(client, events)
        if self.server.stopping:  # nothing is held any more: the next process answers the next poll
            client.attach(None)
            return self._answer(client, [client.add(HEARTBEAT)])
        # Held: this handler is the client's listener until answered or the connection closes.
        self._shed_what_was_read()
        self._held = client
        self._released = asyncio.get_running_loop().create_future()
        client.attach(self)
        await self._released

    def _shed_what_was_read(self) -> None:
        """Let go of the parts of the request read already: a held GET keeps its request for up to a minute."""
        request = self.request
        request.query_arguments.clear()  # Tornado parses the query twice: these and a deep copy in arguments
        request.arguments.clear()
        request.headers.pop("Authorization", None)

    def _answer(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        self.set_header("Content-Type", "application/json")
        if self.server.stopping:
            self.set_header("Connection", "close")  # the client's next poll opens a connection to the next process
        self.written = self.finish(events_body(client, events))

    def restart(self, client: ClientDescriptor) -> Future[None] | None:
        """The server stops: answer now, with a heartbeat, as after a quiet while.

        Every Zulip client polls again at once after a heartbeat, and acknowledges
        it in that poll, which the next process answers from the saved queue.
        Returns the answer's write (None if this handler no longer holds ``client``).
        """
        if self._held is not client:
            return None
        client.add(HEARTBEAT)  # answered through deliver(), like any event
        return self.written

    # -- Listener, while held -------------------------------------------------------

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        if self._release(client):
            self._answer(client, client.queue.events)

    def drop(self, client: ClientDescriptor, reason: str) -> None:
        if self._release(client):
            self.send_error(400, exc_info=(ApiError, bad_queue(client.queue_id), None))

    def replace(self, client: ClientDescriptor) -> None:
        if self._release(client):
            self._answer(client, [])

    def on_connection_close(self) -> None:
        """Invoked by Tornado when the client goes away: release the held request now."""
        if self._held is not None:
            self._release(self._held)

    def _release(self, client: ClientDescriptor) -> bool:
        """Stop listening to ``client``; whether this handler was still held (and so must answer)."""
        if self._held is not client:
            return False
        self._held = None
        client.detach(self)
        if self._released is not None and not self._released.done():
            self._released.set_result(None)
        return True

    async def delete(self) -> None:
        client = self.client()
        self.server.registry.remove(client, "the queue was deleted")
        self.success()


class MessagesHandler(BaseHandler):
    """POST /api/v1/messages: send (through message_sender); GET: recent messages."""

    async def post(self) -> None:
        request = {name: self.get_argument(name) for name in ("type", "to", "topic", "subject", "content")
                   if self.get_argument(name, None) is not None}
        kind = request.get("type")
        if kind not in ("stream", "private", "direct"):
            raise bad_request("Invalid 'type' argument: must be 'stream' or 'private'")
        if not request.get("content", "").strip():
            raise bad_request("Missing 'content' argument")
        if "to" not in request:
            raise bad_request("Missing 'to' argument")
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def respond(response: Any) -> None:
            if not answer.done():
                answer.set_result(response)

        await self.server.submit(self.user, request, respond)
        response = await answer  # the processor's answer, or REQUEST_TIMEOUT from the server
        if not isinstance(response, dict) or response.get("result") != "success":
            error = response if isinstance(response, dict) else {}
            code = str(error.get("code", "BAD_REQUEST"))
            raise ApiError(504 if code == "REQUEST_TIMEOUT" else 400, code, str(error.get("msg", "Message not sent")))
        self.success(id=response["id"])

    async def get(self) -> None:
        anchor = self.arg("anchor", str, "newest")
        if anchor != "newest":
            raise bad_request("Invalid 'anchor' argument: only 'newest' is supported")
        num_before = self.arg("num_before", int, 50)
        if not 0 <= num_before <= 1000:
            raise bad_request("Invalid 'num_before' argument: 0 to 1000")
        messages = await IOLoop.current().run_in_executor(None, self.server.messages.recent, self.user.id, num_before)
        self.success(messages=messages, found_newest=True, anchor=messages[-1]["id"] if messages else None)


class ReportErrorHandler(BaseHandler):
    """POST /json/report/error: a browser traceback, rate-limited per user, queued to error_reports."""

    async def post(self) -> None:
        if not self.server.error_reports.allow(self.user.id):
            raise ApiError(429, "RATE_LIMIT_HIT", "Too many error reports; try again in a minute")
        report = {"type": "browser", "user_id": self.user.id, "user_email": self.user.email,
                  "message": self.arg("message")[:2000], "stacktrace": self.arg("stacktrace", str, "")[:20000],
                  "href": self.arg("href", str, "")[:500], "user_agent": self.request.headers.get("User-Agent", "")}
        await self.server.queue_client.publish("error_reports", report)
        self.success()


class PresenceHandler(BaseHandler):
    """POST /json/users/me/presence (status: active or idle): queued to user_presence."""

    async def post(self) -> None:
        status = self.arg("status")
        if status not in ("active", "idle"):
            raise bad_request("Invalid 'status' argument: must be 'active' or 'idle'")
        client = self.request.headers.get("User-Agent", "website")[:100] if self.auth == "api" else "website"
        await self.server.queue_client.publish("user_presence", {
            "user_id": self.user.id, "status": status, "time": time.time(), "client": client})
        self.success()


class NotifyHandler(BaseHandler):
    """POST /api/internal/notify_tornado: send_event over HTTP, for producers without RabbitMQ."""

    def post(self) -> None:
        try:
            delivered = self.server.notify(codec.decode(self.get_body_argument("data", "")))
        except (ValueError, EventEncodingError) as e:
            raise bad_request(f"Invalid 'data' argument: {e}") from None
        self.success(delivered=delivered)


class LoginHandler(BaseHandler):
    """POST /accounts/login with email and api_key: a session cookie and a CSRF token for /json."""

    async def post(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and urllib.parse.urlsplit(origin).netloc != self.request.host:
            # Another site's form must not log a visitor in as someone else (login CSRF).
            raise ApiError(403, "UNAUTHORIZED", "Login from another site's page is refused")
        email, api_key = self.arg("email"), self.arg("api_key")
        user = await self.server.authenticate(email, api_key)
        if user is None:
            raise ApiError(401, "UNAUTHORIZED", "Wrong email or API key")
        self.server.start_session(self, user)
        self.success(user_id=user.id, email=user.email, full_name=user.full_name,
                     csrf_token=self.xsrf_token.decode())


class ServerSettingsHandler(BaseHandler):
    """GET /api/v1/server_settings: what the zulip client asks before anything else (no login needed)."""

    def get(self) -> None:
        self.success(**self.server.server_settings())


class LogoutHandler(BaseHandler):
    def post(self) -> None:
        self.clear_cookie(SESSION_COOKIE)
        self.success()
