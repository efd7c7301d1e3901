"""Every table of the stores, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

The stores (``eventbus.users``, ``sessions``, ``messages``, ``presence``, and
the processors' stores of sent emails, pushes, missed-message emails and
analytics) all live in one database, ``EVENTBUS_DATABASE``. This module is
their one schema; ``eventbus.migrations`` brings a database to it, and adds
what SQLAlchemy's tables cannot say the same way for both engines (the
full-text index, case-insensitive indexes).

Ids are 64-bit on PostgreSQL and SQLite's rowid on SQLite (``ID``). Times are
Unix seconds as floats, as they always were here. Columns that were once
added to a table carry ``info={"added": True}``: a database made before them
gets them on its next start (``migrations``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    false,
    text,
    true,
)

#: An id: SQLite's 64-bit rowid (``INTEGER PRIMARY KEY``) there, ``BIGINT`` on PostgreSQL.
ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


def _ci_text() -> Text:
    """Text compared without case: SQLite's NOCASE collation there; PostgreSQL compares ``lower()`` of it,
    with an index on that (``migrations``)."""
    return Text().with_variant(Text(collation="NOCASE"), "sqlite")


users = Table(
    "users", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("email", _ci_text(), nullable=False, unique=True),
    Column("full_name", Text, nullable=False),
    Column("api_key", Text, nullable=False),
    Column("is_active", Boolean, nullable=False, server_default=true()),
    Column("date_joined", Float, nullable=False),
    sqlite_autoincrement=True,
)

sessions = Table(
    "sessions", metadata,
    Column("id_hash", Text, primary_key=True),
    Column("user_id", ID, nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)

streams = Table(
    "streams", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("name", _ci_text(), nullable=False, unique=True),
    Column("email_token", Text, nullable=False, unique=True),
    Column("date_created", Float, nullable=False),
    sqlite_autoincrement=True,
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("stream_id", ID, ForeignKey("streams.id"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id"), nullable=False),
    PrimaryKeyConstraint("stream_id", "user_id"),
)

#: A message's recipient, as in Zulip: ``stream:<id>``, or ``private:<user ids, sorted, comma-separated>``
#: (``recipient_key``).
recipients = Table(
    "recipients", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False, unique=True),
    sqlite_autoincrement=True,
)

messages = Table(
    "messages", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("request_id", Text, unique=True),
    Column("sender_id", ID, ForeignKey("users.id"), nullable=False),
    Column("type", Text, nullable=False),
    Column("stream_id", ID, ForeignKey("streams.id")),
    Column("display_recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("rendered_content", Text, nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("delivered", Boolean, nullable=False, server_default=false()),
    Column("recipient_id", ID, ForeignKey("recipients.id"), info={"added": True}),
    Column("client", Text, nullable=False, server_default="", info={"added": True}),
    Column("last_edit_timestamp", Float, info={"added": True}),
    Index("messages_by_recipient", "recipient_id", "id"),
    Index("messages_by_sender", "sender_id", "id"),
    sqlite_autoincrement=True,
)

#: A message's row for each of its recipients: ten or a thousand rows a message, the busiest table. No foreign
#: keys on purpose: PostgreSQL checks each one row by row, a third of the time of storing a batch of messages
#: (measured: 18.5 ms against 12.5 ms for 100 messages to 10 users). Its rows are written only with their
#: message, in the same transaction (``MessageStore.store_many``), and deleted with it; users are never deleted.
user_messages = Table(
    "user_messages", metadata,
    Column("user_id", ID, nullable=False),
    Column("message_id", ID, nullable=False),
    #: The user's flags on the message: a JSON list of names (``'[]'``, ``'["read", "starred"]'``).
    Column("flags", Text, nullable=False, server_default="[]"),
    PrimaryKeyConstraint("user_id", "message_id"),
    Index("user_messages_by_message", "message_id"),
)

reactions = Table(
    "reactions", metadata,
    Column("message_id", ID, ForeignKey("messages.id"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id"), nullable=False),
    Column("reaction_type", Text, nullable=False),
    Column("emoji_code", Text, nullable=False),
    Column("emoji_name", Text, nullable=False),
    #: When it was made: reactions show oldest first (those made before this column show first, in any order).
    Column("reacted_at", Float, nullable=False, server_default=text("0"), info={"added": True}),
    PrimaryKeyConstraint("message_id", "user_id", "reaction_type", "emoji_code"),
)

#: What each processed ``message_actions`` request changed, once per request id.
message_actions = Table(
    "message_actions", metadata,
    Column("request_id", Text, primary_key=True),
    Column("outcome", Text, nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("delivered", Boolean, nullable=False, server_default=false()),
)

user_activity = Table(
    "user_activity", metadata,
    Column("user_id", ID, nullable=False),
    Column("client", Text, nullable=False),
    Column("query", Text, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("last_visit", Float, nullable=False),
    PrimaryKeyConstraint("user_id", "client", "query"),
)

user_activity_intervals = Table(
    "user_activity_intervals", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("user_id", ID, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    Index("user_activity_intervals_by_user", "user_id", "start"),
    sqlite_autoincrement=True,
)

user_presence = Table(
    "user_presence", metadata,
    Column("user_id", ID, primary_key=True, autoincrement=False),
    Column("status", Text, nullable=False),
    Column("client", Text, nullable=False),
    Column("time", Float, nullable=False),
    Column("announced_status", Text, nullable=False, server_default="offline"),
    Column("announced_at", Float, nullable=False, server_default=text("0"), info={"added": True}),
    Column("recheck_due", Float, nullable=False, server_default=text("0"), info={"added": True}),
)

#: The emails sent, or being sent (``eventbus.claims``): what makes a redelivered email a no-op.
sent_emails = Table(
    "sent_emails", metadata,
    Column("email_id", Text, primary_key=True),
    Column("sent_at", Float, nullable=False),
    #: Until when a worker's claim to send it holds; NULL once sent (rows made before claims were all sent).
    Column("claimed_until", Float, info={"added": True}),
    Index("sent_emails_by_time", "sent_at"),
)

#: The push notifications sent, or being sent (``eventbus.claims``), one per message per user.
push_notifications_sent = Table(
    "push_notifications_sent", metadata,
    Column("user_id", ID, nullable=False),
    Column("message_id", ID, nullable=False),
    Column("sent_at", Float, nullable=False),
    #: As ``sent_emails.claimed_until``.
    Column("claimed_until", Float, info={"added": True}),
    PrimaryKeyConstraint("user_id", "message_id"),
    Index("push_notifications_sent_by_time", "sent_at"),
)

missed_message_emails = Table(
    "missed_message_emails", metadata,
    Column("user_id", ID, nullable=False),
    Column("message_id", ID, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("missed_at", Float, nullable=False),
    Column("email_id", Text),  # set when a flush claims the row
    Column("sent", Boolean, nullable=False, server_default=false()),  # set once its email is queued
    PrimaryKeyConstraint("user_id", "message_id"),
    Index("missed_message_emails_by_email", "email_id"),
)

#: The migrations a database has had (``eventbus.migrations``), one row each.
schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("applied_at", Float, nullable=False),
)


def recipient_key(stream_id: int | None, user_ids: Iterable[int] = ()) -> str:
    """The key of a message's recipient (``recipients.key``): its stream's, or its private conversation's, whose
    users (the sender among them) are ``user_ids``."""
    if stream_id is not None:
        return f"stream:{stream_id}"
    return "private:" + ",".join(str(uid) for uid in sorted(set(user_ids)))
