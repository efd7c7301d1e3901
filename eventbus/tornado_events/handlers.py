"""HTTP handlers of the event server, wire-compatible with Zulip's REST events API.

Every answer is JSON, errors included: ``{"result": "error", "msg": ...,
"code": ...}`` with status 400 (``BAD_REQUEST``, ``BAD_EVENT_QUEUE_ID``), 401
(``UNAUTHORIZED``), 404 or 429 (``RATE_LIMIT_HIT``, with ``retry-after``
seconds and a ``Retry-After`` header), 503 (``DATABASE_UNAVAILABLE``, with
``retry-after`` too, while the database cannot be reached: a client tries
again), never an HTML page.

Handlers get what they use through ``initialize``, as Tornado's own do, and
``eventbus.app.make_app`` wires them: every handler the ``Authenticator``
(with the ``auth.Auth`` kind its requests authenticate by), the
``RateLimits`` and the ``ActivityRecorder`` (``handler_args`` spells these);
the handlers of the event queues (``CoreHandler``) the ``EventServer``, the
others what they need besides (the message store, ``Submissions``, the
queue client's ``publish``). A handler also says which per-user rate limit
an authenticated request counts against (``rate_limit_category``, a
category of ``rate_limit.RateLimits``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import urllib.parse
from asyncio import Future
from collections.abc import Callable, Iterable
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.ioloop import IOLoop

from eventbus import codec
from eventbus.contracts import ERROR_REPORTS, USER_PRESENCE, ErrorReport, PresenceUpdate
from eventbus.database import is_unavailable
from eventbus.errors import EventEncodingError
from eventbus.messages import (
    ANCHORS,
    LARGER_THAN_MAX_MESSAGE_ID,
    MAX_MESSAGES_PER_REQUEST,
    HistoryQuery,
    MessageStore,
)
from eventbus.narrow import NarrowError, parse_narrow
from eventbus.tornado_events import rate_limit
from eventbus.tornado_events.activity import ActivityRecorder
from eventbus.tornado_events.auth import Auth, Authenticator
from eventbus.tornado_events.clients import TooManyQueues
from eventbus.tornado_events.event_queue import EVENT_NARROWS, IS_OPERANDS, ClientDescriptor, QueuedEvent
from eventbus.tornado_events.handover import ANSWER_HEADERS, FORWARDED_HEADER, Unreachable
from eventbus.tornado_events.initial_state import StateRequest
from eventbus.tornado_events.rate_limit import RateLimits
from eventbus.tornado_events.submissions import Publish, Submissions
from eventbus.users import User
from eventbus.validation import MAX_ID, excerpt, is_id

if TYPE_CHECKING:
    from eventbus.tornado_events.server import EventServer

logger = logging.getLogger(__name__)

#: What a held GET is answered when nothing came for a while, or when the server stops: the client polls again.
HEARTBEAT = {"type": "heartbeat"}
#: Filter sizes a registration may ask for: more than any real client needs, little enough that matching
#: every event against every queue's filters stays cheap and a saved queue stays small.
MAX_NARROW_TERMS = 20
MAX_NARROW_OPERAND_CHARS = 200
MAX_EVENT_TYPES = 100
MAX_EVENT_TYPE_CHARS = 100
#: A client string longer than this is not a client's name (Zulip's column holds 30).
MAX_CLIENT_CHARS = 30
#: Zulip's client string of its web app: what the chat page sends with.
WEB_CLIENT = "website"
#: Register's parameters that shape a queue (GET /events without a queue id takes them too).
REGISTER_FIELDS = ("event_types", "narrow", "apply_markdown", "queue_lifespan_secs")
#: How many ignored parameters an answer names: a request of thousands gets no answer of thousands.
MAX_IGNORED_NAMED = 20
#: Seconds a client is told to wait before trying again while the database is unavailable (a restart's length).
DATABASE_RETRY_AFTER = 1.0


class ApiError(tornado.web.HTTPError):
    """An error answered as Zulip does: a status, a code and a message, in JSON."""

    def __init__(self, status: int, code: str, msg: str, **extra: Any) -> None:
        super().__init__(status, log_message=msg)
        self.code = code
        self.msg = msg
        self.extra = extra


def bad_request(msg: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", msg)


def missing_argument(name: str) -> ApiError:
    return ApiError(400, "REQUEST_VARIABLE_MISSING", f"Missing '{name}' argument", var_name=name)


def bad_queue(queue_id: str) -> ApiError:
    queue_id = excerpt(queue_id)
    return ApiError(400, "BAD_EVENT_QUEUE_ID", f"Bad event queue ID: {queue_id}", queue_id=queue_id)


def check_last_event_id(value: Any) -> int:
    """A client's ``last_event_id``: an integer from -1 (nothing yet) to the largest event id."""
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_ID:
        raise bad_request(f"Invalid 'last_event_id' argument: must be an integer from -1 to {MAX_ID}")
    return value


