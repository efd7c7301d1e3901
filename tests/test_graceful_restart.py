"""A graceful restart of the event server: consuming stops first, held requests are answered, every queue that
can be saved is saved, and nothing is handed to a client that RabbitMQ will deliver again."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from eventbus import codec
from eventbus.queue import MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.tornado_client import TornadoQueueClient
from eventbus.settings import Settings
from eventbus.tornado_events import send_event
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor
from eventbus.tornado_events.server import SERVICE_RESTART, EventServer
from eventbus.users import User
from tests.conftest import until, wait_for, worker_threads
from tests.eventserver import Api, ServerThread, StartServer, run
from tests.test_event_server import wait_held
from tests.test_websocket import connect, login, receive, send

#: Events waiting on the queue when the client stops: far more than one prefetch window.
BACKLOG = 3000


@pytest.mark.parametrize("stop_consuming_first", [True, False], ids=["stop-then-close", "close"])
def test_a_stopped_consumer_hands_out_nothing_more_and_acks_what_it_handed_out(
        settings: Settings, broker: RabbitMQBroker, queue_name: str, stop_consuming_first: bool) -> None:
    # Given a Tornado-side consumer well behind on its queue (a prefetch window read and more on the way),
    broker.publish_many(queue_name, [{"n": n} for n in range(BACKLOG)])
    got: list[int] = []
    after_stop: list[int] = []
    stopped = False

    def on_event(event: Any) -> None:
        (after_stop if stopped else got).append(event["n"])

    async def scenario() -> None:
        nonlocal stopped
        client = TornadoQueueClient(settings.replace(prefetch=500))
        client.consume(queue_name, on_event)
        client.start()
        await until(lambda: len(got) >= 200, what="the first events")
        # when it stops consuming, as the server does on SIGTERM, or is closed straight away,
        if stop_consuming_first:
            await client.stop_consuming()
            stopped = True
        await client.close()
        stopped = True

    run(scenario)
    # then it hands out nothing after it stopped, and every event is either handed out once (and acked)
    # or back on the queue for the next process: none is both.
    assert after_stop == []
    assert len(set(got)) == len(got)
    # (RabbitMQ puts the unacked deliveries of a closed channel back on the queue on its own time.)
    wait_for(lambda: len(got) + broker.queue_info(queue_name).depth >= BACKLOG, timeout=10,
             what="every event either handed out or back on the queue")
    assert len(got) + broker.queue_info(queue_name).depth == BACKLOG


# -- saving the queues --------------------------------------------------------------------------------------------

def unsaveable_clients(user_id: int) -> list[ClientDescriptor]:
    """Queues holding what JSON cannot carry, as a registration could leave them before input was checked."""
    return [ClientDescriptor(user_id=user_id, lifespan=math.nan),
            ClientDescriptor(user_id=user_id, narrow=(("stream", "\ud800"),)),
            ClientDescriptor(user_id=user_id, event_types=frozenset({"custom", "\udfff"}))]


def test_the_dump_saves_every_queue_it_can_and_names_the_others(tmp_path: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # Given a registry with good queues and queues that JSON cannot carry, in between,
    registry = ClientRegistry()
    first = registry.add(ClientDescriptor(user_id=1))
    bad = [registry.add(client) for client in unsaveable_clients(2)]
    last = registry.add(ClientDescriptor(user_id=3, narrow=(("stream", "Denmark"),)))
    last.add({"type": "custom", "text": "kept"})
    path = tmp_path / "event_queues.json"
    # when it is dumped,
    with caplog.at_level(logging.ERROR, logger="eventbus.tornado_events.clients"):
        assert registry.dump(path) == 2
    # then the good queues are in the file, each bad one is logged with its queue id and user,
    assert [q["queue_id"] for q in json.loads(path.read_text())] == [first.queue_id, last.queue_id]
    for client in bad:
        assert any(client.queue_id in r.getMessage() and "user 2" in r.getMessage() for r in caplog.records)
    # and a new registry restores the good ones, each with the restart event after what it had.
    restored = ClientRegistry()
    assert restored.load(path, {"type": "restart", "server_generation": 1}) == 2
    again = restored.get(last.queue_id, 3)
    assert again is not None and again.narrow == (("stream", "Denmark"),)
    assert [q.as_dict() for q in again.queue.events] == [{"id": 0, "type": "custom", "text": "kept"},
                                                         {"id": 1, "type": "restart", "server_generation": 1}]


def test_a_server_with_unsaveable_queues_still_saves_the_others(start_server: StartServer, users: tuple[User, User],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    iago, othello = users
    first = start_server()
    # Given a server with one good queue of Iago's and queues of Othello's that JSON cannot carry,
    queue_id = asyncio.run(Api(first, iago).register())
    registry = state(first).registry
    bad = first.call(lambda: [registry.add(c).queue_id for c in unsaveable_clients(othello.id)])
    # when it stops,
    with caplog.at_level(logging.ERROR, logger="eventbus.tornado_events.clients"):
        first.stop()
    # then the file holds Iago's queue, and each of Othello's is logged;
    saved = json.loads((first.settings.var_dir / "event_queues.json").read_text())
    assert [q["queue_id"] for q in saved] == [queue_id]
    assert all(any(q in r.getMessage() for r in caplog.records) for q in bad)
    second = start_server()

    async def after() -> None:
        # Iago resumes at the next process, and Othello is told to register again.
        status, body = await Api(second, iago).events(queue_id, dont_block=True)
        assert status == 200 and [e["type"] for e in body["events"]] == ["restart"]
        status, body = await Api(second, othello).events(bad[0], dont_block=True)
        assert (status, body["code"]) == (400, "BAD_EVENT_QUEUE_ID")

    run(after)


# -- answering at shutdown ----------------------------------------------------------------------------------------

async def poll(api: Api, queue_id: str, last_event_id: int) -> HTTPResponse:
    """A long-poll, whole (its headers too)."""
    url = api.server.url(f"/api/v1/events?queue_id={queue_id}&last_event_id={last_event_id}")
    return await AsyncHTTPClient().fetch(url, headers=api.headers, raise_error=False, request_timeout=30)


async def stop(server: ServerThread) -> None:
    """SIGTERM's shutdown, from another thread (the scenario's loop goes on meanwhile)."""
    await asyncio.get_running_loop().run_in_executor(None, server.stop)


def test_a_poll_held_at_shutdown_gets_a_heartbeat_and_the_next_process_goes_on(
        start_server: StartServer, event_broker: MemoryBroker, users: tuple[User, User]) -> None:
    iago = users[0]
    first = start_server()
    api = Api(first, iago)

    async def before() -> str:
        # Given a client that has event 0 and waits for more,
        queue_id = await api.register()
        send_event(event_broker, {"type": "custom", "n": 0}, [iago.id])
        _status, body = await api.events(queue_id)
        assert [e["id"] for e in body["events"]] == [0]
        held = asyncio.ensure_future(poll(api, queue_id, 0))
        await wait_held(first, queue_id, iago)
        # when the server stops,
        await stop(first)
        # then the held poll is answered: a heartbeat, on a connection that closes, so the client polls again
        # at once, at the next process;
        answer = await held
        assert answer.code == 200 and answer.headers.get("Connection") == "close"
        assert codec.decode(answer.body)["events"] == [{"id": 1, "type": "heartbeat"}]
        return queue_id

    queue_id = run(before)
    second = start_server()

    async def after() -> None:
        # which answers with the restart event next, its server_generation an integer, as Zulip's spec says,
        _status, body = await Api(second, iago).events(queue_id, last_event_id=1)
        [restart] = body["events"]
        assert (restart["id"], restart["type"]) == (2, "restart")
        assert isinstance(restart["server_generation"], int)

    run(after)
    # and nothing was reported as a server error.
    assert event_broker.queue_info("error_reports").depth == 0


def test_a_websocket_is_closed_with_1012_and_resumes_at_the_next_process(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    iago = users[0]
    first = start_server()

    async def before() -> str:
        # Given a websocket serving a queue that has events 0 and 1, 0 acknowledged,
        ws = await connect(first, (await login(first, iago))[0])
        await send(ws, {"type": "register"})
        queue_id = (await receive(ws, "registered"))["queue_id"]
        send_event(event_broker, {"type": "custom", "n": 0}, [iago.id])
        send_event(event_broker, {"type": "custom", "n": 1}, [iago.id])
        events: list[dict[str, Any]] = []
        while len(events) < 2:
            events += (await receive(ws, "events"))["events"]
        await send(ws, {"type": "ack", "last_event_id": 0})
        # when the server stops,
        await stop(first)
        # then the socket is closed with 1012, "service restart": the client reconnects.
        assert await ws.read_message() is None
        assert ws.close_code == SERVICE_RESTART
        return queue_id

    queue_id = run(before)
    second = start_server()

    async def after() -> None:
        # At the next process, the socket attaches to its queue and gets what it had not acknowledged, then
        # the restart event.
        ws = await connect(second, (await login(second, iago))[0])
        await send(ws, {"type": "attach", "queue_id": queue_id, "last_event_id": 0})
        frame = await receive(ws, "events")
        assert [(e["id"], e["type"]) for e in frame["events"]] == [(1, "custom"), (2, "restart")]
        ws.close()

    run(after)


def test_a_message_submitted_before_shutdown_gets_its_answer(start_server: StartServer, event_broker: MemoryBroker,
                                                            users: tuple[User, User]) -> None:
    iago, othello = users
    server = start_server()
    api = Api(server, iago)

    async def scenario() -> None:
        # Given a message submitted while message_sender is slow to answer (here: not running yet),
        sent = asyncio.ensure_future(api.call("POST", "/messages", type="private", to=othello.email,
                                              content="sent just before the restart"))
        await until(lambda: server.call(lambda: len(state(server).submissions)) == 1, what="the request sent")
        # when the server stops, and message_sender answers meanwhile,
        stopping = asyncio.ensure_future(stop(server))
        await until(lambda: state(server).stopping, what="the shutdown")
        with worker_threads(event_broker) as start:
            start("message_sender")
            status, body = await sent
        await stopping
        # then the request got its answer, not a server error.
        assert status == 200 and isinstance(body["id"], int), body

    run(scenario)
    assert event_broker.queue_info("error_reports").depth == 0


def state(server: ServerThread) -> EventServer:
    assert server.server is not None
    return server.server
