"""Message submission (issue 5): messages/s through the whole path, from POST to ten recipients' queues.

The path timed is production's: ``POST /api/v1/messages`` with HTTP Basic
auth to the event server (``bench._eventbus_server``, a process of its
own), which publishes the request to ``message_sender`` on RabbitMQ; a
``message_sender`` worker (``python -m eventbus process_queue``, a process
of its own) renders it, stores it in SQLite, publishes the message event to
``notify_tornado`` for the stream's ``RECIPIENTS`` subscribers and its
answer to ``tornado_return``; the event server queues the event for every
recipient's client and answers the POST. The contents are the Markdown
benchmark's corpus (``bench.markdown.corpus``), mentions of the stream's
users included.

Each case sends ``MESSAGES`` requests from ``SENDERS`` concurrent senders,
each a kept-alive HTTP/1.1 connection that sends its next request when the
last is answered, as one of the ``RECIPIENTS`` users (the senders take the
users in turn); a run is timed from the first request written to the last
answer read.

- The baseline is the floor of an authenticated request to the same
  server: ``GET /api/v1/events?dont_block=true`` on a queue that gets no
  events, Basic auth included (and, as for every authenticated request,
  the ``user_activity`` event the server publishes after it). What a POST
  costs beyond it is the message path.
- The messages: each recipient (the sender among them) has a long-polling
  client on its own event queue, which re-arms as soon as it is answered;
  after each run, once every poller has every message of the run (or
  ``DELIVERY_TIMEOUT`` went by), the messages missing from any recipient's
  queue are counted: there should be none.
- ``message_sender``'s ``consume`` in this process, on the in-process
  broker: the worker's own work per message (checking the request,
  rendering, storing, publishing), without HTTP, RabbitMQ or Tornado.

Figures: the p50 and p99 of each run's request latencies (POST and
baseline GET), and the messages that did not reach all recipients, over
every timed run. The broker is the run's private RabbitMQ node, or the one
given with ``--amqp-url``; there, the event server consumes
``notify_tornado`` and the worker ``message_sender``, so no other may.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson

from bench import register
from bench._load_client import HttpConnection, Response, _basic_auth
from bench._load_client import User as Credentials
from bench._processes import PROFILE_ENV, START_TIMEOUT, EventServers, Process, environment
from bench.harness import BenchError, Context, Figure, Outcome, Result, in_rounds
from bench.markdown import corpus
from eventbus.contracts import (
    MESSAGE_SENDER,
    NOTIFY_TORNADO,
    SLOW_QUERIES,
    TORNADO_RETURN,
    USER_ACTIVITY,
    MessageRequest,
)
from eventbus.messages import MessageStore
from eventbus.processors.queues.messages import MessageSenderWorker
from eventbus.queue import MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from eventbus.users import User

#: The stream's subscribers, each with a long-polling client: every message goes to this many queues.
RECIPIENTS = 10
#: Requests in flight at once: a busy organization's senders.
SENDERS = 20
#: Messages per run: 5 to 15 s of the path here (it is slow: see docs/benchmarks.md), enough for a p99.
MESSAGES = 300
QUICK_MESSAGES = 40
STREAM = "bench submission"
TOPIC = "benchmarks"
#: The longest one request may take; the server itself gives up on the worker after 30 s.
REQUEST_TIMEOUT = 60.0
#: How long after the last answer the events may take to reach every poller.
DELIVERY_TIMEOUT = 30.0
#: How often RabbitMQ is asked whether the worker consumes yet.
POLL = 0.05
#: What the server publishes besides (a user_activity event per authenticated request, a report per request
#: slower than 2 s); nothing consumes them here.
UNCONSUMED_QUEUES = (USER_ACTIVITY, SLOW_QUERIES)

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _answer(response: Response, what: str) -> dict[str, Any]:
    if response.status != 200:
        raise BenchError(f"{what}: HTTP {response.status}: {response.body[:300]!r}")
    return dict(ujson.loads(response.body))


@dataclass
class Run:
    """What one run of a case measured."""

    seconds: float
    #: Each request's time from written to answered, in ms (none for the in-process case).
    latencies: list[float] = field(default_factory=list)
    #: Messages of the run that did not reach every recipient's queue in time.
    missing: int = 0


class Poller:
    """A recipient's long-polling client: holds a GET on its queue, re-arms when answered, keeps the ids."""

    def __init__(self, http: HttpConnection, headers: dict[str, str], queue_id: str, arrived: asyncio.Event) -> None:
        self.http = http
        self.headers = headers
        self.queue_id = queue_id
        self.arrived = arrived
        self.last_event_id = -1
        self.message_ids: set[int] = set()
        self.error: BaseException | None = None
        self.closed = False

    def arm(self) -> None:
        if self.closed:
            return
        path = f"/api/v1/events?queue_id={self.queue_id}&last_event_id={self.last_event_id}"
        self.http.request("GET", path, self.headers).add_done_callback(self._on_answer)

    def _on_answer(self, future: asyncio.Future[Response]) -> None:
        """Invoked by asyncio with the answer to the held GET."""
        try:
            events = _answer(future.result(), "long-poll")["events"]
        except (Exception, asyncio.CancelledError) as e:
            if not self.closed:
                self.error = e
            self.arrived.set()
            return
        for event in events:
            self.last_event_id = event["id"]
            if event["type"] == "message":
                self.message_ids.add(event["message"]["id"])
        self.arrived.set()
        self.arm()

    def close(self) -> None:
        self.closed = True
        self.http.close()


