"""Property-based input handling: arbitrary parameters, types, sizes and encodings at every public endpoint
and in every websocket frame type, against the real server on a free port.

Whatever arrives, the server answers JSON (a 4xx error, or success), never a 5xx, never a traceback, logs
nothing at ERROR, and keeps serving; after the run a graceful shutdown saves every queue it holds.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tornado.websocket import WebSocketClientConnection

from eventbus import codec
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User
from eventbus.web.handlers import web_handlers
from tests.conftest import EVENT_SECRET
from tests.eventserver import ServerThread
from tests.test_websocket import connect, login

#: Few examples each, no deadline: the whole file must stay well under a minute on a shared two-core machine.
EXAMPLES = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Every public endpoint: (method, path, how it authenticates, the parameters it reads).
ENDPOINTS = [
    ("POST", "/api/v1/register", "api", ["event_types", "narrow", "apply_markdown", "queue_lifespan_secs"]),
    ("POST", "/json/register", "session", ["event_types", "narrow", "apply_markdown", "queue_lifespan_secs"]),
    ("GET", "/api/v1/events", "api", ["queue_id", "last_event_id", "dont_block"]),
    ("DELETE", "/api/v1/events", "api", ["queue_id"]),
    ("GET", "/api/v1/messages", "api", ["anchor", "num_before", "num_after", "narrow", "include_anchor",
                                        "apply_markdown", "client_gravatar", "message_ids"]),
    ("POST", "/api/v1/messages", "api", ["type", "to", "topic", "subject", "content", "queue_id", "local_id"]),
    ("POST", "/json/messages", "session", ["type", "to", "topic", "subject", "content", "queue_id", "local_id"]),
    ("POST", "/api/v1/users/me/presence", "api", ["status"]),
    ("POST", "/json/users/me/presence", "session", ["status"]),
    ("POST", "/json/report/error", "session", ["message", "stacktrace", "href"]),
    ("GET", "/api/v1/server_settings", "none", []),
    ("POST", "/accounts/login", "none", ["email", "api_key"]),
    ("POST", "/accounts/logout", "none", []),
    ("POST", "/api/internal/notify_tornado", "internal", ["data", "secret"]),
    ("GET", "/json/users/me", "session", []),
    ("GET", "/json/users", "session", []),
    ("GET", "/json/streams", "session", []),
]

# -- what a client may send ---------------------------------------------------------------

HUGE_NUMBERS = st.sampled_from([10**400, 2**63, 2**63 - 1, -(2**63) - 1, 10**20, -1, 0])
#: Text with lone surrogates too (Hypothesis leaves them out by default).
TEXT = st.text(st.characters(exclude_categories=[]), max_size=20)
#: What the decoder must refuse, or ranges must catch, most likely to break something: drawn often.
HOSTILE = st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, 2**63, "\ud800", ["\udfff"],
                           {"\ud800": 1}, [["stream", "\udc00"]], [10**20], "x" * 5000])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | HUGE_NUMBERS | st.floats() | TEXT | HOSTILE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
#: JSON texts as a client's library would write them: NaN and Infinity included, lone surrogates as escapes.
JSON_TEXTS = JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=True))
NUMBER_TEXTS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1", "0", "1" * 400, "1" * 5000,
                                "2.5", "9223372036854775808", " 7 ", "0x10", "", "true", "null", "[]", "{}"])
#: Raw argument bytes: text (lone surrogates become bytes that are not UTF-8), JSON, numbers, binary, big.
ARGUMENTS = st.one_of(
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), HOSTILE.map(lambda v: json.dumps(v).encode()),
    JSON_TEXTS.map(str.encode), NUMBER_TEXTS.map(str.encode), st.binary(max_size=64),
    st.sampled_from([b"x" * 200_000, b'["' + b"a" * 100_000 + b'"]', b"\x00", b"%", b"a\r\nb"]))
KNOWN = st.sampled_from(["queue_id", "last_event_id", "type", "to", "content", "event_types", "narrow"])
CONTENT_TYPES = st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/json", "text/plain", "application/x-www-form-urlencoded; charset=latin1"])
#: The server's body limit in this suite: small, so that the limit itself is exercised.
BODY_LIMIT = 256 * 1024


def form(params: dict[str, bytes]) -> str:
    return "&".join(f"{urllib.parse.quote(name, safe='')}={urllib.parse.quote_from_bytes(value, safe='')}"
                    for name, value in params.items())


# -- the scenario -------------------------------------------------------------------------


class ErrorRecords(logging.Handler):
    """Keeps every record at ERROR or above, from any logger of the process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


