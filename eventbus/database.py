"""The database every store uses (``EVENTBUS_DATABASE``): a SQLite file, or a PostgreSQL server.

One schema (``eventbus.schema``) and one set of queries serve both, written
with SQLAlchemy Core; the few things the two engines say differently are
said here once, through SQLAlchemy's own means (each dialect's ``insert``,
a compiled construct for case-insensitive equality), and in
``eventbus.migrations`` (the full-text index).

- SQLite (the embedded default): the file is in WAL mode, so readers never
  wait for a writer. A process keeps its connections open (opening one per
  call cost a worker half its time, and closing the last one checkpoints the
  write-ahead log every time).
- PostgreSQL (``postgresql://user:password@host/dbname``, through psycopg 3):
  for workers and Tornado shards on several machines.

``Database.transaction`` is the one way in: one transaction per block,
committed when it ends, rolled back if it raises. A block that writes asks
for ``write=True``: that takes the database's write lock first (SQLite's
``BEGIN IMMEDIATE``; a transaction-scoped advisory lock on PostgreSQL), so
that a read followed by a write is atomic across every process on every
machine, and a request's "at most one effect" checks hold. Unique
constraints back them in the schema.

Every process opens a database once per URL (``open_database``), and the
first opening in a process brings its schema up to date (``migrations``).
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from select import POLLIN, poll
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    ExceptionContext,
    Executable,
    Row,
    Table,
    create_engine,
    event,
    exc,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import FromClause, Join
from sqlalchemy.types import Boolean

from eventbus.errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a SQLite connection waits for another writer's lock before giving up.
BUSY_TIMEOUT = 30.0
#: The key of the PostgreSQL advisory lock a writing transaction holds (any constant: it names the lock).
WRITE_LOCK_KEY = 0x6576656E74627573  # "eventbus"
#: Connections a process keeps open to its database, and how many more it may open at busy times.
POOL_SIZE = 8
POOL_OVERFLOW = 32
#: The schemes of a PostgreSQL ``EVENTBUS_DATABASE``; it is always reached through psycopg 3.
POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

#: What a database raises for a value from a request that it cannot hold (an id past 64 bits, a string with
#: a NUL for PostgreSQL): such a request is answered with an error, it is not retried.
REQUEST_DATA_ERRORS: tuple[type[Exception], ...] = (OverflowError, exc.DataError, exc.IntegrityError,
                                                    exc.InterfaceError, ValueError)


class DatabaseError(ConfigurationError):
    """A database that cannot be used as configured (unreachable, a bad URL, a schema newer than this release):
    named at start, with ``EVENTBUS_DATABASE``."""


class Database:
    """One database, SQLite or PostgreSQL, with its engine; safe from any thread of the process that opened it."""

    def __init__(self, url: str) -> None:
        from eventbus.settings import redact_url  # settings imports the stores' contracts, which build on this

        self.url = url
        #: The URL as logs and errors show it: without its password.
        self.name = redact_url(url)
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(url)
        else:
            self.engine = _postgresql_engine(url)
        event.listen(self.engine, "handle_error", _connect_failure_is_disconnect)
        self.outage = Outage(self.name)
        # PostgreSQL's reads run without BEGIN and COMMIT, a round trip each: at READ COMMITTED, its default, every
        # statement sees its own snapshot either way. SQLite's reads keep one snapshot for the block.
        self.reader = (self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.dialect == "postgresql"
                       else self.engine)

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Connection]:
        """A connection in one transaction, committed when the block ends (rolled back if it raises);
        ``write`` takes the write lock first. A block that writes must ask for ``write``: on PostgreSQL, the
        others run each statement on its own. Blocks must not nest.

        While the database cannot be reached, it raises what ``is_unavailable`` recognises; the outage is logged
        once, when the first block meets it, and its end when a block succeeds again (``Outage``)."""
        try:
            with (self.engine if write else self.reader).connect() as connection:
                connection.info["write"] = write  # read by the SQLite "begin" hook
                with connection.begin():
                    if write and self.is_postgresql:
                        connection.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
                    yield connection
        except (exc.DBAPIError, exc.TimeoutError) as error:
            if is_unavailable(error):
                self.outage.began(error)
            raise
        if self.outage.since is not None:
            self.outage.ended()

    def change(self, statement: Executable) -> int:
        """Run one writing statement that needs nothing read before it (marking rows delivered), atomic by
        itself; the rows it changed. On PostgreSQL without BEGIN, COMMIT and the write lock: three round trips
        fewer than a ``write`` transaction."""
        with self.transaction(write=not self.is_postgresql) as connection:
            return int(connection.execute(statement).rowcount)

    def insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT into ``table`` in this database's dialect: both offer ``on_conflict_do_nothing`` and
        ``on_conflict_do_update`` alike."""
        return (postgresql.insert if self.is_postgresql else sqlite.insert)(table)

    def insert_rows(self, connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]],
                    returning: str | None = None) -> list[Any]:
        """Insert many rows (dicts of the same columns) into ``table``, fast in each database; with ``returning``
        (a column, such as a new id), that column of each row inserted, in the rows' order.

        SQLite: executemany, or SQLAlchemy's multi-row INSERT where ``returning`` (in process, a row costs
        little). PostgreSQL: one statement per call whatever the number of rows, the values sent as one array per
        column and unnested by the server in their order (psycopg would otherwise send a statement per row, or
        parse a multi-row statement of thousands of placeholders in Python: 3 times slower for the 1,000 rows a
        batch of 100 messages to 10 users makes). New ids follow that order: the server draws them row by row.
        """
        if not rows:
            return []
        if not self.is_postgresql:
            if returning is None:
                connection.execute(table.insert(), list(rows))
                return []
            statement = table.insert().returning(table.c[returning], sort_by_parameter_order=True)
            return list(connection.execute(statement, list(rows)).scalars())
        columns = tuple(rows[0])
        # Straight to psycopg (SQLAlchemy still wraps its errors), for its binary format: %b sends each array as
        # binary, a third cheaper than as text for a thousand rows.
        result = connection.exec_driver_sql(_unnest_insert(table, columns, returning),
                                            tuple([row[name] for row in rows] for name in columns))
        return sorted(row[0] for row in result) if returning is not None else []

    def __repr__(self) -> str:
        return f"Database({self.name!r})"


