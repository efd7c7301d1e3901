"""The whole message path with real parts: RabbitMQ, worker processes, the Tornado server, SMTP, a push gateway.

A websocket client sends Markdown mentioning a user who is away; everyone's long-polling and websocket clients
get the rendered message with their flags; the away user gets one push and one email. A message_sender killed
with SIGKILL mid-stream delivers each message exactly once. The zulip package's send_message and
call_on_each_event work against the server. Each test runs with the stores on SQLite, then on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zulip
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from eventbus import codec
from eventbus.devtools import dev_dir, push_gateway, read, smtp_sink
from eventbus.messages import MessageStore
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import wait_for
from tests.eventserver import Api, ServerThread, run
from tests.workers import WorkerProcess

QUEUES = ["message_sender", "missedmessage_mobile_notifications", "missedmessage_emails", "email_senders",
          "notify_tornado", "tornado_return"]


@pytest.fixture
def system(database: Path | str, settings: Settings, broker: RabbitMQBroker) -> Iterator[dict[str, Any]]:
    """Tornado + SMTP sink + push gateway stand-in + users and a stream; workers are started by each test. Every
    test runs on SQLite, then on PostgreSQL (``database``: the settings, and so every process, use it)."""
    assert settings.database == database
    for queue in QUEUES:
        if broker.queue_info(queue).exists:
            broker.purge(queue)
    smtp_port, push_port = free_port(), free_port()
    settings = settings.replace(shared_secret="e2e", smtp_port=smtp_port, missed_email_window_seconds=0.5,
                                push_url=f"http://127.0.0.1:{push_port}/push")
    sink = smtp_sink.start(settings.var_dir, smtp_port)
    gateway = push_gateway.start(settings.var_dir, push_port)
    store = MessageStore(settings.database)
    people = {name: store.users.create_user(f"{name.lower()}@example.com", name)
              for name in ("Iago", "Othello", "Desdemona")}
    store.create_stream("Denmark", [u.id for u in people.values()])
    server = ServerThread(settings).start()
    env = {"EVENTBUS_SMTP_PORT": str(smtp_port), "EVENTBUS_PUSH_URL": settings.push_url or "",
           "EVENTBUS_MISSED_EMAIL_WINDOW": "0.5"}
    workers: list[WorkerProcess] = []

    def start_worker(queue: str) -> WorkerProcess:
        worker = WorkerProcess(settings, f"--queue={queue}", **env)
        workers.append(worker)
        return worker

    yield {"settings": settings, "server": server, "people": people, "store": store, "start_worker": start_worker}
    for worker in workers:
        worker.stop()
    server.stop()
    sink.stop()
    gateway.shutdown()


async def session(server: ServerThread, user: User) -> str:
    response = await AsyncHTTPClient().fetch(server.url("/accounts/login"), method="POST",
                                             body=f"email={user.email}&api_key={user.api_key}")
    return "; ".join(c.split(";")[0] for c in response.headers.get_list("Set-Cookie"))


async def websocket(server: ServerThread, user: User) -> Any:
    cookie = await session(server, user)
    request = HTTPRequest(f"ws://127.0.0.1:{server.port}/json/events/websocket",
                          headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"})
    ws = await websocket_connect(request)
    await ws.write_message(codec.encode({"type": "register", "apply_markdown": True}).decode())
    return ws


async def frame(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind``; frames of other types that come first wait for their turn."""
    held: dict[str, list[dict[str, Any]]] = ws.__dict__.setdefault("held_frames", {})
    while not held.get(kind):
        raw = await asyncio.wait_for(ws.read_message(), 30)
        assert raw is not None
        decoded = dict(codec.decode(raw))
        held.setdefault(decoded["type"], []).append(decoded)
    return held[kind].pop(0)


