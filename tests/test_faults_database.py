"""Fault injection: the PostgreSQL server is stopped while messages are sent and clients poll, then started again.

The server is a private one of each test's own (stopping the session's would
hurt every other test), stopped as an administrator or a package upgrade
stops it (``pg_ctl stop -m fast``: every connection is closed). A real
message_sender worker process and the real event server, on the session's
RabbitMQ node, use it throughout; neither is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventbus.devtools.postgresql import PostgreSQLServer
from eventbus.messages import MessageStore
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from eventbus.users import User, UserStore
from tests.eventserver import Api, ServerThread, run
from tests.workers import WorkerProcess

#: Messages sent while the database is down: through the event server's API, and straight to message_sender.
POSTED, QUEUED = 10, 10
#: What message_sender logs when its batch starts waiting for the database (``worker.Worker``).
WAITING = "the database is unavailable"
#: How long PostgreSQL stays down: longer than message_sender's tries alone would ride out (5 tries, 0.5 s doubling:
#: 7.5 s; before the worker waited for the database, every message then went to the error store), well within the
#: wait of a batch for the database (``worker.DATABASE_WAIT_SECONDS``, 60 s).
OUTAGE_SECONDS = 10.0


@dataclass
class Outage:
    """A PostgreSQL server of the test's own, the settings that point at it, and two users with a stream."""

    server: PostgreSQLServer
    settings: Settings
    broker: RabbitMQBroker
    iago: User
    othello: User


@pytest.fixture
def outage(settings: Settings, postgresql_server: PostgreSQLServer) -> Iterator[Outage]:
    """A private PostgreSQL server (``postgresql_server`` only for its check that PostgreSQL is installed), under
    /tmp (it runs as the postgres user when the tests run as root), and a broker whose shared queues are empty."""
    root = Path(tempfile.mkdtemp(prefix="eventbus-pgfaults-"))
    server = PostgreSQLServer(root, durable=False)
    broker: RabbitMQBroker | None = None
    try:
        server.start()
        settings = settings.replace(database_setting=server.url)
        broker = RabbitMQBroker(settings)
        for queue in ("message_sender", "notify_tornado"):
            if broker.queue_info(queue).exists:
                broker.purge(queue)
        users = UserStore(settings.database)
        iago, othello = (users.create_user(f"{n}@example.com", n.title()) for n in ("iago", "othello"))
        MessageStore(settings.database).create_stream("Denmark", [iago.id, othello.id])
        yield Outage(server, settings, broker, iago, othello)
    finally:
        if broker is not None:
            broker.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def message(content: str) -> dict[str, Any]:
    return {"type": "stream", "to": "Denmark", "topic": "outage", "content": content}


async def received_messages(api: Api, queue_id: str, count: int) -> list[dict[str, Any]]:
    """The messages of a queue's events, polled as a Zulip client polls it until ``count`` came, and then once
    more without waiting (a message that came twice is among them)."""
    received: list[dict[str, Any]] = []
    last = -1
    while True:
        status, body = await api.events(queue_id, last, timeout=60, dont_block=len(received) >= count)
        assert status == 200, body
        received += [e["message"] for e in body["events"] if e["type"] == "message"]
        last = max([last] + [e["id"] for e in body["events"]])
        if len(received) >= count and not body["events"]:
            return received


def test_messages_sent_while_postgresql_is_down_are_stored_and_delivered_once_in_order(outage: Outage) -> None:
    settings = outage.settings
    server = ServerThread(settings, outage.broker).start()
    worker = WorkerProcess(settings, "--queue=message_sender")

    async def scenario() -> None:
        iago, othello = Api(server, outage.iago), Api(server, outage.othello)
        queue_id = await othello.register(event_types=["message"])
        # Given a message sent and delivered (the worker and the server hold pooled connections, and the server
        # trusts Iago's credentials for a while)
        status, body = await iago.call("POST", "/messages", **message("before"))
        assert status == 200, body
        # When PostgreSQL is stopped (every connection closed) for OUTAGE_SECONDS
        outage.server.stop()
        back_at = time.monotonic() + OUTAGE_SECONDS
        # and messages are sent meanwhile, through the API and straight to message_sender
        posted = [asyncio.create_task(iago.call("POST", "/messages", timeout=90, **message(f"posted {n}")))
                  for n in range(POSTED)]
        outage.broker.publish_many("message_sender", [
            {"request_id": f"queued-{n}", "user_id": outage.iago.id, "request": message(f"queued {n}")}
            for n in range(QUEUED)])
        await asyncio.sleep(max(0.0, back_at - time.monotonic()))  # the outage's length: the scenario, not a wait
        assert WAITING in worker.log  # the worker met the outage
        # and PostgreSQL is started again
        outage.server.start()
        # Then every sender is answered with the id of its message
        answers = await asyncio.gather(*posted)
        assert all(status == 200 for status, _ in answers), answers
        # and Othello's client gets every message once, in the order of their ids
        received = await received_messages(othello, queue_id, 1 + POSTED + QUEUED)
        contents = [m["content"] for m in received]
        expected = ["before", *(f"posted {n}" for n in range(POSTED)), *(f"queued {n}" for n in range(QUEUED))]
        assert sorted(c.removeprefix("<p>").removesuffix("</p>") for c in contents) == sorted(expected)
        ids = [m["id"] for m in received]
        assert ids == sorted(set(ids))
        assert {body["id"] for _, body in answers} <= set(ids)

    try:
        run(scenario, timeout=180)
        # Each message is stored once, nothing went to the error store, and the worker was never restarted
        history = MessageStore(settings.database).recent(outage.othello.id, 1000)
        assert len(history) == 1 + POSTED + QUEUED
        assert outage.broker.error_store.queues() == []
        assert worker.process.poll() is None, worker.log
        print(f"{POSTED} messages posted and {QUEUED} queued while PostgreSQL was down: each stored and "
              f"delivered once; the worker waited {worker.log.count(WAITING)} time(s), and was never restarted")
    finally:
        worker.stop()
        server.stop()


