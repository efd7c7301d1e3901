"""Queue contracts: every queue's name and the shape of its events, defined once for producer and consumer.

A queue's name is a constant here (Zulip's name where Zulip has the queue);
an event kind is a small frozen class: building one checks it,
``from_event(event)`` reads and checks an event as it comes off the queue,
and ``event()`` is the JSON object to publish. A field that is missing or of
the wrong kind raises ``ContractError`` naming it: a ValueError, and a
``PermanentError``, so a worker stores such an event at once, without retries.

Queues and their events::

    notify_tornado                       Notice            an event for the clients of some users
    tornado_return[.<server>]            MessageResponse   a processor's answer to a submitted request
    message_sender                       MessageRequest    a message a client submitted through Tornado
    user_activity                        UserActivity      API requests of a user, client and endpoint
    user_activity_interval               ActivityInterval  a span of time a user was active
    user_presence                        PresenceUpdate    a user's presence (active, idle, offline)
    error_reports                        ErrorReport       a server error or a browser traceback
    slow_queries                         SlowQuery         a slow request or database query
    email_senders                        Email             one email to send
    signups                              Signup            a new user, to welcome
    invites                              Invite            people to invite
    missedmessage_emails                 MissedMessage     a message a user missed while away,
                                         MissedMessageFlush  or: send that user's missed messages now
    missedmessage_mobile_notifications   MissedMessage     a message a user missed while away
    email_mirror                         MirrorMail        an email sent to a stream's address

Ids are checked by ``check_id``: an integer from 1 to 2**63 - 1 (SQLite's
range), never a bool. ``failed_tries`` is reserved in every event: the
workers count retries in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Self

from eventbus.errors import ContractError
from eventbus.users import EMAIL
from eventbus.validation import EXCERPT_CHARS, MAX_ID, excerpt, is_id

# -- queue names ---------------------------------------------------------------------------

#: Events for the Tornado process's clients (``send_event``); a shard's queue adds ``_<n>`` (eventbus.sharding).
NOTIFY_TORNADO = "notify_tornado"
#: Processors' answers to requests a Tornado process submitted; a shard's adds ``_<n>`` (eventbus.sharding).
TORNADO_RETURN = "tornado_return"
MESSAGE_SENDER = "message_sender"
USER_ACTIVITY = "user_activity"
USER_ACTIVITY_INTERVAL = "user_activity_interval"
USER_PRESENCE = "user_presence"
ERROR_REPORTS = "error_reports"
SLOW_QUERIES = "slow_queries"
EMAIL_SENDERS = "email_senders"
SIGNUPS = "signups"
INVITES = "invites"
MISSEDMESSAGE_EMAILS = "missedmessage_emails"
MISSEDMESSAGE_MOBILE_NOTIFICATIONS = "missedmessage_mobile_notifications"
EMAIL_MIRROR = "email_mirror"
#: Changes to stored messages (flags, edits, deletes, reactions); Zulip makes them in its web process, eventbus in
#: a processor, so this name is eventbus's own. The request is ``eventbus.message_actions.MessageAction``.
MESSAGE_ACTIONS = "message_actions"
#: The framework's own queues, for testing and benchmarking it (``processors/queues/testing.py``).
TEST = "test"
NOOP = "noop"
NOOP_BATCH = "noop_batch"
#: Every queue the project uses (the return queues of Tornado processes other than "tornado" besides).
QUEUES = (NOTIFY_TORNADO, TORNADO_RETURN, MESSAGE_SENDER, USER_ACTIVITY, USER_ACTIVITY_INTERVAL, USER_PRESENCE,
          ERROR_REPORTS, SLOW_QUERIES, EMAIL_SENDERS, SIGNUPS, INVITES, MISSEDMESSAGE_EMAILS,
          MISSEDMESSAGE_MOBILE_NOTIFICATIONS, EMAIL_MIRROR, MESSAGE_ACTIONS, TEST, NOOP, NOOP_BATCH)

#: Queue names become file names (the error store's): no separators, no leading dot, a sane length.
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")
#: The key a retried event carries its count of failed tries in (as in Zulip): reserved in every event.
FAILED_TRIES = "failed_tries"


def check_queue_name(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name, else raise ValueError saying what is allowed."""
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise ValueError(
            f"invalid queue name {queue!r}: use 1 to 200 letters, digits, '_', '.', ':' or '-', "
            "not starting with '.', ':' or '-'"
        )
    return queue


# -- checking fields -----------------------------------------------------------------------