class Load:
    """The client side, in this process's asyncio loop: the senders' connections and the recipients' pollers."""

    def __init__(self, port: int, users: list[User], contents: list[str]) -> None:
        self.port = port
        self.users = users
        self.contents = contents
        #: Each user's Authorization header, made once.
        self.auth = {u.id: _basic_auth(Credentials(u.id, u.email, u.api_key)) for u in users}
        self.senders: list[tuple[HttpConnection, User]] = []
        self.pollers: list[Poller] = []
        self.idle_queues: dict[int, str] = {}
        self.arrived = asyncio.Event()

    async def open(self) -> None:
        """Connect every sender, register every poller's queue and an idle queue per user, arm the pollers."""
        for i in range(SENDERS):
            self.senders.append((await HttpConnection.open(self.port), self.users[i % len(self.users)]))
        for user in self.users:
            http = await HttpConnection.open(self.port)
            queue_id = await self._register(http, user, ["message"])
            poller = Poller(http, self.auth[user.id], queue_id, self.arrived)
            self.pollers.append(poller)
            self.idle_queues[user.id] = await self._register(http, user, ["bench_idle"])
        for poller in self.pollers:
            poller.arm()

    async def _register(self, http: HttpConnection, user: User, event_types: list[str]) -> str:
        body = urllib.parse.urlencode({"event_types": ujson.dumps(event_types)}).encode()
        answer = _answer(await http.request("POST", "/api/v1/register", {**self.auth[user.id], **_FORM}, body),
                         "register")
        return str(answer["queue_id"])

    def close(self) -> None:
        for http, _ in self.senders:
            http.close()
        for poller in self.pollers:
            poller.close()

    async def messages(self, count: int) -> Run:
        """``count`` POSTs of messages; then wait until every poller has each, and count those missing."""
        def request(i: int, user: User) -> tuple[str, str, dict[str, str], bytes]:
            body = urllib.parse.urlencode({"type": "stream", "to": STREAM, "topic": TOPIC,
                                           "content": self.contents[i % len(self.contents)]})
            return "POST", "/api/v1/messages", {**self.auth[user.id], **_FORM}, body.encode()

        run, answers = await self._send(count, request)
        ids = {int(answer["id"]) for answer in answers}
        if len(ids) != count:
            raise BenchError(f"{count} messages sent but {len(ids)} message ids answered")
        run.missing = await self._wait_delivered(ids)
        return run

    async def floor(self, count: int) -> Run:
        """``count`` authenticated GETs that do nothing: events of an idle queue, without waiting."""
        def request(_i: int, user: User) -> tuple[str, str, dict[str, str], None]:
            path = f"/api/v1/events?queue_id={self.idle_queues[user.id]}&dont_block=true"
            return "GET", path, self.auth[user.id], None

        return (await self._send(count, request))[0]

    async def _send(self, count: int, request: Callable[[int, User], tuple[str, str, dict[str, str], bytes | None]]
                    ) -> tuple[Run, list[dict[str, Any]]]:
        """``count`` requests, ``SENDERS`` at a time, the i-th made by ``request(i, user)``; times and answers."""
        latencies: list[float] = []
        answers: list[dict[str, Any]] = []
        turns = iter(range(count))

        async def sender(http: HttpConnection, user: User) -> None:
            for i in turns:
                written = time.perf_counter()
                response = await asyncio.wait_for(http.request(*request(i, user)), REQUEST_TIMEOUT)
                latencies.append((time.perf_counter() - written) * 1000)
                answers.append(_answer(response, "request"))

        start = time.perf_counter()
        await asyncio.gather(*(sender(http, user) for http, user in self.senders))
        return Run(time.perf_counter() - start, latencies), answers

    async def _wait_delivered(self, ids: set[int]) -> int:
        """Wait until every poller has every message of ``ids`` (``DELIVERY_TIMEOUT`` at most); those missing."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while True:
            for poller in self.pollers:
                if poller.error is not None:
                    raise BenchError(f"a long-polling client failed: {poller.error}")
            missing = {i for i in ids if any(i not in poller.message_ids for poller in self.pollers)}
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return len(missing)
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


@dataclass(frozen=True)
class InProcess:
    """``MessageSenderWorker.consume`` in this process, on the in-process broker, on the server's database."""

    worker: MessageSenderWorker
    broker: MemoryBroker
    users: list[User]
    contents: list[str]

    def run(self, count: int) -> Run:
        start = time.perf_counter()
        for i in range(count):
            request = {"type": "stream", "to": STREAM, "topic": TOPIC, "content": self.contents[i % len(self.contents)]}
            self.worker.consume(MessageRequest(str(uuid.uuid4()), self.users[i % len(self.users)].id, request,
                                               TORNADO_RETURN, "bench").event())
        seconds = time.perf_counter() - start
        delivered = self.broker.purge(NOTIFY_TORNADO)
        answered = self.broker.purge(TORNADO_RETURN)
        if delivered != count or answered != count:
            raise BenchError(f"in process: {count} messages sent, {delivered} delivered, {answered} answered")
        return Run(seconds)


