"""The stores on PostgreSQL against SQLite (issue 13): ``message_sender``'s throughput on each.

The work timed is the ``message_sender`` worker's own, as in the
``submission`` benchmark's in-process case (``bench.submission.in_process``):
``consume_batch`` in this process, on the in-process broker, in batches of
its ``batch_size``, for messages of the Markdown corpus to a stream of
``RECIPIENTS`` users: checking each request, rendering, storing the batch in
one transaction (a message row and a row per recipient each), publishing the
message events and answering. Only the database differs:

- SQLite: the embedded default, a file in WAL mode in the run's folder;
- PostgreSQL: a private server of Debian's ``postgresql`` package, started for
  the run (``eventbus.devtools.postgresql``), durable (fsync on, as SQLite's
  commits are), reached over TCP on loopback, as workers on other machines
  would reach it over the network.

Target: PostgreSQL at least 0.8x SQLite's messages/s.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from bench import register
from bench.harness import BenchError, Context, Result, in_rounds
from bench.markdown import corpus
from bench.submission import RECIPIENTS, STREAM, InProcess, in_process
from eventbus.contracts import NOTIFY_TORNADO, TORNADO_RETURN
from eventbus.database import close_database
from eventbus.devtools.postgresql import PostgreSQLError, PostgreSQLServer
from eventbus.messages import MessageStore
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from eventbus.users import User, UserStore

logger = logging.getLogger(__name__)

#: Messages per run: the worker does a few thousand a second on SQLite here.
MESSAGES = 3000
QUICK_MESSAGES = 200
#: PostgreSQL's target against SQLite (issue 13).
TARGET = 0.8


def _users(database: Path | str) -> list[User]:
    store = UserStore(database)
    users = [store.create_user(f"bench{i}@example.com", f"Bench User {i}") for i in range(RECIPIENTS)]
    MessageStore(database).create_stream(STREAM, [u.id for u in users])
    return users


@contextmanager
def _postgresql() -> Iterator[str]:
    # Under /tmp, not the run's folder: as root, the server runs as the postgres user, who must reach it.
    root = Path(tempfile.mkdtemp(prefix="eventbus-bench-postgresql-"))
    logger.info("starting a private PostgreSQL server in %s", root)
    try:
        server = PostgreSQLServer(root).start()
    except PostgreSQLError as error:
        raise BenchError(str(error)) from error
    try:
        yield server.create_database("bench")
    finally:
        logger.info("stopping PostgreSQL")
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@register("database", "message_sender messages/s with the stores on PostgreSQL against SQLite (issue 13)")
def database(context: Context) -> list[Result]:
    count = context.size(MESSAGES, QUICK_MESSAGES)
    case = f"message_sender consume_batch, {RECIPIENTS} recipients"
    with ExitStack() as stack:
        sides: dict[str, Path | str] = {
            "SQLite": context.work_dir / "database" / "eventbus.sqlite3",
            "PostgreSQL": stack.enter_context(_postgresql()),
        }
        admin = RabbitMQBroker(Settings(amqp_url=context.amqp_url, var_dir=context.work_dir / "database"))
        stack.callback(admin.close)
        for queue in (NOTIFY_TORNADO, TORNADO_RETURN):
            admin.delete_queue(queue)  # a broker given with --amqp-url may hold old ones
            stack.callback(admin.delete_queue, queue)
        workers: dict[str, InProcess] = {}
        for name, target in sides.items():
            stack.callback(close_database, target)
            users = _users(target)
            contents = corpus(count, [u.full_name for u in users], [STREAM])
            settings = Settings(amqp_url=context.amqp_url, var_dir=context.work_dir / "database" / name,
                                database_setting=target, broker="memory")
            workers[f"{case}, memory broker, {name}"] = stack.enter_context(in_process(settings, users, contents))
            rabbitmq = RabbitMQBroker(settings.replace(broker="rabbitmq"))
            stack.callback(rabbitmq.close)
            workers[f"{case}, RabbitMQ, {name}"] = stack.enter_context(
                in_process(settings, users, contents, broker=rabbitmq))
        runs = dict(zip(workers, in_rounds([partial(w.run, count) for w in workers.values()],
                                           repeats=context.repeats), strict=True))
    results = []
    for broker in ("RabbitMQ", "memory broker"):
        baseline = f"{case}, {broker}, SQLite"
        results += [
            Result("database", baseline, count, [r.seconds for r in runs[baseline]], baseline=True),
            Result("database", f"{case}, {broker}, PostgreSQL", count,
                   [r.seconds for r in runs[f"{case}, {broker}, PostgreSQL"]], versus=baseline,
                   target=TARGET if broker == "RabbitMQ" else None),
        ]
    return results