class Client:
    """Raw HTTP requests to the server, as one user: by API key, by session, or as the internal producer."""

    def __init__(self, server: ServerThread, user: User, cookie: str, csrf: str) -> None:
        self.server = server
        basic = base64.b64encode(f"{user.email}:{user.api_key}".encode()).decode()
        self.auth = {"api": {"Authorization": f"Basic {basic}"}, "session": {"Cookie": cookie, "X-CSRFToken": csrf},
                     "none": {}, "internal": {}}
        self.queue_id = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=20)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def check_answer(status: int, body: bytes, what: object) -> Any:
    """A JSON error (4xx) or success, no traceback: the decoded answer."""
    assert status < 500, (what, status, body[:300])
    assert b"Traceback" not in body, what
    answer = codec.decode(body)
    if status >= 400:
        assert answer["result"] == "error" and isinstance(answer["code"], str), (what, answer)
    return answer


@pytest.fixture
def server(event_settings: Settings, event_broker: MemoryBroker,
           sender_worker: WorkerThreads) -> Iterator[ServerThread]:
    server = ServerThread(event_settings.replace(queue_gc_seconds=3600.0, max_body_bytes=BODY_LIMIT), event_broker,
                          extra_handlers=lambda s: web_handlers(s, event_broker)).start()
    yield server
    server.stop()