def check_id(value: Any, name: str) -> int:
    """``value`` if it is an id (an integer from 1 to MAX_ID, not a bool); ContractError naming ``name``."""
    if not is_id(value):
        raise ContractError(f"'{name}' must be an id (an integer from 1 to 2**63 - 1), not {_shown(value)}")
    return int(value)


def _shown(value: Any) -> str:
    """``value`` as an error message quotes it: its repr, cut short (never a client's input whole)."""
    return excerpt(repr(value)) if isinstance(value, str) else excerpt(value)


def _text(value: Any, name: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or not (empty or value):
        raise ContractError(f"'{name}' must be a {'' if empty else 'non-empty '}string, not {_shown(value)}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _number(value: Any, name: str, what: str = "a number") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(f"'{name}' must be {what}, not {_shown(value)}")
    return value


def _time(value: Any, name: str) -> float | None:
    """An optional Unix time."""
    return None if value is None else float(_number(value, name, "a number (Unix time)"))


def _without_none(**fields: Any) -> dict[str, Any]:
    """The fields that have a value: an absent field and a null one mean the same to every consumer."""
    return {name: value for name, value in fields.items() if value is not None}


def _object(event: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(event, Mapping):
        raise ContractError(f"a {kind} event must be a JSON object, not {_shown(event)}")
    return event


# -- notify_tornado and the request-reply round trip ------------------------------------------

#: One recipient: a user id, or ``{"id": N, "flags": [...]}`` for a message's per-user flags.
Recipient = int | dict[str, Any]


def recipient(user: Recipient) -> tuple[int, list[str] | None]:
    """A checked recipient's user id, and its message flags (None for a plain user id)."""
    return (user, None) if isinstance(user, int) else (user["id"], user.get("flags", []))


def _is_recipient(user: Any) -> bool:
    if isinstance(user, dict):
        return is_id(user.get("id")) and isinstance(user.get("flags", []), list)
    return is_id(user)


@dataclass(frozen=True, slots=True)
class Notice:
    """``notify_tornado``: ``{"event": {...}, "users": [...]}``, an event for every client of the users.

    Each client queue numbers its own events, so the event has no ``id``; a
    ``message`` event carries its message with an id (what away notifications name).
    """

    client_event: dict[str, Any]
    users: tuple[Recipient, ...]

    def __post_init__(self) -> None:
        event = self.client_event
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ContractError("'event' must be a JSON object with a string 'type'")
        if "id" in event:
            raise ContractError("'event' must not carry an 'id': each client queue numbers its own events")
        if event["type"] == "message":
            message = event.get("message")
            if not isinstance(message, dict) or not is_id(message.get("id")):
                raise ContractError("a 'message' event must carry a 'message' object with an integer 'id'")
        for user in self.users:
            if not _is_recipient(user):
                raise ContractError(f"'users' holds {_shown(user)}: each must be a user id or "
                                    "{\"id\": N, \"flags\": [...]}")

    @classmethod
    def of(cls, event: dict[str, Any], users: Iterable[Recipient]) -> Self:
        """The notice of ``event`` for ``users``; ContractError saying what is wrong."""
        return cls(event, tuple(users))

    @classmethod
    def from_event(cls, notice: Any) -> Self:
        if not isinstance(notice, dict):
            raise ContractError("a notice must be a JSON object with 'event' and 'users'")
        users = notice.get("users")
        if not isinstance(users, list):
            raise ContractError("'users' must be a list of user ids")
        event: Any = notice.get("event")  # checked by __post_init__
        return cls(event, tuple(users))

    def event(self) -> dict[str, Any]:
        return {"event": self.client_event, "users": list(self.users)}


@dataclass(frozen=True, slots=True)
class MessageResponse:
    """``tornado_return``: a processor's answer to the request ``request_id``, with the tags the request carried.

    A processor that answers in batches publishes several in one message (``answers_event``); the event
    server takes that, or one answer alone.
    """

    request_id: str
    response: Any
    server_id: str | None = None
    socket_id: str | None = None
    req_id: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str):
            raise ContractError("a return message must be an object with a 'request_id'")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, "return")
        return cls(event.get("request_id"), event.get("response"), event.get("server_id"),
                   event.get("socket_id"), event.get("req_id"))

    def event(self) -> dict[str, Any]:
        return {"request_id": self.request_id, **_without_none(server_id=self.server_id, socket_id=self.socket_id,
                                                               req_id=self.req_id), "response": self.response}


def answers_event(answers: Sequence[MessageResponse]) -> dict[str, Any]:
    """What a processor publishes to a return queue: several answers in one message."""
    return {"answers": [answer.event() for answer in answers]}


def is_req_id(req_id: Any) -> bool:
    """Whether ``req_id`` is one a websocket client may tag its request with: the answers echo it, so it is
    short, never the client's input whole."""
    if isinstance(req_id, str):
        return len(req_id) <= EXCERPT_CHARS
    return isinstance(req_id, int) and not isinstance(req_id, bool) and abs(req_id) <= MAX_ID


@dataclass(frozen=True, slots=True)
class MessageRequest:
    """``message_sender``: a client's ``request`` (Zulip's message fields, checked by the processor) from ``user_id``.

    The answer goes to ``return_queue`` (none: nobody waits), with the tags
    that tell the Tornado process where it goes: ``server_id``, and for a
    websocket request its ``socket_id`` and the client's ``req_id``.
    ``client`` is Zulip's client string of the request ("website", the API
    client's name), stored with the message.
    """

    request_id: str
    user_id: int
    request: dict[str, Any]
    return_queue: str | None = None
    server_id: str | None = None
    socket_id: str | None = None
    req_id: int | str | None = None
    client: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not isinstance(self.request, dict):
            raise ContractError("a message_sender event needs a 'request_id' and a 'request' object")
        _optional_text(self.client, "client")
        check_id(self.user_id, "user_id")
        if self.return_queue is not None:
            try:
                check_queue_name(self.return_queue)
            except ValueError as e:
                raise ContractError(f"'return_queue': {e}") from None
        _optional_text(self.server_id, "server_id")
        _optional_text(self.socket_id, "socket_id")
        if self.req_id is not None and not is_req_id(self.req_id):
            raise ContractError(f"'req_id' must be a string of at most {EXCERPT_CHARS} characters or an integer, "
                                f"not {_shown(self.req_id)}")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, MESSAGE_SENDER)
        return cls(event.get("request_id"), event.get("user_id"), event.get("request"),
                   event.get("return_queue") or None, event.get("server_id"), event.get("socket_id"),
                   event.get("req_id"), event.get("client") or None)

    def event(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "user_id": self.user_id, "request": self.request,
                **_without_none(return_queue=self.return_queue, server_id=self.server_id, socket_id=self.socket_id,
                                req_id=self.req_id, client=self.client)}

    def reply(self, response: dict[str, Any]) -> MessageResponse:
        """The answer to this request, tagged as the request was."""
        return MessageResponse(self.request_id, response, self.server_id, self.socket_id, self.req_id)


