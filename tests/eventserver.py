"""The real event server on a free port, in a thread of its own, and an async API client for tests."""

from __future__ import annotations

import asyncio
import base64
import threading
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from eventbus import codec
from eventbus.app import http_server, make_app
from eventbus.queue import Broker
from eventbus.settings import Settings
from eventbus.tornado_events.server import EventServer
from eventbus.users import User

T = TypeVar("T")

#: The start_server fixture: starts an event server, settings overridden by keyword.
StartServer = Callable[..., "ServerThread"]


def run(scenario: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    """Run an async test scenario on a fresh event loop, bounded in time; its result."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


class ServerThread:
    """``EventServer`` + ``make_app`` served on 127.0.0.1:<free port> by an IOLoop in a thread."""

    def __init__(self, settings: Settings, broker: Broker | None = None, *, address: str = "127.0.0.1",
                 extra_handlers: Callable[[EventServer], list[Any]] | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.address = address
        self.extra_handlers = extra_handlers
        self.loop = asyncio.new_event_loop()
        self._server: EventServer | None = None
        self._http: HTTPServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="event server", daemon=True)
        self.port = 0

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self._start)
        return self

    @property
    def server(self) -> EventServer:
        """The event server (once started)."""
        assert self._server is not None, "the server is not started"
        return self._server

    async def _start(self) -> None:
        self._server = EventServer(self.settings, self.broker)
        self.server.start()
        sock, self.port = bind_unused_port(address=self.address)
        extra = self.extra_handlers(self.server) if self.extra_handlers else None
        self._http = http_server(make_app(self.server, extra), self.settings)
        self._http.add_sockets([sock])

    def call(self, fn: Callable[[], Any] | Callable[[], Coroutine[Any, Any, Any]], timeout: float = 30) -> Any:
        """Run ``fn`` in the server's IOLoop (where its state may be touched) and return its result."""

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        """Stop as on SIGTERM: stop accepting, save the queues, close the queue client."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            assert self._http is not None
            await self.server.shutdown(self._http)

        self.call(shutdown)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Served(Protocol):
    """Where an event server answers: a ``ServerThread``, or shards behind nginx (tests/shards.py)."""

    def url(self, path: str) -> str: ...


class Api:
    """Async calls to the server as one user, with HTTP Basic auth (``/api/v1``)."""

    def __init__(self, server: Served, user: User | None, prefix: str = "/api/v1") -> None:
        self.server = server
        self.user = user
        self.prefix = prefix
        self.http = AsyncHTTPClient()
        self.headers: dict[str, str] = {}
        if user is not None:
            token = base64.b64encode(f"{user.email}:{user.api_key}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    async def call(self, method: str, path: str, timeout: float = 30, **params: Any) -> tuple[int, Any]:
        """(status, decoded JSON) of one request; params are form-encoded (GET: in the query)."""
        encoded = {k: v if isinstance(v, str) else codec.encode(v).decode() for k, v in params.items()}
        query = urllib.parse.urlencode(encoded)
        url = self.server.url(self.prefix + path)
        body = None
        if method in ("GET",) and query:
            url += "?" + query
        elif method != "GET":
            body = query
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = HTTPRequest(url, method=method, headers=headers, body=body, request_timeout=timeout,
                              allow_nonstandard_methods=True)
        response: HTTPResponse = await self.http.fetch(request, raise_error=False)
        return response.code, codec.decode(response.body) if response.body else None

    async def register(self, **params: Any) -> str:
        status, body = await self.call("POST", "/register", **params)
        assert status == 200, body
        return str(body["queue_id"])

    async def events(self, queue_id: str, last_event_id: int = -1, dont_block: bool = False,
                     timeout: float = 30) -> tuple[int, Any]:
        return await self.call("GET", "/events", timeout=timeout, queue_id=queue_id, last_event_id=last_event_id,
                               dont_block=dont_block)
