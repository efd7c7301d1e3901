"""Latency (issue 4): from ``send_event`` to a websocket client, through RabbitMQ, at 500 events/s over 1,000 clients.

Each case has ``CLIENTS`` websocket clients, one per user, in one client
process, and a producer process (``bench._sender``) sending ``RATE``
message events a second for ``SECONDS`` seconds, each to one user, round
robin, stamped with ``time.time()`` just before it is handed over. The
client process records, for each event, the time it has it decoded minus
that stamp (one machine, one clock). A run passes only if every event
arrived; each run gives its p50 and p99, and the table the median of those
over the runs.

- eventbus: ``send_event`` (a confirmed publish to ``notify_tornado``),
  the event server consuming it (``EVENTBUS_BROKER=amqp``), clients logged
  in and registered over ``/json/events/websocket``.
- The baseline: pika's ``basic_publish`` without confirms to a queue of its
  own, consumed by bare Tornado (``bench._bare_server --amqp-queue``) with
  pika's TornadoConnection, each event sent to its user's socket: the same
  parts, with nothing of eventbus.

The broker is the run's RabbitMQ node, or the one given with
``--amqp-url``; there, the event server consumes ``notify_tornado``, so no
other event server may be consuming it, and the baseline's queue
``bench_latency_bare`` is deleted at the end. Target: eventbus's p99 under
10 ms.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bench import register
from bench._processes import EventServers, LoadClient
from bench.harness import BenchError, Context, Figure, in_rounds
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from eventbus.users import User

CLIENTS = 1_000
QUICK_CLIENTS = 100
RATE = 500.0
QUICK_RATE = 200.0
SECONDS = 10.0
QUICK_SECONDS = 1.0
#: Issue 4's target for the 99th percentile.
P99_LIMIT_MS = 10.0
BARE_QUEUE = "bench_latency_bare"
#: How long after the producer is done its last events may take to arrive.
ARRIVAL_TIMEOUT = 30.0
#: What a producer may take besides its sending time: starting Python, connecting.
SENDER_MARGIN = 60.0


@dataclass(frozen=True)
class Latencies:
    """One run: the percentiles of its events' latencies, the longest, and the producer's own lag, in ms."""

    p50: float
    p99: float
    max: float
    #: How far behind its due time the producer handed its latest event over (``bench._sender``).
    producer_late: float = 0.0


BARE = "bare Tornado + pika"
EVENTBUS = "eventbus send_event"


@register("latency", "send_event to a websocket client through RabbitMQ, 500 events/s over 1,000 clients (issue 4)")
def latency(context: Context) -> list[Figure]:
    count = context.size(CLIENTS, QUICK_CLIENTS)
    rate, seconds = (QUICK_RATE, QUICK_SECONDS) if context.quick else (RATE, SECONDS)
    events = int(rate * seconds)
    servers = EventServers(context)
    users = servers.users(count)
    url = context.amqp_url
    first_ids = itertools.count(1_000_000, events)
    with ExitStack() as stack:
        stack.callback(_delete_queue, context, url)
        bare = stack.enter_context(servers.start_bare("latency-bare", amqp_url=url, queue=BARE_QUEUE))
        eventbus = stack.enter_context(servers.start("latency-eventbus", url))
        bare_clients = stack.enter_context(servers.clients("websocket", "bare", bare, users, "latency-bare-clients"))
        eventbus_clients = stack.enter_context(
            servers.clients("websocket", "eventbus", eventbus, users, "latency-eventbus-clients"))

        def case(flavor: str, clients: LoadClient, queue: str | None = None) -> Callable[[], Latencies]:
            return lambda: measure(servers, clients, flavor, rate, seconds, next(first_ids), url, queue)

        runs = [case("pika", bare_clients, BARE_QUEUE), case("eventbus", eventbus_clients)]
        bare_runs, eventbus_runs = in_rounds(runs, repeats=context.repeats)
    over = f"{rate:.0f}/s over {count:,} clients"
    return [
        Figure("latency", f"{BARE}, p50, {over}", events, [r.p50 for r in bare_runs], "ms", baseline=True),
        Figure("latency", f"{EVENTBUS}, p50, {over}", events, [r.p50 for r in eventbus_runs], "ms",
               versus=f"{BARE}, p50, {over}"),
        Figure("latency", f"{BARE}, p99, {over}", events, [r.p99 for r in bare_runs], "ms", baseline=True),
        Figure("latency", f"{EVENTBUS}, p99, {over}", events, [r.p99 for r in eventbus_runs], "ms",
               versus=f"{BARE}, p99, {over}", limit=P99_LIMIT_MS),
    ]


def measure(servers: EventServers, clients: LoadClient, flavor: str, rate: float, seconds: float, first_id: int,
            url: str, queue: str | None = None, to_all: Sequence[User] | None = None,
            **settings: str) -> Latencies:
    """One run: the producer sends (to the users of ``clients``, or each event to all of ``to_all``; with
    ``settings`` in its environment), the clients record, every event must arrive."""
    clients.ask("collect")
    with servers.send(flavor, clients, rate=rate, seconds=seconds, first_id=first_id, amqp_url=url,
                      queue=queue, to_all=to_all, **settings) as sender:
        sent = sender.read(seconds + SENDER_MARGIN)
    latencies = clients.ask(f"report {sent['sent']} {ARRIVAL_TIMEOUT}")["latencies"]
    if len(latencies) != sent["sent"]:
        raise BenchError(f"latency, {flavor}: {sent['sent']} events sent, {len(latencies)} received")
    if sent["seconds"] > seconds * 1.1:
        raise BenchError(f"latency, {flavor}: the producer fell behind ({sent['sent']} events in "
                         f"{sent['seconds']:.1f} s, not {seconds:.0f} s): the rate was not the one asked for")
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return Latencies(percentiles[49], percentiles[98], max(latencies), sent["late_ms"])


def _delete_queue(context: Context, url: str) -> None:
    broker = RabbitMQBroker(Settings(amqp_url=url, var_dir=context.work_dir / "var"))
    try:
        broker.delete_queue(BARE_QUEUE)
    finally:
        broker.close()
