"""Hostile input: what the JSON decoder refuses, range checks, static paths, API keys, echoes and body limits.

Each scenario sends what an attacker or a buggy client would, to the real server on a free port, and checks
what a user would: a JSON 4xx naming the parameter (never a 5xx), the server still serving, and every
queue saved at shutdown.
"""

from __future__ import annotations

import base64
import socket
import time
import urllib.parse
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from eventbus import codec
from eventbus.errors import EventEncodingError
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User
from eventbus.validation import EXCERPT_CHARS, MAX_ID, excerpt
from eventbus.web.handlers import web_handlers
from tests.eventserver import Api, ServerThread, StartServer, run
from tests.test_websocket import connect, login, receive, send

#: JSON texts the decoder must refuse although ujson reads them: non-finite numbers, lone surrogates.
UNENCODABLE = [
    b"NaN", b"[Infinity]", b"-Infinity", b"1e999", b'{"x": -1E400}', b"1" + b"0" * 400 + b".5",
    b'"\\ud800"', b'["a\\udfffb"]', b'{"\\udc00": 1}', b'"\xed\xa0\x80"',
]


@pytest.mark.parametrize("text", UNENCODABLE)
def test_decode_refuses_what_encode_cannot_write(text: bytes) -> None:
    with pytest.raises(EventEncodingError, match="refused JSON"):
        codec.decode(text)
    with pytest.raises(EventEncodingError):
        codec.decode(text.decode("utf-8", "surrogatepass"))  # as a str too


