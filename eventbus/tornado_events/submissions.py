"""Requests a client submits (a message to send, a change to messages), sent to a processor, and its answers.

``submit`` publishes a request to ``message_sender`` with this server's
return queue; the processor's answers come back on that queue, several in
one message (``answers_event``: a batch of the processor answers in one
publish), and ``on_return`` hands each to its requester, once. A request that gets no
answer within ``request_timeout`` seconds is answered ``REQUEST_TIMEOUT``
and forgotten (a late answer is logged and dropped). The websocket's request
frames and ``POST /messages`` both submit here (to message_sender), and so do
the changes to messages (to message_actions); ``ask`` submits and waits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.ioloop import IOLoop

from eventbus.contracts import MESSAGE_SENDER, MessageRequest, MessageResponse
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

    async def ask(self, user: User, request: dict[str, Any], queue: str = MESSAGE_SENDER, **tags: Any) -> Any:
        """``submit`` a request and wait for its answer (``REQUEST_TIMED_OUT`` if none comes in time)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def respond(response: Any) -> None:
            if not answer.done():
                answer.set_result(response)

        await self.submit(user, request, respond, queue, **tags)
        return await answer

    async def submit(self, user: User, request: dict[str, Any], respond: Responder, queue: str = MESSAGE_SENDER,
                     **tags: Any) -> str:
        """Send a client's request to the processor of ``queue`` (message_sender, or another that answers on the
        return queue, as message_actions does); ``respond`` gets its answer, once.

        Without an answer within ``request_timeout`` seconds, ``respond`` gets
        a ``REQUEST_TIMEOUT`` error instead, and the request is forgotten (a
        late answer is logged and dropped).
        """
        request_id = str(uuid.uuid4())
        submitted = MessageRequest(request_id, user.id, request, self.return_queue, self.server_id,
                                   **tags)
        self.pending[request_id] = respond
        try:
            await self.publish(queue, submitted.event())
        except Exception:
            self.pending.pop(request_id, None)
            raise
        IOLoop.current().call_later(self.request_timeout, self._expire, request_id)
        return request_id

    def on_return(self, message: Any) -> None:
        """Invoked by the queue client for each message on the return queue: the answers of an ``answers_event``
        (``eventbus.contracts``), or one answer alone (what processors published before they answered in
        batches, which may still be in the queue after an upgrade). Each goes to its requester; ValueError,
        after the others, if one is no answer."""
        batch = message.get("answers") if isinstance(message, dict) else None
        items = batch if isinstance(batch, list) else [message]
        bad = 0
        for item in items:
            try:
                answer = MessageResponse.from_event(item)
            except ValueError:
                bad += 1
                continue
            responder = self.pending.pop(answer.request_id, None)
            if responder is None:
                logger.info("answer to request %s came after its requester left", answer.request_id)
                continue
            responder(answer.response)
        if bad:
            raise ValueError(f"{bad} of {len(items)} answer(s) are not objects with a 'request_id'")

    def expire_all(self) -> None:
        """Answer every request still waiting ``REQUEST_TIMEOUT`` (the server stops and its answers with it)."""
        for request_id in list(self.pending):
            self._expire(request_id)

    def _expire(self, request_id: str) -> None:
        respond = self.pending.pop(request_id, None)
        if respond is not None:
            logger.warning("request %s got no answer from its processor within %.0f s", request_id,
                           self.request_timeout)
            respond(dict(REQUEST_TIMED_OUT))
