"""Brings a database to the schema of this release, by numbered migrations, with no manual step.

Each migration has a number and runs once per database: the table
``schema_migrations`` records those applied. Every process runs ``migrate``
when it first opens the database (``eventbus.database.open_database``); it
holds the write lock throughout, so of processes starting together one
migrates and the others find it done. A database migrated by a newer release
than this one is refused with a clear error rather than used half-understood.

Why a migration table of our own rather than Alembic: the schema is one
module of SQLAlchemy tables, and what a migration must do besides creating
tables is dialect-specific DDL (SQLite's FTS5 table and its triggers,
PostgreSQL's ``tsvector`` column and GIN index, partial and expression
indexes) that Alembic would have us write by hand all the same, plus an
``env.py``, a script folder and a command to run at every upgrade. Here an
upgrade is: start the new release.

Migration 1 is the baseline: every table, and whatever a database made by
an earlier release (before this table existed) lacks: its added columns,
the messages' recipients, the indexes and the full-text index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, select, text, update
from sqlalchemy.schema import CreateColumn

from eventbus import codec, schema
from eventbus.database import DatabaseError

if TYPE_CHECKING:
    from eventbus.database import Database

logger = logging.getLogger(__name__)

#: Flag tests on ``user_messages.flags`` (a JSON list of names), written once: a partial index is used only by
#: a query holding the very same test. ``mentioned"`` matches Zulip's wildcard mention flags too.
FLAG_TESTS = {"unread": """flags NOT LIKE '%"read"%'""", "starred": """flags LIKE '%"starred"%'""",
              "mentioned": """flags LIKE '%mentioned"%'""", "alerted": """flags LIKE '%"has_alert_word"%'"""}
#: The flag tests that have an index of their own: few of a user's messages pass them.
INDEXED_FLAGS = ("unread", "starred", "mentioned")
#: PostgreSQL's text search configuration for messages: English stemming, like SQLite's porter tokenizer.
TEXT_SEARCH_CONFIG = "english"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection, str], None]  # (connection, dialect name)


def migrate(database: Database) -> None:
    """Apply the migrations ``database`` has not had, in order, under its write lock."""
    with database.transaction(write=True) as connection:
        schema.schema_migrations.create(connection, checkfirst=True)
        applied = set(connection.scalars(select(schema.schema_migrations.c.version)))
        newest = MIGRATIONS[-1].version
        if applied and max(applied) > newest:
            raise DatabaseError(f"{database!r} has schema version {max(applied)}, newer than this release's "
                                f"{newest}: run the release that migrated it, or a newer one")
        for migration in MIGRATIONS:
            if migration.version not in applied:
                logger.info("%r: migration %d, %s", database, migration.version, migration.name)
                migration.apply(connection, database.dialect)
                connection.execute(schema.schema_migrations.insert().values(
                    version=migration.version, name=migration.name, applied_at=time.time()))


def _baseline(connection: Connection, dialect: str) -> None:
    had_index = inspect(connection).has_table("messages_fts")
    schema.metadata.create_all(connection, checkfirst=True)
    _add_columns(connection)
    _fill_recipients(connection)
    for statement in (_SQLITE_DDL if dialect == "sqlite" else _POSTGRESQL_DDL):
        connection.execute(text(statement))  # text(): SQLAlchemy escapes the LIKE patterns' % for psycopg
    if dialect == "sqlite" and not had_index:  # index the messages stored before it existed
        connection.exec_driver_sql("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


def _add_columns(connection: Connection) -> None:
    """The columns added to tables since their first release (``info={"added": True}``), where missing."""
    inspector = inspect(connection)
    for table in schema.metadata.sorted_tables:
        added = [column for column in table.columns if column.info.get("added")]
        if not added:
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in added:
            if column.name not in present:
                logger.info("adding column %s.%s", table.name, column.name)
                declaration = CreateColumn(column).compile(dialect=connection.dialect)
                connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {declaration}")


def _fill_recipients(connection: Connection) -> None:
    """Give messages stored before recipients existed theirs (``stream:<id>`` or ``private:<sorted ids>``)."""
    messages, recipients = schema.messages, schema.recipients
    rows = connection.execute(select(messages.c.id, messages.c.stream_id, messages.c.display_recipient)
                              .where(messages.c.recipient_id.is_(None))).all()
    for message_id, stream_id, display in rows:
        key = schema.recipient_key(stream_id, () if stream_id is not None else
                                   (int(u["id"]) for u in codec.decode(display)))
        recipient_id = connection.scalar(select(recipients.c.id).where(recipients.c.key == key))
        if recipient_id is None:
            recipient_id = connection.scalar(recipients.insert().values(key=key).returning(recipients.c.id))
        connection.execute(update(messages).where(messages.c.id == message_id).values(recipient_id=recipient_id))


_FLAG_INDEXES = tuple(f"CREATE INDEX IF NOT EXISTS user_messages_{name} ON user_messages(user_id, message_id)"
                      f" WHERE {FLAG_TESTS[name]}" for name in INDEXED_FLAGS)

#: SQLite: the topic index in the NOCASE collation topics are compared in, and the words of every message's
#: topic and Markdown in an external-content FTS5 index (the text is not stored twice) that triggers keep in
#: step with every insert, update and delete.
_SQLITE_DDL = (
    "CREATE INDEX IF NOT EXISTS messages_by_topic ON messages(recipient_id, subject COLLATE NOCASE, id)",
    *_FLAG_INDEXES,
    "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(subject, content, content='messages',"
    " content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_fts(rowid, subject, content) VALUES (new.id, new.subject, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, subject, content)"
    " VALUES ('delete', old.id, old.subject, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF subject, content ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, subject, content)"
    " VALUES ('delete', old.id, old.subject, old.content);"
    " INSERT INTO messages_fts(rowid, subject, content) VALUES (new.id, new.subject, new.content); END",
)

#: PostgreSQL: what SQLite's NOCASE columns are there (unique indexes on ``lower``), the topic index on
#: ``lower(subject)``, and a ``tsvector`` of every message's topic and Markdown, kept by PostgreSQL itself
#: (a generated column), under a GIN index.
_POSTGRESQL_DDL = (
    "CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower ON users (lower(email))",
    "CREATE UNIQUE INDEX IF NOT EXISTS streams_name_lower ON streams (lower(name))",
    "CREATE INDEX IF NOT EXISTS messages_by_topic ON messages(recipient_id, lower(subject), id)",
    *_FLAG_INDEXES,
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS search_words tsvector GENERATED ALWAYS AS"
    f" (to_tsvector('{TEXT_SEARCH_CONFIG}', subject || ' ' || content)) STORED",
    "CREATE INDEX IF NOT EXISTS messages_search_words ON messages USING gin (search_words)",
)

MIGRATIONS = (
    Migration(1, "baseline: every table, added columns, recipients, indexes, full-text search", _baseline),
)


#: Rows copied per statement by ``copy_database``.
COPY_CHUNK = 1000


def copy_database(source: Database, target: Database) -> dict[str, int]:
    """Copy every row of every store from ``source`` into ``target`` (say, from the SQLite file of a small install
    to the PostgreSQL database of a bigger one), ids kept; the rows copied per table. ``target`` must hold no
    users or messages yet (DatabaseError otherwise); both are migrated to this release first (``open_database``).
    One transaction on the target: a copy that fails leaves it as it was."""
    copied: dict[str, int] = {}
    tables = [table for table in schema.metadata.sorted_tables if table is not schema.schema_migrations]
    with target.transaction(write=True) as writer, source.transaction() as reader:
        for table in (schema.users, schema.messages):
            if writer.scalar(select(table.c.id).limit(1)) is not None:
                raise DatabaseError(f"{target!r} is not empty (its {table.name} table has rows): copy into a new, "
                                    "empty database")
        for table in tables:
            copied[table.name] = 0
            rows = reader.execute(select(table)).mappings()
            while chunk := [dict(row) for row in rows.fetchmany(COPY_CHUNK)]:
                writer.execute(table.insert(), chunk)
                copied[table.name] += len(chunk)
        if target.is_postgresql:  # the next id of each table comes after the ids copied
            for table in tables:
                if "id" in table.c and table.c.id.autoincrement is True:
                    writer.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'),"
                                        f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"))
    return copied