def wrong_shard(shard: int, what: str) -> ApiError:
    """The answer to a request for another shard's queue that cannot be handed over: where it belongs."""
    return ApiError(421, "WRONG_SHARD", f"{what} belongs to shard {shard}: reconnect with shard={shard}",
                    shard=shard)


def rate_limit_hit(retry_after: float, **extra: Any) -> ApiError:
    """The answer to a request over its user's rate limit, as Zulip gives it (``write_error`` adds the header)."""
    # To the millisecond, rounded up: a client that waits as long as it is told is never refused again.
    return ApiError(429, "RATE_LIMIT_HIT", "API usage exceeded rate limit",
                    **{"retry-after": math.ceil(retry_after * 1000) / 1000}, **extra)


def api_error_body(handler: tornado.web.RequestHandler, error: ApiError) -> dict[str, Any]:
    """The JSON answer to ``error``; for a rate limit hit, ``handler``'s answer gets a Retry-After header too."""
    if "retry-after" in error.extra:  # the header takes whole seconds: rounded up, never too early
        handler.set_header("Retry-After", str(math.ceil(error.extra["retry-after"])))
    return {"result": "error", "msg": error.msg, "code": error.code, **error.extra}


def database_unavailable() -> ApiError:
    """The answer to a request that needs the database while it cannot be reached: a 503 to try again on."""
    return ApiError(503, "DATABASE_UNAVAILABLE", "The database is not answering; try again shortly",
                    **{"retry-after": DATABASE_RETRY_AFTER})


def check_rate_limit(rate_limits: RateLimits, category: str, user: User, **extra: Any) -> None:
    """Count a request of ``category`` against ``user``'s limit; RATE_LIMIT_HIT (with ``extra``) when over."""
    wait = rate_limits.acquire(category, user.id)
    if wait:
        raise rate_limit_hit(wait, **extra)


def register_client(values: dict[str, Any], server: EventServer, user: User) -> ClientDescriptor:
    """A new client from register parameters, added to the server's registry; ApiError if it cannot be."""
    try:
        return server.registry.add(registration(values, server, user))
    except TooManyQueues as e:
        raise bad_request(str(e)) from None


def check_filter_sizes(event_types: list[str] | None, narrow: list[list[str]], name: str = "event_types") -> None:
    """BAD_REQUEST naming ``event_types`` (or ``name``) or ``narrow`` if either is larger than ``MAX_*`` allow."""
    if event_types is not None and (len(event_types) > MAX_EVENT_TYPES
                                    or any(len(t) > MAX_EVENT_TYPE_CHARS for t in event_types)):
        raise bad_request(f"Invalid '{name}' argument: at most {MAX_EVENT_TYPES} types "
                          f"of at most {MAX_EVENT_TYPE_CHARS} characters each")
    if len(narrow) > MAX_NARROW_TERMS or any(len(operand) > MAX_NARROW_OPERAND_CHARS for _, operand in narrow):
        raise bad_request(f"Invalid 'narrow' argument: at most {MAX_NARROW_TERMS} terms "
                          f"with operands of at most {MAX_NARROW_OPERAND_CHARS} characters each")


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
    for operator, operand in narrow:
        if operator not in EVENT_NARROWS:
            raise bad_request(f"Invalid 'narrow' argument: unknown operator {excerpt(operator)!r}")
        if operator == "is" and operand not in IS_OPERANDS:
            raise bad_request(f"Invalid 'narrow' argument: unknown 'is' operand {excerpt(operand)!r}")
    check_filter_sizes(event_types, narrow)
    apply_markdown = values.get("apply_markdown", False)
    lifespan = values.get("queue_lifespan_secs") or server.settings.queue_lifespan_seconds  # 0: the default
    if not isinstance(apply_markdown, bool):
        raise bad_request("Invalid 'apply_markdown' argument: must be true or false")
    # Written so that NaN fails too; a larger lifespan is capped below, compared before any float conversion.
    if isinstance(lifespan, bool) or not isinstance(lifespan, int | float) or not lifespan > 0:
        raise bad_request("Invalid 'queue_lifespan_secs' argument: must be a positive number of seconds")
    return ClientDescriptor(
        user_id=user.id,
        event_types=frozenset(event_types) if event_types is not None else None,
        narrow=tuple((op, arg) for op, arg in narrow),
        apply_markdown=apply_markdown,
        lifespan=float(min(lifespan, server.settings.max_queue_lifespan_seconds)),
        queue_id=server.registry.new_queue_id(),
    )


