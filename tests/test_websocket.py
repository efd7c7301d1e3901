"""The websocket: sessions, push delivery, resume after reconnect, submission round trip, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from eventbus import codec
from eventbus.queue import MemoryBroker
from eventbus.tornado_events import send_event
from eventbus.tornado_events.websocket import SLOW_CONSUMER
from eventbus.users import User
from tests.eventserver import Api, ServerThread, StartServer, run


async def login(server: ServerThread, user: User) -> tuple[str, str]:
    """Log in; the Cookie header to send and the CSRF token."""
    body = f"email={user.email}&api_key={user.api_key}"
    response = await AsyncHTTPClient().fetch(server.url("/accounts/login"), method="POST", body=body)
    jar = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())
    return cookie, codec.decode(response.body)["csrf_token"]


async def connect(server: ServerThread, cookie: str, origin: str | None = None) -> WebSocketClientConnection:
    origin = origin or f"http://127.0.0.1:{server.port}"
    request = HTTPRequest(f"ws://127.0.0.1:{server.port}/json/events/websocket",
                          headers={"Cookie": cookie, "Origin": origin})
    return await websocket_connect(request)


async def receive(ws: WebSocketClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next frame of type ``kind`` (frames of other types before it are skipped)."""
    while True:
        raw = await asyncio.wait_for(ws.read_message(), timeout)
        assert raw is not None, f"the socket closed while waiting for {kind!r}"
        frame = codec.decode(raw)
        if frame["type"] == kind:
            return frame


async def send(ws: WebSocketClientConnection, frame: dict[str, Any]) -> None:
    await ws.write_message(codec.encode(frame).decode())


