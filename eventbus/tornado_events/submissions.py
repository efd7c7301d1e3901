"""Requests a client submits (a message to send), sent to the message_sender processor, and its answers.

``submit`` publishes a request to ``message_sender`` with this server's
return queue; the processor's answers come back on that queue, several in
one message (``answers_event``: a batch of the processor answers in one
publish), and ``on_return`` hands each to its requester, once. A request that gets no
answer within ``request_timeout`` seconds is answered ``REQUEST_TIMEOUT``
and forgotten (a late answer is logged and dropped). The websocket's request
frames and ``POST /messages`` both submit here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tornado.ioloop import IOLoop

from eventbus.tornado_events.notify import MESSAGE_SENDER_QUEUE, return_queue_name
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


@dataclass(frozen=True)
class Answer:
    """The processor's answer to one request, with the request's tags (``server_id``, ``socket_id``,
    ``req_id``: who asked)."""

    request_id: str
    response: Any
    tags: dict[str, Any] = field(default_factory=dict)

    def event(self) -> dict[str, Any]:
        return {"request_id": self.request_id, **self.tags, "response": self.response}

    @classmethod
    def from_event(cls, event: Any) -> Answer:
        """ValueError if ``event`` is no answer."""
        if not isinstance(event, dict) or not isinstance(event.get("request_id"), str):
            raise ValueError("an answer must be an object with a 'request_id'")
        tags = {k: v for k, v in event.items() if k not in ("request_id", "response")}
        return cls(event["request_id"], event.get("response"), tags)


def answers_event(answers: Sequence[Answer]) -> dict[str, Any]:
    """What a processor publishes to a return queue: several answers in one message."""
    return {"answers": [answer.event() for answer in answers]}


class Submissions:
    """The requests of one event process waiting for message_sender's answer. Use from the IOLoop only."""

    def __init__(self, publish: Publish, server_id: str) -> None:
        self.publish = publish
        self.server_id = server_id
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
                "return_queue": return_queue_name(self.server_id),
                "user_id": user.id, "request": request, **tags,
            })
        except Exception:
            self.pending.pop(request_id, None)
            raise
        IOLoop.current().call_later(self.request_timeout, self._expire, request_id)
        return request_id

    def on_return(self, message: Any) -> None:
        """Invoked by the queue client for each message on the return queue: ``answers_event``'s answers, or
        one answer alone (what processors published before they answered in batches, which may still be in
        the queue after an upgrade). Each goes to its requester; ValueError, after the others, if one is no
        answer."""
        batch = message.get("answers") if isinstance(message, dict) else None
        items = batch if isinstance(batch, list) else [message]
        bad = 0
        for item in items:
            try:
                answer = Answer.from_event(item)
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
            logger.warning("request %s got no answer from %s within %.0f s", request_id, MESSAGE_SENDER_QUEUE,
                           self.request_timeout)
            respond(dict(REQUEST_TIMED_OUT))
