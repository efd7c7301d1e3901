"""python-socketio's server, for the fan-out comparison, in a process of its own.

    python -m bench._socketio_server [--profile FILE]

``socketio.AsyncServer`` on Tornado (``async_mode="tornado"``, the same HTTP
server as eventbus's): a client connects with ``auth={"user": N}`` and
joins the room ``"N"``. ``POST /trigger`` with a notice, ``{"event": {...},
"users": [ids]}``, emits the event once to the users' rooms (``emit(to=[...])``,
which encodes the packet once for all). Needs ``pip install python-socketio
aiohttp``. See ``bench._serving`` for the rest.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import socketio
import tornado.web
import ujson

from bench import _serving


class Trigger(tornado.web.RequestHandler):
    """POST /trigger with a notice: its event to its users' rooms."""

    def initialize(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio

    async def post(self) -> None:
        notice = ujson.loads(self.request.body)
        await self.sio.emit("event", notice["event"], to=[str(user) for user in notice["users"]])
        self.finish()


async def build(args: argparse.Namespace) -> _serving.Built:
    sio = socketio.AsyncServer(async_mode="tornado")

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        await sio.enter_room(sid, str(auth["user"]))

    sio.on("connect", connect)
    app = tornado.web.Application([
        (r"/socket.io/", socketio.get_tornado_handler(sio)),
        (r"/trigger", Trigger, {"sio": sio}),
    ])
    return app, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._socketio_server", description=__doc__.split("\n")[0])
    return _serving.main(parser, build, argv)


if __name__ == "__main__":
    sys.exit(main())
