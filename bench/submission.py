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
- ``message_sender``'s ``consume_batch`` in this process, on the in-process
  broker, in batches of its ``batch_size``: the worker's own work per
  message (checking the request, rendering, storing, publishing), without
  HTTP, RabbitMQ or Tornado.

Figures: the p50 and p99 of each run's request latencies (POST and
baseline GET), and the messages that did not reach all recipients, over
every timed run; and what a message costs in CPU time (user and system,
from ``/proc``) in each process of the path: the event server, the
worker, the RabbitMQ node (a private one only) and this process (the
clients), against what a baseline GET costs. Unlike the rates, those hold
on a machine busy with other work, and they say where the time goes.
The broker is the run's private RabbitMQ node, or the one given with
``--amqp-url``; there, the event server consumes ``notify_tornado`` and
the worker ``message_sender``, so no other may.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson

from bench import register
from bench._load_client import HttpConnection, Response, WebSocketConnection, _basic_auth
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
)
from eventbus.messages import MessageStore
from eventbus.processors.queues.messages import MessageSenderWorker
from eventbus.queue import Broker, MemoryBroker
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
#: The steady offered loads (messages/s) at which latency is measured, not at saturation, and for how long.
OFFERED_RATES = (100.0, 500.0)
OFFERED_SECONDS = 4.0
QUICK_OFFERED_SECONDS = 0.5
#: Connections the offered load may use at once (a request waits for a free one, and that wait is latency).
OFFERED_CONNECTIONS = 64
#: Issue 15's target for the p99 under offered load, from the POST to the last recipient having the message.
OFFERED_P99_LIMIT_MS = 30.0
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
    #: Messages a recipient's queue had after one of a larger id (each queue must have them in id order).
    out_of_order: int = 0
    #: CPU time per request (per message) in ms, by process (``CpuMeter``), where measured.
    cpu_ms: dict[str, float] = field(default_factory=dict)


class CpuMeter:
    """The CPU time (user and system, every thread) that the path's processes have used, from ``/proc``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        """Seconds of CPU each process used so far, by name."""
        return {name: _cpu_seconds(pid) for name, pid in self.pids.items()}

    def metered(self, case: Callable[[], Run], count: int) -> Callable[[], Run]:
        """``case``, its run's ``cpu_ms`` set: what each process spent during it, per request."""
        def run() -> Run:
            before = self.read()
            result = case()
            after = self.read()
            result.cpu_ms = {name: (after[name] - before[name]) * 1000 / count for name in before}
            return result

        return run


def _cpu_seconds(pid: int) -> float:
    # /proc/PID/stat: utime and stime are the 14th and 15th fields, the 12th and 13th after the ")" of the name.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Poller:
    """A recipient's long-polling client: holds a GET on its queue, re-arms when answered, keeps the ids."""

    def __init__(self, http: HttpConnection, headers: dict[str, str], queue_id: str, arrived: asyncio.Event) -> None:
        self.http = http
        self.headers = headers
        self.queue_id = queue_id
        self.arrived = arrived
        self.last_event_id = -1
        self.message_ids: set[int] = set()
        #: When each message arrived (``time.perf_counter()``), for the latency under offered load.
        self.arrived_at: dict[int, float] = {}
        #: Messages that came after one of a larger id, and the largest id so far.
        self.out_of_order = 0
        self.newest = 0
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
        now = time.perf_counter()
        for event in events:
            self.last_event_id = event["id"]
            if event["type"] == "message":
                message_id = event["message"]["id"]
                if message_id < self.newest:
                    self.out_of_order += 1
                self.newest = max(self.newest, message_id)
                self.message_ids.add(message_id)
                self.arrived_at[message_id] = now
        self.arrived.set()
        self.arm()

    def close(self) -> None:
        self.closed = True
        self.http.close()


class SocketSender:
    """A websocket logged in as one user that sends request frames; each is answered by a response frame."""

    def __init__(self) -> None:
        self.socket: WebSocketConnection | None = None
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.req_ids = itertools.count()

    @classmethod
    async def open(cls, port: int, user: User) -> SocketSender:
        sender = cls()
        http = await HttpConnection.open(port)  # the login's connection, closed after
        try:
            form = urllib.parse.urlencode({"email": user.email, "api_key": user.api_key}).encode()
            cookie = (await http.request("POST", "/accounts/login", _FORM, form)).cookie("eventbus_session")
        finally:
            http.close()
        if cookie is None:
            raise BenchError("login set no session cookie")
        headers = {"Cookie": f"eventbus_session={cookie}", "Origin": f"http://127.0.0.1:{port}"}
        sender.socket = await WebSocketConnection.open(port, "/json/events/websocket", headers, sender._on_frame)
        return sender

    def request(self, request: dict[str, Any]) -> asyncio.Future[Any]:
        """The response to ``request``, sent as a request frame."""
        assert self.socket is not None
        req_id = next(self.req_ids)
        answer = self.waiting[req_id] = asyncio.get_running_loop().create_future()
        self.socket.send(ujson.dumps({"type": "request", "req_id": req_id, "request": request}).encode())
        return answer

    def _on_frame(self, payload: bytes | None) -> None:
        """Invoked by the connection with each frame's payload, and None when it closed."""
        if payload is None:
            for answer in self.waiting.values():
                if not answer.done():
                    answer.set_exception(BenchError("the websocket closed"))
            return
        frame = ujson.loads(payload)
        if frame.get("type") == "response":
            self.waiting.pop(frame["req_id"]).set_result(frame["response"])

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