# -- analytics and presence ----------------------------------------------------------------

#: A presence's statuses; clients set the first two, "offline" is what a user without presence counts as.
STATUSES = ("active", "idle", "offline")
#: The client of a presence event that names none.
UNKNOWN_CLIENT = "unknown"


@dataclass(frozen=True, slots=True)
class UserActivity:
    """``user_activity``: ``count`` API requests of a user to ``query`` from ``client``, the last at ``time``.

    A missing client is "", a missing time the time of processing, a missing
    (or unusable) count 1: counts are approximate by nature.
    """

    user_id: int
    query: str
    client: str = ""
    time: float | None = None
    count: int = 1

    def __post_init__(self) -> None:
        check_id(self.user_id, "user_id")
        _text(self.query, "query", empty=False)
        _text(self.client, "client")
        _time(self.time, "time")
        if not is_id(self.count):
            raise ContractError(f"'count' must be a positive integer, not {_shown(self.count)}")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, USER_ACTIVITY)
        count = event.get("count", 1)
        return cls(event.get("user_id"), event.get("query"), event.get("client", ""),
                   _time(event.get("time"), "time"), count if is_id(count) else 1)

    def event(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "client": self.client, "query": self.query,
                **_without_none(time=self.time), "count": self.count}


@dataclass(frozen=True, slots=True)
class ActivityInterval:
    """``user_activity_interval``: the user was active from ``start`` to ``end`` (Unix times)."""

    user_id: int
    start: float
    end: float

    def __post_init__(self) -> None:
        start = _number(self.start, "start", "a number (Unix time)")
        end = _number(self.end, "end", "a number (Unix time)")
        if start > end:
            raise ContractError(f"'start' ({float(start)}) is after 'end' ({float(end)})")
        check_id(self.user_id, "user_id")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, USER_ACTIVITY_INTERVAL)
        return cls(event.get("user_id"), event.get("start"), event.get("end"))

    def event(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """``user_presence``: the user's ``status`` from ``client`` at ``time`` (missing: the time of processing)."""

    user_id: int
    status: str
    client: str = UNKNOWN_CLIENT
    time: float | None = None

    def __post_init__(self) -> None:
        check_id(self.user_id, "user_id")
        if self.status not in STATUSES:
            raise ContractError(f"'status' must be one of {', '.join(STATUSES)}, not {_shown(self.status)}")
        _text(self.client, "client")
        _time(self.time, "time")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, USER_PRESENCE)
        return cls(event.get("user_id"), event.get("status"),
                   event.get("client") or UNKNOWN_CLIENT, _time(event.get("time"), "time"))

    def event(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "status": self.status, **_without_none(time=self.time),
                "client": self.client}


