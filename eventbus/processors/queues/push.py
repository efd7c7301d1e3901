"""``missedmessage_mobile_notifications``: a push notification for a mention or private message a user missed.

Tornado queues a ``MissedMessage`` (``{"user_id", "message_id", "trigger"}``) when a recipient who
is away is mentioned or gets a private message (``tornado_events/away.py``).
The processor POSTs one JSON payload (``push_payload``) to the push gateway,
``EVENTBUS_PUSH_URL`` (a bouncer in production), with ``Authorization: Bearer
<push_api_key>`` when the secrets file holds a ``push_api_key``.

Outcomes:

- 2xx: sent, and recorded in ``push_notifications_sent``;
- a connection error, a timeout, 5xx, 408 or 429: ``GatewayUnavailable``, so
  the framework retries with a doubling delay and, after the last try, puts
  the event in the error store;
- any other status (4xx, or a 3xx: the gateway URL is configured, never
  followed): ``PermanentError`` with the status and the start of the body,
  straight to the error store (a wrong API key sends every event there;
  ``eventbus replay_errors missedmessage_mobile_notifications`` once fixed);
- no ``EVENTBUS_PUSH_URL``: pushes are switched off by configuration; the
  event is logged at INFO and acked.

At most one notification per message per user, whichever worker on whichever
machine gets the event, and however often: the worker claims the pair in the
``push_notifications_sent`` table before the POST and marks it sent once the
gateway accepted it (``SentNotifications``, see ``eventbus.claims``). A pair
sent already is skipped; one that another worker is pushing comes back when
that claim lapses; a worker that dies after claiming delays the push by the
claim's lease, never loses it. Each POST carries an ``Idempotency-Key``
header (``<user_id>:<message_id>``), so a gateway can tell a repeated POST
too (after a worker slower than the lease, or a crash between the gateway's
2xx and the mark).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.parse
from contextlib import closing
from typing import Any, ClassVar

from sqlalchemy import Table

from eventbus import codec
from eventbus.claims import Claims
from eventbus.contracts import MISSEDMESSAGE_MOBILE_NOTIFICATIONS, MissedMessage
from eventbus.errors import ConfigurationError
from eventbus.messages import MessageStore, StoredMessage
from eventbus.processors.once import have_once
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, PermanentError, QueueProcessingWorker
from eventbus.schema import push_notifications_sent
from eventbus.users import User

logger = logging.getLogger(__name__)

#: Seconds to wait for the gateway; well under the processing timeout, so a hung gateway is a retry, not a kill.
HTTP_TIMEOUT = 10.0
#: A phone shows a line or two, and push services cap payloads (APNs at 4 KB).
SHORT_TEXT = 200
#: How much of an error answer goes into the error store.
ERROR_BODY = 500
#: Statuses that say "later", not "never".
RETRY_STATUSES = frozenset({408, 429})

#: How long a push is remembered as sent: far longer than a notification can be redelivered.
KEEP_SENT_SECONDS = 30 * 24 * 3600.0


class GatewayUnavailable(Exception):
    """The gateway could not be reached or answered "try later" (5xx, 408, 429): the event is retried."""


class SentNotifications(Claims):
    """The (user, message) pairs pushed or being pushed (``eventbus.claims``); safe from any thread and process."""

    TABLE: ClassVar[Table] = push_notifications_sent


class PushGateway:
    """POSTs JSON to the push gateway over http.client: no proxies, no redirects (the URL is configured)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = HTTP_TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"EVENTBUS_PUSH_URL must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self._parts = parts
        self.api_key = api_key
        self.timeout = timeout

    def post(self, payload: dict[str, Any], idempotency_key: str) -> None:
        """Send ``payload``; GatewayUnavailable to retry later, PermanentError when it can never be sent."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            status, reason, body = self._request(codec.encode(payload), headers)
        except (OSError, http.client.HTTPException) as e:
            raise GatewayUnavailable(f"push gateway {self.url} unreachable: {str(e) or type(e).__name__}") from None
        if 200 <= status < 300:
            return
        answer = f"push gateway answered {status} {reason}" + (f": {body}" if body else "")
        if status >= 500 or status in RETRY_STATUSES:
            raise GatewayUnavailable(answer)
        raise PermanentError(answer)

    def _request(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
        parts = self._parts
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        with closing(connection_class(parts.hostname or "", parts.port, timeout=self.timeout)) as connection:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            answer = response.read(ERROR_BODY).decode("utf-8", "replace").strip()
            return response.status, response.reason, answer


def push_payload(user: User, message: StoredMessage, trigger: str, site_url: str) -> dict[str, Any]:
    """What the gateway gets for ``user`` about ``message``."""
    payload: dict[str, Any] = {
        "user_id": user.id, "user_email": user.email, "message_id": message.id, "trigger": trigger,
        "sender_id": message.sender_id, "sender_email": message.sender_email,
        "sender_full_name": message.sender_full_name, "recipient_type": message.type,
        "content": short_text(message.content), "time": int(message.timestamp), "site_url": site_url,
    }
    if message.type == "stream":
        payload.update(stream=message.display_recipient, topic=message.subject)
    return payload


def short_text(content: str, limit: int = SHORT_TEXT) -> str:
    """``content`` on one line, cut at ``limit`` characters with an ellipsis."""
    text = re.sub(r"\s+", " ", content).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@assign_queue(MISSEDMESSAGE_MOBILE_NOTIFICATIONS, tries=5, retry_delay=2.0, timeout=30.0)
class PushNotificationWorker(QueueProcessingWorker):
    """Pushes one notification per missed message per user; see the module docstring."""

    def before_start(self) -> None:
        settings = self.broker.settings
        self.store = MessageStore(settings.database)
        self.sent = SentNotifications(settings.database, settings.claim_lease_seconds)
        self.sent.forget_before(time.time() - KEEP_SENT_SECONDS)  # the table would grow with every push otherwise
        self.gateway = PushGateway(settings.push_url, settings.push_api_key) if settings.push_url else None
        if self.gateway is None:
            logger.info("EVENTBUS_PUSH_URL is not set: mobile push notifications are switched off")

    def consume(self, event: Event) -> None:
        missed = MissedMessage.from_event(event)
        user_id, message_id = missed.user_id, missed.message_id
        if self.gateway is None:
            logger.info("push notifications are switched off (no EVENTBUS_PUSH_URL): not pushing message %d "
                        "to user %d", message_id, user_id)
            return
        have_once(self.broker, self.queue_name, event, self.sent, (user_id, message_id),
                  f"push of message {message_id} to user {user_id}", lambda: self._push(missed))

    def _push(self, missed: MissedMessage) -> None:
        assert self.gateway is not None
        user_id, message_id = missed.user_id, missed.message_id
        user, message = self.store.users.get(user_id), self.store.get(message_id)
        if user is None:
            raise PermanentError(f"no user {user_id}")
        if message is None:
            raise PermanentError(f"no message {message_id}")
        if user_id not in message.flags:
            raise PermanentError(f"user {user_id} is not a recipient of message {message_id}")
        payload = push_payload(user, message, missed.trigger, self.broker.settings.site_url)
        self.gateway.post(payload, idempotency_key=f"{user_id}:{message_id}")