#: One sender's way of making the i-th request of a run: its answer, decoded.
Call = Callable[[int], Awaitable[dict[str, Any]]]


class Load:
    """The client side, in this process's asyncio loop: the senders' connections and the recipients' pollers."""

    def __init__(self, port: int, users: list[User], contents: list[str]) -> None:
        self.port = port
        self.users = users
        self.contents = contents
        #: Each user's Authorization header, made once.
        self.auth = {u.id: _basic_auth(Credentials(u.id, u.email, u.api_key)) for u in users}
        self.senders: list[tuple[HttpConnection, User]] = []
        self.sockets: list[tuple[SocketSender, User]] = []
        #: The connections the offered load takes from: as many as it may need at once.
        self.pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self.pollers: list[Poller] = []
        self.idle_queues: dict[int, str] = {}
        self.arrived = asyncio.Event()

    async def open(self) -> None:
        """Connect every sender, register every poller's queue and an idle queue per user, arm the pollers."""
        for i in range(SENDERS):
            user = self.users[i % len(self.users)]
            self.senders.append((await HttpConnection.open(self.port), user))
            self.sockets.append((await SocketSender.open(self.port, user), user))
        for _ in range(OFFERED_CONNECTIONS):
            self.pool.put_nowait(await HttpConnection.open(self.port))
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
        for socket, _ in self.sockets:
            socket.close()
        while not self.pool.empty():
            self.pool.get_nowait().close()
        for poller in self.pollers:
            poller.close()

    def _message(self, i: int) -> dict[str, str]:
        return {"type": "stream", "to": STREAM, "topic": TOPIC, "content": self.contents[i % len(self.contents)]}

    async def _post(self, http: HttpConnection, user: User, i: int) -> dict[str, Any]:
        body = urllib.parse.urlencode(self._message(i)).encode()
        return _answer(await http.request("POST", "/api/v1/messages", {**self.auth[user.id], **_FORM}, body), "POST")

    async def messages(self, count: int, websocket: bool = False) -> Run:
        """``count`` messages, POSTed (or sent as websocket requests); then wait until every poller has each,
        and count those missing or out of order."""
        calls: list[Call]
        if websocket:
            calls = [functools.partial(self._request, socket) for socket, _ in self.sockets]
        else:
            calls = [functools.partial(self._post, http, user) for http, user in self.senders]
        run, answers = await self._send(count, calls)
        ids = {int(answer["id"]) for answer in answers}
        if len(ids) != count:
            raise BenchError(f"{count} messages sent but {len(ids)} message ids answered")
        run.missing, run.out_of_order = await self._wait_delivered(ids), self._out_of_order()
        return run

    async def _request(self, socket: SocketSender, i: int) -> dict[str, Any]:
        response = dict(await socket.request(self._message(i)))
        if response.get("result") != "success":
            raise BenchError(f"websocket request: {response}")
        return response

    async def floor(self, count: int) -> Run:
        """``count`` authenticated GETs that do nothing: events of an idle queue, without waiting."""
        async def get(http: HttpConnection, user: User, _i: int) -> dict[str, Any]:
            path = f"/api/v1/events?queue_id={self.idle_queues[user.id]}&dont_block=true"
            return _answer(await http.request("GET", path, self.auth[user.id]), "GET")

        return (await self._send(count, [functools.partial(get, http, user) for http, user in self.senders]))[0]

    async def offered(self, rate: float, seconds: float) -> Run:
        """POSTs at a steady ``rate`` a second for ``seconds``, each sent at its time whatever the others do;
        latencies from each POST's time to the last poller having its message."""
        count = round(rate * seconds)
        sent: list[tuple[float, int]] = []  # (time due, message id)

        async def post(i: int, due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            http = await self.pool.get()  # if none is free, the wait counts in the latency: it is due already
            try:
                answer = await asyncio.wait_for(self._post(http, self.users[i % len(self.users)], i), REQUEST_TIMEOUT)
            finally:
                self.pool.put_nowait(http)
            sent.append((due, int(answer["id"])))

        start = time.perf_counter()
        await asyncio.gather(*(post(i, start + i / rate) for i in range(count)))
        seconds = time.perf_counter() - start
        missing = await self._wait_delivered({message_id for _, message_id in sent})
        latencies = [(max(p.arrived_at.get(message_id, math.inf) for p in self.pollers) - due) * 1000
                     for due, message_id in sent]
        return Run(seconds, [x for x in latencies if math.isfinite(x)], missing, self._out_of_order())

    def _out_of_order(self) -> int:
        return sum(poller.out_of_order for poller in self.pollers)

    async def _send(self, count: int, calls: list[Call]) -> tuple[Run, list[dict[str, Any]]]:
        """``count`` requests, one at a time by each of ``calls``; their times and answers."""
        latencies: list[float] = []
        answers: list[dict[str, Any]] = []
        turns = iter(range(count))

        async def sender(call: Call) -> None:
            for i in turns:
                written = time.perf_counter()
                answers.append(await asyncio.wait_for(call(i), REQUEST_TIMEOUT))
                latencies.append((time.perf_counter() - written) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(sender(call) for call in calls))
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
    """``MessageSenderWorker.consume`` in this process, on the in-process broker (or a RabbitMQ one), on the
    server's database."""

    worker: MessageSenderWorker
    broker: Broker
    users: list[User]
    contents: list[str]

    def run(self, count: int) -> Run:
        events = [{
            "request_id": str(uuid.uuid4()), "server_id": "bench", "return_queue": TORNADO_RETURN,
            "user_id": self.users[i % len(self.users)].id,
            "request": {"type": "stream", "to": STREAM, "topic": TOPIC,
                        "content": self.contents[i % len(self.contents)]},
        } for i in range(count)]
        size = self.worker.options.batch_size
        start = time.perf_counter()
        for first in range(0, count, size):
            self.worker.consume_batch(events[first:first + size])
        seconds = time.perf_counter() - start
        delivered = self.broker.purge(NOTIFY_TORNADO)
        if isinstance(self.broker, MemoryBroker):
            answered = sum(len(m["answers"]) for m in _take(self.broker, TORNADO_RETURN))
        else:  # RabbitMQ: one confirmed answer message a batch
            answered = count if self.broker.purge(TORNADO_RETURN) == math.ceil(count / size) else 0
        if delivered != count or answered != count:
            raise BenchError(f"in process: {count} messages sent, {delivered} delivered, {answered} answered")
        return Run(seconds)


def _take(broker: MemoryBroker, queue: str) -> list[Any]:
    """The events waiting in ``queue``, taken off it."""
    taken: list[Any] = []
    consumer = broker.consumer(queue, taken.extend, batch_size=1000, on_idle=lambda: consumer.stop())
    consumer.run()
    return taken


@contextmanager
def in_process(settings: Settings, users: list[User], contents: list[str],
               broker: Broker | None = None) -> Iterator[InProcess]:
    """The worker on ``broker``, by default a memory broker (``send_event`` publishes through the worker's
    broker)."""
    broker = broker or MemoryBroker(settings)
    worker = MessageSenderWorker(broker)
    worker.before_start()
    yield InProcess(worker, broker, users, contents)


#: The ``versus`` of a figure that no baseline measures (a count of failures).
UNCOMPARED = ""
BASELINE = f"GET /api/v1/events dont_block, Basic auth, {SENDERS} senders"
MESSAGES_CASE = f"POST /api/v1/messages to {RECIPIENTS} recipients, {SENDERS} senders"
SOCKET_CASE = f"websocket request frames to {RECIPIENTS} recipients, {SENDERS} sockets"
IN_PROCESS = "message_sender consume_batch in process, memory broker"
#: Issue 15's target for both ways of sending: half the authenticated GET's rate.
THROUGHPUT_TARGET = 0.5
#: The processes whose CPU time the figures count, as they name them.
SERVER_PROCESS, WORKER_PROCESS, BROKER_PROCESS, CLIENT_PROCESS = ("event server", "message_sender worker",
                                                                  "RabbitMQ node", "clients (this process)")
ALL_PROCESSES = "all processes"
#: The benchmark measures the path, not the per-user rate limiter: ten users send thousands of messages a minute.
UNLIMITED = "1000000/60"


@register("submission", f"messages/s from POST and websocket to {RECIPIENTS} recipients' queues through RabbitMQ "
          "and a message_sender worker, against an authenticated GET; latency at steady loads (issues 5, 15)")
def submission(context: Context) -> list[Outcome]:
    count = context.size(MESSAGES, QUICK_MESSAGES)
    offered_seconds = QUICK_OFFERED_SECONDS if context.quick else OFFERED_SECONDS
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
        server = stack.enter_context(servers.start("submission", url, EVENTBUS_RATE_LIMIT_API=UNLIMITED))
        worker = stack.enter_context(_worker(servers, settings))
        _wait_consuming(admin, worker)
        runner = stack.enter_context(asyncio.Runner())
        load = Load(server.port, users, contents)
        stack.callback(load.close)
        runner.run(load.open())
        local = stack.enter_context(in_process(settings.replace(var_dir=settings.var_dir / "in-process"), users,
                                               contents))
        node = context.node_pid()
        meter = CpuMeter({SERVER_PROCESS: server.pid, WORKER_PROCESS: worker.pid,
                          **({BROKER_PROCESS: node} if node is not None else {}), CLIENT_PROCESS: os.getpid()})
        cases: list[Callable[[], Run]] = [
            meter.metered(lambda: runner.run(load.floor(count)), count),
            meter.metered(lambda: runner.run(load.messages(count)), count),
            meter.metered(lambda: runner.run(load.messages(count, websocket=True)), count),
            lambda: local.run(count),
            *(functools.partial(_offer, runner, load, rate, offered_seconds) for rate in OFFERED_RATES),
        ]
        floors, posts, frames, locals_, *offered = in_rounds(cases, repeats=context.repeats)
    every = [*posts, *frames, *(run for runs in offered for run in runs)]
    return [
        Result("submission", BASELINE, count, [r.seconds for r in floors], baseline=True),
        Result("submission", MESSAGES_CASE, count, [r.seconds for r in posts], target=THROUGHPUT_TARGET),
        Result("submission", SOCKET_CASE, count, [r.seconds for r in frames], versus=BASELINE,
               target=THROUGHPUT_TARGET),
        Result("submission", IN_PROCESS, count, [r.seconds for r in locals_]),
        *_latencies("GET baseline", floors, baseline=True),
        *_latencies("POST messages", posts, baseline=False),
        *_latencies("websocket requests", frames, baseline=False),
        *_cpu(floors, posts, frames),
        *(figure for rate, runs in zip(OFFERED_RATES, offered, strict=True) for figure in _delivery(rate, runs)),
        Figure("submission", f"messages missing from some of the {RECIPIENTS} queues, all runs",
               sum(len(r.latencies) for r in every), [float(sum(r.missing for r in every))], "messages",
               versus=UNCOMPARED, limit=0),
        Figure("submission", "messages after one of a larger id in some queue, all runs",
               sum(len(r.latencies) for r in every), [float(max(r.out_of_order for r in every))],
               "messages", versus=UNCOMPARED, limit=0),
    ]


def _offer(runner: asyncio.Runner, load: Load, rate: float, seconds: float) -> Run:
    return runner.run(load.offered(rate, seconds))


def _delivery(rate: float, runs: list[Run]) -> list[Figure]:
    """The p50 and p99 of each run's latencies from POST to the last recipient, at the offered ``rate``."""
    what = f"POST to last recipient at {rate:,.0f} messages/s offered"
    return [Figure("submission", f"{what}, {name}", len(runs[0].latencies),
                   [statistics.quantiles(r.latencies, n=100, method="inclusive")[percentile - 1] for r in runs], "ms",
                   versus=UNCOMPARED, limit=OFFERED_P99_LIMIT_MS if percentile == 99 else None)
            for name, percentile in (("p50", 50), ("p99", 99))]


def _cpu(floors: list[Run], posts: list[Run], frames: list[Run]) -> list[Figure]:
    """CPU time per request in all the processes, the GET's as baseline; the POST's by process too."""
    def total(runs: list[Run]) -> list[float]:
        return [sum(r.cpu_ms.values()) for r in runs]

    every = f"CPU per request, {ALL_PROCESSES}"
    figures = [Figure("submission", f"GET baseline, {every}", len(floors[0].latencies), total(floors), "ms",
                      baseline=True),
               Figure("submission", f"POST messages, {every}", len(posts[0].latencies), total(posts), "ms",
                      versus=f"GET baseline, {every}"),
               Figure("submission", f"websocket requests, {every}", len(frames[0].latencies), total(frames), "ms",
                      versus=f"GET baseline, {every}")]
    figures += [Figure("submission", f"POST messages, CPU per request, {name}", len(posts[0].latencies),
                       [r.cpu_ms[name] for r in posts], "ms", versus=UNCOMPARED) for name in posts[0].cpu_ms]
    return figures


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
