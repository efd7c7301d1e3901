"""The clients of the event server benchmarks: one process holding every connection of one case.

    python -m bench._load_client KIND FLAVOR PORT USERS_FILE [--shards PORT,... [--direct]] [--held N]

KIND is how every client listens (``longpoll``, ``websocket``,
``socketio``; on eventbus also ``live``, a long-poll that polls again as
soon as it is answered, as Zulip's clients do, and ``idle``, a queue
registered and never polled), FLAVOR the server on 127.0.0.1:PORT (``eventbus``,
``bare``, ``socketio``), USERS_FILE a JSON list of ``[id, email,
api_key]``, one client per user. The shared secret of eventbus's
``/api/internal/notify_tornado`` comes from ``EVENTBUS_BENCH_SECRET``.

The process connects every client (eventbus: a queue registered with HTTP
Basic auth, or a session and a queue registered over the socket), arms it
(a held GET) and waits until the server holds them all; then it prints
``{"ready": N, "seconds": S}`` and obeys commands read on stdin, one a
line, each answered with one JSON line on stdout:

``fanout``
    send one new event to every client's user, itself, in one HTTP request
    to the server, and answer ``{"seconds": S}``: from just before the
    request is written until the last client has the event, on this
    process's clock. Then re-arm the clients (untimed) and wait until the
    server holds them all again.
``collect``
    from now on, record each event's latency: the time it is received
    minus its ``sent`` (the sender's ``time.time()``, the same clock on one
    machine). Answers ``{"collecting": true}``.
``report N T``
    wait until N latencies are recorded, T seconds at most, stop recording,
    and answer ``{"latencies": [ms, ...]}``.
``quit``, or the end of stdin
    close everything and exit.

Every wait is bounded; a failure ends the process with status 1, the
reason on stderr. Long-polls use a minimal HTTP/1.1 client of their own
and websockets minimal clients of their own on asyncio's protocols (a
callback per answer or frame, no task per client), so that the clients'
work stays small beside the server's; socketio clients are its own
``AsyncClient``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.cookies
import json
import logging
import os
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import ujson

logger = logging.getLogger("bench.client")

KINDS = ("longpoll", "websocket", "socketio", "live", "idle")
FLAVORS = ("eventbus", "bare", "socketio")
#: The longest any step may take: connecting thousands of clients, a fan-out, a report.
TIMEOUT = 120.0
#: Clients connecting at once: enough to go fast, few enough not to overflow the server's accept queue.
CONNECTING_AT_ONCE = 50
#: How often the server's count of held clients is asked while it grows.
POLL = 0.005
#: Which count of the server's ``/bench/stats`` a client of each kind is in once held, where it is not its own.
HELD_AS = {"live": "longpoll"}
#: The first message id this process sends; eventbus delivers a message to a client once (by id).
FIRST_MESSAGE_ID = 1_000_000

#: A register body asking for no initial state (``fetch_event_types=[]``).
NO_INITIAL_STATE = b"fetch_event_types=%5B%5D"


def message_event(message_id: int, **extra: Any) -> dict[str, Any]:
    """A stream message event, as a chat server sends its clients (about 450 bytes of JSON)."""
    return {
        "type": "message",
        "message": {
            "id": message_id,
            "sender_id": 10,
            "sender_email": "bench-sender@example.com",
            "sender_full_name": "Bench Sender",
            "type": "stream",
            "stream_id": 3,
            "display_recipient": "benchmarks",
            "subject": "fan-out",
            "content": "The quick brown fox jumps over the lazy dog.",
            "rendered_content": "<p>The quick brown fox jumps over the lazy dog.</p>",
            "timestamp": 1_700_000_000,
        },
        **extra,
    }


class User(NamedTuple):
    id: int
    email: str
    api_key: str


class BenchClientError(RuntimeError):
    """A client or the server did not do what the case needs."""


# -- receiving ------------------------------------------------------------------------------


class Tally:
    """What the clients received: each fan-out round counted, latencies recorded while collecting."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.marker: int | None = None
        self.count = 0
        self.all_in: asyncio.Future[float] | None = None
        self.latencies: list[float] | None = None
        self.wanted = 0
        self.enough: asyncio.Future[None] | None = None

    def expect(self, marker: int) -> asyncio.Future[float]:
        """A future of the perf_counter time at which every client has the message ``marker``."""
        self.marker, self.count = marker, 0
        self.all_in = asyncio.get_running_loop().create_future()
        return self.all_in

    def receive(self, event: dict[str, Any]) -> None:
        if self.latencies is not None and "sent" in event:
            self.latencies.append((time.time() - event["sent"]) * 1000)
            if len(self.latencies) == self.wanted and self.enough is not None and not self.enough.done():
                self.enough.set_result(None)
        if self.marker is not None and event["message"]["id"] == self.marker:
            self.count += 1
            if self.count == self.clients and self.all_in is not None:
                self.all_in.set_result(time.perf_counter())

    def fail(self, error: BaseException) -> None:
        """A client broke: whoever waits is told."""
        for future in (self.all_in, self.enough):
            if future is not None and not future.done():
                future.set_exception(error)

    def collect(self) -> None:
        self.latencies, self.wanted, self.enough = [], 0, None

    async def report(self, wanted: int, timeout: float) -> list[float]:
        """The latencies recorded once ``wanted`` are in or ``timeout`` went by; recording stops."""
        assert self.latencies is not None, "report before collect"
        if len(self.latencies) < wanted:
            self.wanted, self.enough = wanted, asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough, timeout)
        latencies, self.latencies = self.latencies, None
        return latencies


