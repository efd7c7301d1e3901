"""``missedmessage_emails``: one email listing the messages a user missed while away.

Tornado publishes a ``MissedMessage`` (``{"user_id", "message_id", "trigger"}``)
for each mention or private message that no open client of the user will show. The messages wait
``missed_email_window_seconds`` in the database, then go out as one email.

How it survives crashes and redeliveries (every step may run twice):

1. A missed message becomes a row (user, message), stored once: the same
   message for the same user again is ignored, also after its email went
   out. When the user has no unclaimed row yet, a ``MissedMessageFlush``
   (``{"flush_user": id}``) is first published to this queue, delayed by the window, and only
   then are the rows stored: a crash in between leaves an extra flush
   (harmless: it finds nothing), never rows that no flush will collect.
2. A flush claims the user's unclaimed rows under a new email id, queues one
   email with that id (``queue_email``), then marks the claimed rows sent. A
   flush that crashed after claiming is finished by its redelivery, which
   finds the claim and queues the same email id: ``email_senders`` sends it
   once. Messages missed meanwhile are not in that claim; they scheduled
   their own flush in step 1.
3. On start, a flush is scheduled for every user with rows not sent yet,
   for anything a lost flush left behind.

Sent rows are kept ``KEEP_SENT_SECONDS`` (they are what makes a late
redelivery a no-op), then deleted.
"""

from __future__ import annotations

import html
import logging
import time
import uuid
from collections.abc import Iterable

from sqlalchemy import delete, select, update

from eventbus.contracts import MISSEDMESSAGE_EMAILS, MissedMessage, MissedMessageFlush
from eventbus.database import Store
from eventbus.messages import MessageStore, StoredMessage
from eventbus.processors.mailer import queue_email
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, PermanentError
from eventbus.schema import missed_message_emails as missed_table
from eventbus.users import User

logger = logging.getLogger(__name__)

#: Senders named in the subject; the rest are "and N others".
SUBJECT_SENDERS = 3
#: How long an emailed message is remembered: far longer than any redelivery or retry takes.
KEEP_SENT_SECONDS = 7 * 24 * 3600.0


class PendingMissed(Store):
    """The missed messages waiting for their email, in the database; safe from any thread and process (the
    unique (user, message) key and the write lock make every step below hold across workers)."""

    def without_unclaimed(self, user_ids: Iterable[int]) -> list[int]:
        """Those of the users with no unclaimed row: no flush is on its way for them."""
        ids = sorted(set(user_ids))
        with self._db() as db:
            waiting = set(db.scalars(select(missed_table.c.user_id).distinct().where(
                missed_table.c.email_id.is_(None), missed_table.c.user_id.in_(ids))))
        return [uid for uid in ids if uid not in waiting]

    def add(self, missed: Iterable[MissedMessage]) -> None:
        """Store missed messages; one stored for the user before (pending or sent) is not stored again."""
        now = time.time()
        rows = [{"user_id": m.user_id, "message_id": m.message_id, "trigger": m.trigger, "missed_at": now}
                for m in missed]
        if rows:
            with self._db(write=True) as db:
                db.execute(self.database.insert(missed_table).on_conflict_do_nothing(), rows)

    def claim(self, user_id: int) -> dict[str, list[MissedMessage]]:
        """Claim the user's unclaimed rows under a new email id; every claim of the user, by email id.

        Of flushes racing for the same user, one claims the rows, and each finds every claim: they queue the
        same email ids, which ``email_senders`` sends once.
        """
        with self._db(write=True) as db:
            db.execute(update(missed_table).where(missed_table.c.user_id == user_id, missed_table.c.email_id.is_(None))
                       .values(email_id=f"missed:{uuid.uuid4().hex}"))
            rows = db.execute(select(missed_table.c.email_id, missed_table.c.message_id, missed_table.c.trigger)
                              .where(missed_table.c.user_id == user_id, missed_table.c.email_id.is_not(None),
                                     ~missed_table.c.sent)
                              .order_by(missed_table.c.message_id))
            claims: dict[str, list[MissedMessage]] = {}
            for email_id, message_id, trigger in rows:
                claims.setdefault(email_id, []).append(MissedMessage(user_id, message_id, trigger))
        return claims

    def mark_sent(self, email_id: str) -> None:
        """The email of this claim is queued; sent rows older than KEEP_SENT_SECONDS are deleted."""
        with self._db(write=True) as db:
            db.execute(update(missed_table).where(missed_table.c.email_id == email_id).values(sent=True))
            db.execute(delete(missed_table).where(missed_table.c.sent,
                                                  missed_table.c.missed_at < time.time() - KEEP_SENT_SECONDS))

    def users(self) -> list[int]:
        """Every user with rows not sent yet, claimed or not."""
        with self._db() as db:
            return list(db.scalars(select(missed_table.c.user_id).distinct().where(~missed_table.c.sent)
                                   .order_by(missed_table.c.user_id)))