@contextmanager
def in_process(settings: Settings, users: list[User], contents: list[str]) -> Iterator[InProcess]:
    """The worker on a memory broker (``send_event`` publishes through the worker's broker)."""
    broker = MemoryBroker(settings)
    worker = MessageSenderWorker(broker)
    worker.before_start()
    yield InProcess(worker, broker, users, contents)


#: The ``versus`` of a figure that no baseline measures (a count of failures).
UNCOMPARED = ""
BASELINE = f"GET /api/v1/events dont_block, Basic auth, {SENDERS} senders"
MESSAGES_CASE = f"POST /api/v1/messages to {RECIPIENTS} recipients, {SENDERS} senders"
IN_PROCESS = "message_sender consume in process, memory broker"


@register("submission", f"messages/s from POST to {RECIPIENTS} recipients' queues through RabbitMQ and a "
          "message_sender worker, against an authenticated GET (issue 5)")
def submission(context: Context) -> list[Outcome]:
    count = context.size(MESSAGES, QUICK_MESSAGES)
    servers = EventServers(context)
    users = servers.users(RECIPIENTS)
    MessageStore(servers.database).create_stream(STREAM, [u.id for u in users])
    contents = corpus(count, [u.full_name for u in users], [STREAM])
    url = context.amqp_url
    settings = Settings(amqp_url=url, var_dir=context.work_dir / "submission", database_setting=servers.database)
    with ExitStack() as stack:
        admin = RabbitMQBroker(settings)
        stack.callback(admin.close)
        for queue in (MESSAGE_SENDER, TORNADO_RETURN, *UNCONSUMED_QUEUES):
            admin.delete_queue(queue)  # a broker given with --amqp-url may hold old ones
            stack.callback(admin.delete_queue, queue)
        server = stack.enter_context(servers.start("submission", url))
        worker = stack.enter_context(_worker(servers, settings))
        _wait_consuming(admin, worker)
        runner = stack.enter_context(asyncio.Runner())
        load = Load(server.port, users, contents)
        stack.callback(load.close)
        runner.run(load.open())
        local = stack.enter_context(in_process(settings.replace(var_dir=settings.var_dir / "in-process"), users,
                                               contents))
        floors, posts, locals_ = in_rounds([
            lambda: runner.run(load.floor(count)),
            lambda: runner.run(load.messages(count)),
            lambda: local.run(count),
        ], repeats=context.repeats)
    return [
        Result("submission", BASELINE, count, [r.seconds for r in floors], baseline=True),
        Result("submission", MESSAGES_CASE, count, [r.seconds for r in posts]),
        Result("submission", IN_PROCESS, count, [r.seconds for r in locals_]),
        *_latencies("GET baseline", floors, baseline=True),
        *_latencies("POST messages", posts, baseline=False),
        Figure("submission", f"messages missing from some of the {RECIPIENTS} queues, all runs",
               count * len(posts), [float(sum(r.missing for r in posts))], "messages", versus=UNCOMPARED, limit=0),
    ]