@functools.lru_cache(maxsize=64)
def _unnest_insert(table: Table, columns: tuple[str, ...], returning: str | None) -> str:
    """``INSERT INTO table (columns) SELECT ... FROM unnest(%b, %b, ...) WITH ORDINALITY ... ORDER BY`` the
    arrays' order, each array (psycopg's binary placeholder) cast to its column's type, and ``RETURNING`` the
    column asked for."""
    dialect = postgresql.dialect()
    arrays = ", ".join(f"CAST(%b AS {table.c[name].type.compile(dialect=dialect)}[])" for name in columns)
    names = ", ".join(f"c{n}" for n in range(len(columns)))
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {names} FROM unnest({arrays})"
           f" WITH ORDINALITY AS rows({names}, position) ORDER BY position")
    return sql + (f" RETURNING {table.c[returning].name}" if returning is not None else "")


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached now: its server down or restarting, a connection it
    closed, no connection to be had. A passing condition, never a request's fault: the work is to be done again
    once it answers (a worker waits for it; the event server answers 503, ``DATABASE_UNAVAILABLE``)."""
    if isinstance(error, exc.TimeoutError):  # every pooled connection busy for the pool's timeout
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def _connect_failure_is_disconnect(context: ExceptionContext) -> None:
    """Invoked by SQLAlchemy for every database error: one raised while connecting (no ``connection`` yet, a
    refused connection) is marked a disconnect, as a connection lost is, so that ``is_unavailable`` knows both."""
    if context.connection is None and isinstance(context.sqlalchemy_exception, exc.OperationalError):
        context.is_disconnect = True


class Outage:
    """Whether a database is unreachable, since when; each outage is logged once, when the first failure meets it
    (not once a request or a batch), and once more when it ends. Safe from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: ``time.monotonic()`` when the outage began; None while the database answers.
        self.since: float | None = None
        self._lock = threading.Lock()

    def began(self, error: BaseException) -> None:
        with self._lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        cause = getattr(error, "orig", None) or error
        logger.error("database %s is unavailable: %s: %s", self.name, type(cause).__name__,
                     str(cause).strip().splitlines()[0] if str(cause).strip() else "")

    def ended(self) -> None:
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            logger.warning("database %s is back after %.1f s", self.name, time.monotonic() - since)


