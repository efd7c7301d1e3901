"""Abuse by one user: per-user rate limits, presence coalescing, queues per user, filter sizes.

The real event server on a free port, real HTTP clients (``requests``, which
the zulip package uses, and the zulip package itself), the user_presence and
message_sender processors in threads on the in-process broker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
import requests
import zulip
from tornado.httpclient import HTTPClientError

from bench import harness, submission
from eventbus.errors import ConfigurationError
from eventbus.messages import MessageStore
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.tornado_events import rate_limit, send_event
from eventbus.tornado_events.handlers import (
    MAX_EVENT_TYPE_CHARS,
    MAX_EVENT_TYPES,
    MAX_NARROW_OPERAND_CHARS,
    MAX_NARROW_TERMS,
)
from eventbus.tornado_events.rate_limit import DEVELOPMENT_FACTOR, RateLimiter, RateLimits
from eventbus.users import User
from tests.conftest import EVENT_SECRET, wait_for, worker_threads
from tests.eventserver import Api, ServerThread, StartServer, run
from tests.test_websocket import connect, login, receive, send

#: Presence changes reach peers at most once per this many seconds here (short, so that the test is).
COALESCE_SECONDS = 2.0


@pytest.fixture
def event_settings(event_settings: Settings) -> Settings:
    return event_settings.replace(presence_coalesce_seconds=COALESCE_SECONDS)


def session_of(user: User) -> requests.Session:
    """An HTTP client of ``user``: Basic auth, one kept-alive connection, as the zulip package makes."""
    session = requests.Session()
    session.auth = (user.email, user.api_key)
    return session


def register(session: requests.Session, server: ServerThread, **params: str) -> requests.Response:
    return session.post(server.url("/api/v1/register"), data=params)


def poll_now(session: requests.Session, server: ServerThread, queue_id: str) -> requests.Response:
    return session.get(server.url("/api/v1/events"), params={"queue_id": queue_id, "dont_block": "true"})


def queues_of(server: ServerThread, user: User) -> set[str]:
    def mine() -> set[str]:
        assert server.server is not None
        return {c.queue_id for c in server.server.registry if c.user_id == user.id}

    return set(server.call(mine))


def assert_rate_limit_hit(response: requests.Response) -> None:
    """A 429 as Zulip answers it: its code, and the seconds to wait in the body and (whole) in the header."""
    body = response.json()
    assert response.status_code == 429, body
    assert (body["result"], body["code"]) == ("error", "RATE_LIMIT_HIT")
    assert body["retry-after"] > 0
    assert int(response.headers["Retry-After"]) >= body["retry-after"]


# -- presence -----------------------------------------------------------------------------------------


def presence_statuses(session: requests.Session, server: ServerThread, queue_id: str) -> list[str]:
    """The statuses of the presence events in a queue, oldest first (each event holds one client's)."""
    events = poll_now(session, server, queue_id).json()["events"]
    return [status for e in events if e["type"] == "presence" for status in
            (report["status"] for report in e["presence"].values())]


def test_presence_toggled_300_times_is_mostly_refused_and_peers_get_a_few_events_ending_with_the_last(
        start_server: StartServer, event_broker: MemoryBroker, users: tuple[User, User]) -> None:
    iago, othello = users
    server = start_server()
    watcher = session_of(othello)
    queue_id = register(watcher, server, event_types='["presence"]').json()["queue_id"]
    with worker_threads(event_broker) as start:
        start("user_presence")
        # Given iago toggles between active and idle 300 times, as fast as one connection goes (about 0.5 s),
        toggler = session_of(iago)
        answers = [(status, toggler.post(server.url("/api/v1/users/me/presence"), data={"status": status}))
                   for status in itertools.islice(itertools.cycle(("active", "idle")), 300)]
        # then most toggles are refused as Zulip refuses them,
        refused = [response for _, response in answers if response.status_code != 200]
        assert len(refused) >= 200
        for response in refused:
            assert_rate_limit_hit(response)
        # and othello hears of iago's presence a few times at most, the last time with the last status iago set.
        last_status = [status for status, response in answers if response.status_code == 200][-1]
        wait_for(lambda: presence_statuses(watcher, server, queue_id)[-1:] == [last_status],
                 timeout=5 * COALESCE_SECONDS, what="othello to hear of iago's last status")
        event_broker.join("user_presence", timeout=5 * COALESCE_SECONDS)  # every deferred broadcast made
    statuses = presence_statuses(watcher, server, queue_id)
    assert 1 <= len(statuses) <= 3 and statuses[-1] == last_status, statuses


# -- queues per user and filter sizes -----------------------------------------------------------------


def test_a_thousand_registrations_are_mostly_refused_and_the_user_holds_at_most_100_queues(
        start_server: StartServer, users: tuple[User, User]) -> None:
    iago = users[0]
    server = start_server()
    session = session_of(iago)
    answers = [register(session, server) for _ in range(1000)]
    refused = [response for response in answers if response.status_code != 200]
    assert len(refused) >= 850
    for response in refused:
        assert_rate_limit_hit(response)
    assert len(queues_of(server, iago)) <= 100


def test_past_the_cap_the_queue_idle_the_longest_is_dropped_and_its_client_told(
        start_server: StartServer, users: tuple[User, User]) -> None:
    iago, othello = users
    server = start_server(rate_limit_register=(10_000, 60.0))
    session = session_of(iago)
    # Given iago registers 1,000 queues, none refused by the rate limit here,
    queue_ids = [register(session, server).json()["queue_id"] for _ in range(1000)]
    # then iago holds the last 100 of them;
    assert queues_of(server, iago) == set(queue_ids[-100:])
    # a dropped queue's client is told BAD_EVENT_QUEUE_ID (it re-registers), a kept one polls on;
    dropped = poll_now(session, server, queue_ids[0])
    assert (dropped.status_code, dropped.json()["code"]) == (400, "BAD_EVENT_QUEUE_ID")
    assert poll_now(session, server, queue_ids[-1]).status_code == 200
    # and other users' queues are not touched.
    assert register(session_of(othello), server).status_code == 200


def test_queues_being_polled_are_kept_and_with_all_in_use_a_registration_is_refused(
         start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    iago = users[0]
    server = start_server(max_queues_per_user=2)

    async def scenario() -> None:
        api = Api(server, iago)
        polled, idle = await api.register(), await api.register()
        held = asyncio.ensure_future(api.events(polled))  # held: nothing to answer yet
        await until_held(server, polled)
        newest = await api.register()  # makes room: the idle one goes, the polled one stays
        assert queues_of(server, iago) == {polled, newest}
        assert (await api.events(idle, dont_block=True))[1]["code"] == "BAD_EVENT_QUEUE_ID"
        also_held = asyncio.ensure_future(api.events(newest))
        await until_held(server, newest)
        status, body = await api.call("POST", "/register")
        assert (status, body["code"]) == (400, "BAD_REQUEST") and "Too many event queues" in body["msg"]
        assert queues_of(server, iago) == {polled, newest}
        send_event(event_broker, {"type": "custom"}, [iago.id])
        for poll in (held, also_held):
            assert [e["type"] for e in (await poll)[1]["events"]] == ["custom"]

    run(scenario)


async def until_held(server: ServerThread, queue_id: str) -> None:
    def held() -> bool:
        assert server.server is not None
        return any(c.queue_id == queue_id and c.listener is not None for c in server.server.registry)

    while not server.call(held):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("name", "value"), [
    ("narrow", [["stream", f"s{n}"] for n in range(MAX_NARROW_TERMS + 1)]),
    ("narrow", [["topic", "t" * (MAX_NARROW_OPERAND_CHARS + 1)]]),
    ("event_types", [f"type{n}" for n in range(MAX_EVENT_TYPES + 1)]),
    ("event_types", ["t" * (MAX_EVENT_TYPE_CHARS + 1)]),
])
def test_filters_over_their_bounds_are_refused_naming_the_parameter(
        start_server: StartServer, users: tuple[User, User], name: str, value: list[Any]) -> None:
    server = start_server()
    answer = register(session_of(users[0]), server, **{name: json.dumps(value)})
    body = answer.json()
    assert (answer.status_code, body["code"]) == (400, "BAD_REQUEST")
    assert f"Invalid '{name}' argument" in body["msg"]
    assert queues_of(server, users[0]) == set()


def test_filters_at_their_bounds_are_accepted(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()
    narrow = [["topic", "t" * MAX_NARROW_OPERAND_CHARS]] * MAX_NARROW_TERMS
    event_types = ["t" * (MAX_EVENT_TYPE_CHARS - 3) + f"{n:03}" for n in range(MAX_EVENT_TYPES)]
    answer = register(session_of(users[0]), server, narrow=json.dumps(narrow), event_types=json.dumps(event_types))
    assert answer.status_code == 200, answer.json()


# -- what is never limited, and what is ---------------------------------------------------------------


def test_long_poll_repolls_and_the_notify_endpoint_are_never_limited(
        start_server: StartServer, users: tuple[User, User]) -> None:
    iago = users[0]
    server = start_server(rate_limit_api=(5, 60.0))
    session = session_of(iago)
    queue_id = register(session, server).json()["queue_id"]
    notify = requests.Session()
    last_event_id = -1
    # Given 50 events, each sent through the internal endpoint and fetched by a long-poll that follows the last,
    for n in range(50):
        sent = notify.post(server.url("/api/internal/notify_tornado"), data={
            "secret": EVENT_SECRET, "data": json.dumps({"event": {"type": "custom", "n": n}, "users": [iago.id]})})
        assert sent.status_code == 200, sent.json()
        answer = session.get(server.url("/api/v1/events"), params={"queue_id": queue_id,
                                                                   "last_event_id": str(last_event_id)})
        assert answer.status_code == 200, answer.json()
        [event] = answer.json()["events"]
        assert event["n"] == n
        last_event_id = event["id"]
    # then none was refused, while polls that do not wait count: the 6th in a minute is refused.
    answers = [poll_now(session, server, queue_id) for _ in range(6)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert_rate_limit_hit(answers[5])


def test_websocket_opening_register_and_request_frames_count_and_acks_do_not(
        start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server(rate_limit_register=(1, 60.0), rate_limit_api=(2, 60.0))

    async def scenario() -> None:
        cookie, _ = await login(server, users[0])
        ws = await connect(server, cookie)  # the first of two API requests allowed
        await send(ws, {"type": "register"})
        await receive(ws, "registered")
        await send(ws, {"type": "register"})
        refused = await receive(ws, "error")
        assert refused["code"] == "RATE_LIMIT_HIT" and refused["retry-after"] > 0
        for _ in range(20):
            await send(ws, {"type": "ack", "last_event_id": -1})
        await send(ws, {"type": "request", "req_id": 1, "request": {"type": "stream", "to": "x", "content": "y"}})
        await receive(ws, "ack")
        await send(ws, {"type": "request", "req_id": 2, "request": {"type": "stream", "to": "x", "content": "y"}})
        refused = await receive(ws, "error")
        assert (refused["code"], refused["req_id"]) == ("RATE_LIMIT_HIT", 2)
        with pytest.raises(HTTPClientError) as another:
            await connect(server, cookie)
        assert another.value.code == 429 and another.value.response is not None
        assert int(another.value.response.headers["Retry-After"]) >= 1
        ws.close()

    run(scenario)


# -- clients --------------------------------------------------------------------------------------------


class GaveUp(Exception):
    pass


class Enough(Exception):
    pass


def test_the_zulip_client_waits_out_a_register_limit_and_gets_its_events(
         start_server: StartServer, users: tuple[User, User], event_broker: MemoryBroker) -> None:
    iago = users[0]
    server = start_server(rate_limit_register=(1, 2.0))
    assert register(session_of(iago), server).status_code == 200  # the one registration allowed now
    client = zulip.Client(email=iago.email, api_key=iago.api_key, site=server.url(""))
    client.ensure_session()
    assert client.session is not None
    registrations: list[int] = []

    def count_registrations(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.request.path_url.endswith("/register"):
            registrations.append(response.status_code)
            if len(registrations) > 10:
                raise GaveUp(registrations)
            if response.status_code == 200:
                send_event(event_broker, {"type": "custom"}, [iago.id])  # something for the new queue

    client.session.hooks["response"].append(count_registrations)

    def callback(event: dict[str, Any]) -> None:
        raise Enough(event)

    with pytest.raises(Enough) as got:
        client.call_on_each_event(callback, event_types=["custom"])
    assert got.value.args[0]["type"] == "custom"
    assert registrations[0] == 429 and registrations[-1] == 200


# -- the benchmarks ---------------------------------------------------------------------------------


def test_a_submission_benchmark_users_requests_are_all_under_the_default_limits(
        start_server: StartServer, users: tuple[User, User], event_settings: Settings,
        sender_worker: WorkerThreads) -> None:
    iago = users[0]
    MessageStore(event_settings.database).create_stream(submission.STREAM, [iago.id])
    server = start_server()
    session = session_of(iago)
    rounds = harness.WARMUPS + harness.REPEATS
    per_round = submission.MESSAGES // submission.RECIPIENTS  # each user's share of each case, every round
    # Given one user of the submission benchmark, sending everything it sends in a full run, faster than it does:
    # two queues, then per round its share of dont_block polls and of messages,
    queue_id = register(session, server, event_types='["message"]').json()["queue_id"]
    idle_queue = register(session, server, event_types='["bench_idle"]').json()["queue_id"]
    answers = []
    for _ in range(rounds):
        answers += [poll_now(session, server, idle_queue) for _ in range(per_round)]
        answers += [session.post(server.url("/api/v1/messages"), data={
            "type": "stream", "to": submission.STREAM, "topic": submission.TOPIC, "content": "**bench**"})
            for _ in range(per_round)]
    # then none is refused.
    assert [a.status_code for a in answers] == [200] * (2 * rounds * per_round), {a.status_code for a in answers}
    assert poll_now(session, server, queue_id).status_code == 200


# -- the limiter and its settings -------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_one_per_interval_and_says_how_long_to_wait() -> None:
    limiter = RateLimiter(3, 3.0)  # bursts of 3, then one a second
    assert [limiter.acquire("iago", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("iago", now=100.0) == pytest.approx(1.0)
    assert limiter.acquire("iago", now=100.5) == pytest.approx(0.5)  # a refusal is not counted
    assert limiter.acquire("othello", now=100.5) == 0.0  # per key
    assert limiter.acquire("iago", now=101.0) == 0.0
    assert limiter.forget_refilled(now=102.0) == 1 and len(limiter) == 1  # othello's is full again: forgotten
    assert limiter.forget_refilled(now=104.0) == 1 and len(limiter) == 0


def test_rate_limits_come_from_the_settings_and_are_relaxed_in_development_mode() -> None:
    settings = Settings.from_env({"EVENTBUS_RATE_LIMIT_API": "600/30", "EVENTBUS_RATE_LIMIT_REGISTER": "5/1",
                                  "EVENTBUS_RATE_LIMIT_PRESENCE": "7/60", "EVENTBUS_MAX_QUEUES_PER_USER": "9"})
    assert (settings.rate_limit_api, settings.rate_limit_register, settings.rate_limit_presence) == (
        (600, 30.0), (5, 1.0), (7, 60.0))
    assert settings.max_queues_per_user == 9
    limits = RateLimits.from_settings(settings).limiters
    relaxed = RateLimits.from_settings(settings.replace(development=True)).limiters
    assert (limits[rate_limit.API].limit, relaxed[rate_limit.API].limit) == (600, 600 * DEVELOPMENT_FACTOR)
    defaults = Settings.from_env({})
    assert (defaults.rate_limit_api, defaults.rate_limit_register, defaults.rate_limit_presence) == (
        (1200, 60.0), (100, 60.0), (60, 60.0))
    assert (defaults.max_queues_per_user, defaults.presence_coalesce_seconds) == (100, 5.0)


@pytest.mark.parametrize(("variable", "value"), [
    ("EVENTBUS_RATE_LIMIT_API", "fast"), ("EVENTBUS_RATE_LIMIT_API", "0/60"), ("EVENTBUS_RATE_LIMIT_REGISTER", "-1/60"),
    ("EVENTBUS_RATE_LIMIT_REGISTER", "10/0"), ("EVENTBUS_RATE_LIMIT_PRESENCE", "10/nan"),
    ("EVENTBUS_RATE_LIMIT_PRESENCE", "1.5/60"), ("EVENTBUS_MAX_QUEUES_PER_USER", "0"),
    ("EVENTBUS_PRESENCE_COALESCE_SECONDS", "-1"), ("EVENTBUS_PRESENCE_COALESCE_SECONDS", "inf"),
])
def test_bad_limits_get_a_clear_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: value})