def _latencies(what: str, runs: list[Run], *, baseline: bool) -> list[Figure]:
    """The p50 and p99 of each run's latencies; the POST's compared with the GET's of the same percentile."""
    figures = []
    for name, percentile in (("p50", 50), ("p99", 99)):
        values = [statistics.quantiles(r.latencies, n=100, method="inclusive")[percentile - 1] for r in runs]
        figures.append(Figure("submission", f"{what}, {name} latency", len(runs[0].latencies), values, "ms",
                              baseline=baseline, versus=f"GET baseline, {name} latency"))
    return figures


@contextmanager
def _worker(servers: EventServers, settings: Settings) -> Iterator[Process]:
    """``eventbus process_queue --queue=message_sender`` on the event servers' database; under cProfile with
    ``EVENTBUS_BENCH_PROFILE``, as the servers."""
    env = environment(EVENTBUS_BROKER="amqp", EVENTBUS_AMQP_URL=settings.amqp_url,
                      EVENTBUS_VAR_DIR=str(settings.var_dir), EVENTBUS_DATABASE=str(servers.database),
                      EVENTBUS_SECRETS_FILE=str(servers.secrets_file))
    argv = ["eventbus", "process_queue", f"--queue={MESSAGE_SENDER}"]
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        profile = Path(profile_dir).resolve() / f"message_sender.{int(time.time())}.prof"
        argv = ["cProfile", "-o", str(profile), "-m", *argv]
    with Process(argv, settings.var_dir / "message_sender.log", env) as worker:
        yield worker


def _wait_consuming(admin: RabbitMQBroker, worker: Process) -> None:
    """Until RabbitMQ counts the worker as ``message_sender``'s consumer; BenchError if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while admin.queue_info(MESSAGE_SENDER).consumers == 0:
        if worker.process.poll() is not None:
            raise worker.failed(f"exited with {worker.process.returncode}")
        if time.monotonic() > deadline:
            raise worker.failed(f"did not consume {MESSAGE_SENDER} in {START_TIMEOUT:.0f} s")
        time.sleep(POLL)
