"""Email: ``email_senders`` sends them; ``signups`` and ``invites`` turn one event into the emails to send.

Work that takes seconds per email stays out of the request: inviting 500
people publishes one ``invites`` event and returns; the invitations follow.
"""

from __future__ import annotations

import logging
import smtplib
import time
from email.message import EmailMessage
from typing import ClassVar

from sqlalchemy import Table

from eventbus.claims import Claims
from eventbus.contracts import EMAIL_SENDERS, INVITES, SIGNUPS, Email, Invite, Signup
from eventbus.processors.mailer import Mailer, stable_id
from eventbus.processors.once import have_once
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, PermanentError, QueueProcessingWorker
from eventbus.schema import sent_emails
from eventbus.users import EMAIL, UserStore

logger = logging.getLogger(__name__)

#: Sent ids older than this are forgotten: far longer than any redelivery or retry takes.
KEEP_SENT_SECONDS = 30 * 24 * 3600.0


class SentEmails(Claims):
    """The emails sent or being sent, by email id (``eventbus.claims``): what makes a redelivered email a no-op,
    whichever worker on whichever machine gets it."""

    TABLE: ClassVar[Table] = sent_emails


@assign_queue(EMAIL_SENDERS, tries=5, retry_delay=5.0, batch_size=100, batch_wait=0.1)
class EmailSenderWorker(LoopQueueProcessingWorker):
    """Sends emails (``{"email_id", "to", "subject", "body", "html"?}``, see ``queue_email``) over one SMTP connection.

    Each email id is sent once, by one worker of any number on any machine:
    the worker claims the id in the database before sending (``SentEmails``,
    see ``eventbus.claims``) and marks it sent once the server took the
    email. A redelivered id that was sent is skipped; one that another worker
    is sending comes back when that claim lapses. A worker that dies after
    claiming delays its email by the claim's lease, never loses it. A server
    that is down or drops the connection fails the rest of the batch, which
    the framework retries with growing delays; an email whose recipients are
    all refused, or that is malformed, goes straight to the error store.
    Recipients refused among accepted ones are logged.
    """

    def before_start(self) -> None:
        self.mailer = Mailer(self.broker.settings)
        self.sent = SentEmails(self.broker.settings.database, self.broker.settings.claim_lease_seconds)
        self.sent.forget_before(time.time() - KEEP_SENT_SECONDS)

    def after_stop(self) -> None:
        self.mailer.close()

    def consume_batch(self, events: list[Event]) -> None:
        self.mailer.check()
        # fail() is the framework's retry-or-error-store, here for the events that failed only: the
        # emails sent before them are done, and a retry of the whole batch would store them as failed too.
        for index, event in enumerate(events):
            try:
                self._send_once(event)
            except PermanentError as error:
                self.fail([event], error)
            except (smtplib.SMTPException, OSError) as error:
                # The server is down or dropped us: the rest of the batch would fail the same way.
                self.fail(events[index:], error)
                return

    def _send_once(self, event: Event) -> None:
        email = Email.from_event(event)
        try:
            message = email.message(self.broker.settings.email_from)
        except ValueError as e:  # a header the email package cannot write
            raise PermanentError(str(e)) from None
        refused = have_once(self.broker, self.queue_name, event, self.sent, (email.email_id,),
                            f"email {email.email_id}", lambda: self._send(message))
        if refused:
            logger.warning("email %s: sent, but the server refused %s", email.email_id, _refusals(refused))

    def _send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Send ``message``; the recipients the server refused (PermanentError when it refused them all)."""
        try:
            return self.mailer.send(message)
        except smtplib.SMTPRecipientsRefused as e:
            raise PermanentError(f"the server refused every recipient: {_refusals(e.recipients)}") from None
        except smtplib.SMTPDataError as e:
            if e.smtp_code >= 500:
                raise PermanentError(f"the server refused the email: {e.smtp_code} {e.smtp_error!r}") from None
            raise


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{address} ({code} {reply.decode(errors='replace')})"
                     for address, (code, reply) in refused.items())


@assign_queue(SIGNUPS, tries=5)
class SignupWorker(QueueProcessingWorker):
    """A new user (``Signup``): queues the welcome email, once per signup event."""

    def consume(self, event: Event) -> None:
        signup = Signup.from_event(event)
        full_name = (signup.full_name or "").strip()
        name = full_name or signup.email.split("@")[0]
        site = self.broker.settings.site_url
        body = (f"Hello {name},\n\nwelcome to eventbus! Your account is {signup.email}.\n\n"
                f"Log in at {site} to get started.\n")
        email = Email(stable_id("signup", event), (signup.email,), "Welcome to eventbus", body)
        self.broker.publish(EMAIL_SENDERS, email.event())


@assign_queue(INVITES, tries=5)
class InviteWorker(QueueProcessingWorker):
    """An invitation (``Invite``): one email per invited address.

    The email ids derive from the event, so a redelivered event invites no
    one twice; a producer that means to invite the same people again sends
    a different event (an ``invite_id`` of its own, say). Addresses that are
    not email addresses are named in the error store; the others are invited.
    """

    def before_start(self) -> None:
        self.users = UserStore(self.broker.settings.database)

    def consume(self, event: Event) -> None:
        invite = Invite.from_event(event)
        inviter = self.users.get(invite.inviter_id)
        if inviter is None:
            raise PermanentError(f"the inviter {invite.inviter_id!r} is no user")
        valid: dict[str, None] = {}  # in order, each once
        invalid = []
        for address in invite.emails:
            if isinstance(address, str) and EMAIL.fullmatch(address.strip()):
                valid[address.strip()] = None
            else:
                invalid.append(address)
        subject = f"{inviter.full_name} invited you to eventbus"
        where = f" and to the stream #{invite.stream}" if invite.stream else ""
        body = (f"Hello,\n\n{inviter.full_name} ({inviter.email}) invited you to eventbus{where}.\n\n"
                f"Join at {self.broker.settings.site_url}\n")
        self.broker.publish_many(EMAIL_SENDERS, [
            Email(stable_id("invite", {**event, "to": address}), (address,), subject, body).event()
            for address in valid
        ])
        if invalid:
            raise PermanentError(f"invited {len(valid)}; not email addresses: {', '.join(map(repr, invalid))}")
