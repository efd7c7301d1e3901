"""Faults of the Tornado process, injected into the real thing: ``eventbus runtornado`` on a real RabbitMQ node,
stopped with SIGTERM or killed with SIGKILL at points a seeded generator picks, while clients long-poll and
events flow. Each test prints what it counted and its seed (``pytest -rA`` shows it; set EVENTBUS_FAULT_SEED to
replay one)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from eventbus import codec
from eventbus.messages import MessageStore
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.tornado_events import send_event
from eventbus.users import User, UserStore
from tests.conftest import until, wait_for
from tests.eventserver import run
from tests.workers import ROOT, WorkerProcess, cli_env

#: The SIGTERM scenario: clients (users x queues each), events at a steady rate, restarts.
USERS, QUEUES_PER_USER = 20, 5
EVENTS, EVENTS_PER_SECOND, RESTARTS = 1500, 120, 4
#: The SIGKILL scenario: messages sent at a steady rate, one kill.
MESSAGES, MESSAGES_PER_SECOND = 200, 50
#: Seconds a client waits before trying again while no server listens.
RETRY_SECONDS = 0.05


def seeded(name: str) -> random.Random:
    """A generator for the fault points, its seed printed so that a failing run can be replayed."""
    seed = int(os.environ.get("EVENTBUS_FAULT_SEED") or random.randrange(2**32))
    print(f"{name}: seed {seed} (EVENTBUS_FAULT_SEED={seed} replays it)")
    return random.Random(seed)


class TornadoProcess:
    """``eventbus runtornado`` on a fixed port, started again and again; each run logs to a file of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return Path(self.settings.var_dir) / f"runtornado-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        env = cli_env(self.settings, EVENTBUS_PORT=str(self.port), EVENTBUS_SHARED_SECRET="faults")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "eventbus", "runtornado"], env=env, cwd=ROOT,
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: f"listening on http://127.0.0.1:{self.port}" in self.log.read_text(), timeout=30,
                 what="runtornado to listen")

    def stop(self, signum: int) -> int:
        """Send ``signum`` and wait for the process to end; its exit code."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def tornado(settings: Settings, broker: RabbitMQBroker) -> Iterator[TornadoProcess]:
    for queue in ("notify_tornado", "tornado_return", "message_sender", "error_reports"):
        if broker.queue_info(queue).exists:
            broker.purge(queue)
    process = TornadoProcess(settings)
    yield process
    process.close()


class Producer(threading.Thread):
    """Calls ``send(n)`` for n = 0, 1, ... ``count`` - 1 at ``rate`` per second; ``sent`` counts the returned."""

    def __init__(self, send: Callable[[int], None], count: int, rate: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.send, self.count, self.rate = send, count, rate
        self.sent = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        try:
            for n in range(self.count):
                # Paced by the clock: the rate stays steady whatever one publish took.
                if self._halt.wait(max(0.0, start + n / self.rate - time.monotonic())):
                    return
                self.send(n)
                self.sent = n + 1
        except BaseException as e:
            self.error = e

    def wait_sent(self, count: int) -> None:
        wait_for(lambda: self.sent >= count or self.error is not None, timeout=60, what=f"{count} sent")

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@dataclass
class Poller:
    """One long-polling client, as Zulip's: polls, acknowledges with last_event_id, re-registers on
    BAD_EVENT_QUEUE_ID. It checks what it gets: ids consecutive (no gap, none twice), never a 5xx."""

    api: Api
    event_types: list[str] | None = None
    queue_id: str = ""
    last_event_id: int = -1
    events: list[dict[str, Any]] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    registrations: int = 0
    bad_queue: int = 0
    problems: list[str] = field(default_factory=list)

    async def register(self) -> None:
        params = {"event_types": codec.encode(self.event_types).decode()} if self.event_types else {}
        while True:
            status, body = await self.api.call("POST", "/api/v1/register", **params)
            if status == 200:
                self.queue_id, self.last_event_id = body["queue_id"], -1
                self.registrations += 1
                return
            self.note(status, body)

    async def poll(self) -> None:
        """One poll, answered or failed; what it got is checked and kept."""
        status, body = await self.api.call("GET", "/api/v1/events", queue_id=self.queue_id,
                                           last_event_id=str(self.last_event_id))
        if status == 200:
            for event in body["events"]:
                if event["id"] != self.last_event_id + 1:
                    self.problems.append(f"queue {self.queue_id}: event {event['id']} after {self.last_event_id}")
                self.last_event_id = max(self.last_event_id, event["id"])
                self.events.append(event)
                self.kinds[event["type"]] += 1
        elif status == 400 and body["code"] == "BAD_EVENT_QUEUE_ID":
            self.bad_queue += 1
            await self.register()
        else:
            self.note(status, body)

    def note(self, status: int, body: Any) -> None:
        """No server answered (restarting): try again soon. Any other answer is a problem."""
        if status != 599:
            self.problems.append(f"answered {status}: {body}")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


class Api:
    """Calls to the server process as one user (HTTP Basic); a failed connection is status 599."""

    def __init__(self, tornado: TornadoProcess, user: User, http: AsyncHTTPClient) -> None:
        self.tornado, self.http = tornado, http
        self.auth = (user.email, user.api_key)

    async def call(self, method: str, path: str, **params: str) -> tuple[int, Any]:
        query = urllib.parse.urlencode(params)
        url = self.tornado.url(path) + (f"?{query}" if method == "GET" else "")
        request = HTTPRequest(url, method=method, body=None if method == "GET" else query, auth_username=self.auth[0],
                              auth_password=self.auth[1], request_timeout=60)
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError):  # refused, cut: no server right now
            await asyncio.sleep(RETRY_SECONDS)
            return 599, None
        return response.code, codec.decode(response.body)


def http_client() -> AsyncHTTPClient:
    """One client for all the pollers of a scenario: every poll is held at once."""
    return AsyncHTTPClient(force_instance=True, max_clients=4 * USERS * QUEUES_PER_USER)


async def poll_until(pollers: list[Poller], done: Callable[[], bool]) -> None:
    """Every poller polls on until ``done()``."""

    async def go(poller: Poller) -> None:
        while not done():
            await poller.poll()

    tasks = [asyncio.ensure_future(go(p)) for p in pollers]
    await until(done, timeout=120, what="every client to have every event")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_clients_get_every_event_once_in_order_across_sigterm_restarts(
        tornado: TornadoProcess, settings: Settings, broker: RabbitMQBroker) -> None:
    rng = seeded("sigterm restarts")
    store = UserStore(settings.database)
    users = [store.create_user(f"user{i}@example.com", f"User {i}") for i in range(USERS)]
    user_ids = [u.id for u in users]
    tornado.start()
    # A producer sends numbered events to every user at a steady rate, and the server is stopped with SIGTERM
    # and started again when the producer reaches points picked at random.
    producer = Producer(lambda n: send_event(broker, {"type": "custom", "n": n}, user_ids), EVENTS, EVENTS_PER_SECOND)
    restart_at = sorted(rng.sample(range(EVENTS // 10, EVENTS - EVENTS // 10), RESTARTS))
    exit_codes: list[int] = []

    def restarts() -> None:
        for point in restart_at:
            producer.wait_sent(point)
            exit_codes.append(tornado.stop(signal.SIGTERM))
            tornado.start()

    async def scenario() -> list[Poller]:
        http = http_client()
        pollers = [Poller(Api(tornado, user, http), event_types=["custom"]) for user in users
                   for _ in range(QUEUES_PER_USER)]
        await asyncio.gather(*(p.register() for p in pollers))
        producer.start()
        chaos = asyncio.get_running_loop().run_in_executor(None, restarts)

        def done() -> bool:
            return producer.error is not None or all(
                p.kinds["custom"] >= EVENTS or p.problems for p in pollers)

        await poll_until(pollers, done)
        await chaos
        http.close()
        return pollers

    try:
        pollers = run(scenario, timeout=180)
    finally:
        producer.stop()
    assert producer.error is None
    assert exit_codes == [0] * RESTARTS
    # Every client got every event, once, in order, with ids one more each time (restart and heartbeat
    # events included), on the queue it registered first: nobody had to register again.
    for poller in pollers:
        assert poller.problems == []
        assert [e["n"] for e in poller.of_type("custom")] == list(range(EVENTS))
        assert (poller.registrations, poller.bad_queue) == (1, 0)
        assert len(poller.of_type("restart")) == RESTARTS
        assert all(isinstance(e["server_generation"], int) for e in poller.of_type("restart"))
    assert not broker.queue_info("error_reports").depth  # no held poll was answered as a server error
    print(f"sigterm restarts: {len(pollers)} clients, {EVENTS} events at {EVENTS_PER_SECOND}/s, "
          f"{RESTARTS} restarts at events {restart_at}; received {sum(len(p.events) for p in pollers)} events, "
          f"{sum(p.kinds['heartbeat'] for p in pollers)} of them heartbeats answering polls held at a SIGTERM")


def test_after_sigkill_a_client_resumes_whole_or_registers_again_and_history_has_every_message(
        tornado: TornadoProcess, settings: Settings, broker: RabbitMQBroker) -> None:
    rng = seeded("sigkill")
    messages = MessageStore(settings.database)
    iago = messages.users.create_user("iago@example.com", "Iago")
    othello = messages.users.create_user("othello@example.com", "Othello")
    tornado.start()
    worker = WorkerProcess(settings, "--queue=message_sender")

    def send_message(n: int) -> None:
        # Othello's messages go through the real pipeline: message_sender (a worker process renders and stores
        # them, then send_event) and notify_tornado to the Tornado process.
        broker.publish("message_sender", {"request_id": str(uuid.uuid4()), "user_id": othello.id,
                                          "request": {"type": "private", "to": [iago.email], "content": f"m{n}"}})

    producer = Producer(send_message, MESSAGES, MESSAGES_PER_SECOND)
    kill_at = rng.randrange(MESSAGES // 5, MESSAGES - MESSAGES // 5)
    exit_codes: list[int] = []

    def kill_and_restart() -> None:
        producer.wait_sent(kill_at)
        exit_codes.append(tornado.stop(signal.SIGKILL))
        tornado.start()

    def all_stored() -> bool:
        return len(messages.recent(iago.id, MESSAGES + 10)) >= MESSAGES

    async def scenario() -> tuple[Poller, list[dict[str, Any]]]:
        http = http_client()
        # Given Iago's client, long-polling for messages,
        poller = Poller(Api(tornado, iago, http), event_types=["message"])
        await poller.register()
        producer.start()
        # when the server is killed while Othello's messages flow, and started again,
        chaos = asyncio.get_running_loop().run_in_executor(None, kill_and_restart)

        def done() -> bool:
            if producer.error is not None or poller.problems:
                return True
            return bool(chaos.done() and producer.sent == MESSAGES and poller.registrations == 2 and all_stored()
                        and broker.queue_info("notify_tornado").depth == 0)

        await poll_until([poller], done)
        await chaos
        # then, once registered again, Iago's client loads the history.
        status, history = await poller.api.call("GET", "/api/v1/messages", anchor="newest",
                                                num_before=str(MESSAGES + 10), num_after="0",
                                                apply_markdown="false")
        assert status == 200, history
        http.close()
        return poller, history["messages"]

    try:
        poller, history = run(scenario, timeout=120)
    finally:
        producer.stop()
        worker.stop()
    assert producer.error is None
    assert exit_codes == [-signal.SIGKILL]
    # The client's queue died with the process: it was told so (BAD_EVENT_QUEUE_ID), never served a gap,
    # and registered again;
    assert poller.problems == []
    assert (poller.bad_queue, poller.registrations) == (1, 2)
    # every message sent before, during and after the kill is in the history it loads then,
    sent = [f"m{n}" for n in range(MESSAGES)]
    assert sorted(m["content"] for m in history) == sorted(sent)
    # and what it saw live is in it too. Notices the killed process had delivered but not yet acked come
    # again to the new process, so a message may reach the new queue a second time: the same message (same id,
    # which Zulip clients deduplicate by), at most a prefetch window of them, never a different one.
    live = [(e["message"]["id"], e["message"]["content"]) for e in poller.of_type("message")]
    assert {content for _id, content in live} <= set(sent)
    assert len({content for _id, content in live}) == len(set(live))  # one id per message
    again = len(live) - len(set(live))
    assert again <= settings.prefetch
    print(f"sigkill: {MESSAGES} messages at {MESSAGES_PER_SECOND}/s, killed after {kill_at}; "
          f"{len(set(live))} seen live ({again} of them again after the crash), "
          f"{MESSAGES - len(set(live))} recovered from history after re-registering")