def test_mention_reaches_everyone_and_the_away_user_gets_one_push_and_one_email(system: dict[str, Any]) -> None:
    server, people = system["server"], system["people"]
    iago, othello, desdemona = people["Iago"], people["Othello"], people["Desdemona"]
    for queue in ("message_sender", "missedmessage_mobile_notifications", "missedmessage_emails", "email_senders"):
        system["start_worker"](queue)

    async def scenario() -> None:
        sender = await websocket(server, iago)
        await frame(sender, "registered")
        reader_ws = await websocket(server, desdemona)
        await frame(reader_ws, "registered")
        poller = Api(server, desdemona)
        poll_queue = await poller.register(apply_markdown=True)
        content = "Where is @**Othello**? He has **the handkerchief**."
        await sender.write_message(codec.encode({"type": "request", "req_id": 7, "request": {
            "type": "stream", "to": "Denmark", "topic": "handkerchief", "content": content}}).decode())
        assert (await frame(sender, "ack"))["req_id"] == 7
        response = (await frame(sender, "response"))["response"]
        assert response["result"] == "success", response
        html = (f'<p>Where is <span class="user-mention" data-user-id="{othello.id}">@Othello</span>? '
                "He has <strong>the handkerchief</strong>.</p>")
        own = (await frame(sender, "events"))["events"][0]
        assert own["message"]["content"] == html and own["flags"] == ["read"]
        pushed = (await frame(reader_ws, "events"))["events"][0]
        assert pushed["message"]["id"] == response["id"] and pushed["message"]["content"] == html
        assert pushed["flags"] == []
        polled = (await poller.events(poll_queue))[1]["events"][0]
        assert polled["message"]["content"] == html and polled["message"]["content_type"] == "text/html"

    run(scenario, timeout=90)
    dev = dev_dir(system["settings"].var_dir)
    wait_for(lambda: read(dev / "pushes.jsonl"), timeout=30, what="a push for Othello")
    wait_for(lambda: read(dev / "emails.jsonl"), timeout=30, what="an email for Othello")
    [push] = read(dev / "pushes.jsonl")
    assert push["payload"]["user_id"] == othello.id and push["payload"]["message_id"]
    [mail] = read(dev / "emails.jsonl")
    assert mail["to"] == [othello.email] and "handkerchief" in mail["body"]


def test_a_killed_message_sender_delivers_each_message_exactly_once(system: dict[str, Any],
                                                                    broker: RabbitMQBroker) -> None:
    server, people = system["server"], system["people"]
    iago, desdemona = people["Iago"], people["Desdemona"]
    count = 60

    async def scenario() -> None:
        reader = Api(server, desdemona)
        queue_id = await reader.register(event_types=["message"])
        for n in range(count):
            await server_submit(server, iago, n)
        first = system["start_worker"]("message_sender")
        store: MessageStore = system["store"]
        deadline = time.monotonic() + 30
        while len(store.recent(desdemona.id, count)) < 5:
            assert time.monotonic() < deadline, "the first worker stored fewer than 5 messages in 30 s"
            await asyncio.sleep(0.01)
        first.kill()  # in the middle of the stream; whatever it had not acked comes again
        system["start_worker"]("message_sender")
        seen: list[str] = []
        last = -1
        while len(seen) < count:
            events = (await reader.events(queue_id, last))[1]["events"]
            seen += [e["message"]["content"] for e in events]
            last = events[-1]["id"]
        # One more message: everything the killed worker left came before it, duplicates included.
        await server_submit(server, iago, count)
        while seen[-1] != f"message {count}":
            events = (await reader.events(queue_id, last))[1]["events"]
            seen += [e["message"]["content"] for e in events]
            last = events[-1]["id"]
        assert sorted(seen) == sorted(f"message {n}" for n in range(count + 1))

    run(scenario, timeout=120)
    assert len(system["store"].recent(desdemona.id, 1000)) == count + 1


async def server_submit(server: ServerThread, user: User, n: int) -> None:
    """Queue a send as the server does for a websocket request (the answer is not awaited)."""
    request = {"type": "stream", "to": "Denmark", "topic": "count", "content": f"message {n}"}
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        server.server.submissions.submit(user, request, lambda response: None), server.loop))


def test_zulip_client_send_message_and_call_on_each_event(system: dict[str, Any]) -> None:
    server, people = system["server"], system["people"]
    iago, othello = people["Iago"], people["Othello"]
    system["start_worker"]("message_sender")
    client = zulip.Client(email=othello.email, api_key=othello.api_key, site=server.url(""))
    received: list[dict[str, Any]] = []

    class Enough(Exception):
        pass

    def on_event(event: dict[str, Any]) -> None:
        received.append(event)
        raise Enough

    def send_when_listening() -> None:
        wait_for(lambda: len(server.server.registry), timeout=30, what="othello's queue")
        sender = zulip.Client(email=iago.email, api_key=iago.api_key, site=server.url(""))
        result = sender.send_message({"type": "stream", "to": "Denmark", "topic": "zulip", "content": "from zulip"})
        assert result["result"] == "success", result
        private = sender.send_message({"type": "private", "to": [othello.email], "content": "just you"})
        assert private["result"] == "success", private

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send_when_listening)
        with pytest.raises(Enough):
            client.call_on_each_event(on_event, event_types=["message"])
        sending.result(60)  # the sender's own assertions, raised here
    assert received[0]["message"]["content"] == "from zulip"
