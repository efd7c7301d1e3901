"""The event server under test, in a process of its own: ``EventServer`` and ``make_app``, nothing else.

    python -m bench._eventbus_server [--profile FILE]

Its settings come from the ``EVENTBUS_*`` environment, as those of
``eventbus runtornado`` do. With ``EVENTBUS_BROKER=amqp`` it starts
listening only once it consumes ``notify_tornado``. It serves one URL more
than ``make_app``'s, for the benchmark's clients to know when their
requests are held: ``GET /bench/stats``, ``{"longpoll": N, "websocket": N,
"clients": N}``, the clients served by a held GET, by a websocket, and in
all. See ``bench._serving`` for the rest.
"""

from __future__ import annotations

import argparse
import sys

import tornado.web

from bench import _serving
from eventbus.app import make_app
from eventbus.settings import Settings, set_settings
from eventbus.tornado_events.handlers import EventsHandler
from eventbus.tornado_events.server import EventServer
from eventbus.tornado_events.websocket import EventSocket

#: How long RabbitMQ may take to accept the server's consumer.
READY_TIMEOUT = 30.0


class StatsHandler(tornado.web.RequestHandler):
    """GET /bench/stats: how many clients each kind of listener serves."""

    def initialize(self, server: EventServer) -> None:
        self.server = server

    def get(self) -> None:
        listeners = [client.listener for client in self.server.registry]
        self.write({
            "longpoll": sum(isinstance(listener, EventsHandler) for listener in listeners),
            "websocket": sum(isinstance(listener, EventSocket) for listener in listeners),
            "clients": len(listeners),
        })


async def build(args: argparse.Namespace) -> _serving.Built:
    settings = Settings.from_env()
    set_settings(settings)
    server = EventServer(settings)
    server.start()
    await server.queue_client.wait_ready(READY_TIMEOUT)
    return make_app(server, [(r"/bench/stats", StatsHandler, {"server": server})]), server.shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._eventbus_server", description=__doc__.split("\n")[0])
    return _serving.main(parser, build, argv)


if __name__ == "__main__":
    sys.exit(main())
