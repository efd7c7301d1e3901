"""The event server over HTTP (long-polling), on the in-process broker: the wire API, filters, queue life."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.simple_httpclient import HTTPTimeoutError

from eventbus import codec
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.tornado_events import send_event
from eventbus.tornado_events.event_queue import ClientDescriptor
from eventbus.users import User
from tests.conftest import EVENT_SECRET, until, wait_for
from tests.eventserver import Api, ServerThread, StartServer, run


def client_of(server: ServerThread, queue_id: str, user: User) -> ClientDescriptor:
    """The registered client of ``queue_id`` (call in the server's loop); it must exist."""
    client = server.server.registry.get(queue_id, user.id)
    assert client is not None, f"no queue {queue_id} of user {user.id}"
    return client


async def wait_queued(server: ServerThread, queue_id: str, user: User, count: int) -> None:
    """Wait until ``count`` events sit in the queue (delivery through the broker is asynchronous)."""
    await until(lambda: server.call(lambda: len(client_of(server, queue_id, user).queue)) >= count,
                what=f"{count} events in the queue")


async def wait_held(server: ServerThread, queue_id: str, user: User) -> None:
    """Wait until the server holds a GET on the queue."""
    await until(lambda: server.call(lambda: client_of(server, queue_id, user).listener) is not None,
                what="the GET to be held")


async def hold_a_poll(server: ServerThread, user: User) -> tuple[Api, str, asyncio.Future[tuple[int, Any]]]:
    """``user``'s API, a queue registered for them, and a GET the server holds on it."""
    api = Api(server, user)
    queue_id = await api.register()
    held = asyncio.ensure_future(api.events(queue_id))
    await wait_held(server, queue_id, user)
    return api, queue_id, held


MESSAGE_IDS = itertools.count(1)


def message(stream: str = "Denmark", topic: str = "hello", content: str = "**hi**") -> dict[str, Any]:
    return {"type": "message", "message": {
        "id": next(MESSAGE_IDS), "sender_id": 1, "sender_email": "iago@example.com", "sender_full_name": "Iago",
        "type": "stream",
        "display_recipient": stream, "subject": topic, "timestamp": 1, "content": content,
        "rendered_content": "<p><strong>hi</strong></p>"}}


def test_register_poll_and_ack(start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago, _ = users

    async def scenario() -> None:
        api = Api(server, iago)
        status, body = await api.call("POST", "/register")
        assert status == 200
        assert body["result"] == "success" and body["last_event_id"] == -1 and body["msg"] == ""
        queue_id = body["queue_id"]
        assert (await api.events(queue_id, dont_block=True))[1]["events"] == []
        for n in range(3):
            send_event(event_broker, {"type": "custom", "n": n}, [iago.id])
        await wait_queued(server, queue_id, iago, 3)
        status, body = await api.events(queue_id)
        events = body["events"]
        assert [(e["id"], e["n"]) for e in events] == [(0, 0), (1, 1), (2, 2)]
        assert body["queue_id"] == queue_id
        # Unacknowledged events come again; acknowledged ones never.
        again = (await api.events(queue_id, last_event_id=0, dont_block=True))[1]["events"]
        assert [e["id"] for e in again] == [1, 2]
        assert (await api.events(queue_id, last_event_id=2, dont_block=True))[1]["events"] == []

    run(scenario)


def test_held_request_is_answered_when_an_event_arrives(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago, othello = users

    async def scenario() -> None:
        _api, _queue_id, held = await hold_a_poll(server, iago)
        assert not held.done()
        # Delivered in order: had the first reached iago, the held request would have been answered with it.
        send_event(event_broker, {"type": "custom"}, [othello.id])  # not for iago
        send_event(event_broker, {"type": "custom", "for": "iago"}, [iago.id])
        status, body = await held
        assert status == 200
        assert [e["for"] for e in body["events"]] == ["iago"]

    run(scenario)


def test_events_that_come_together_are_answered_together(start_server: StartServer, users: tuple[User, User]) -> None:
    """The notices of a message_sender batch come in one read from RabbitMQ: a held poll gets them all in one
    answer, not the first alone (its client would poll again at once for the rest: twice the requests)."""
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        _api, _queue_id, held = await hold_a_poll(server, iago)
        server.call(lambda: [server.server.notify({"event": message(), "users": [iago.id]}) for _ in range(3)])
        status, body = await held
        assert status == 200
        assert [e["type"] for e in body["events"]] == ["message"] * 3

    run(scenario)


def test_an_answer_is_never_a_cached_304(start_server: StartServer, users: tuple[User, User]) -> None:
    # Two polls with nothing new have the same body; a client's If-None-Match must not turn the second into a 304.
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register()
        url = server.url(f"/api/v1/events?queue_id={queue_id}&dont_block=true")
        first = await AsyncHTTPClient().fetch(url, headers=api.headers)
        assert "Etag" not in first.headers
        again = await AsyncHTTPClient().fetch(url, headers={**api.headers, "If-None-Match": '"*"'}, raise_error=False)
        assert again.code == 200 and codec.decode(again.body)["events"] == []

    run(scenario)


def test_heartbeat_after_the_interval(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server(heartbeat_seconds=0.5)

    async def scenario() -> None:
        api = Api(server, users[0])
        queue_id = await api.register()
        started = time.monotonic()
        _status, body = await api.events(queue_id)
        assert 0.4 < time.monotonic() - started < 5
        assert body["events"] == [{"id": 0, "type": "heartbeat"}]

    run(scenario)


def test_newer_get_answers_the_older_one(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api, queue_id, older = await hold_a_poll(server, iago)
        newer = asyncio.ensure_future(api.events(queue_id))
        status, body = await asyncio.wait_for(older, 5)
        assert (status, body["events"]) == (200, [])
        assert not newer.done()
        send_event(event_broker, {"type": "custom"}, [iago.id])
        assert (await newer)[1]["events"][0]["type"] == "custom"

    run(scenario)


def test_closed_connection_releases_the_held_request(start_server: StartServer,
                                                     users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, users[0])
        queue_id = await api.register()
        with pytest.raises(HTTPTimeoutError):
            await api.events(queue_id, timeout=0.5)  # the client gives up after 0.5 s and hangs up
        client = server.call(lambda: server.server.registry.get(queue_id, users[0].id))
        for _ in range(100):
            if client.listener is None:
                break
            await asyncio.sleep(0.02)
        assert client.listener is None

    run(scenario)


def test_delete_removes_the_queue(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, users[0])
        queue_id = await api.register()
        status, body = await api.call("DELETE", "/events", queue_id=queue_id)
        assert (status, body["result"]) == (200, "success")
        status, body = await api.events(queue_id, dont_block=True)
        assert status == 400
        assert body == {"result": "error", "msg": f"Bad event queue ID: {queue_id}", "code": "BAD_EVENT_QUEUE_ID",
                        "queue_id": queue_id}

    run(scenario)


def test_a_held_get_is_told_when_its_queue_goes_away(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api, queue_id, held = await hold_a_poll(server, iago)
        assert (await api.call("DELETE", "/events", queue_id=queue_id))[0] == 200
        status, body = await asyncio.wait_for(held, 5)
        assert (status, body["code"], body["queue_id"]) == (400, "BAD_EVENT_QUEUE_ID", queue_id)

    run(scenario)


def test_event_types_narrow_and_apply_markdown(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        only_messages = await api.register(event_types=["message"])
        denmark_hello = await api.register(narrow=[["stream", "denmark"], ["topic", "hello"]], apply_markdown=True)
        raw = await api.register(apply_markdown=False)
        send_event(event_broker, {"type": "presence"}, [iago.id])
        send_event(event_broker, message("Scotland"), [iago.id])
        send_event(event_broker, message("Denmark", "other"), [iago.id])
        send_event(event_broker, message("Denmark", "hello"), [{"id": iago.id, "flags": ["mentioned"]}])

        async def all_events(queue_id: str, count: int) -> list[dict[str, Any]]:
            events: list[dict[str, Any]] = []
            while len(events) < count:
                events += (await api.events(queue_id, events[-1]["id"] if events else -1))[1]["events"]
            return events

        types = [e["type"] for e in await all_events(only_messages, 3)]
        assert types == ["message"] * 3
        [narrowed_presence, narrowed] = await all_events(denmark_hello, 2)
        assert narrowed_presence["type"] == "presence"  # narrows filter messages only
        assert narrowed["message"]["display_recipient"] == "Denmark"
        assert narrowed["message"]["content"] == "<p><strong>hi</strong></p>"
        assert narrowed["message"]["content_type"] == "text/html"
        assert narrowed["flags"] == ["mentioned"]
        raw_events = await all_events(raw, 4)
        assert raw_events[1]["message"]["content"] == "**hi**"
        assert raw_events[1]["message"]["content_type"] == "text/x-markdown"
        assert "rendered_content" not in raw_events[1]["message"]

    run(scenario)


def test_a_message_delivered_twice_reaches_each_client_once(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register()
        twice = message()
        send_event(event_broker, twice, [iago.id])
        send_event(event_broker, twice, [iago.id])  # a redelivered message_sender event sends it again
        send_event(event_broker, {"type": "custom"}, [iago.id])
        await wait_queued(server, queue_id, iago, 2)
        events = (await api.events(queue_id))[1]["events"]
        assert [e["type"] for e in events] == ["message", "custom"]

    run(scenario)


def test_idle_queue_expires_and_the_hook_fires(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()
    iago = users[0]
    expired_users: list[int] = []
    hook = lambda user_id, clients: expired_users.append(user_id)  # noqa: E731
    server.call(lambda: server.server.registry.after_last_queue_expired.append(hook))

    async def scenario() -> None:
        api = Api(server, iago)
        short = await api.register()
        week = await api.register(queue_lifespan_secs=8 * 24 * 3600)  # capped at 7 days
        registry = server.server.registry
        soon = time.monotonic() + 601
        assert server.call(lambda: [c.queue_id for c in registry.collect_garbage(soon)]) == [short]
        assert expired_users == []  # iago still has a queue
        assert (await api.events(short, dont_block=True))[0] == 400
        assert server.call(lambda: client_of(server, week, iago).lifespan) == 7 * 24 * 3600
        later = time.monotonic() + 7 * 24 * 3600 + 1
        assert server.call(lambda: [c.queue_id for c in registry.collect_garbage(later)]) == [week]
        assert expired_users == [iago.id]

    run(scenario)


def test_a_queue_over_its_bound_is_dropped(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    server = start_server(max_queue_events=5)
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register()
        for n in range(6):
            send_event(event_broker, {"type": "custom", "n": n}, [iago.id])
        for _ in range(100):
            status, body = await api.events(queue_id, dont_block=True)
            if status == 400:
                break
            await asyncio.sleep(0.02)
        assert body["code"] == "BAD_EVENT_QUEUE_ID"
        assert await api.register()  # the client registers again and goes on

    run(scenario)


def test_queues_survive_a_restart(
        start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    iago = users[0]
    first = start_server()

    async def before() -> str:
        api = Api(first, iago)
        queue_id = await api.register()
        for n in range(3):
            send_event(event_broker, {"type": "custom", "n": n}, [iago.id])
        await wait_queued(first, queue_id, iago, 3)
        events = (await api.events(queue_id))[1]["events"]
        assert events[0]["n"] == 0  # the client has event 0, then the server restarts
        return queue_id

    queue_id = asyncio.run(before())
    first.stop()
    saved = json.loads((first.settings.var_dir / "event_queues.json").read_text())
    assert [q["queue_id"] for q in saved] == [queue_id]
    second = start_server()
    assert not (first.settings.var_dir / "event_queues.json").exists()  # renamed once loaded

    async def after() -> None:
        api = Api(second, iago)
        events = (await api.events(queue_id, last_event_id=0))[1]["events"]
        assert [(e["id"], e["type"], e.get("n")) for e in events] == [(1, "custom", 1), (2, "custom", 2),
                                                                      (3, "restart", None)]

    run(after)


def test_bad_requests_get_json_errors_naming_the_problem(start_server: StartServer, users: tuple[User, User],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, users[0])
        queue_id = await api.register()
        cases: list[tuple[tuple[str, str], dict[str, Any], str]] = [
            (("DELETE", "/events"), {}, "Missing 'queue_id' argument"),
            (("GET", "/events"), {"queue_id": queue_id, "last_event_id": "many"}, "Invalid 'last_event_id' argument"),
            (("GET", "/events"), {"queue_id": queue_id, "dont_block": "maybe"}, "Invalid 'dont_block' argument"),
            (("POST", "/register"), {"narrow": "[[\"search\", \"x\"]]"}, "unknown operator 'search'"),
            (("POST", "/register"), {"narrow": "not json"}, "Invalid 'narrow' argument"),
            (("POST", "/register"), {"event_types": "[1, 2]"}, "Invalid 'event_types' argument"),
            (("POST", "/register"), {"queue_lifespan_secs": "-5"}, "Invalid 'queue_lifespan_secs' argument"),
        ]
        for (method, path), params, msg in cases:
            status, body = await api.call(method, path, **params)
            assert status == 400, (path, params)
            assert body["result"] == "error" and body["code"] == "BAD_REQUEST"
            assert msg in body["msg"]
        status, body = await api.call("GET", "/no/such/endpoint")
        assert (status, body["code"]) == (404, "NOT_FOUND")
        status, body = await api.call("PATCH", "/events", queue_id=queue_id)
        assert (status, body["result"]) == (405, "error")

    with caplog.at_level(logging.ERROR):
        run(scenario)
    assert not caplog.records, "a client's mistake is not the server's error"


def test_authentication_and_other_users_queues(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()
    iago, othello = users

    async def scenario() -> None:
        nobody = Api(server, None)
        status, body = await nobody.call("POST", "/register")
        assert (status, body["code"]) == (401, "UNAUTHORIZED")
        wrong = Api(server, User(iago.id, iago.email, iago.full_name, "not-the-key"))
        assert (await wrong.call("POST", "/register"))[0] == 401
        iagos_queue = await Api(server, iago).register()
        status, body = await Api(server, othello).events(iagos_queue, dont_block=True)
        assert (status, body["code"]) == (400, "BAD_EVENT_QUEUE_ID")
        status, body = await Api(server, othello).call("DELETE", "/events", queue_id=iagos_queue)
        assert (status, body["code"]) == (400, "BAD_EVENT_QUEUE_ID")
        assert (await Api(server, iago).events(iagos_queue, dont_block=True))[0] == 200
        # /json takes a session, not Basic auth.
        assert (await Api(server, iago, prefix="/json").call("POST", "/register"))[0] == 401

    run(scenario)


def test_internal_notify_needs_the_shared_secret(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register()
        internal = Api(server, None, prefix="/api/internal")
        data = json.dumps({"event": {"type": "custom"}, "users": [iago.id]})
        assert (await internal.call("POST", "/notify_tornado", data=data))[0] == 401
        assert (await internal.call("POST", "/notify_tornado", data=data, secret="guess"))[0] == 401
        status, body = await internal.call("POST", "/notify_tornado", data="{\"users\": 5}", secret=EVENT_SECRET)
        assert (status, body["code"]) == (400, "BAD_REQUEST")
        no_message = json.dumps({"event": {"type": "message"}, "users": [iago.id]})
        status, body = await internal.call("POST", "/notify_tornado", data=no_message, secret=EVENT_SECRET)
        assert (status, body["code"]) == (400, "BAD_REQUEST") and "integer 'id'" in body["msg"]
        status, body = await internal.call("POST", "/notify_tornado", data=data, secret=EVENT_SECRET)
        assert (status, body["delivered"]) == (200, 1)
        assert (await api.events(queue_id))[1]["events"][0]["type"] == "custom"

    run(scenario)


def test_internal_notify_is_closed_without_a_configured_secret(start_server: StartServer,
                                                               users: tuple[User, User]) -> None:
    server = start_server(shared_secret=None)

    async def scenario() -> None:
        internal = Api(server, None, prefix="/api/internal")
        data = json.dumps({"event": {"type": "custom"}, "users": [users[0].id]})
        assert (await internal.call("POST", "/notify_tornado", data=data, secret=""))[0] == 401

    run(scenario)


def test_bad_notice_on_the_queue_goes_to_the_error_store(start_server: StartServer,
                                                         event_broker: MemoryBroker,
                                                         users: tuple[User, User]) -> None:
    server = start_server()
    iago = users[0]
    event_broker.publish("notify_tornado", {"event": "not an object", "users": [iago.id]})
    event_broker.publish("notify_tornado", {"event": {"type": "custom"}, "users": [iago.id]})
    event_broker.join("notify_tornado", timeout=10)
    [entry] = event_broker.error_store.read("notify_tornado")
    assert "'event' must be a JSON object" in entry["error"]
    assert server.call(lambda: server.server.registry.events_delivered) == 0  # no client yet, nothing lost either


def test_server_errors_and_slow_requests_are_reported(event_settings: Settings, event_broker: MemoryBroker,
                                                      users: tuple[User, User]) -> None:
    from eventbus.tornado_events.auth import Auth
    from eventbus.tornado_events.handlers import BaseHandler, handler_args

    class Broken(BaseHandler):
        async def get(self) -> None:
            raise RuntimeError("the disk is on fire")

    class Slow(BaseHandler):
        async def get(self) -> None:
            await asyncio.sleep(0.3)
            self.success()

    def extra(server: Any) -> list[Any]:
        return [(r"/api/v1/broken", Broken, handler_args(server, Auth.API)),
                (r"/api/v1/slow", Slow, handler_args(server, Auth.API))]

    server = ServerThread(event_settings.replace(slow_request_seconds=0.2), event_broker, extra_handlers=extra).start()
    try:
        async def scenario() -> None:
            api = Api(server, users[0])
            status, body = await api.call("GET", "/broken")
            assert (status, body["code"]) == (500, "INTERNAL_SERVER_ERROR")
            assert "fire" not in body["msg"]  # the details go to the administrators, not to the client
            assert (await api.call("GET", "/slow"))[0] == 200
            queue_id = await api.register()
            assert (await api.events(queue_id, dont_block=True))[0] == 200

        run(scenario)
        wait_for(lambda: event_broker.queue_info("error_reports").depth == 1, what="the error report")
        wait_for(lambda: event_broker.queue_info("slow_queries").depth >= 1, what="the slow request report")
        reports: list[Any] = []
        consumer = event_broker.consumer("error_reports", reports.extend)
        threading.Thread(target=consumer.run, daemon=True).start()
        event_broker.join("error_reports", timeout=5)
        consumer.stop()
        [report] = reports
        assert report["type"] == "server" and "the disk is on fire" in report["stacktrace"]
        assert event_broker.queue_info("slow_queries").depth == 1  # only /slow: fast requests are not reported
    finally:
        server.stop()


def test_api_requests_are_counted_into_user_activity(start_server: StartServer, event_broker: MemoryBroker,
                                                     users: tuple[User, User]) -> None:
    server = start_server()
    iago = users[0]

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register()
        for _ in range(3):
            assert (await api.events(queue_id, dont_block=True))[0] == 200

    run(scenario)
    server.call(server.server.activity.flush)
    activity: list[Any] = []
    consumer = event_broker.consumer("user_activity", activity.extend)
    threading.Thread(target=consumer.run, daemon=True).start()
    event_broker.join("user_activity", timeout=5)
    consumer.stop()
    counts = {e["query"]: e["count"] for e in activity}
    assert counts == {"/api/v1/register": 1, "/api/v1/events": 3}
    assert {e["user_id"] for e in activity} == {iago.id}
