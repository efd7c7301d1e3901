"""``message_sender``: messages that clients submitted through the Tornado server, processed in batches."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from eventbus.messages import MessageStore
from eventbus.processors.message_send import INTERNAL_CLIENT, Draft, MessageError, check_request, send_batch
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, PermanentError
from eventbus.queue import check_queue_name
from eventbus.tornado_events.submissions import Answer, answers_event
from eventbus.validation import excerpt

logger = logging.getLogger(__name__)

#: Errors the database raises for what a request holds (a number out of SQLite's range, a value of a type it
#: cannot store, a constraint the data breaks): trying again cannot help, so the sender is answered at once.
#: Other database errors (a locked or full database) are retried like any failure.
REQUEST_DATA_ERRORS = (OverflowError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.IntegrityError)
#: The answer to a request whose data the database refused.
CANNOT_STORE = {"result": "error", "msg": "The message cannot be stored: a value in it is out of range",
                "code": "BAD_REQUEST"}
#: The answer to a request from a user who does not exist or was deactivated since.
UNKNOWN_SENDER = {"result": "error", "msg": "Unknown sender", "code": "BAD_REQUEST"}
#: The tags of a request that its answer carries back, for the event server to find the requester.
ANSWER_TAGS = ("server_id", "socket_id", "req_id")


@dataclass
class Request:
    """One ``message_sender`` event, checked: its draft to send, or the answer it gets without one."""

    event: Event
    request_id: str
    user_id: int
    draft: Draft | None = None
    response: dict[str, Any] | None = None


@assign_queue("message_sender", tries=5, retry_delay=0.5, batch_size=100, batch_wait=0)
class MessageSenderWorker(LoopQueueProcessingWorker):
    """Renders, stores and delivers the submitted messages at hand, then answers each on its return queue.

    A batch is what has arrived (up to ``batch_size``; it never waits for more): rendered, stored in one
    transaction, its message events published with pipelined confirms, then answered with one publish per
    return queue. A sender is answered only once its message is stored and its event confirmed by the broker.

    Deduplicated by the request's id: a redelivered request (a worker killed mid-batch) is stored once and
    delivered once. The event's ``client`` (Zulip's client string, set by the Tornado handler that took the
    request) is stored with it.
    """

    def before_start(self) -> None:
        self.store = MessageStore(self.broker.settings.database)

    def consume_batch(self, events: list[Event]) -> None:
        requests = []
        for event in events:
            try:
                requests.append(self._request(event))
            except PermanentError as e:
                self.fail([event], e)
        drafts = [r for r in requests if r.draft is not None]
        try:
            self._send(drafts)
        except REQUEST_DATA_ERRORS:
            # One request holds what the database refuses, and the batch's transaction rolled back: each
            # alone, so that only that one is answered with the error.
            for request in drafts:
                self._send([request])
        self._answer(requests)

    def _request(self, event: Event) -> Request:
        """The event checked; PermanentError for one no processor can take."""
        request_id, request = event.get("request_id"), event.get("request")
        if not isinstance(request_id, str) or not isinstance(request, dict):
            raise PermanentError("a message_sender event needs a 'request_id' and a 'request' object")
        user_id = event.get("user_id")
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise PermanentError("a message_sender event needs an integer 'user_id'")
        return_queue = event.get("return_queue")
        if return_queue is not None:
            try:
                check_queue_name(return_queue)
            except ValueError as e:
                raise PermanentError(f"a message_sender event's 'return_queue': {e}") from None
        checked = Request(event, request_id, user_id)
        sender = self.store.users.get(user_id)
        if sender is None or not sender.is_active:
            checked.response = dict(UNKNOWN_SENDER)
            return checked
        client = event.get("client")
        try:
            checked.draft = check_request(self.store, sender, request,
                                          client if isinstance(client, str) and client else INTERNAL_CLIENT)
        except MessageError as e:
            checked.response = e.response()
        return checked

    def _send(self, requests: list[Request]) -> None:
        """Send the drafts of ``requests`` as one batch and set their answers; a request whose data the database
        refuses is answered so when it is alone (in a batch, the error goes to the caller)."""
        try:
            messages = send_batch(self.broker, self.store, [(r.draft, r.request_id) for r in requests
                                                            if r.draft is not None])
        except REQUEST_DATA_ERRORS as e:
            if len(requests) > 1:
                raise
            logger.warning("request %s of user %d cannot be stored: %s: %s", requests[0].request_id,
                           requests[0].user_id, type(e).__name__, excerpt(str(e)))
            requests[0].response = dict(CANNOT_STORE)
            return
        for request, message in zip(requests, messages, strict=True):
            request.response = {"result": "success", "msg": "", "id": message.id}

    def _answer(self, requests: list[Request]) -> None:
        """One publish per return queue, holding the answers of that queue's requests."""
        by_queue: dict[str, list[Answer]] = {}
        for request in requests:
            return_queue = request.event.get("return_queue")
            if return_queue and request.response is not None:
                tags = {k: request.event[k] for k in ANSWER_TAGS if k in request.event}
                by_queue.setdefault(return_queue, []).append(Answer(request.request_id, request.response, tags))
        for return_queue, answers in by_queue.items():
            self.broker.publish(return_queue, answers_event(answers))