def test_decode_keeps_what_encode_writes() -> None:
    value: dict[str, object] = {"emoji": "\U0001f600", "é": [1, 2.5, -0.0, 10**400, 1e308, None, True],
                                "nested": [[[]]]}
    assert codec.decode(codec.encode(value)) == value
    assert codec.decode(b'"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate pair is one character


def test_excerpt_quotes_a_short_prefix() -> None:
    assert excerpt("x" * 10_000) == "x" * EXCERPT_CHARS + "…"
    assert excerpt("short") == "short"
    assert len(excerpt(10**5000)) <= EXCERPT_CHARS + 1


def test_unencodable_registrations_are_refused_and_every_queue_is_saved(start_server: StartServer,
                                                                        users: tuple[User, User]) -> None:
    server = start_server()
    raw = {"queue_lifespan_secs": ["NaN", "Infinity", "1e999"], "narrow": ['[["stream", "\\ud800"]]'],
           "event_types": ['["\\ud800"]', '["message", "\\udfff"]']}

    async def scenario() -> None:
        api = Api(server, users[0])
        for name, values in raw.items():
            for value in values:
                params: dict[str, Any] = {name: value}
                status, body = await api.call("POST", "/register", **params)
                assert status == 400 and body["code"] == "BAD_REQUEST", (name, value, body)
                assert f"Invalid '{name}' argument" in body["msg"]
        await api.register(event_types=["message"])

    run(scenario)
    server.stop()  # as on SIGTERM: the dump must not fail on any registered queue
    saved = codec.decode((server.settings.var_dir / "event_queues.json").read_bytes())
    assert len(saved) == 1


def test_websocket_frames_with_unencodable_json_get_an_error_frame(start_server: StartServer,
                                                                   users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        cookie, _ = await login(server, users[0])
        ws = await connect(server, cookie)
        for frame in ['{"type": "register", "queue_lifespan_secs": NaN}',
                      '{"type": "register", "event_types": ["\\ud800"]}', '{"type": "ack", "last_event_id": 1e999}']:
            await ws.write_message(frame)
            error = await receive(ws, "error")
            assert error["code"] == "BAD_REQUEST" and error["msg"].startswith("a frame must be JSON: refused JSON")
        await send(ws, {"type": "register", "event_types": ["message"]})
        registered = await receive(ws, "registered")
        await send(ws, {"type": "ack", "last_event_id": 10**20})
        assert "Invalid 'last_event_id'" in (await receive(ws, "error"))["msg"]
        await send(ws, {"type": "request", "req_id": "r" * 10_000, "request": {}})
        error = await receive(ws, "error")
        assert "'req_id'" in error["msg"] and "r" * 200 not in codec.encode(error).decode()
        ws.close()
        server.stop()
        saved = codec.decode((server.settings.var_dir / "event_queues.json").read_bytes())
        assert [q["queue_id"] for q in saved] == [registered["queue_id"]]

    run(scenario)


def test_numbers_are_range_checked_where_they_enter(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, users[0])
        queue_id = await api.register(queue_lifespan_secs=10**400)  # capped at the maximum, as any large one
        client = server.call(lambda: server.server and server.server.registry.get(queue_id, users[0].id))
        assert client.lifespan == server.settings.max_queue_lifespan_seconds
        for value in ("-1", "-1e-9", "true", '"600"'):
            status, body = await api.call("POST", "/register", queue_lifespan_secs=value)
            assert status == 400 and "Invalid 'queue_lifespan_secs' argument" in body["msg"], value
        for last_event_id in (str(MAX_ID + 1), str(-2), "1" * 5000):
            status, body = await api.call("GET", "/events", queue_id=queue_id, last_event_id=last_event_id,
                                          dont_block="true")
            assert status == 400 and "Invalid 'last_event_id' argument" in body["msg"], last_event_id
        status, body = await api.call("GET", "/events", queue_id=queue_id, last_event_id=str(MAX_ID),
                                      dont_block="true")
        assert status == 200, body
        status, body = await api.call("GET", "/messages", num_before="1" + "0" * 400)
        assert status == 400 and "Invalid 'num_before' argument" in body["msg"]

    run(scenario)


def test_a_private_message_to_a_huge_user_id_is_refused_at_once(start_server: StartServer, users: tuple[User, User],
                                                                sender_worker: WorkerThreads) -> None:
    server = start_server()
    assert server.server is not None
    server.server.submissions.request_timeout = 10  # a retried request would take 0.5+1+2+4 s, then time out: a 504

    async def scenario() -> None:
        api = Api(server, users[0])
        for to in (f"[{10**20}]", f"[{MAX_ID + 1}]", "[0]", "[-5]"):
            started = time.monotonic()
            status, body = await api.call("POST", "/messages", type="private", to=to, content="hi")
            assert (status, body["code"]) == (400, "BAD_REQUEST"), (to, body)
            assert "is neither an email nor a user id" in body["msg"]
            assert time.monotonic() - started < 3, "answered at once, not after retries"
        status, body = await api.call("POST", "/messages", type="private", to=f"[{users[1].id}]", content="hi")
        assert status == 200, body

    run(scenario)


def test_error_answers_quote_a_short_prefix_of_the_input(start_server: StartServer, users: tuple[User, User],
                                                         sender_worker: WorkerThreads) -> None:
    server = start_server()
    huge = "x" * 1_000_000

    async def scenario() -> None:
        api = Api(server, users[0])
        cases: list[dict[str, Any]] = [{"type": "private", "to": huge + "@example.com", "content": "hi"},
                                       {"type": "private", "to": f'["{huge}"]', "content": "hi"},
                                       {"type": "stream", "to": huge, "topic": "t", "content": "hi"}]
        for params in cases:
            status, body = await api.call("POST", "/messages", **params)
            assert status == 400 and len(codec.encode(body)) < 500, body["msg"][:200]
            assert "x" * 20 in body["msg"] and "…" in body["msg"]
        status, body = await api.call("POST", "/register", narrow=codec.encode([[huge, "x"]]).decode())
        assert status == 400 and len(codec.encode(body)) < 500
        status, body = await api.call("GET", "/events", queue_id=huge[:50_000])  # a URL of 64 KB at most
        assert status == 400 and body["code"] == "BAD_EVENT_QUEUE_ID" and len(codec.encode(body)) < 500

    run(scenario)


def test_unservable_static_and_page_paths_are_json_404s(event_settings: Settings, event_broker: MemoryBroker) -> None:
    server = ServerThread(event_settings, event_broker, extra_handlers=lambda s: web_handlers(s, event_broker)).start()

    async def scenario() -> None:
        http = AsyncHTTPClient()
        for path in ("/static/%00", "/static/style.css%00.js", "/static/%ff%fe", "/static/" + "a" * 5000,
                     "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/", "/static/..", "/login%00", "/%c0%ae"):
            response = await http.fetch(server.url(path), raise_error=False)
            assert response.code == 404, (path[:40], response.code)
            assert codec.decode(response.body)["code"] == "NOT_FOUND"
        assert (await http.fetch(server.url("/static/style.css"))).code == 200

    try:
        run(scenario)
    finally:
        server.stop()


def test_a_non_ascii_api_key_is_a_401(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        http = AsyncHTTPClient()
        for email in ("nobody@example.com", users[0].email):
            body = urllib.parse.urlencode({"email": email, "api_key": "clé-ключ-🔑"})
            response = await http.fetch(server.url("/accounts/login"), method="POST", body=body, raise_error=False)
            assert response.code == 401, (email, response.code)
            token = base64.b64encode(f"{email}:ключ".encode()).decode()
            response = await http.fetch(server.url("/api/v1/messages"), headers={"Authorization": f"Basic {token}"},
                                        raise_error=False)
            assert response.code == 401, (email, response.code)

    run(scenario)


def test_arguments_that_are_not_utf8_are_named(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, users[0])
        request = HTTPRequest(server.url("/api/v1/register"), method="POST", body=b"event_types=%ff%fe",
                              headers={**api.headers, "Content-Type": "application/x-www-form-urlencoded"})
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        assert response.code == 400
        assert codec.decode(response.body)["msg"] == "Invalid 'event_types' argument: not UTF-8"

    run(scenario)


def test_a_body_over_the_limit_is_a_413_and_the_server_keeps_serving(start_server: StartServer,
                                                                     users: tuple[User, User]) -> None:
    server = start_server(max_body_bytes=64 * 1024)

    async def scenario() -> None:
        api = Api(server, users[0])
        status, body = await api.call("POST", "/messages", type="private", to=users[1].email, content="x" * 70_000)
        assert status == 413 and body["code"] == "REQUEST_TOO_LARGE"
        assert (await api.call("GET", "/messages", anchor="newest", num_before=1, num_after=0))[0] == 200

    run(scenario)
    # On the wire: the answer comes before the body is sent, and the connection then closes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and codec.decode(body)["code"] == "REQUEST_TOO_LARGE"