# -- HTTP -----------------------------------------------------------------------------------


class Response(NamedTuple):
    status: int
    head: bytes
    body: bytes

    def cookie(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == "set-cookie":
                morsel = http.cookies.SimpleCookie(value.strip()).get(name)
                if morsel is not None:
                    return morsel.value
        return None


class HttpConnection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection: requests are answered in order; bodies need a Content-Length."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[Response]] = deque()

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: cls(f"127.0.0.1:{port}"), "127.0.0.1", port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> asyncio.Future[Response]:
        self.write(self.encode(method, path, headers, body))
        return self.expect()

    def encode(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + (body or b"")

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise BenchClientError("the connection is closed")
        self.transport.write(data)

    def expect(self) -> asyncio.Future[Response]:
        """The answer to the request just written."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            total = end + 4 + _content_length(head)
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4:total])
            del self._buffer[:total]
            self._waiting.popleft().set_result(Response(int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(BenchClientError(f"the server closed the connection ({exc})"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        raise BenchClientError(f"an answer without Content-Length: {head[:200]!r}")
    end = head.find(b"\r\n", at + 2)
    return int(head[at + 17:end if end >= 0 else len(head)])


class WebSocketConnection(asyncio.Protocol):
    """A websocket client as small as can be: frames whole (no fragments), pings answered, nothing checked.

    ``on_frame`` is called with the payload of each text or binary frame,
    and with None when the connection is gone.
    """

    def __init__(self, on_frame: Callable[[bytes | None], None]) -> None:
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()

    @classmethod
    async def open(cls, port: int, path: str, headers: dict[str, str],
                   on_frame: Callable[[bytes | None], None]) -> WebSocketConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: cls(on_frame), "127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        connection._write("\r\n".join(lines).encode() + b"\r\n\r\n")
        await connection.opened
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.opened.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            del self._buffer[:end + 4]
            if head[9:12] != b"101":
                self.opened.set_exception(BenchClientError(f"no websocket: {head[:300]!r}"))
                return
            self.opened.set_result(None)
        while len(self._buffer) >= 2:
            opcode, length, at = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F, 2
            if length >= 126:
                at = 4 if length == 126 else 10
                if len(self._buffer) < at:
                    return
                length = int.from_bytes(self._buffer[2:at], "big")
            if len(self._buffer) < at + length:
                return
            payload = bytes(self._buffer[at:at + length])
            del self._buffer[:at + length]
            if opcode in (0x1, 0x2):
                self.on_frame(payload)
            elif opcode == 0x9:
                self.send(payload, opcode=0xA)  # a ping: pong
            elif opcode == 0x8:
                self.close()

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        """One frame, masked as a client's must be."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, 0x80 | size])
        elif size < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        self._write(header + mask + masked)

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise BenchClientError("the websocket is closed")
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchClientError(f"the server closed the connection ({exc})"))
        self.on_frame(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _check(response: Response, what: str) -> Response:
    if response.status != 200:
        raise BenchClientError(f"{what}: HTTP {response.status}: {response.body[:300]!r}")
    return response


def _basic_auth(user: User) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user.email}:{user.api_key}".encode()).decode()}


# -- the servers ----------------------------------------------------------------------------


class Server:
    """The server of the case: how to trigger a fan-out there, and how many clients it holds.

    With ``shards`` (their ports, in shard order) the server is several eventbus shards, each user owned by
    shard ``user id % len(shards)``: the clients talk to ``port`` (nginx in front of them), or with
    ``direct`` each to its own shard; triggers go to the first shard, which routes the other shards' part
    through their notify queues, and the held clients are counted on every shard.
    """

    def __init__(self, flavor: str, port: int, controls: list[HttpConnection], shards: list[int] | None = None,
                 direct: bool = False) -> None:
        self.flavor = flavor
        self.port = port
        self.shards = shards or [port]
        self.direct = direct
        self.controls = controls  # a connection of its own to each shard for triggers and counts
        self.control = controls[0]

    def port_for(self, user: User) -> int:
        """Where ``user``'s client connects."""
        return self.shards[user.id % len(self.shards)] if self.direct else self.port

    def socket_path(self, user: User) -> str:
        """The websocket's path: with several shards, naming the user's (nginx routes by it)."""
        path = "/json/events/websocket"
        return f"{path}?shard={user.id % len(self.shards)}" if len(self.shards) > 1 else path

    def trigger(self, event: dict[str, Any], user_ids: list[int]) -> bytes:
        """The request that sends ``event`` to ``user_ids``."""
        notice = {"event": event, "users": user_ids}
        if self.flavor == "eventbus":
            form = urllib.parse.urlencode({"secret": os.environ["EVENTBUS_BENCH_SECRET"], "data": json.dumps(notice)})
            return self.control.encode("POST", "/api/internal/notify_tornado", _FORM, form.encode())
        if self.flavor == "bare":
            return self.control.encode("POST", "/trigger", _JSON, ujson.dumps(event).encode())
        return self.control.encode("POST", "/trigger", _JSON, ujson.dumps(notice).encode())

    async def wait_held(self, kind: str, clients: int) -> None:
        """Until the server holds ``clients`` clients of ``kind`` (socketio's: once connected, they are)."""
        if self.flavor == "socketio":
            return
        while True:
            answers = await asyncio.gather(*(control.request("GET", "/bench/stats") for control in self.controls))
            if sum(ujson.loads(_check(a, "stats").body)[HELD_AS.get(kind, kind)] for a in answers) >= clients:
                return
            await asyncio.sleep(POLL)


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_JSON = {"Content-Type": "application/json"}


# -- the clients ----------------------------------------------------------------------------


class Client(Protocol):
    async def connect(self) -> None: ...

    def arm(self) -> None:
        """Be ready for the next event: hold a GET (long-poll); nothing for a socket, which stays open."""

    async def close(self) -> None: ...


class LongPollClient:
    """A client that holds a GET; on eventbus, of its own registered queue."""

    def __init__(self, server: Server, user: User, tally: Tally) -> None:
        self.server = server
        self.user = user
        self.tally = tally
        self.headers = _basic_auth(user) if server.flavor == "eventbus" else {}
        self.queue_id = ""
        self.last_event_id = -1
        self.http: HttpConnection | None = None

    async def connect(self) -> None:
        self.http = await HttpConnection.open(self.server.port_for(self.user))
        if self.server.flavor == "eventbus":
            # No initial state: these clients only take events (a full state is every user's record each time).
            register = self.http.request("POST", "/api/v1/register", {**self.headers, **_FORM}, NO_INITIAL_STATE)
            answer = _check(await register, "register")
            self.queue_id = ujson.loads(answer.body)["queue_id"]

    def arm(self) -> None:
        assert self.http is not None
        path = "/poll"
        if self.server.flavor == "eventbus":
            path = f"/api/v1/events?queue_id={self.queue_id}&last_event_id={self.last_event_id}"
        self.http.request("GET", path, self.headers).add_done_callback(self._on_answer)

    def _on_answer(self, future: asyncio.Future[Response]) -> None:
        try:
            events = ujson.loads(_check(future.result(), "events").body)["events"]
        except Exception as e:
            self.tally.fail(e)
            return
        if events:
            self.last_event_id = events[-1].get("id", -1)
        for event in events:
            self.tally.receive(event)

    async def close(self) -> None:
        if self.http is not None:
            self.http.close()


class LiveClient(LongPollClient):
    """A long-poll client that polls again as soon as it has its answer (the fan-out re-arms its clients itself)."""

    def _on_answer(self, future: asyncio.Future[Response]) -> None:
        super()._on_answer(future)
        if not future.exception():
            self.arm()


class IdleClient(LongPollClient):
    """A client that registers its queue and never comes back for it: the queue only fills."""

    def arm(self) -> None:
        pass


class SocketClient:
    """A websocket; on eventbus, with a session and a queue it registered over the socket."""

    def __init__(self, server: Server, user: User, tally: Tally) -> None:
        self.server = server
        self.user = user
        self.tally = tally
        self.socket: WebSocketConnection | None = None
        self.registered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closing = False

    async def connect(self) -> None:
        port = self.server.port_for(self.user)
        if self.server.flavor == "bare":
            self.socket = await WebSocketConnection.open(port, f"/socket?user={self.user.id}", {}, self._on_frame)
            return
        http = await HttpConnection.open(port)  # the login page's connection, closed after
        try:
            form = urllib.parse.urlencode({"email": self.user.email, "api_key": self.user.api_key}).encode()
            answer = _check(await http.request("POST", "/accounts/login", _FORM, form), "login")
        finally:
            http.close()
        cookie = answer.cookie("eventbus_session")
        if cookie is None:
            raise BenchClientError("login set no session cookie")
        headers = {"Cookie": f"eventbus_session={cookie}", "Origin": f"http://127.0.0.1:{port}"}
        self.socket = await WebSocketConnection.open(port, self.server.socket_path(self.user), headers,
                                                     self._on_frame)
        self.socket.send(b'{"type":"register"}')
        await asyncio.wait_for(self.registered, TIMEOUT)

    def _on_frame(self, payload: bytes | None) -> None:
        if payload is None:
            if not self.closing:
                self.tally.fail(BenchClientError(f"the socket of user {self.user.id} closed"))
            return
        frame = ujson.loads(payload)
        kind = frame.get("type")
        if kind == "events":
            for event in frame["events"]:
                self.tally.receive(event)
        elif kind == "registered":
            self.registered.set_result(frame["queue_id"])
        else:
            self.tally.fail(BenchClientError(f"user {self.user.id} got {frame}"))

    def arm(self) -> None:
        pass

    async def close(self) -> None:
        self.closing = True
        if self.socket is not None:
            self.socket.close()


class SocketIOClient:
    """python-socketio's AsyncClient, over a websocket, in its user's room."""

    def __init__(self, server: Server, user: User, tally: Tally) -> None:
        import socketio  # only this case needs python-socketio

        self.server = server
        self.user = user
        self.client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.client.on("event", tally.receive)

    async def connect(self) -> None:
        await self.client.connect(f"http://127.0.0.1:{self.server.port}", transports=["websocket"],
                                  auth={"user": self.user.id}, wait_timeout=TIMEOUT)

    def arm(self) -> None:
        pass

    async def close(self) -> None:
        await self.client.disconnect()


CLIENTS: dict[str, Callable[[Server, User, Tally], Client]] = {
    "longpoll": LongPollClient, "websocket": SocketClient, "socketio": SocketIOClient, "live": LiveClient,
    "idle": IdleClient,
}


# -- the process ----------------------------------------------------------------------------


class Load:
    """Every client of the case, and the commands."""

    def __init__(self, kind: str, server: Server, users: list[User], held: int | None = None) -> None:
        self.kind = kind
        self.server = server
        #: The clients of this kind the server holds when this process's are armed: more where another
        #: process's clients share the server (its clients are held while this one's fan-out runs).
        self.held = held or len(users)
        self.user_ids = [user.id for user in users]
        self.tally = Tally(len(users))
        self.clients = [CLIENTS[kind](server, user, self.tally) for user in users]
        self.next_message_id = FIRST_MESSAGE_ID

    async def connect(self) -> None:
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def connect(client: Client) -> None:
            async with gate:
                await client.connect()
                client.arm()

        await asyncio.gather(*(connect(client) for client in self.clients))
        await self.server.wait_held(self.kind, len(self.clients))  # another process may not be connected yet

    async def fanout(self) -> dict[str, Any]:
        self.next_message_id += 1
        all_in = self.tally.expect(self.next_message_id)
        request = self.server.trigger(message_event(self.next_message_id), self.user_ids)
        start = time.perf_counter()
        self.server.control.write(request)
        answered = self.server.control.expect()
        end = await asyncio.wait_for(all_in, TIMEOUT)
        _check(await asyncio.wait_for(answered, TIMEOUT), "trigger")
        for client in self.clients:
            client.arm()
        await self.server.wait_held(self.kind, self.held)
        return {"seconds": end - start}

    async def collect(self) -> dict[str, Any]:
        self.tally.collect()
        return {"collecting": True}

    async def report(self, wanted: str, timeout: str) -> dict[str, Any]:
        latencies = await self.tally.report(int(wanted), float(timeout))
        return {"latencies": [round(ms, 3) for ms in latencies]}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)
        for control in self.server.controls:
            control.close()


