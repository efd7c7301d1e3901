"""``eventbus deactivate_user`` against a real ``eventbus runtornado`` on RabbitMQ: the user's websocket is
closed, their event queues dropped, their session ended and their API key refused, within seconds; and against
the stores in SQLite and in PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from eventbus import codec
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.sessions import SessionStore
from eventbus.settings import Settings
from eventbus.users import User, UserStore
from tests.conftest import wait_for
from tests.workers import ROOT, cli_env, run_cli

#: How long the deactivation may take to reach every connection of the user.
WITHIN_SECONDS = 10.0


@dataclass
class RunTornado:
    """``eventbus runtornado`` in a process of its own, on a free port."""

    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> int:
        """SIGTERM, as a restart does: the process saves its queues and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def runtornado(settings: Settings, broker: RabbitMQBroker) -> Iterator[RunTornado]:
    if broker.queue_info("notify_tornado").exists:
        broker.purge("notify_tornado")
    port = free_port()
    log = settings.var_dir / "runtornado.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "eventbus", "runtornado"], cwd=ROOT,
                                   env=cli_env(settings, EVENTBUS_PORT=str(port)), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: f"listening on http://127.0.0.1:{port}" in log.read_text(), timeout=30,
                 what="the server to listen")
        yield RunTornado(process, port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def call(server: RunTornado, method: str, path: str, *, user: User | None = None, cookie: str = "",
               csrf: str = "", timeout: float = 30, **params: Any) -> HTTPResponse:
    """One request: HTTP Basic as ``user``, or a session's cookie and CSRF token; params form-encoded."""
    body = "&".join(f"{name}={value if isinstance(value, str) else json.dumps(value)}"
                    for name, value in params.items())
    headers = {"Cookie": cookie, "X-CSRFToken": csrf}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user.email}:{user.api_key}".encode()).decode()
    url = server.url(path) + (f"?{body}" if method == "GET" else "")
    request = HTTPRequest(url, method=method, headers=headers, body=None if method == "GET" else body,
                          request_timeout=timeout)
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def within(seconds: float, condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Ask ``condition`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.05)


def test_deactivate_user_ends_every_connection_of_the_user(runtornado: RunTornado, settings: Settings) -> None:
    store = UserStore(settings.database)
    iago, othello = store.create_user("iago@example.com", "Iago"), store.create_user("othello@example.com")
    server = runtornado

    async def scenario() -> None:
        # Given Iago logged in in a browser, with a websocket open,
        login = await call(server, "POST", "/accounts/login", email=iago.email, api_key=iago.api_key)
        cookie = "; ".join(f"{n}={m.value}" for header in login.headers.get_list("Set-Cookie")
                           for n, m in SimpleCookie(header).items())
        csrf = codec.decode(login.body)["csrf_token"]
        ws = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{server.port}/json/events/websocket", headers={
            "Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"}))
        await ws.write_message(codec.encode({"type": "register"}).decode())
        registered_frame = await asyncio.wait_for(ws.read_message(), 10)
        assert registered_frame is not None and codec.decode(registered_frame)["type"] == "registered"
        # and an API client of his (its key trusted, and cached, by the server) waiting on a long-poll,
        api_queue = codec.decode((await call(server, "POST", "/api/v1/register", user=iago)).body)["queue_id"]
        held = asyncio.ensure_future(call(server, "GET", "/api/v1/events", user=iago, queue_id=api_queue,
                                          last_event_id=-1))
        # and Othello, who follows the users,
        registered = await call(server, "POST", "/api/v1/register", user=othello, event_types=["realm_user"])
        othello_queue = codec.decode(registered.body)["queue_id"]

        # when an operator deactivates Iago,
        done = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_cli(settings, "deactivate_user", iago.email))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"user_id": iago.id, "email": iago.email, "sessions_ended": 1}

        # then his websocket is closed (log in again),
        closed = await asyncio.wait_for(ws.read_message(), WITHIN_SECONDS)
        assert closed is None, closed
        assert ws.close_code == 4401
        # his long-poll is answered at once (his queue is gone, or his key already refused),
        answer = await asyncio.wait_for(held, WITHIN_SECONDS)
        assert (answer.code, codec.decode(answer.body)["code"]) in ((400, "BAD_EVENT_QUEUE_ID"), (401, "UNAUTHORIZED"))
        # his API key and his session are refused,

        async def key_refused() -> bool:
            return (await call(server, "POST", "/api/v1/register", user=iago)).code == 401

        await within(WITHIN_SECONDS, key_refused, "the API key refused")
        assert (await call(server, "POST", "/json/register", cookie=cookie, csrf=csrf)).code == 401
        # and Othello's client is told, as Zulip's are.
        events = codec.decode((await call(server, "GET", "/api/v1/events", user=othello, queue_id=othello_queue,
                                          last_event_id=-1)).body)["events"]
        assert [e["person"] for e in events if e["type"] == "realm_user"] == [{"user_id": iago.id,
                                                                               "is_active": False}]

    asyncio.run(asyncio.wait_for(scenario(), 60))
    # Iago's queues were dropped: a restart saves Othello's alone.
    assert server.stop() == 0
    saved = json.loads((settings.var_dir / "event_queues.json").read_text())
    assert {q["user_id"] for q in saved} == {othello.id}


def test_deactivate_user_names_an_unknown_email(settings: Settings) -> None:
    result = run_cli(settings, "deactivate_user", "nobody@example.com")
    assert result.returncode == 2 and "no user with email 'nobody@example.com'" in result.stderr


def test_deactivate_user_ends_access_in_either_database(tmp_path: Path, database: Path | str) -> None:
    # Given a user with two sessions and a colleague, in SQLite or PostgreSQL,
    settings = Settings(broker="memory", var_dir=tmp_path / "var", database_setting=database)
    users, sessions = UserStore(database), SessionStore(database)
    iago, othello = users.create_user("iago@example.com", "Iago"), users.create_user("othello@example.com")
    started = [sessions.start(iago.id, 3600.0) for _ in range(2)]
    kept = sessions.start(othello.id, 3600.0)
    # when an operator deactivates him (in any case of his email),
    result = run_cli(settings, "deactivate_user", "IAGO@example.com")
    # then his key and his sessions are refused, and his colleague's access stays.
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"user_id": iago.id, "email": iago.email, "sessions_ended": 2}
    assert users.authenticate(iago.email, iago.api_key) is None
    assert [sessions.live(s.id) for s in started] == [None, None]
    assert users.authenticate(othello.email, othello.api_key) == othello and sessions.live(kept.id) is not None
    assert users.active_ids() == [othello.id]
