"""What the servers of the event server benchmarks share, each in a process of its own.

A server listens on a free port of 127.0.0.1 (or ``--port``: a shard's, which
the sharding names), then prints one JSON line, ``{"port": P}``, on stdout;
it logs to stderr (the benchmark sends that to a file) and runs until
SIGTERM or SIGINT. With ``--profile FILE`` its IOLoop thread runs under
cProfile from the start, and the profile is written to FILE when it stops
(read it with ``python -m pstats FILE``).

Every server logs alike: INFO and up, but not Tornado's access log, which
would cost a line per request of the timed fan-outs and time the logging as
much as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

#: Connections the kernel holds for accept(): clients connect by the hundred at once.
BACKLOG = 4096

#: What a server script builds inside the running loop: its application, and what to await when it stops.
Built = tuple[tornado.web.Application, Callable[[], Awaitable[None]] | None]
Build = Callable[[argparse.Namespace], Awaitable[Built]]


def main(parser: argparse.ArgumentParser, build: Build, argv: list[str] | None = None) -> int:
    """Parse the command line, build the application, serve it until SIGTERM; 0 on a clean stop."""
    parser.add_argument("--profile", type=Path, help="run under cProfile and write the profile here on exit")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.WARNING)
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    try:
        asyncio.run(_serve(build, args))
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
    return 0


async def _serve(build: Build, args: argparse.Namespace) -> None:
    app, on_stop = await build(args)
    sockets = bind_sockets(args.port, "127.0.0.1", family=socket.AF_INET, backlog=BACKLOG)
    http = HTTPServer(app)
    http.add_sockets(sockets)
    print(json.dumps({"port": sockets[0].getsockname()[1]}), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    http.stop()
    if on_stop is not None:
        await on_stop()