def test_session_csrf_and_json_register(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        cookie, csrf = await login(server, users[0])
        http = AsyncHTTPClient()
        url = server.url("/json/register")
        without = await http.fetch(url, method="POST", body="", headers={"Cookie": cookie}, raise_error=False)
        assert without.code == 401 and codec.decode(without.body)["msg"] == "CSRF token missing or incorrect"
        ok = await http.fetch(url, method="POST", body="", headers={"Cookie": cookie, "X-CSRFToken": csrf})
        queue_id = codec.decode(ok.body)["queue_id"]
        events = await http.fetch(server.url(f"/json/events?queue_id={queue_id}&dont_block=true"),
                                  headers={"Cookie": cookie})
        assert codec.decode(events.body)["events"] == []
        bad = await http.fetch(server.url("/accounts/login"), method="POST", raise_error=False,
                               body=f"email={users[0].email}&api_key=wrong")
        assert bad.code == 401

    run(scenario)


def test_socket_refused_without_session_or_from_another_origin(start_server: StartServer,
                                                              users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        with pytest.raises(HTTPClientError) as refused:
            await connect(server, cookie="")
        assert refused.value.code == 401
        cookie, _ = await login(server, users[0])
        with pytest.raises(HTTPClientError) as cross_site:
            await connect(server, cookie, origin="https://evil.example")
        assert cross_site.value.code == 403

    run(scenario)


def test_events_are_pushed_and_a_reconnect_resumes(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago, othello = users

    async def scenario() -> None:
        cookie, _ = await login(server, iago)
        ws = await connect(server, cookie)
        await send(ws, {"type": "register", "event_types": ["custom"]})
        queue_id = (await receive(ws, "registered"))["queue_id"]
        send_event(event_broker, {"type": "custom", "n": 0}, [iago.id])
        send_event(event_broker, {"type": "custom", "n": 99}, [othello.id])
        assert (await receive(ws, "events"))["events"] == [{"id": 0, "type": "custom", "n": 0}]
        await send(ws, {"type": "ack", "last_event_id": 0})
        send_event(event_broker, {"type": "custom", "n": 1}, [iago.id])
        assert (await receive(ws, "events"))["events"][0]["n"] == 1
        ws.close()  # the client goes away having seen event 1 but not acknowledged it
        send_event(event_broker, {"type": "custom", "n": 2}, [iago.id])
        again = await connect(server, cookie)
        await send(again, {"type": "attach", "queue_id": queue_id, "last_event_id": 0})
        await receive(again, "attached")
        events = (await receive(again, "events"))["events"]
        while [e["n"] for e in events] != [1, 2]:
            events += (await receive(again, "events"))["events"]
        assert [e["id"] for e in events] == [1, 2]
        # Another user's queue looks like no queue.
        other_cookie, _ = await login(server, othello)
        intruder = await connect(server, other_cookie)
        await send(intruder, {"type": "attach", "queue_id": queue_id, "last_event_id": -1})
        assert (await receive(intruder, "error"))["code"] == "BAD_EVENT_QUEUE_ID"

    run(scenario)


def test_events_of_every_frame_length_arrive_intact(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    # The server frames messages itself: lengths under 126, up to 65,535 and beyond take three header forms.
    server = start_server()
    iago = users[0]
    texts = ["", "x" * 60, "y" * 90, "é" * 300, "z" * 65_480, "w" * 65_600, "v" * 200_000]

    async def scenario() -> None:
        cookie, _ = await login(server, iago)
        ws = await connect(server, cookie)
        await send(ws, {"type": "register", "event_types": ["custom"]})
        await receive(ws, "registered")
        got: list[str] = []
        for text in texts:
            send_event(event_broker, {"type": "custom", "text": text}, [iago.id])
            got += [e["text"] for e in (await receive(ws, "events"))["events"]]
        assert got == texts

    run(scenario)


def test_bad_frames_get_error_frames(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        cookie, _ = await login(server, users[0])
        ws = await connect(server, cookie)
        await ws.write_message("not json")
        assert (await receive(ws, "error"))["msg"].startswith("a frame must be JSON")
        await send(ws, {"type": "dance"})
        assert "unknown frame type 'dance'" in (await receive(ws, "error"))["msg"]
        await send(ws, {"type": "ack", "last_event_id": 3})
        assert "register or attach first" in (await receive(ws, "error"))["msg"]
        await send(ws, {"type": "register", "narrow": "everything"})
        assert (await receive(ws, "error"))["code"] == "BAD_REQUEST"
        await send(ws, {"type": "request", "request": "send it"})
        assert "needs a 'req_id'" in (await receive(ws, "error"))["msg"]

    run(scenario)


@pytest.fixture
def stand_in_processor(event_broker: MemoryBroker) -> Iterator[list[dict[str, Any]]]:
    """Answers every message_sender request on the queue the request names, as the real processor will."""
    seen: list[dict[str, Any]] = []

    def answer(requests: list[dict[str, Any]]) -> None:
        for request in requests:
            seen.append(request)
            event_broker.publish(request["return_queue"], {
                "request_id": request["request_id"], "server_id": request["server_id"],
                "socket_id": request["socket_id"],
                "response": {"result": "success", "msg": "", "echo": request["request"]["content"]}})

    consumer = event_broker.consumer("message_sender", answer)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield seen
    consumer.stop()
    thread.join(5)


def test_submission_round_trip_through_message_sender_and_tornado_return(
        start_server: StartServer, users: tuple[User, User], stand_in_processor: list[dict[str, Any]]) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        cookie, _ = await login(server, iago)
        ws = await connect(server, cookie)
        await send(ws, {"type": "request", "req_id": "r1", "request": {"type": "stream", "content": "hi"}})
        assert await receive(ws, "ack") == {"type": "ack", "req_id": "r1"}
        response = await receive(ws, "response")
        assert response == {"type": "response", "req_id": "r1",
                            "response": {"result": "success", "msg": "", "echo": "hi"}}

    run(scenario)
    [request] = stand_in_processor
    assert request["user_id"] == iago.id and request["req_id"] == "r1"
    assert request["server_id"] == "tornado" and request["return_queue"] == "tornado_return"


#: Linux's shortest delayed ACK (TCP_DELACK_MIN), which a frame held back by Nagle's algorithm waits for.
NAGLE_DELAY = 0.040


def test_request_responses_are_not_held_back_by_nagles_algorithm(
        start_server: StartServer, users: tuple[User, User], stand_in_processor: list[dict[str, Any]]) -> None:
    """A response frame follows its request's ack frame: with Nagle's algorithm on, it waited for the client to
    acknowledge the ack frame, which Linux delays by at least 40 ms (every request took 44 ms in the benchmark)."""
    server = start_server()

    async def scenario() -> list[float]:
        cookie, _ = await login(server, users[0])
        ws = await connect(server, cookie)
        times = []
        for i in range(15):
            sent = time.perf_counter()
            await send(ws, {"type": "request", "req_id": i, "request": {"type": "stream", "content": "hi"}})
            await receive(ws, "response")
            times.append(time.perf_counter() - sent)
        return times

    times = sorted(run(scenario))
    assert times[len(times) // 2] < NAGLE_DELAY, f"round trips of {[round(t * 1000) for t in times]} ms"


def test_slow_consumer_is_closed_and_its_queue_stays(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    # The queue may hold more than the kernel's socket buffers, so that the socket is what overflows first.
    server = start_server(websocket_buffer_bytes=256 * 1024, max_queue_bytes=64 * 1024 * 1024)
    iago = users[0]
    cookie, _ = asyncio.run(login(server, iago))
    # A raw socket that does the handshake and then reads nothing: a client that cannot keep up.
    raw = socket.create_connection(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall((f"GET /json/events/websocket HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                 f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{server.port}\r\nCookie: {cookie}\r\n\r\n")
                .encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    frame = codec.encode({"type": "register"})
    raw.sendall(bytes([0x81, 0x80 | len(frame)]) + b"\x00\x00\x00\x00" + frame)  # masked with a zero key
    deadline = time.monotonic() + 10
    while not server.call(lambda: [c for c in server.server.registry if c.listener is not None]):
        assert time.monotonic() < deadline, "the socket never registered"
        time.sleep(0.02)
    [client] = server.call(lambda: list(server.server.registry))
    blob = "x" * 100_000
    deadline = time.monotonic() + 30
    # Events the client does not read, until the server closes it.
    while not server.call(lambda: server.server.statistics()["slow_consumers_closed"]):
        assert time.monotonic() < deadline, "the slow socket was never closed"
        for _ in range(10):
            send_event(event_broker, {"type": "custom", "blob": blob}, [iago.id])
        time.sleep(0.02)
    # Now the client reads what was sent: the close frame comes last, before Tornado's 5 s abort.
    received = bytearray()
    raw.settimeout(5)
    try:
        while (chunk := raw.recv(1 << 20)) and b"slow consumer" not in received[-200:] + chunk:
            received += chunk
        received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    raw.close()
    assert server.call(lambda: server.server.registry.get(client.queue_id, iago.id)) is not None
    close_code = SLOW_CONSUMER.to_bytes(2, "big")
    assert b"\x88" in received and close_code + b"slow consumer" in received


def test_a_request_nobody_answers_times_out_on_both_paths(start_server: StartServer, users: tuple[User, User]) -> None:
    # No message_sender processor runs here: the server answers for it once its wait is over, and forgets it.
    server = start_server()
    server.call(lambda: setattr(server.server.submissions, "request_timeout", 0.3))
    iago = users[0]

    async def scenario() -> None:
        cookie, _ = await login(server, iago)
        ws = await connect(server, cookie)
        await send(ws, {"type": "request", "req_id": "r1", "request": {"type": "stream", "content": "hi"}})
        response = await receive(ws, "response")
        assert response["req_id"] == "r1" and response["response"]["code"] == "REQUEST_TIMEOUT"
        status, body = await Api(server, iago).call("POST", "/messages", type="stream", to="Denmark", content="hi")
        assert (status, body["code"]) == (504, "REQUEST_TIMEOUT")

    run(scenario)
    assert server.call(lambda: server.server.statistics()["pending_requests"]) == 0
