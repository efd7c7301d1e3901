"""The baseline of the event server benchmarks: bare Tornado holding requests and websockets, in a process of its own.

    python -m bench._bare_server [--amqp-queue QUEUE] [--profile FILE]

It does the least an event server must: hold GETs until there is an event,
and keep websockets open; no users, no queues, no ids, no filters.

``GET /poll``
    held until the next trigger.
``GET /socket?user=N`` (websocket)
    user N's socket (one per user), any origin.
``POST /trigger``, the body one event's JSON
    every held GET is answered, and every socket sent, one body built once
    around it (``{"result": "success", "msg": "", "events": [EVENT]}``,
    ``{"type": "events", "events": [EVENT]}``), ``finish`` per request and
    ``write_message`` per socket.
``GET /bench/stats``
    ``{"longpoll": held GETs, "websocket": open sockets}``.

With ``--amqp-queue`` (the broker's URL in ``EVENTBUS_AMQP_URL``) it also
consumes notices, ``{"event": {...}, "users": [ids]}`` as on
``notify_tornado``, from that durable queue through pika's
TornadoConnection (prefetch 100, an ack per notice after sending) and sends
each event to its users' sockets: the least a server fed by RabbitMQ does.
See ``bench._serving`` for the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import pika
import pika.channel
import pika.spec
import tornado.web
import tornado.websocket
import ujson
from pika.adapters.tornado_connection import TornadoConnection
from tornado.ioloop import IOLoop

from bench import _serving

logger = logging.getLogger(__name__)

#: Unacked notices RabbitMQ sends ahead: eventbus's default prefetch.
PREFETCH = 100
READY_TIMEOUT = 30.0


class Clients:
    """The held GETs and open sockets."""

    def __init__(self) -> None:
        self.held: set[HeldRequest] = set()
        self.sockets: dict[int, Socket] = {}

    def answer(self, event: bytes) -> None:
        """Answer every held GET and send every socket ``event``."""
        poll_body = b'{"result":"success","msg":"","events":[' + event + b"]}"
        socket_body = b'{"type":"events","events":[' + event + b"]}"
        held, self.held = self.held, set()
        for request in held:
            request.answer(poll_body)
        for socket in self.sockets.values():
            socket.write_message(socket_body)

    def send(self, users: list[int], frame: bytes) -> None:
        for user in users:
            socket = self.sockets.get(user)
            if socket is not None:
                socket.write_message(frame)


class HeldRequest(tornado.web.RequestHandler):
    """GET /poll: held until answered, as in Tornado's chat demo."""

    def initialize(self, clients: Clients) -> None:
        self.clients = clients
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def get(self) -> None:
        self.clients.held.add(self)
        await self.done

    def answer(self, body: bytes) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(body)
        self.done.set_result(None)

    def on_connection_close(self) -> None:
        """Invoked by Tornado when the client goes away."""
        self.clients.held.discard(self)
        if not self.done.done():
            self.done.set_result(None)


class Socket(tornado.websocket.WebSocketHandler):
    """GET /socket?user=N: user N's websocket."""

    def initialize(self, clients: Clients) -> None:
        self.clients = clients
        self.user = -1

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, *args: str, **kwargs: str) -> None:
        self.user = int(self.get_argument("user"))
        self.clients.sockets[self.user] = self

    def on_close(self) -> None:
        if self.clients.sockets.get(self.user) is self:
            del self.clients.sockets[self.user]


class Trigger(tornado.web.RequestHandler):
    """POST /trigger with an event's JSON: every client gets it."""

    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    def post(self) -> None:
        self.clients.answer(self.request.body)
        self.finish()


class Stats(tornado.web.RequestHandler):
    def initialize(self, clients: Clients) -> None:
        self.clients = clients

    def get(self) -> None:
        self.write({"longpoll": len(self.clients.held), "websocket": len(self.clients.sockets)})


class Relay:
    """Notices from a RabbitMQ queue to the sockets of their users; callbacks invoked by pika in the IOLoop."""

    def __init__(self, url: str, queue: str, clients: Clients) -> None:
        self.queue = queue
        self.clients = clients
        self.consuming: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connection = TornadoConnection(pika.URLParameters(url), on_open_callback=self.on_open,
                                            on_open_error_callback=self.on_failed, custom_ioloop=IOLoop.current())

    def on_failed(self, _connection: Any, error: BaseException) -> None:
        if not self.consuming.done():
            self.consuming.set_exception(RuntimeError(f"cannot connect to RabbitMQ: {error}"))

    def on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self.on_channel)

    def on_channel(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _frame: channel.queue_declare(
            self.queue, durable=True, callback=self.on_declared))

    def on_declared(self, _frame: Any) -> None:
        self.channel.basic_consume(self.queue, self.on_message, callback=lambda _frame: self.consuming.set_result(None))

    def on_message(self, channel: pika.channel.Channel, method: pika.spec.Basic.Deliver, _properties: Any,
                   body: bytes) -> None:
        notice = ujson.loads(body)
        frame = ujson.dumps({"type": "events", "events": [notice["event"]]}, ensure_ascii=False).encode()
        self.clients.send(notice["users"], frame)
        channel.basic_ack(method.delivery_tag)

    async def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


async def build(args: argparse.Namespace) -> _serving.Built:
    clients = Clients()
    app = tornado.web.Application([
        (r"/poll", HeldRequest, {"clients": clients}),
        (r"/socket", Socket, {"clients": clients}),
        (r"/trigger", Trigger, {"clients": clients}),
        (r"/bench/stats", Stats, {"clients": clients}),
    ])
    if args.amqp_queue is None:
        return app, None
    relay = Relay(os.environ["EVENTBUS_AMQP_URL"], args.amqp_queue, clients)
    await asyncio.wait_for(relay.consuming, READY_TIMEOUT)
    logger.info("consuming %s", args.amqp_queue)
    return app, relay.close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._bare_server", description=__doc__.split("\n")[0])
    parser.add_argument("--amqp-queue", help="also send the notices of this RabbitMQ queue to the sockets")
    return _serving.main(parser, build, argv)


if __name__ == "__main__":
    sys.exit(main())