# -- error reports and slow queries ----------------------------------------------------------

#: The fields of an error report with a meaning of their own; any other field is shown as it is.
REPORT_FIELDS = frozenset({"type", "message", "stacktrace", "user_email", "href", FAILED_TRIES})


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """``error_reports``: a ``"server"`` error or a ``"browser"`` traceback, with any other fields in ``extra``."""

    type: str = "server"
    message: str = ""
    stacktrace: str = ""
    user_email: str | None = None
    href: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text(self.type, "type")
        _text(self.message, "message")
        _text(self.stacktrace, "stacktrace")
        _optional_text(self.user_email, "user_email")
        _optional_text(self.href, "href")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, ERROR_REPORTS)
        extra = {key: value for key, value in event.items() if key not in REPORT_FIELDS}
        return cls(event.get("type") or "server", event.get("message") or "", event.get("stacktrace") or "",
                   event.get("user_email"), event.get("href"), extra)

    def event(self) -> dict[str, Any]:
        return {**self.extra, "type": self.type, "message": self.message, "stacktrace": self.stacktrace,
                **_without_none(user_email=self.user_email, href=self.href)}


@dataclass(frozen=True, slots=True)
class SlowQuery:
    """``slow_queries``: a database ``query`` or a request (``path``, ``method``, ``status``) took ``time_ms``."""

    time_ms: float
    query: str | None = None
    path: str | None = None
    method: str | None = None
    status: int | None = None
    user_email: str | None = None
    time: float | None = None

    def __post_init__(self) -> None:
        if _number(self.time_ms, "time_ms", "a number of milliseconds") < 0:
            raise ContractError(f"'time_ms' must not be negative, not {_shown(self.time_ms)}")
        for name in ("query", "path", "method", "user_email"):
            _optional_text(getattr(self, name), name)
        if self.status is not None:
            _number(self.status, "status", "an HTTP status")
        _time(self.time, "time")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, SLOW_QUERIES)
        return cls(*(event.get(name) for name in ("time_ms", "query", "path", "method", "status", "user_email",
                                                  "time")))

    def event(self) -> dict[str, Any]:
        return _without_none(query=self.query, path=self.path, method=self.method, time_ms=self.time_ms,
                             status=self.status, user_email=self.user_email, time=self.time)


# -- email ---------------------------------------------------------------------------------


def _address(text: str) -> bool:
    """Whether ``text`` looks like one address (``a@b.c`` or ``Name <a@b.c>``), with nothing that could add a header."""
    return "@" in parseaddr(text)[1] and not any(c in text for c in "\r\n")


@dataclass(frozen=True, slots=True)
class Email:
    """``email_senders``: one email to send, sent once per ``email_id``."""

    email_id: str
    to: tuple[str, ...]
    subject: str
    body: str
    html: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.email_id, str) or not self.email_id:
            raise ContractError("an email needs an 'email_id' string")
        to = self.to
        if not isinstance(to, tuple) or not to or not all(isinstance(a, str) and _address(a) for a in to):
            listed = list(to) if isinstance(to, tuple) else to
            raise ContractError(f"'to' must be a non-empty list of email addresses, not {_shown(listed)}")
        if not isinstance(self.subject, str) or "\n" in self.subject or "\r" in self.subject:
            raise ContractError("'subject' must be a string of one line")
        if not isinstance(self.body, str) or not (self.html is None or isinstance(self.html, str)):
            raise ContractError("'body' must be a string, and 'html' a string if given")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, EMAIL_SENDERS)
        to = event.get("to")
        to = [to] if isinstance(to, str) else to
        if not isinstance(to, list):
            raise ContractError(f"'to' must be a non-empty list of email addresses, not {_shown(to)}")
        return cls(event.get("email_id"), tuple(to), event.get("subject"), event.get("body"),
                   event.get("html"))

    def event(self) -> dict[str, Any]:
        return {"email_id": self.email_id, "to": list(self.to), "subject": self.subject, "body": self.body,
                **_without_none(html=self.html)}

    def message(self, sender: str) -> EmailMessage:
        """The email as a MIME message from ``sender``: text, with an HTML alternative when there is one.

        ValueError for a header the email package cannot write.
        """
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(self.to)
        message["Subject"] = self.subject
        # Derived from the email id, so that a resend after a crash (see SentEmails) looks like the same email.
        domain = parseaddr(sender)[1].rpartition("@")[2] or "eventbus.localhost"
        message["Message-ID"] = f"<{hashlib.sha256(self.email_id.encode()).hexdigest()[:32]}@{domain}>"
        message.set_content(self.body)
        if self.html is not None:
            message.add_alternative(self.html, subtype="html")
        return message


