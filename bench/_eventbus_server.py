"""The event server under test, in a process of its own: ``EventServer`` and ``make_app``, nothing else.

    python -m bench._eventbus_server [--profile FILE]

Its settings come from the ``EVENTBUS_*`` environment, as those of
``eventbus runtornado`` do. With ``EVENTBUS_BROKER=amqp`` it starts
listening only once it consumes ``notify_tornado``. It serves one URL more
than ``make_app``'s, for the benchmark's clients to know when their
requests are held: ``GET /bench/stats``, ``{"longpoll": N, "websocket": N,
"idle": N, "clients": N, "gc": {...}}``, the clients served by a held GET,
by a websocket, by nothing, and in all, and the garbage collector's passes
so far (``CollectorWatch``); ``?reset=1`` starts counting those again. See ``bench._serving`` for the rest.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import tornado.web

from bench import _serving
from eventbus.app import make_app
from eventbus.settings import Settings, set_settings
from eventbus.tornado_events.handlers import EventsHandler
from eventbus.tornado_events.server import EventServer
from eventbus.tornado_events.websocket import EventSocket

#: How long RabbitMQ may take to accept the server's consumer.
READY_TIMEOUT = 30.0


class CollectorWatch:
    """The garbage collector's passes in this process, timed through ``gc.callbacks``.

    A full pass (of the oldest generation) stops the IOLoop for as long as
    it walks every object the collector tracks: what ``bench.pauses`` is about.
    """

    def __init__(self) -> None:
        self.reset()
        self._started = (0.0, 0.0)
        gc.callbacks.append(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """Invoked by the garbage collector as a pass starts and as it stops."""
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        generation = info["generation"]
        self.passes[generation] += 1
        wall, cpu = time.perf_counter() - self._started[0], time.thread_time() - self._started[1]
        self.longest_ms[generation] = max(self.longest_ms[generation], wall * 1000)
        self.longest_cpu_ms[generation] = max(self.longest_cpu_ms[generation], cpu * 1000)

    def statistics(self) -> dict[str, Any]:
        """Passes by generation; the longest of each, in ms, as the loop waited, and of CPU time (without the
        time the process waited for a core, on a busy machine)."""
        return {"passes": self.passes, "longest_ms": [round(ms, 2) for ms in self.longest_ms],
                "longest_cpu_ms": [round(ms, 2) for ms in self.longest_cpu_ms]}

    def reset(self) -> None:
        self.passes = [0, 0, 0]
        self.longest_ms, self.longest_cpu_ms = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]


class StatsHandler(tornado.web.RequestHandler):
    """GET /bench/stats: how many clients each kind of listener serves, and the collector's passes."""

    def initialize(self, server: EventServer, collector: CollectorWatch) -> None:
        self.server = server
        self.collector = collector

    def get(self) -> None:
        listeners = [client.listener for client in self.server.registry]
        self.write({
            "longpoll": sum(isinstance(listener, EventsHandler) for listener in listeners),
            "websocket": sum(isinstance(listener, EventSocket) for listener in listeners),
            "idle": sum(listener is None for listener in listeners),
            "clients": len(listeners),
            "gc": self.collector.statistics(),
        })
        if self.get_query_argument("reset", ""):
            self.collector.reset()


async def build(args: argparse.Namespace) -> _serving.Built:
    settings = Settings.from_env()
    set_settings(settings)
    server = EventServer(settings)
    server.start()
    await server.queue_client.wait_ready(READY_TIMEOUT)
    stats = {"server": server, "collector": CollectorWatch()}
    return make_app(server, [(r"/bench/stats", StatsHandler, stats)]), server.shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._eventbus_server", description=__doc__.split("\n")[0])
    return _serving.main(parser, build, argv)


if __name__ == "__main__":
    sys.exit(main())
