"""Outgoing email: ``queue_email`` for whoever wants one sent, ``Mailer`` for the ``email_senders`` processor.

An email's event is the ``Email`` contract (``eventbus.contracts``).

Every email carries an ``email_id`` and ``email_senders`` sends each id once.
An id derived from what caused the email (``stable_id``) therefore makes the
whole path idempotent: a redelivered signup, invitation or flush event queues
the same ids again, and nothing goes out twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import smtplib
import ssl
import time
import uuid
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from eventbus.contracts import EMAIL_SENDERS, FAILED_TRIES, Email
from eventbus.queue import Broker
from eventbus.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds a connect or a server reply may take: a hung server then counts as down, and the email is retried.
#: Well under email_senders' time limit per email (30 s), so that a hang ends as this clean error first.
SMTP_TIMEOUT = 10.0


def queue_email(broker: Broker, to: Sequence[str], subject: str, body: str, html: str | None = None, *,
                email_id: str | None = None) -> str:
    """Queue one email to ``email_senders``; returns its id (a new random one unless given).

    Pass an ``email_id`` derived from the cause (``stable_id``) when the
    caller may run twice for the same cause: the email is then sent once.
    """
    email = Email(email_id or f"email:{uuid.uuid4().hex}", tuple(to), subject, body, html)
    broker.publish(EMAIL_SENDERS, email.event())
    return email.email_id


def stable_id(kind: str, payload: Any) -> str:
    """``<kind>:<digest of payload>``: the same for the same event(s), whatever their retry count."""
    canonical = json.dumps(_without_retry_count(payload), sort_keys=True, ensure_ascii=False, default=str)
    return f"{kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def _without_retry_count(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: v for k, v in payload.items() if k != FAILED_TRIES}
    if isinstance(payload, list):
        return [_without_retry_count(item) for item in payload]
    return payload


class Mailer:
    """One SMTP connection, opened on first use and reused for every email after.

    Host, port, TLS ("none", "starttls", "ssl"), user and password come from
    the settings. A failed send closes the connection, so the next one starts
    afresh; ``check()`` (once per batch) replaces a connection the server
    dropped while it was idle. One Mailer per thread: smtplib is not thread-safe.
    """

    def __init__(self, settings: Settings, timeout: float = SMTP_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None

    def send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Send one message; returns the recipients the server refused (when it accepted some).

        Raises SMTPRecipientsRefused when it refused them all (the connection
        stays usable), other SMTPException or OSError subclasses otherwise.
        """
        smtp = self._connection()
        try:
            refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused:
            raise
        except (smtplib.SMTPException, OSError):
            self.close()
            raise
        return refused

    def check(self) -> None:
        """Drop the connection if the server closed it meanwhile (it times idle clients out); the next send reconnects.

        A NOOP before a batch costs one round trip, and it means a send never
        meets a stale connection: resending after an error in the middle of
        a send could deliver an email twice.
        """
        if self._smtp is None:
            return
        try:
            alive = self._smtp.sock is not None and self._smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            alive = False
        if not alive:
            logger.info("SMTP connection to %s:%d was closed; reconnecting on the next email",
                        self.settings.smtp_host, self.settings.smtp_port)
            self.close()

    def close(self) -> None:
        """Say goodbye (QUIT) and close; safe when not connected."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


    def _connection(self) -> smtplib.SMTP:
        # smtplib closes the socket itself on some replies (421: the server is going away).
        if self._smtp is None or self._smtp.sock is None:
            self.close()
            self._smtp = self._connect()
        return self._smtp

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        started = time.monotonic()
        smtp: smtplib.SMTP
        if s.smtp_tls == "ssl":
            smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=self.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self.timeout)
        try:
            if s.smtp_tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
        except BaseException:
            smtp.close()
            raise
        logger.debug("SMTP connection to %s:%d (%s) opened in %.3f s", s.smtp_host, s.smtp_port, s.smtp_tls,
                     time.monotonic() - started)
        return smtp