@assign_queue(MISSEDMESSAGE_EMAILS, tries=5, retry_delay=2.0, batch_size=100, batch_wait=1.0)
class MissedMessageEmailWorker(LoopQueueProcessingWorker):
    """Collects each user's missed messages for the window, then queues one email listing them (module docstring)."""

    def before_start(self) -> None:
        settings = self.broker.settings
        self.window = settings.missed_email_window_seconds
        self.pending = PendingMissed(settings.database)
        self.messages = MessageStore(settings.database)
        leftover = self.pending.users()
        if leftover:
            logger.info("missed message emails pending for %d user(s); flushing them after the window", len(leftover))
            self._schedule_flush(leftover)

    def consume_batch(self, events: list[Event]) -> None:
        missed: list[MissedMessage] = []
        flushes: list[int] = []
        for event in events:
            try:
                if MissedMessageFlush.is_one(event):
                    flushes.append(MissedMessageFlush.from_event(event).user_id)
                else:
                    missed.append(MissedMessage.from_event(event))
            except PermanentError as error:
                self.fail([event], error)
        if missed:
            self._schedule_flush(self.pending.without_unclaimed(m.user_id for m in missed))
            self.pending.add(missed)
        for user_id in dict.fromkeys(flushes):
            self._flush(user_id)

    def _schedule_flush(self, user_ids: list[int]) -> None:
        if user_ids:
            self.broker.publish_later(self.queue_name, [MissedMessageFlush(uid).event() for uid in user_ids],
                                      self.window)

    def _flush(self, user_id: int) -> None:
        user = self.messages.users.get(user_id)
        for email_id, missed in self.pending.claim(user_id).items():
            found = [m for m in (self.messages.get(x.message_id) for x in missed) if m is not None]
            if user is None or not user.is_active:
                logger.info("user %d is gone or deactivated: no email for %d missed message(s)", user_id, len(missed))
            elif found:
                triggers = {x.message_id: x.trigger for x in missed}
                subject, text, markup = missed_email(user, found, triggers, self.broker.settings.site_url)
                queue_email(self.broker, [user.email], subject, text, markup, email_id=email_id)
            self.pending.mark_sent(email_id)


def missed_email(user: User, messages: list[StoredMessage], triggers: dict[int, str],
                 site_url: str) -> tuple[str, str, str]:
    """Subject, text and HTML of the email listing ``messages`` for ``user``."""
    senders = list(dict.fromkeys(m.sender_full_name for m in messages))
    named = ", ".join(senders[:SUBJECT_SENDERS])
    others = len(senders) - SUBJECT_SENDERS
    count = f"{len(messages)} missed message{'s' if len(messages) > 1 else ''}"
    subject = f"{count} from {named}" + (f" and {others} other{'s' if others > 1 else ''}" if others > 0 else "")
    subject = " ".join(subject.split())  # one line, whatever the names hold
    text = [f"Hello {user.full_name},", "", f"while you were away, you missed {len(messages)} message(s):", ""]
    markup = [f"<p>Hello {html.escape(user.full_name)},</p>",
              f"<p>while you were away, you missed {len(messages)} message(s):</p>"]
    for message in messages:
        heading = f"{message.sender_full_name} {_where(message, triggers.get(message.id, ''))}:"
        text += [heading, message.content, ""]
        # rendered_content is safe HTML: the Markdown renderer escapes whatever the sender typed.
        markup += [f"<p><b>{html.escape(heading)}</b></p>", f"<blockquote>{message.rendered_content}</blockquote>"]
    text.append(f"Read and reply at {site_url}")
    markup.append(f'<p>Read and reply at <a href="{html.escape(site_url)}">{html.escape(site_url)}</a></p>')
    return subject, "\n".join(text) + "\n", "\n".join(markup) + "\n"


def _where(message: StoredMessage, trigger: str) -> str:
    if message.type == "stream":
        place = f"in #{message.display_recipient} > {message.subject}"
        return f"{place} (mentioned you)" if trigger == "mentioned" else place
    return "(private)"