async def run(kind: str, flavor: str, port: int, users: list[User], shards: list[int] | None = None,
              direct: bool = False, held: int | None = None) -> None:
    controls = [await HttpConnection.open(control) for control in shards or [port]]
    server = Server(flavor, port, controls, shards, direct)
    load = Load(kind, server, users, held)
    commands: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "fanout": load.fanout, "collect": load.collect, "report": load.report,
    }
    try:
        start = time.perf_counter()
        await asyncio.wait_for(load.connect(), TIMEOUT)
        _answer({"ready": len(users), "seconds": time.perf_counter() - start})
        stdin = await _stdin()
        while line := (await stdin.readline()).decode().split():
            name, *args = line
            if name == "quit":
                break
            if name not in commands:
                raise BenchClientError(f"unknown command {name!r}")
            _answer(await commands[name](*args))
    finally:
        await load.close()


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _answer(answer: dict[str, Any]) -> None:
    print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._load_client", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("flavor", choices=FLAVORS)
    parser.add_argument("port", type=int)
    parser.add_argument("users", type=Path)
    parser.add_argument("--shards", help="eventbus shards' ports, comma-separated, in shard order (PORT: nginx)")
    parser.add_argument("--direct", action="store_true", help="with --shards, each client to its user's shard")
    parser.add_argument("--held", type=int, help="clients of KIND the server holds once these are armed, "
                        "where another process's share it (default: this process's)")
    args = parser.parse_args(argv)
    shards = [int(port) for port in args.shards.split(",")] if args.shards else None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    users = [User(*entry) for entry in json.loads(args.users.read_text())]
    try:
        asyncio.run(run(args.kind, args.flavor, args.port, users, shards, args.direct, args.held))
    except (BenchClientError, OSError, TimeoutError) as e:
        print(f"{args.kind} clients of {args.flavor}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