def _postgresql_engine(url: str) -> Engine:
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # No pre-ping (a round trip per checkout): an idle connection is sent nothing by the server, unless it
        # closed it (a restart sends each a FATAL message, then closes). Readable, it is replaced with a new one
        # (SQLAlchemy does, for DisconnectionError): the first block after a restart does not fail on it. A
        # server that vanished without a word is noticed by the first statement instead, and its whole pool
        # replaced (SQLAlchemy invalidates the pool on a disconnect).
        readable = poll()
        readable.register(dbapi_connection.pgconn.socket, POLLIN)
        if readable.poll(0):
            raise exc.DisconnectionError("the server closed this pooled connection")

    return engine


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
                           connect_args={"timeout": BUSY_TIMEOUT, "check_same_thread": False})

    # SQLAlchemy's recipe for SQLite's own transactions: the driver leaves them alone, and every transaction
    # starts with a BEGIN of ours, IMMEDIATE for a writer (the write lock at once, waiting up to BUSY_TIMEOUT).
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # On the driver's connection: through exec_driver_sql, this BEGIN cost more than a whole indexed query.
        driver = connection.connection.driver_connection
        assert driver is not None  # a connection being begun is open
        driver.execute("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")

    return engine


def database_url(target: Path | str) -> str:
    """The SQLAlchemy URL of ``EVENTBUS_DATABASE``: a SQLite file's path, or a PostgreSQL URL (psycopg 3)."""
    text = str(target)
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in POSTGRESQL_SCHEMES:
        return f"postgresql+psycopg://{rest}"
    if sep:
        raise DatabaseError(f"EVENTBUS_DATABASE: unknown database URL scheme {scheme!r} (a SQLite file's path, or "
                            f"postgresql://user:password@host/dbname)")
    return f"sqlite:///{Path(text).resolve()}"


_opened: dict[tuple[int, str], Database] = {}
_opening = threading.Lock()


def open_database(target: Database | Path | str) -> Database:
    """This process's ``Database`` for ``target`` (a path or URL), opened and migrated on first use.

    Per process: a forked child opens its own (a connection must not cross a fork).
    """
    if isinstance(target, Database):
        return target
    url = database_url(target)
    key = (os.getpid(), url)
    with _opening:
        database = _opened.get(key)
        if database is None:
            if url.startswith("sqlite:"):
                _use_wal(Path(url.removeprefix("sqlite:///")))
            database = Database(url)
            from eventbus import migrations  # it builds on this module

            try:
                migrations.migrate(database)
            except exc.OperationalError as error:
                raise DatabaseError(f"EVENTBUS_DATABASE: cannot use {database!r}: {error.orig or error}") from error
            _opened[key] = database
    return database


def close_database(target: Path | str) -> None:
    """Close this process's connections to ``target`` (a test's database, before it is thrown away)."""
    with _opening:
        database = _opened.pop((os.getpid(), database_url(target)), None)
    if database is not None:
        database.engine.dispose()


def _use_wal(path: Path) -> None:
    # Switching to WAL needs a moment alone with the file and ignores the busy timeout: processes that open a
    # new database together retry. Once switched, the mode stays in the file and this is a read.
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


#: The reads remembered in each thread while a ``Store.remembering`` block runs there (None outside one).
_remembered = threading.local()


def _remembered_reads() -> dict[tuple[Any, ...], Any] | None:
    """This thread's remembered reads, by database URL and lookup key; None outside a ``remembering`` block."""
    return getattr(_remembered, "reads", None)