def events_body(client: ClientDescriptor, events: list[QueuedEvent]) -> bytes:
    """The answer to GET /events, assembled from each event's JSON encoded once."""
    return (b'{"result":"success","msg":"","events":[' + b",".join(q.to_json() for q in events)
            + b'],"queue_id":' + codec.encode(client.queue_id) + b"}")


class JsonErrors(tornado.web.RequestHandler):
    """Errors answered in JSON, as Zulip does, instead of Tornado's HTML pages (a base of any handler)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if error is not None and is_unavailable(error):
            error = database_unavailable()
            self.set_status(error.status_code)
        if isinstance(error, ApiError):
            body = api_error_body(self, error)
        elif status_code == 404:
            body = {"result": "error", "msg": "Endpoint not found", "code": "NOT_FOUND"}
        elif status_code == 405:
            body = {"result": "error", "msg": f"Method {excerpt(self.request.method)} not allowed",
                    "code": "BAD_REQUEST"}
        elif status_code < 500:
            body = {"result": "error", "msg": self._reason, "code": "BAD_REQUEST"}
        else:
            body = {"result": "error", "msg": "Internal server error", "code": "INTERNAL_SERVER_ERROR"}
            self.report_error(exc_info)
        self.set_header("Content-Type", "application/json")
        self.finish(codec.encode(body))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """Invoked by Tornado for an error a request raised: not for the database being unavailable, which its
        ``Outage`` logs once (a traceback per request would bury the one line that says what happened)."""
        if value is None or not is_unavailable(value):
            super().log_exception(typ, value, tb)

    def report_error(self, exc_info: Any) -> None:
        """Invoked for a server error (Tornado has logged it already); a handler may report it further."""


def handler_args(server: EventServer, auth: Auth, /, **more: Any) -> dict[str, Any]:
    """The ``initialize`` arguments of a ``BaseHandler`` authenticating by ``auth``, from ``server``'s parts,
    with ``more`` for the handler's own."""
    return {"authenticator": server.authenticator, "rate_limits": server.rate_limits, "activity": server.activity,
            "auth": auth, **more}