@dataclass(frozen=True, slots=True)
class Signup:
    """``signups``: a new user with ``email``, to welcome; ``full_name`` if known."""

    email: str
    full_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.email, str) or not EMAIL.fullmatch(self.email):
            raise ContractError(f"a signup needs an 'email' address, not {_shown(self.email)}")
        _optional_text(self.full_name, "full_name")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, SIGNUPS)
        address, full_name = event.get("email"), event.get("full_name")
        return cls(address.strip() if isinstance(address, str) else address,
                   full_name if isinstance(full_name, str) else None)

    def event(self) -> dict[str, Any]:
        return {"email": self.email, **_without_none(full_name=self.full_name)}


@dataclass(frozen=True, slots=True)
class Invite:
    """``invites``: ``inviter_id`` invites ``emails`` (to ``stream``, if named).

    ``emails`` holds what the producer sent: the processor invites the
    addresses among them and names the rest in the error store.
    """

    inviter_id: int
    emails: tuple[Any, ...]
    stream: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.emails, tuple) or not self.emails:
            raise ContractError("an invitation needs 'emails', a list of addresses")
        check_id(self.inviter_id, "inviter_id")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, INVITES)
        emails, stream = event.get("emails"), event.get("stream")
        return cls(event.get("inviter_id"), tuple(emails) if isinstance(emails, list) else (),
                   stream if isinstance(stream, str) and stream else None)

    def event(self) -> dict[str, Any]:
        return {"inviter_id": self.inviter_id, "emails": list(self.emails), **_without_none(stream=self.stream)}


@dataclass(frozen=True, slots=True)
class MissedMessage:
    """``missedmessage_emails`` and ``missedmessage_mobile_notifications``: ``user_id`` missed ``message_id``.

    ``trigger`` says why the user should hear of it: "mentioned" or "private_message".
    """

    user_id: int
    message_id: int
    trigger: str

    def __post_init__(self) -> None:
        check_id(self.user_id, "user_id")
        check_id(self.message_id, "message_id")
        _text(self.trigger, "trigger", empty=False)

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, "missed message")
        return cls(event.get("user_id"), event.get("message_id"), event.get("trigger"))

    def event(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "message_id": self.message_id, "trigger": self.trigger}


@dataclass(frozen=True, slots=True)
class MissedMessageFlush:
    """``missedmessage_emails``: ``{"flush_user": id}``, email the user the missed messages collected so far."""

    user_id: int

    def __post_init__(self) -> None:
        check_id(self.user_id, "flush_user")

    @staticmethod
    def is_one(event: Mapping[str, Any]) -> bool:
        """Whether a missedmessage_emails event is a flush (else it is a MissedMessage)."""
        return "flush_user" in event

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, "flush")
        return cls(event.get("flush_user"))

    def event(self) -> dict[str, Any]:
        return {"flush_user": self.user_id}


# -- email mirror --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorMail:
    """``email_mirror``: an email as received, and its envelope recipient if known.

    On the wire ``raw`` is base64: mail may carry 8-bit bytes in charsets
    other than UTF-8, which a JSON string cannot hold losslessly.
    """

    raw: bytes
    rcpt_to: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):
            raise ContractError("an email_mirror event needs 'raw': the email, base64-encoded")
        if self.rcpt_to is not None and not isinstance(self.rcpt_to, str):
            raise ContractError(f"'rcpt_to' must be an address, not {_shown(self.rcpt_to)}")

    @classmethod
    def from_event(cls, event: Any) -> Self:
        event = _object(event, EMAIL_MIRROR)
        raw = event.get("raw")
        if not isinstance(raw, str):
            raise ContractError("an email_mirror event needs 'raw': the email, base64-encoded")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except binascii.Error:
            raise ContractError("'raw' is not base64: the email must be base64-encoded") from None
        return cls(decoded, event.get("rcpt_to"))

    def event(self) -> dict[str, Any]:
        return {"raw": base64.b64encode(self.raw).decode("ascii"), **_without_none(rcpt_to=self.rcpt_to)}