class Store:
    """A store in the database ``EVENTBUS_DATABASE`` names (a SQLite file's path or a PostgreSQL URL);
    ``_db()`` is one transaction. Safe from any thread and process."""

    def __init__(self, database: Database | Path | str) -> None:
        self.database = open_database(database)

    def _db(self, write: bool = False) -> Any:
        """A connection in one transaction; ``write`` (for any block that writes) takes the write lock first,
        so a read-then-write is atomic."""
        return self.database.transaction(write=write)

    @contextmanager
    def remembering(self) -> Iterator[None]:
        """Within the block, in this thread, each lookup that ``_remember``s (a user, a stream, its subscribers)
        reads the database once, in every store: a batch of requests reads the same few users and streams, and
        on PostgreSQL each read is a round trip. For blocks of a few milliseconds whose reads may be as old as
        the block (a worker's batch): a change made meanwhile is seen by the next block."""
        if _remembered_reads() is not None:  # an outer block remembers already
            yield
            return
        _remembered.reads = {}
        try:
            yield
        finally:
            _remembered.reads = None

    @property
    def _remembering(self) -> bool:
        """Whether a ``remembering`` block runs in this thread."""
        return _remembered_reads() is not None

    def _keep(self, key: tuple[Any, ...], value: Any) -> None:
        """Inside a ``remembering`` block, what a lookup of ``key`` gives there from now on (read ahead for it)."""
        reads = _remembered_reads()
        if reads is not None:
            reads[(self.database.url, *key)] = value

    def _remember(self, key: tuple[Any, ...], read: Callable[[], T]) -> T:
        """``read()``, or inside a ``remembering`` block what it gave there before for ``key``."""
        reads = _remembered_reads()
        if reads is None:
            return read()
        key = (self.database.url, *key)
        if key not in reads:
            reads[key] = read()
        return reads[key]


class ci_equal(FunctionElement[bool]):
    """``ci_equal(column, value)``: ``column = value`` without regard to case. SQLite's NOCASE collation there (the
    indexes of such columns are NOCASE), ``lower(column) = lower(value)`` on PostgreSQL (indexes on ``lower``)."""

    type = Boolean()
    name = "ci_equal"
    inherit_cache = True
    #: A comparison, as ``=`` is: without this SQLAlchemy writes ``... = 1`` after it on SQLite (no boolean type
    #: there), and SQLite then reads the whole table instead of the NOCASE index.
    _is_implicitly_boolean = True


@compiles(ci_equal, "sqlite")
def _ci_equal_sqlite(element: ci_equal, compiler: Any, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{column} = {value} COLLATE NOCASE"


@compiles(ci_equal)
def _ci_equal_default(element: ci_equal, compiler: Any, **kw: Any) -> str:
    column, value = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"lower({column}) = lower({value})"


class _OrderedJoin(Join):
    """An inner join read in the order it is written: SQLite's ``CROSS JOIN`` (its planner never reorders one), a
    plain ``JOIN`` elsewhere (PostgreSQL's planner chooses by its statistics, and has no ``CROSS JOIN ... ON``)."""

    inherit_cache = True


def ordered_join(left: FromClause, right: FromClause, onclause: ColumnElement[bool]) -> Join:
    """``left JOIN right ON onclause``, with SQLite made to read ``left`` first (``_OrderedJoin``): for a query
    whose plan must not depend on SQLite's guesses (the history's narrows)."""
    return _OrderedJoin(left, right, onclause)


@compiles(_OrderedJoin, "sqlite")
def _ordered_join_sqlite(join: _OrderedJoin, compiler: Any, asfrom: bool = False, **kw: Any) -> str:
    # SQLAlchemy's own visit_join, with CROSS JOIN for JOIN: each part compiled once, in order, so that the
    # positional parameters stay in step.
    assert join.onclause is not None  # ordered_join always has one
    return (join.left._compiler_dispatch(compiler, asfrom=True, **kw) + " CROSS JOIN "
            + join.right._compiler_dispatch(compiler, asfrom=True, **kw)
            + " ON " + join.onclause._compiler_dispatch(compiler, **kw))


class _Explain(Executable, ClauseElement):
    """The query plan of a statement (``explain``)."""

    inherit_cache = False  # rare: compiled each time

    def __init__(self, statement: Executable) -> None:
        self.statement = statement


@compiles(_Explain, "sqlite")
def _explain_sqlite(element: _Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + compiler.process(element.statement, **kw)


@compiles(_Explain)
def _explain_default(element: _Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + compiler.process(element.statement, **kw)


def explain(connection: Connection, statement: Executable) -> list[str]:
    """How the database would run ``statement``, a line a step: SQLite's ``EXPLAIN QUERY PLAN`` details
    (``SEARCH m USING INDEX ...``), PostgreSQL's ``EXPLAIN`` lines (``Index Scan Backward using ...``)."""
    rows: list[Row[Any]] = list(connection.execute(_Explain(statement)))
    return [str(row[-1]) for row in rows]  # SQLite's detail is its last column; PostgreSQL has one
