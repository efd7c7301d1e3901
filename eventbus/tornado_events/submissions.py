"""Requests a client submits (a message to send), sent to the message_sender processor, and its answers.

``submit`` publishes a request to ``message_sender`` with this server's
return queue; the processor's answer comes back on that queue
(``on_return``) and goes to the requester, once. A request that gets no
answer within ``request_timeout`` seconds is answered ``REQUEST_TIMEOUT``
and forgotten (a late answer is logged and dropped). The websocket's request
frames and ``POST /messages`` both submit here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.ioloop import IOLoop

from eventbus.tornado_events.notify import MESSAGE_SENDER_QUEUE
from eventbus.users import User

logger = logging.getLogger(__name__)

#: How long a submitted request waits for the message_sender processor's answer.
REQUEST_TIMEOUT_SECONDS = 30.0
#: The answer a request gets when that time is up.
REQUEST_TIMED_OUT = {"result": "error", "code": "REQUEST_TIMEOUT",
                     "msg": "The message was queued but not processed in time"}

#: Gets the answer to one request.
Responder = Callable[[Any], None]
#: publish(queue, event): returns once the broker has the event.
Publish = Callable[[str, Any], Awaitable[Any]]


class Submissions:
    """The requests of one event process waiting for message_sender's answer. Use from the IOLoop only."""

    def __init__(self, publish: Publish, server_id: str, return_queue: str) -> None:
        self.publish = publish
        self.server_id = server_id
        self.return_queue = return_queue
        self.pending: dict[str, Responder] = {}
        self.request_timeout = REQUEST_TIMEOUT_SECONDS

    def __len__(self) -> int:
        return len(self.pending)

    async def submit(self, user: User, request: dict[str, Any], respond: Responder, **tags: Any) -> str:
        """Send a client's request to the message_sender processor; ``respond`` gets its answer, once.

        Without an answer within ``request_timeout`` seconds, ``respond`` gets
        a ``REQUEST_TIMEOUT`` error instead, and the request is forgotten (a
        late answer is logged and dropped).
        """
        request_id = str(uuid.uuid4())
        self.pending[request_id] = respond
        try:
            await self.publish(MESSAGE_SENDER_QUEUE, {
                "request_id": request_id, "server_id": self.server_id,
                "return_queue": self.return_queue,
                "user_id": user.id, "request": request, **tags,
            })
        except Exception:
            self.pending.pop(request_id, None)
            raise
        IOLoop.current().call_later(self.request_timeout, self._expire, request_id)
        return request_id

    def on_return(self, message: Any) -> None:
        """Invoked by the queue client for each answer a processor put on the return queue."""
        if not isinstance(message, dict) or not isinstance(message.get("request_id"), str):
            raise ValueError("a return message must be an object with a 'request_id'")
        responder = self.pending.pop(message["request_id"], None)
        if responder is None:
            logger.info("answer to request %s came after its requester left", message["request_id"])
            return
        responder(message.get("response"))

    def expire_all(self) -> None:
        """Answer every request still waiting ``REQUEST_TIMEOUT`` (the server stops and its answers with it)."""
        for request_id in list(self.pending):
            self._expire(request_id)

    def _expire(self, request_id: str) -> None:
        respond = self.pending.pop(request_id, None)
        if respond is not None:
            logger.warning("request %s got no answer from %s within %.0f s", request_id, MESSAGE_SENDER_QUEUE,
                           self.request_timeout)
            respond(dict(REQUEST_TIMED_OUT))
