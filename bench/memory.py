"""Memory (issue 4): resident memory per idle long-polling client at 5,000, against bare Tornado.

Each run starts a fresh server process and warms it with ``WARM_CLIENTS``
clients of other users, which hold a GET and leave: every code path has
run once, and its first allocations are not counted. Then it reads the
server's resident memory (VmRSS in ``/proc/<pid>/status``), connects
``CLIENTS`` long-polling clients, one per user, waits until the server
holds all their GETs, reads it again, and divides the difference by
``CLIENTS``. The server is stopped after each run.

- eventbus, on the run's RabbitMQ node as in production: each client
  registers its queue (``POST /api/v1/register``, HTTP Basic) and holds
  ``GET /api/v1/events``; what the server keeps per client is in the
  figure: the queue, the held request and its heartbeat timer, the
  connection, the cached credentials.
- The baseline: bare Tornado holding as many ``GET /poll``.

Target: eventbus at most 1.25x bare Tornado's memory per client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from bench import register
from bench._processes import EventServers, Server
from bench.harness import Context, Figure, in_rounds
from eventbus.users import User

logger = logging.getLogger(__name__)

CLIENTS = 5_000
QUICK_CLIENTS = 200
WARM_CLIENTS = 50
#: eventbus may keep at most 1.25x what bare Tornado keeps per held GET.
TARGET_RATIO = 1.25

BARE = "bare Tornado, held GET"


@register("memory", "resident memory per idle long-polling client at 5,000, against bare Tornado (issue 4)")
def memory(context: Context) -> list[Figure]:
    count = context.size(CLIENTS, QUICK_CLIENTS)
    servers = EventServers(context)
    users = servers.users(count + WARM_CLIENTS)
    clients, warm = users[:count], users[count:]
    url = context.amqp_url
    runs = [_case(servers, "bare", servers.start_bare, clients, warm),
            _case(servers, "eventbus", lambda name: servers.start(name, url), clients, warm)]
    bare, eventbus = in_rounds(runs, repeats=context.repeats)
    over = f"{count:,} clients"
    return [
        Figure("memory", f"{BARE}, {over}", count, bare, "KiB", baseline=True),
        Figure("memory", f"eventbus, registered queue and held GET, {over}", count, eventbus, "KiB",
               versus=f"{BARE}, {over}", limit_ratio=TARGET_RATIO),
    ]


def _case(servers: EventServers, flavor: str, start: Callable[[str], Server], clients: Sequence[User],
          warm: Sequence[User]) -> Callable[[], float]:
    def run() -> float:
        name = f"memory-{flavor}"
        with start(name) as server:
            with servers.clients("longpoll", flavor, server, warm, f"{name}-warm"):
                pass
            before = server.rss_kib()
            with servers.clients("longpoll", flavor, server, clients, f"{name}-clients"):
                after = server.rss_kib()
        per_client = (after - before) / len(clients)
        logger.info("  %s: %d KiB before, %d KiB with %d clients: %.1f KiB each",
                    flavor, before, after, len(clients), per_client)
        return per_client

    return run
