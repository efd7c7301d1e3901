"""``message_sender``: messages that clients submitted through the Tornado server, processed in batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventbus.contracts import MESSAGE_SENDER, MessageRequest, MessageResponse, answers_event
from eventbus.database import REQUEST_DATA_ERRORS
from eventbus.messages import MessageStore, StoredMessage
from eventbus.processors.markdown import mentioned_names
from eventbus.processors.message_send import INTERNAL_CLIENT, Draft, MessageError, check_request, send_batch
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker
from eventbus.validation import excerpt

logger = logging.getLogger(__name__)

# REQUEST_DATA_ERRORS (eventbus.database): the database refuses what a request holds; trying again cannot help,
# so the sender is answered at once. Other database errors (a locked, full or unreachable one) are retried.

#: The answer to a request whose data the database refused.
CANNOT_STORE = {"result": "error", "msg": "The message cannot be stored: a value in it is out of range",
                "code": "BAD_REQUEST"}
#: The answer to a request from a user who does not exist or was deactivated since.
UNKNOWN_SENDER = {"result": "error", "msg": "Unknown sender", "code": "BAD_REQUEST"}


@dataclass
class Request:
    """One ``message_sender`` event, checked: its draft to send, or the answer it gets without one."""

    submitted: MessageRequest
    event: Event  # as it came: what fail() takes back
    draft: Draft | None = None
    response: dict[str, Any] | None = None


@assign_queue(MESSAGE_SENDER, tries=5, retry_delay=0.5, batch_size=100, batch_wait=0)
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
        with self.store.remembering():  # a batch's requests come from a few senders to a few streams
            self._consume(events)

    def _consume(self, events: list[Event]) -> None:
        parsed = self.parse(events, MessageRequest.from_event)
        # The senders and the users their messages mention, in two reads for the batch instead of one each.
        contents = [s.request.get("content") for _, s in parsed]
        self.store.users.read_ahead(ids=[s.user_id for _, s in parsed], full_names=[
            name for content in contents if isinstance(content, str) for name in mentioned_names(content)])
        requests = [self._request(submitted, event) for event, submitted in parsed]
        drafts = [r for r in requests if r.draft is not None]
        try:
            self._send(drafts, then=lambda: self._answer(requests))
        except REQUEST_DATA_ERRORS:
            # One request holds what the database refuses, and the batch's transaction rolled back: each
            # alone, so that only that one is answered with the error.
            for request in drafts:
                self._send([request])
            self._answer(requests)

    def _request(self, submitted: MessageRequest, event: Event) -> Request:
        """The request of an event its contract took: its draft, or the answer it gets without one."""
        checked = Request(submitted, event)
        sender = self.store.users.get(submitted.user_id)
        if sender is None or not sender.is_active:
            checked.response = dict(UNKNOWN_SENDER)
            return checked
        try:
            checked.draft = check_request(self.store, sender, submitted.request, submitted.client or INTERNAL_CLIENT)
        except MessageError as e:
            checked.response = e.response()
        return checked

    def _send(self, requests: list[Request], then: Callable[[], None] | None = None) -> None:
        """Send the drafts of ``requests`` as one batch and set their answers, then call ``then`` (once every
        event is confirmed, before the messages are marked delivered); a request whose data the database
        refuses is answered so when it is alone (in a batch, the error goes to the caller)."""
        def confirmed(messages: list[StoredMessage]) -> None:
            for request, message in zip(requests, messages, strict=True):
                request.response = {"result": "success", "msg": "", "id": message.id}
            if then is not None:
                then()

        try:
            send_batch(self.broker, self.store, [(r.draft, r.submitted.request_id) for r in requests
                                                 if r.draft is not None], confirmed)
        except REQUEST_DATA_ERRORS as e:
            if len(requests) > 1:
                raise
            logger.warning("request %s of user %d cannot be stored: %s: %s", requests[0].submitted.request_id,
                           requests[0].submitted.user_id, type(e).__name__, excerpt(str(e)))
            requests[0].response = dict(CANNOT_STORE)

    def _answer(self, requests: list[Request]) -> None:
        """One publish per return queue, holding the answers of that queue's requests."""
        by_queue: dict[str, list[MessageResponse]] = {}
        for request in requests:
            return_queue = request.submitted.return_queue
            if return_queue and request.response is not None:
                by_queue.setdefault(return_queue, []).append(request.submitted.reply(request.response))
        for return_queue, answers in by_queue.items():
            self.broker.publish(return_queue, answers_event(answers))
