"""Pauses (issue 10): a live long-poll client's latency while 2,000 idle queues fill, against the client alone.

Each run starts a fresh event server on the run's RabbitMQ node, with
``IDLE`` queues registered, one per user, by clients that never poll them
(``bench._load_client idle``), and one live long-polling client of another
user, in a process of its own. A producer (``bench._sender --to-all``)
sends ``RATE`` message events a second for ``SECONDS`` seconds, each to
every one of these users, as to the subscribers of one stream: by the end
each idle queue holds ``RATE * SECONDS`` events, ``IDLE`` times as many in
all. The live client records each event's latency, from ``send_event`` to
its answer decoded (see ``bench.latency``); a run passes only if every
event arrived, and gives its p50, p99 and longest latency, and the longest
pass of the server's garbage collector (``GET /bench/stats``): that one is
the server's own, where the latencies also take in how the shared machine
schedules every process. The server is stopped after each run.

- The baseline: the same server, producer and live client, the events
  addressed to the same users, none of whom but the live one has a queue:
  the events' way without the queues to fill.
- eventbus with the idle queues. Before issue 10, every queued event was
  an object the garbage collector tracked: its full passes over millions
  of them stalled the server for as long (p99 196 ms, max 460 ms, in the
  issue's measurement).

Target: the live client's p99 under 20 ms beside the idle queues.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bench import register
from bench._processes import EventServers
from bench.harness import Context, Figure, in_rounds
from bench.latency import Latencies, measure
from eventbus.users import User

logger = logging.getLogger(__name__)

IDLE = 2_000
QUICK_IDLE = 200
#: Each event goes to IDLE + 1 clients, 2 to 3 ms of the server's CPU: a rate that leaves it room on a busy machine
#: (at 50 a second, a run where other work took the cores fell seconds behind).
RATE = 25.0
SECONDS = 20.0
QUICK_SECONDS = 1.0
#: Issue 10's target for the 99th percentile beside the idle queues.
P99_LIMIT_MS = 20.0

ALONE = "live long-poll, no idle queue"
BESIDE = "live long-poll beside {idle:,} idle queues"


@register("pauses", "a live long-poll client's latency while 2,000 idle queues fill, against it alone (issue 10)")
def pauses(context: Context) -> list[Figure]:
    idle_count = context.size(IDLE, QUICK_IDLE)
    seconds = QUICK_SECONDS if context.quick else SECONDS
    events = int(RATE * seconds)
    servers = EventServers(context)
    live, *idle = servers.users(idle_count + 1)
    first_ids = itertools.count(2_000_000, events)
    runs = [_case(servers, context.amqp_url, live, idle, [], seconds, first_ids),
            _case(servers, context.amqp_url, live, idle, idle, seconds, first_ids)]
    alone, beside = in_rounds(runs, repeats=context.repeats)
    case = BESIDE.format(idle=idle_count)
    over = f"{RATE:.0f}/s to {idle_count + 1:,} users"
    return [
        figure
        for name, limit in (("p50", None), ("p99", P99_LIMIT_MS), ("max", None), ("longest GC pass", None))
        for figure in (
            Figure("pauses", f"{ALONE}, {name}, {over}", events, [r.figure(name) for r in alone], "ms",
                   baseline=True),
            Figure("pauses", f"{case}, {name}, {over}", events, [r.figure(name) for r in beside], "ms",
                   versus=f"{ALONE}, {name}, {over}", limit=limit),
        )
    ]


@dataclass(frozen=True)
class Run:
    """One run: the live client's latencies, and the server's longest garbage collection, in ms."""

    latencies: Latencies
    longest_gc: float

    def figure(self, name: str) -> float:
        return self.longest_gc if name == "longest GC pass" else float(getattr(self.latencies, name))


def _case(servers: EventServers, url: str, live: User, everyone: Sequence[User], idle: Sequence[User],
          seconds: float, first_ids: Iterator[int]) -> Callable[[], Run]:
    """A run on a fresh server: ``idle`` queues registered, then the live client, then the events."""

    def run() -> Run:
        name = f"pauses-{len(idle)}-idle"
        with ExitStack() as stack:
            server = stack.enter_context(servers.start(name, url))
            if idle:
                stack.enter_context(servers.clients("idle", "eventbus", server, idle, f"{name}-idle"))
            clients = stack.enter_context(servers.clients("live", "eventbus", server, [live], f"{name}-live"))
            server.stats(reset=True)  # the collections while the events flow, not while clients connected
            latencies = measure(servers, clients, "eventbus", RATE, seconds, next(first_ids), url,
                                to_all=[live, *everyone])
            collector = server.stats()["gc"]
        logger.info("  %d idle queues: p50 %.2f ms, p99 %.2f ms, max %.1f ms; garbage collections by generation "
                    "%s, the longest %s ms (CPU: %s ms)", len(idle), latencies.p50, latencies.p99, latencies.max,
                    collector["passes"], collector["longest_ms"], collector["longest_cpu_ms"])
        return Run(latencies, max(collector["longest_ms"]))

    return run
