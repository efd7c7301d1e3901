"""``/json/events/websocket``: events pushed as they come, and message submission.

Authenticated by the session cookie, from a page of this server's own origin.
Frames are JSON objects with a ``type``:

client to server
  ``{"type": "register", ...register parameters}``  a new queue, served by this socket
  ``{"type": "attach", "queue_id": Q, "last_event_id": N}``  resume a queue of the user's
  ``{"type": "ack", "last_event_id": N}``  the client has every event up to N
  ``{"type": "request", "req_id": R, "request": {...}}``  submit a message

server to client
  ``{"type": "registered", "queue_id": Q, "last_event_id": -1}`` / ``{"type": "attached", "queue_id": Q}``
  ``{"type": "events", "events": [...]}``  unacknowledged events (again after a reconnect)
  ``{"type": "ack", "req_id": R}`` at once, then ``{"type": "response", "req_id": R, "response": {...}}``
  ``{"type": "detached", "queue_id": Q}``  another connection took over the queue
  ``{"type": "error", "code": C, "msg": M}``

With several shards a user's queues live on the shard that owns the user:
a register frame for a user of another shard, or an attach frame for a
queue of another shard, is answered ``{"type": "error", "code":
"WRONG_SHARD", "shard": N}``, and the client opens its socket again with
``?shard=N`` (or ``?queue_id=Q``), which nginx routes to that shard.

Opening a socket, register frames and request frames count against their
user's rate limits, as the HTTP endpoints do: over a limit, the opening is
answered 429 and a frame an error frame with code ``RATE_LIMIT_HIT`` and
``retry-after`` seconds (and the request's ``req_id``). Attach and ack frames
are free, as long-poll re-polls are.

A socket with more than ``EVENTBUS_WEBSOCKET_BUFFER_BYTES`` unsent is closed
with code 4008; its queue stays, so the client reconnects and resumes. A
socket whose session ends (logout, deactivation) is closed with code 4401:
the user must log in again.

The socket gets what it uses through ``initialize`` (wired in
``eventbus.app.make_app``): the event server (the client queues), the
``Authenticator``, the ``RateLimits``, ``Submissions`` for its request frames
and the ``OpenSockets`` registry it adds itself to while open.
"""

from __future__ import annotations

import logging
import struct
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.iostream import StreamClosedError

from eventbus import codec
from eventbus.contracts import is_req_id
from eventbus.database import is_unavailable
from eventbus.errors import EventEncodingError
from eventbus.sessions import session_key
from eventbus.tornado_events import rate_limit
from eventbus.tornado_events.auth import SESSION_COOKIE, Authenticator
from eventbus.tornado_events.event_queue import ClientDescriptor, QueuedEvent
from eventbus.tornado_events.handlers import (
    WEB_CLIENT,
    ApiError,
    api_error_body,
    bad_queue,
    bad_request,
    check_last_event_id,
    check_rate_limit,
    database_unavailable,
    register_client,
    wrong_shard,
)
from eventbus.tornado_events.rate_limit import RateLimits
from eventbus.tornado_events.sockets import OpenSockets
from eventbus.tornado_events.submissions import Submissions
from eventbus.users import User
from eventbus.validation import EXCERPT_CHARS, excerpt

if TYPE_CHECKING:
    from eventbus.tornado_events.server import EventServer

logger = logging.getLogger(__name__)

#: Close code for a client that does not read fast enough (4000-4999 are the application's).
SLOW_CONSUMER = 4008
#: The per-user rate limit each frame type counts against; the others are free.
FRAME_RATE_LIMITS = {"register": rate_limit.REGISTER, "request": rate_limit.API}