def test_the_event_server_answers_503_while_postgresql_is_down_delivers_meanwhile_and_recovers(
        outage: Outage, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = ServerThread(outage.settings.replace(shared_secret="s3cret"), outage.broker).start()

    async def scenario() -> None:
        iago, othello = Api(server, outage.iago), Api(server, outage.othello)
        # Given Iago's client connected (its credentials trusted for a while) and Othello, who never was
        queue_id = await iago.register(event_types=["custom"])
        # When PostgreSQL is stopped
        outage.server.stop()
        queues_before = await queues(server)
        # Then what needs the database is answered 503 DATABASE_UNAVAILABLE, which a client retries on: the
        # authentication of a client not trusted yet, a registration that fetches state (all of it here), the
        # message history
        refused = [await othello.call("POST", "/register", event_types=["custom"]),
                   await iago.call("POST", "/register", event_types=["custom"], fetch_event_types=None),
                   await history(iago)]
        for status, body in refused:
            assert status == 503, body
            assert body["result"] == "error" and body["code"] == "DATABASE_UNAVAILABLE", body
            assert body["retry-after"] > 0
        # and no queue was left behind by the registration that failed
        assert await queues(server) == queues_before
        # and the client connected before still gets events: delivery needs no database
        outage.broker.publish("notify_tornado", {"event": {"type": "custom", "n": 1}, "users": [outage.iago.id]})
        status, body = await iago.events(queue_id, -1)
        assert status == 200, body
        assert [e["n"] for e in body["events"] if e["type"] == "custom"] == [1]
        # When PostgreSQL is started again
        outage.server.start()
        # Then everything works again, without a restart of the server
        assert await othello.register(event_types=["custom"])
        status, body = await history(iago)
        assert status == 200, body

    serve(server, scenario, timeout=120)
    # The outage is logged once, and its end once: no traceback per request
    database_lines = [r for r in caplog.records if r.name == "eventbus.database"]
    assert [r.levelname for r in database_lines] == ["ERROR", "WARNING"], [r.getMessage() for r in database_lines]
    assert "unavailable" in database_lines[0].getMessage() and "back" in database_lines[1].getMessage()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def queues(server: ServerThread) -> int:
    """How many event queues the server has (read in its IOLoop)."""
    async def count() -> int:
        return len(server.server.registry)

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), server.loop))


def serve(server: ServerThread, scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
    """Run ``scenario`` against ``server``, then stop the server (whatever happened)."""
    try:
        run(scenario, timeout)
    finally:
        server.stop()


async def history(api: Api) -> tuple[int, Any]:
    """(status, answer) of the newest page of the message history."""
    return await api.call("GET", "/messages", anchor="newest", num_before=10, num_after=0)


def test_a_restart_between_two_requests_is_not_seen_by_either(outage: Outage) -> None:
    """PostgreSQL restarted while no request ran: the pooled connections it closed are replaced at checkout."""
    server = ServerThread(outage.settings, outage.broker).start()

    async def scenario() -> None:
        iago = Api(server, outage.iago)
        # Given the history read once (the server holds a pooled connection)
        status, body = await history(iago)
        assert status == 200, body
        # When PostgreSQL restarts meanwhile
        outage.server.stop()
        outage.server.start()
        # Then the next reads are answered, not failed on the closed connection
        for _ in range(3):
            status, body = await history(iago)
            assert status == 200, body

    serve(server, scenario, timeout=60)

