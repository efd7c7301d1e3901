"""``message_sender``: messages that clients submitted through the Tornado server."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from eventbus.contracts import MESSAGE_SENDER, MessageRequest
from eventbus.messages import MessageStore
from eventbus.processors.message_send import INTERNAL_CLIENT, MessageError, check_request, send
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, QueueProcessingWorker
from eventbus.validation import excerpt

logger = logging.getLogger(__name__)

#: Errors the database raises for what a request holds (a number out of SQLite's range, a value of a type it
#: cannot store, a constraint the data breaks): trying again cannot help, so the sender is answered at once.
#: Other database errors (a locked or full database) are retried like any failure.
REQUEST_DATA_ERRORS = (OverflowError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.IntegrityError)


@assign_queue(MESSAGE_SENDER, tries=5, retry_delay=0.5)
class MessageSenderWorker(QueueProcessingWorker):
    """Renders, stores and delivers a submitted message, then answers on the request's return queue.

    Deduplicated by the request's id: a redelivered request is stored once and delivered once. The event's
    ``client`` (Zulip's client string, set by the Tornado handler that took the request) is stored with it.
    """

    def before_start(self) -> None:
        self.store = MessageStore(self.broker.settings.database)

    def consume(self, event: Event) -> None:
        submitted = MessageRequest.from_event(event)
        request_id, user_id, request = submitted.request_id, submitted.user_id, submitted.request
        sender = self.store.users.get(user_id)
        response: dict[str, Any]
        if sender is None or not sender.is_active:
            response = {"result": "error", "msg": "Unknown sender", "code": "BAD_REQUEST"}
        else:
            try:
                draft = check_request(self.store, sender, request, submitted.client or INTERNAL_CLIENT)
                response = {"result": "success", "msg": "", "id": send(self.broker, self.store, draft, request_id).id}
            except MessageError as e:
                response = e.response()
            except REQUEST_DATA_ERRORS as e:
                logger.warning("request %s of user %d cannot be stored: %s: %s", request_id, user_id,
                               type(e).__name__, excerpt(str(e)))
                response = {"result": "error", "msg": "The message cannot be stored: a value in it is out of range",
                            "code": "BAD_REQUEST"}
        if submitted.return_queue:
            self.broker.publish(submitted.return_queue, submitted.reply(response).event())