class EventSocket(tornado.websocket.WebSocketHandler):
    """One browser's websocket; a Listener of the client queue it registered or attached."""

    server: EventServer
    user: User
    session_key = ""  # of the session it was opened with: logout closes it
    wants_heartbeats = False  # pings keep a socket alive

    def initialize(self, server: EventServer, authenticator: Authenticator, rate_limits: RateLimits,
                   submissions: Submissions, sockets: OpenSockets) -> None:
        self.server = server
        self.authenticator = authenticator
        self.rate_limits = rate_limits
        self.submissions = submissions
        self.sockets = sockets
        self.socket_id = uuid.uuid4().hex
        self.client: ClientDescriptor | None = None
        self.unsent = 0  # bytes handed to Tornado and not yet written to the socket

    def check_origin(self, origin: str) -> bool:
        """Only pages of this server may open the socket (the session cookie would go along otherwise)."""
        return urllib.parse.urlsplit(origin).netloc == self.request.host

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            user = await self._session_user()
            if user is None:
                raise ApiError(401, "UNAUTHORIZED", "Not logged in")
            check_rate_limit(self.rate_limits, rate_limit.API, user)  # opening a socket is a request as any other
        except ApiError as error:
            self.set_status(error.status_code)
            self.set_header("Content-Type", "application/json")
            self.finish(codec.encode(api_error_body(self, error)))
            return
        self.user = user
        self.session_key = session_key(self.get_cookie(SESSION_COOKIE, ""))
        await super().get(*args, **kwargs)

    async def _session_user(self) -> User | None:
        """The user of the request's session; DATABASE_UNAVAILABLE while the database cannot say."""
        try:
            return await self.authenticator.session_user(self)
        except Exception as error:
            if is_unavailable(error):  # logged once by the database's Outage
                raise database_unavailable() from None
            raise

    def open(self, *args: str, **kwargs: str) -> None:
        # Tornado leaves Nagle's algorithm on once the handshake's answer is written: a request's response frame,
        # written while its ack frame is not acknowledged yet, then waits for the client's delayed ACK (40 ms).
        self.set_nodelay(True)
        self.sockets.add(self)

    def on_close(self) -> None:
        self.sockets.remove(self)
        if self.client is not None:
            self.client.detach(self)

    # -- frames from the client ---------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        try:
            frame = codec.decode(message)
            if not isinstance(frame, dict):
                raise bad_request("a frame must be a JSON object")
            handler = getattr(self, f"_on_{frame.get('type')}", None)
            if handler is None:
                raise bad_request(f"unknown frame type {excerpt(frame.get('type'))!r}")
            self._check_rate_limit(frame)
            await handler(frame)
        except EventEncodingError as e:
            self._send({"type": "error", "code": "BAD_REQUEST", "msg": f"a frame must be JSON: {e}"})
        except ApiError as e:
            self._send({"type": "error", "code": e.code, "msg": e.msg, **e.extra})

    def _check_rate_limit(self, frame: dict[str, Any]) -> None:
        category = FRAME_RATE_LIMITS.get(frame["type"])
        if category is not None:
            check_rate_limit(self.rate_limits, category, self.user,
                             **({"req_id": frame.get("req_id")} if frame["type"] == "request" else {}))

    async def _on_register(self, frame: dict[str, Any]) -> None:
        owner = self.server.sharding.shard_for(self.user.id)
        if owner != self.server.shard:
            raise wrong_shard(owner, "Your event queue")
        client = register_client(frame, self.server, self.user)
        self._send({"type": "registered", "queue_id": client.queue_id, "last_event_id": -1})
        self._serve(client)

    async def _on_attach(self, frame: dict[str, Any]) -> None:
        queue_id = str(frame.get("queue_id"))
        shard = self.server.sharding.shard_of_queue(queue_id)
        if shard is not None and shard != self.server.shard:
            raise wrong_shard(shard, "This event queue")
        client = self.server.registry.get(queue_id, self.user.id)
        if client is None:
            raise bad_queue(queue_id)
        self._prune(client, frame)
        self._send({"type": "attached", "queue_id": client.queue_id})
        self._serve(client)

    async def _on_ack(self, frame: dict[str, Any]) -> None:
        if self.client is None:
            raise bad_request("no queue to acknowledge: register or attach first")
        self._prune(self.client, frame)

    async def _on_request(self, frame: dict[str, Any]) -> None:
        req_id, request = frame.get("req_id"), frame.get("request")
        if not is_req_id(req_id) or not isinstance(request, dict):
            raise bad_request(f"a request frame needs a 'req_id' (an integer, or a string of at most {EXCERPT_CHARS} "
                              "characters) and a 'request' object")
        self._send({"type": "ack", "req_id": req_id})

        def respond(response: Any) -> None:
            if self.ws_connection is not None:
                self._send({"type": "response", "req_id": req_id, "response": response})

        await self.submissions.submit(self.user, request, respond, socket_id=self.socket_id, req_id=req_id,
                                      client=WEB_CLIENT)

    def _prune(self, client: ClientDescriptor, frame: dict[str, Any]) -> None:
        client.queue.prune(check_last_event_id(frame.get("last_event_id", -1)))

    def _serve(self, client: ClientDescriptor) -> None:
        if self.client is not None and self.client is not client:
            self.client.detach(self)
        self.client = client
        client.attach(self)
        pending = client.pending()
        if pending:
            self.deliver(client, pending)

    # -- Listener -------------------------------------------------------------------

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        self._write(b'{"type":"events","events":[' + b",".join(q.to_json() for q in events) + b"]}")

    def drop(self, client: ClientDescriptor, reason: str) -> None:
        self.client = None
        self._send({"type": "error", "code": "BAD_EVENT_QUEUE_ID", "msg": f"Bad event queue ID: {client.queue_id} "
                    f"({reason})", "queue_id": client.queue_id})

    def replace(self, client: ClientDescriptor) -> None:
        self.client = None
        self._send({"type": "detached", "queue_id": client.queue_id})

    # -- writing --------------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        self._write(codec.encode(frame))

    def get_compression_options(self) -> None:
        """No permessage-deflate: ``_write`` frames messages itself, uncompressed."""
        return None

    def _write(self, data: bytes) -> None:
        """Send one text message, framed here and written to the stream directly.

        Tornado's ``write_message`` wraps each write in a coroutine and a task
        (to turn the stream's errors into its own), which was a third of a fan-out's
        cost per socket; the frame itself is a header and the bytes. Only writes
        the stream could not finish at once count as unsent, until they finish.
        """
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return
        size = len(data)
        if self.unsent + size > self.server.settings.websocket_buffer_bytes:
            logger.warning("websocket of user %d: over %d bytes unsent; closing it as a slow consumer",
                           self.user.id, self.server.settings.websocket_buffer_bytes)
            self.sockets.slow_consumers_closed += 1
            self.close(SLOW_CONSUMER, "slow consumer: too much unsent data; reconnect and resume")
            return
        try:
            written = connection.stream.write(text_frame_header(size) + data)
        except StreamClosedError:
            return  # on_close follows
        if not written.done():
            self.unsent += size
            written.add_done_callback(lambda _future: self._written(size))

    def _written(self, size: int) -> None:
        self.unsent -= size


def text_frame_header(size: int) -> bytes:
    """The header of a final, unmasked text frame of ``size`` bytes (RFC 6455, section 5.2)."""
    if size < 126:
        return bytes((0x81, size))
    if size <= 0xFFFF:
        return _MEDIUM.pack(0x81, 126, size)
    return _LARGE.pack(0x81, 127, size)


_MEDIUM = struct.Struct("!BBH")
_LARGE = struct.Struct("!BBQ")