def test_every_endpoint_answers_json_4xx_or_success_whatever_it_gets(
        server: ServerThread, users: tuple[User, User], error_records: ErrorRecords) -> None:
    cookie, csrf = asyncio.run(login(server, users[0]))
    client = Client(server, users[0], cookie, csrf)
    status, body = client.request("POST", "/api/v1/register", b"", client.auth["api"])
    client.queue_id = check_answer(status, body, "register")["queue_id"]

    @EXAMPLES
    @given(endpoint=st.sampled_from(ENDPOINTS), data=st.data(), in_query=st.booleans(), content_type=CONTENT_TYPES)
    def any_request(endpoint: tuple[str, str, str, list[str]], data: st.DataObject, in_query: bool,
                    content_type: str) -> None:
        method, path, auth, names = endpoint
        # Each parameter the endpoint reads, mostly, and a few it does not.
        params = {name: data.draw(ARGUMENTS) for name in names if data.draw(st.integers(0, 4))}
        params.update(data.draw(st.dictionaries(KNOWN | st.text(min_size=1, max_size=10), ARGUMENTS, max_size=2)))
        if "queue_id" in params and data.draw(st.booleans()):
            params["queue_id"] = client.queue_id.encode()
        if method == "GET" and path.endswith("/events"):
            params["dont_block"] = b"true"  # a held poll would only wait for a heartbeat
        if auth == "internal":
            params["secret"] = EVENT_SECRET.encode()
        query, body = (form(params), b"") if in_query or method == "GET" else ("", form(params).encode())
        assume(len(query) < 32 * 1024)  # a longer request line is no request: Tornado reads 64 KB of headers
        # A body over the limit is answered 413 and the connection closed while the client may still be sending
        # (a reset): tests/test_input_hardening.py checks that case on the wire.
        assume(len(body) < BODY_LIMIT)
        headers = {**client.auth[auth], "Content-Type": content_type}
        status, answer = client.request(method, path + ("?" + query if query else ""),
                                        body if method != "GET" else None, headers)
        check_answer(status, answer, (method, path))
        answered[status // 100] += 1

    @EXAMPLES
    @given(path=st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
           prefix=st.sampled_from(["/static/", "/", "/login/", "/json/", "/api/v1/", "/devtools/"]))
    def any_path(path: bytes, prefix: str) -> None:
        full = prefix + urllib.parse.quote_from_bytes(path, safe="/")
        status, body = client.request("GET", full, None, client.auth["session"])
        assert status < 500, (full, status)
        if status >= 400:
            assert codec.decode(body)["result"] == "error", full

    answered: Counter[int] = Counter()
    any_request()
    any_path()
    assert answered[2] and answered[4] and answered.total() >= 50, answered  # both kinds, really exercised
    assert not error_records.records, [r.getMessage()[:300] for r in error_records.records]
    # Still serving, and a graceful shutdown saves every queue the server holds.
    status, body = client.request("POST", "/api/v1/register", b"", client.auth["api"])
    assert status == 200
    held = server.call(lambda: sorted(c.queue_id for c in server.server.registry) if server.server else [])
    server.stop()
    saved = codec.decode((server.settings.var_dir / "event_queues.json").read_bytes())
    assert sorted(q["queue_id"] for q in saved) == held and len(held) >= 2


FRAME_TYPES = st.sampled_from(["register", "attach", "ack", "request", "events", "", "__class__"])


def test_every_websocket_frame_gets_json_or_nothing_and_the_socket_stays(
        server: ServerThread, users: tuple[User, User], error_records: ErrorRecords) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the websocket client's callbacks look for the thread's loop
    cookie, _ = loop.run_until_complete(login(server, users[0]))
    ws: WebSocketClientConnection = loop.run_until_complete(connect(server, cookie))
    probes = iter(range(10**9))

    async def exchange(frame: str | bytes) -> list[dict[str, Any]]:
        """Send a frame, then a probe; the frames answered before the probe's error."""
        probe = f"probe-{next(probes)}"
        await ws.write_message(frame, binary=isinstance(frame, bytes))
        await ws.write_message(codec.encode({"type": probe}).decode())
        answers: list[dict[str, Any]] = []
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 20)
            assert raw is not None, f"the server closed the socket after {frame[:200]!r}"
            answer = codec.decode(raw)
            assert isinstance(answer, dict) and isinstance(answer.get("type"), str), answer
            if answer["type"] == "error" and probe in answer["msg"]:
                return answers
            answers.append(answer)

    value = HOSTILE | JSON_VALUES  # the hostile values half the time: a field at a time is what breaks things
    frames = st.fixed_dictionaries({"type": FRAME_TYPES}, optional={
        "queue_id": TEXT | value, "last_event_id": value, "req_id": value, "event_types": value, "narrow": value,
        "queue_lifespan_secs": value, "apply_markdown": value,
        "request": st.dictionaries(st.sampled_from(["type", "to", "topic", "content"]), value, max_size=4),
    }).map(lambda f: json.dumps(f, ensure_ascii=True))
    texts = frames | JSON_TEXTS | TEXT.map(lambda t: t.encode("utf-8", "replace").decode())

    @EXAMPLES
    @given(frame=texts | st.binary(max_size=40))
    def any_frame(frame: str | bytes) -> None:
        for answer in loop.run_until_complete(exchange(frame)):
            if answer["type"] == "error":
                assert isinstance(answer["code"], str) and len(answer["msg"]) < 400, answer

    try:
        any_frame()
        assert not error_records.records, [r.getMessage()[:300] for r in error_records.records]
    finally:
        ws.close()
        asyncio.set_event_loop(None)
        loop.close()
    held = server.call(lambda: sorted(c.queue_id for c in server.server.registry) if server.server else [])
    server.stop()
    saved = codec.decode((server.settings.var_dir / "event_queues.json").read_bytes())
    assert sorted(q["queue_id"] for q in saved) == held