class BaseHandler(JsonErrors):
    """Authentication, arguments and JSON answers for every endpoint."""

    authenticator: Authenticator
    rate_limits: RateLimits
    activity: ActivityRecorder
    auth: Auth
    user: User
    #: The per-user limit an authenticated request here counts against (a category of ``RateLimits``).
    rate_limit_category = rate_limit.API
    #: Set when the request was handed over to the shard owning its queue, which answered it.
    handed_over = False

    def _initialize_base(self, authenticator: Authenticator, rate_limits: RateLimits, activity: ActivityRecorder,
                         auth: Auth = Auth.API) -> None:
        if not isinstance(auth, Auth):  # URL specs are not type-checked: a misspelt kind must not mean "none"
            raise TypeError(f"a handler's auth must be an Auth kind, not {auth!r}")
        self.authenticator = authenticator
        self.rate_limits = rate_limits
        self.activity = activity
        self.auth = auth

    # Typed loosely, as Tornado types it: a handler's initialize takes these and what it needs besides.
    initialize: Callable[..., None] = _initialize_base

    async def prepare(self) -> None:
        match self.auth:
            case Auth.API:
                user = await self.authenticator.authenticate_basic(self.request.headers.get("Authorization", ""))
            case Auth.SESSION:
                user = await self.authenticator.session_user(self)
                if user is not None and self.request.method not in ("GET", "HEAD", "OPTIONS"):
                    self.check_csrf()
            case Auth.INTERNAL:
                self.check_internal()
                return
            case Auth.NONE:
                return
        if user is None:
            raise ApiError(401, "UNAUTHORIZED", "Not logged in: API authentication or user session required")
        self.user = user
        if self.counts_against_rate_limit() and not self.counted_by_another_shard():
            check_rate_limit(self.rate_limits, self.rate_limit_category, user)

    def counts_against_rate_limit(self) -> bool:
        """Whether this authenticated request counts against its user's rate limit (all do, unless told)."""
        return True

    def counted_by_another_shard(self) -> bool:
        """Whether another shard handed this request over, having counted it already (its header holds the
        shared secret: a client cannot skip its limit by setting it)."""
        return self.authenticator.secret_ok(self.request.headers.get(FORWARDED_HEADER, ""))

    #: Held long-polls are slow by design: they are not reported as slow requests.
    slow_requests_reported = True

    def on_finish(self) -> None:
        """Every authenticated API request is recorded as a user_activity event; a slow one is reported too."""
        user = getattr(self, "user", None)
        if user is not None and self.auth in (Auth.API, Auth.SESSION) and not self.handed_over:
            self.activity.record(user, self)
        if self.slow_requests_reported:
            self.activity.report_if_slow(self, user)

    def check_csrf(self) -> None:
        if not self.authenticator.csrf_ok(self):
            raise ApiError(401, "UNAUTHORIZED", "CSRF token missing or incorrect")

    def check_same_origin(self, action: str) -> None:
        """Refuse a request a page of another site made (browsers name the page's origin in POSTs)."""
        origin = self.request.headers.get("Origin")
        if origin and urllib.parse.urlsplit(origin).netloc != self.request.host:
            raise ApiError(403, "UNAUTHORIZED", f"{action} from another site's page is refused")

    def check_internal(self) -> None:
        if not self.authenticator.internal_ok(self, self.get_body_argument("secret", "")):
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
        except EventEncodingError as e:  # says what is wrong without quoting the input
            raise bad_request(f"Invalid '{name}' argument: {e}") from None
        except (ValueError, TypeError):
            raise bad_request(f"Invalid '{name}' argument") from None

    def required_arg(self, name: str, parse: Callable[[str], Any] = str) -> Any:
        """``arg`` for a parameter Zulip requires: REQUEST_VARIABLE_MISSING naming it when it is absent."""
        if self.get_argument(name, None) is None:
            raise missing_argument(name)
        return self.arg(name, parse)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Invoked by Tornado for every argument and path part: one that is not UTF-8 is a 400 naming it
        (Tornado's own error would name neither it nor the reason)."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"Invalid '{name}' argument: not UTF-8" if name else "Invalid path: not UTF-8") from None

    def json_arg(self, name: str, default: Any = None) -> Any:
        return self.arg(name, codec.decode, default)

    def bool_arg(self, name: str, default: bool) -> bool:
        return bool(self.arg(name, parse_bool, default))

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

    def report_error(self, exc_info: Any) -> None:
        """A server error goes to the administrators through error_reports (it is logged by Tornado too)."""
        self.activity.report_error(self, exc_info, getattr(self, "user", None))


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ValueError(raw)


class NotFoundHandler(BaseHandler):
    """Any URL the server does not have: a JSON 404 (``make_app`` hands it what every handler gets)."""

    async def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


class CoreHandler(BaseHandler):
    """A handler of the event core's endpoints (queues, notices, the server's settings): handed the server too."""

    server: EventServer

    def initialize(self, server: EventServer, **base: Any) -> None:
        super().initialize(**base)
        self.server = server

    def register(self) -> ClientDescriptor:
        """A new client of the request's user, from register's parameters; ApiError naming a bad one."""
        values = {name: self.json_arg(name) for name in REGISTER_FIELDS if self.get_argument(name, None)}
        return register_client(values, self.server, self.user)

    def client(self) -> ClientDescriptor:
        queue_id = self.arg("queue_id")
        client = self.server.registry.get(queue_id, self.user.id)
        if client is None:
            raise bad_queue(queue_id)
        return client

    def queue_shard(self) -> int:
        """The shard the ``queue_id`` argument names; BAD_EVENT_QUEUE_ID for an id no shard made."""
        queue_id = self.arg("queue_id")
        shard = self.server.sharding.shard_of_queue(queue_id)
        if shard is None:
            raise bad_queue(queue_id)
        return shard

    async def hand_over_unless_mine(self, shard: int) -> bool:
        """Whether this request belongs to shard ``shard``, not this one, and was answered by it (see
        ``handover``): WRONG_SHARD if it was handed over already, SHARD_UNAVAILABLE (503) if it is down."""
        if shard == self.server.shard:
            return False
        if FORWARDED_HEADER in self.request.headers:
            logger.warning("%s %s handed over to shard %d, which says shard %d owns it: is the sharding the same "
                           "everywhere?", self.request.method, excerpt(self.request.path), self.server.shard, shard)
            raise wrong_shard(shard, "This request")
        try:
            answer = await self.server.handover.forward(self.request, shard)
        except Unreachable as e:
            logger.warning("cannot hand %s %s over: %s", self.request.method, excerpt(self.request.path), e)
            raise ApiError(503, "SHARD_UNAVAILABLE", f"The server of this queue (shard {shard}) is not answering; "
                           "try again shortly", shard=shard) from None
        self.handed_over = True
        self.set_status(answer.code, answer.reason)
        for name in ANSWER_HEADERS:
            for value in answer.headers.get_list(name):
                self.add_header(name, value)
        self.finish(answer.body)
        return True


class PublishingHandler(BaseHandler):
    """A handler that puts what it is sent on a queue: handed the queue client's ``publish``."""

    publish: Publish

    def initialize(self, publish: Publish, **base: Any) -> None:
        super().initialize(**base)
        self.publish = publish


class RegisterHandler(CoreHandler):
    """POST /api/v1/register, /json/register: a new event queue for the caller, and the initial state of the
    event types it fetches (``initial_state``); the parameters of Zulip's register that eventbus does not
    implement are named in ``ignored_parameters_unsupported``."""

    rate_limit_category = rate_limit.REGISTER
    #: The queue's parameters (``registration``), then those of the initial state.
    STATE_FIELDS = ("fetch_event_types", "slim_presence", "include_subscribers")

    async def post(self) -> None:
        fetch = self.event_types_arg("fetch_event_types")  # checked before a queue exists
        slim, subscribers = self.bool_arg("slim_presence", False), self.bool_arg("include_subscribers", False)
        if await self.hand_over_unless_mine(self.server.sharding.shard_for(self.user.id)):
            return
        client = self.register()
        request = StateRequest(client.event_types if fetch is ... else fetch, slim, subscribers)
        try:
            state = await IOLoop.current().run_in_executor(None, self.server.start_state.fetch, self.user, request)
        except BaseException:  # the database unavailable: the client never learns of this queue, nor polls it
            self.server.registry.remove(client, "its registration failed")
            raise
        self.success(queue_id=client.queue_id, last_event_id=-1, **self.server.initial_state(self.user), **state,
                     **ignored_parameters(self, (*REGISTER_FIELDS, *self.STATE_FIELDS)))

    def event_types_arg(self, name: str) -> frozenset[str] | EllipsisType | None:
        """A list of event types (``fetch_event_types``; null: all), ``...`` if absent; BAD_REQUEST naming a bad
        one."""
        if self.get_argument(name, None) is None:
            return ...
        types = self.json_arg(name)
        if types is None:
            return None
        if not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
            raise bad_request(f"Invalid '{name}' argument: must be a list of strings")
        check_filter_sizes(types, [], name)
        return frozenset(types)


class HeldAnswers:
    """The held GETs that have something to answer, answered together once the IOLoop's current callbacks ran.

    Answering a held GET from inside the delivery that has something for it
    would answer it with that one event: the notices of a message_sender batch
    come in one read from RabbitMQ, and each client would then get the first
    message alone, poll again at once and be answered the rest in a second
    round trip. Answered here, after the read, every held GET gets all that came
    for it in one answer, for one callback in all (not a future or a callback
    per handler). Use from the IOLoop only.
    """

    def __init__(self) -> None:
        self._due: list[EventsHandler] = []

    def add(self, handler: EventsHandler) -> None:
        """Answer ``handler`` with what its client's queue holds once the loop's current callbacks ran."""
        if not self._due:
            IOLoop.current().add_callback(self.answer_all)
        self._due.append(handler)

    def answer_all(self) -> None:
        """Invoked by the IOLoop: answer every held GET added since the last call (one failing spares the rest)."""
        due, self._due = self._due, []
        for handler in due:
            try:
                handler.answer_held()
            except Exception:
                logger.exception("answering a held GET failed")


class EventsHandler(CoreHandler):
    """GET /api/v1/events (long-poll) and DELETE /api/v1/events, and their /json twins.

    A GET with nothing to return is held: the handler becomes its client's
    listener and is answered, once: when events come (a heartbeat from the
    server's sweep too), once the loop's current callbacks ran, with every
    event that came in them (``HeldAnswers``); when a newer GET takes over or
    the queue goes away, at once. Then it detaches. Thousands are held at
    once, for most of a heartbeat interval each: a held GET keeps nothing it
    no longer needs (see ``_hold``).
    """

    slow_requests_reported = False
    #: Held GETs get a heartbeat event when nothing came for a while (``ClientRegistry.send_heartbeats``).
    wants_heartbeats = True

    _held: ClientDescriptor | None = None
    _released: asyncio.Future[None] | None = None
    #: Set once it is among the server's ``HeldAnswers``: it is answered then, with every event that came meanwhile.
    _due = False
    #: The answer's write to the socket, once answered.
    written: Future[None] | None = None

    def counts_against_rate_limit(self) -> bool:
        """A long-poll of a queue nobody is polling (its last poll was answered) is free: a client that keeps
        up polls again as soon as it is answered, and must never be told to wait. A ``dont_block`` poll, one
        that takes a held poll's place, a poll of an unknown queue and a DELETE count."""
        if self.request.method != "GET" or self.bool_arg("dont_block", False):
            return True
        client = self.server.registry.get(self.get_argument("queue_id", ""), self.user.id)
        return client is None or client.listener is not None

    async def prepare(self) -> None:
        if self.registers():  # counted as the registration it is
            self.rate_limit_category = rate_limit.REGISTER
        await super().prepare()

    def registers(self) -> bool:
        """A GET without a queue id registers a queue, as Zulip documents: its answer names the new queue."""
        return self.request.method == "GET" and self.get_argument("queue_id", None) is None

    async def get(self) -> None:
        shard = self.server.sharding.shard_for(self.user.id) if self.registers() else self.queue_shard()
        if await self.hand_over_unless_mine(shard):
            return
        client = self.register() if self.registers() else self.client()
        last_event_id = self.arg("last_event_id", int, None)
        dont_block = self.bool_arg("dont_block", False)
        if last_event_id is not None:
            client.queue.prune(check_last_event_id(last_event_id))
        events = client.queue.events  # read at once, not kept: no copy
        if events or dont_block:
            client.attach(None)  # answered at once; an older held request is answered too
            return self._answer(client, events)
        if self.server.stopping:  # nothing is held any more: the next process answers the next poll
            client.attach(None)
            client.add(HEARTBEAT)
            return self._answer(client, client.queue.events)
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
        client.add(HEARTBEAT)  # queued like any event, and answered now: the server is about to close connections
        self.answer_held()
        return self.written

    # -- Listener, while held -------------------------------------------------------

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        # Still attached until answered: what else comes for the client meanwhile goes in the same answer.
        if self._held is client and not self._due:
            self._due = True
            self.server.held_answers.add(self)

    def answer_held(self) -> None:
        """Answer with every event the held client's queue has now (nothing if it was answered otherwise)."""
        client = self._held
        if client is not None and self._release(client):
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
        if await self.hand_over_unless_mine(self.queue_shard()):
            return
        client = self.client()
        self.server.registry.remove(client, "the queue was deleted")
        self.success()


class MessagesHandler(BaseHandler):
    """POST /api/v1/messages: send (through message_sender); GET: the history, narrowed, around an anchor.

    Sending is checked by the processor (``message_send.check_request``), the one place that knows a valid
    message; its errors come back with Zulip's codes and fields. Reading runs in the executor.
    """

    #: The send request's fields the processor reads; ``read_by_sender`` is Zulip's too, not implemented.
    SEND_FIELDS = ("type", "to", "topic", "subject", "content", "queue_id", "local_id")
    HISTORY_FIELDS = frozenset({"anchor", "num_before", "num_after", "include_anchor", "narrow", "apply_markdown",
                                "client_gravatar", "use_first_unread_anchor", "message_ids",
                                "allow_empty_topic_name"})  # no topic is ever empty here: nothing to do for it

    def initialize(self, submissions: Submissions, messages: MessageStore, **base: Any) -> None:
        super().initialize(**base)
        self.submissions = submissions
        self.messages = messages

    async def post(self) -> None:
        request = {name: self.get_argument(name) for name in self.SEND_FIELDS
                   if self.get_argument(name, None) is not None}
        response = await self.submissions.ask(self.user, request, client=client_name(self))
        self.success(id=processor_answer(response, "Message not sent")["id"],
                     **ignored_parameters(self, self.SEND_FIELDS))

    async def get(self) -> None:
        query = self.history_query()
        try:
            answer = await IOLoop.current().run_in_executor(None, self.messages.history, self.user.id, query)
        except NarrowError as e:  # a stream or user named in the narrow does not exist
            raise ApiError(400, "BAD_NARROW", str(e), desc=e.desc) from None
        self.success(**answer, **ignored_parameters(self, self.HISTORY_FIELDS))

    def history_query(self) -> HistoryQuery:
        """The request's HistoryQuery; BAD_REQUEST (or REQUEST_VARIABLE_MISSING) naming a bad argument."""
        try:
            narrow = parse_narrow(self.json_arg("narrow", []))
        except NarrowError as e:
            raise ApiError(400, "BAD_NARROW", str(e), desc=e.desc) from None
        except ValueError as e:
            raise bad_request(f"Invalid 'narrow' argument: {e}") from None
        shown = HistoryQuery(narrow=narrow, apply_markdown=self.bool_arg("apply_markdown", True),
                             client_gravatar=self.bool_arg("client_gravatar", True))
        message_ids = self.json_arg("message_ids")
        if message_ids is not None:
            ranged = [name for name in ("anchor", "num_before", "num_after", "include_anchor",
                                        "use_first_unread_anchor") if self.get_argument(name, None) is not None]
            if ranged:
                parameters = ", ".join(["message_ids", *ranged])
                raise ApiError(400, "BAD_REQUEST", f"Unsupported parameter combination: {parameters}",
                               parameters=parameters)
            if not (isinstance(message_ids, list) and len(message_ids) <= MAX_MESSAGES_PER_REQUEST
                    and all(is_id(i) for i in message_ids)):
                raise bad_request(f"Invalid 'message_ids' argument: a list of at most {MAX_MESSAGES_PER_REQUEST}"
                                  " message ids")
            return dataclasses.replace(shown, message_ids=tuple(message_ids))
        num_before, num_after = (self.required_arg(name, parse_count) for name in ("num_before", "num_after"))
        if num_before + num_after > MAX_MESSAGES_PER_REQUEST:
            raise bad_request(f"Too many messages requested (maximum {MAX_MESSAGES_PER_REQUEST}).")
        anchor = ("first_unread" if self.get_argument("anchor", None) is None
                  and self.bool_arg("use_first_unread_anchor", False) else self.required_arg("anchor", parse_anchor))
        return dataclasses.replace(shown, anchor=anchor, num_before=num_before, num_after=num_after,
                                   include_anchor=self.bool_arg("include_anchor", True))


def processor_answer(response: Any, failed: str) -> dict[str, Any]:
    """A processor's success answer (or the server's REQUEST_TIMEOUT), without ``result`` and ``msg``; an error
    answer as the ApiError it names (``failed`` its message if it has none)."""
    answer = dict(response) if isinstance(response, dict) else {}
    result, msg = answer.pop("result", None), str(answer.pop("msg", failed))
    if result != "success":
        code = str(answer.pop("code", "BAD_REQUEST"))
        raise ApiError(504 if code == "REQUEST_TIMEOUT" else 400, code, msg, **answer)
    return answer


def parse_count(raw: str) -> int:
    """``num_before``/``num_after``: a count of messages, 0 to the most one request may fetch."""
    count = int(raw)
    if not 0 <= count <= MAX_MESSAGES_PER_REQUEST:
        raise ValueError(raw)
    return count


def parse_anchor(raw: str) -> int | str:
    """An anchor as Zulip takes it: a named one, or a message id (clamped to 0 .. newest, as Zulip does)."""
    if raw in ANCHORS or raw == "first_unread":
        return raw
    return max(0, min(int(raw), LARGER_THAN_MAX_MESSAGE_ID))


def client_name(handler: BaseHandler) -> str:
    """Zulip's client string of a request: "website" for the browser session, else the User-Agent's product
    ("ZulipPython/0.9.1 (Linux)" is "ZulipPython")."""
    if handler.auth is Auth.SESSION:
        return WEB_CLIENT
    product = handler.request.headers.get("User-Agent", "").split("/")[0].split(" ")[0]
    return product[:MAX_CLIENT_CHARS] or "API"


def ignored_parameters(handler: BaseHandler, known: Iterable[str]) -> dict[str, Any]:
    """``ignored_parameters_unsupported`` as Zulip answers it: the request's parameters this endpoint does not
    use (none: no key)."""
    ignored = [excerpt(name) for name in sorted(set(handler.request.arguments) - set(known))[:MAX_IGNORED_NAMED]]
    return {"ignored_parameters_unsupported": ignored} if ignored else {}


class ReportErrorHandler(PublishingHandler):
    """POST /json/report/error: a browser traceback, rate-limited per user, queued to error_reports."""

    rate_limit_category = rate_limit.ERROR_REPORTS

    async def post(self) -> None:
        report = ErrorReport("browser", self.arg("message")[:2000], self.arg("stacktrace", str, "")[:20000],
                             self.user.email, self.arg("href", str, "")[:500],
                             extra={"user_id": self.user.id, "user_agent": self.request.headers.get("User-Agent", "")})
        await self.publish(ERROR_REPORTS, report.event())
        self.success()


class PresenceHandler(PublishingHandler):
    """POST /json/users/me/presence (status: active or idle): queued to user_presence.

    Rate-limited on its own (``EVENTBUS_RATE_LIMIT_PRESENCE``): every change reaches every other user,
    so the processor also coalesces a user's changes (``EVENTBUS_PRESENCE_COALESCE_SECONDS``).
    """

    rate_limit_category = rate_limit.PRESENCE

    async def post(self) -> None:
        status = self.arg("status")
        if status not in ("active", "idle"):
            raise bad_request("Invalid 'status' argument: must be 'active' or 'idle'")
        client = self.request.headers.get("User-Agent", "website")[:100] if self.auth == Auth.API else "website"
        await self.publish(USER_PRESENCE, PresenceUpdate(self.user.id, status, client, time.time()).event())
        self.success()


class NotifyHandler(CoreHandler):
    """POST /api/internal/notify_tornado: send_event over HTTP, for producers without RabbitMQ; recipients of
    other shards get it through their notify queues (``EventServer.route``)."""

    async def post(self) -> None:
        try:
            delivered = await self.server.route(codec.decode(self.get_body_argument("data", "")))
        except (ValueError, EventEncodingError) as e:
            raise bad_request(f"Invalid 'data' argument: {excerpt(str(e))}") from None
        self.success(delivered=delivered)


class LoginHandler(BaseHandler):
    """POST /accounts/login with email and api_key: a session cookie and a CSRF token for /json."""

    async def post(self) -> None:
        self.check_same_origin("Login")  # another site's form must not log a visitor in as someone else
        email, api_key = self.arg("email"), self.arg("api_key")
        user = await self.authenticator.authenticate(email, api_key)
        if user is None:
            raise ApiError(401, "UNAUTHORIZED", "Wrong email or API key")
        csrf_token = await self.authenticator.start_session(self, user)
        self.success(user_id=user.id, email=user.email, full_name=user.full_name, csrf_token=csrf_token)


class ServerSettingsHandler(CoreHandler):
    """GET /api/v1/server_settings: what the zulip client asks before anything else (no login needed)."""

    def get(self) -> None:
        self.success(**self.server.server_settings())


class LogoutHandler(CoreHandler):
    """POST /accounts/logout (a session and its CSRF token, from this site's pages): the session ends everywhere,
    on every shard at once."""

    async def post(self) -> None:
        self.check_same_origin("Logout")
        key = await self.authenticator.end_session(self)
        if key is not None:
            await self.server.session_ended(key)
        self.success()
