"""The ``eventbus`` command line: one subcommand per operator task.

Each subcommand is a function ``cmd_<name>(args) -> exit code`` registered
with its arguments in ``build_parser``; a bad argument is one line on stderr
and exit code 2. Logging is configured here, never in library modules.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from eventbus.contracts import NOTIFY_TORNADO, TORNADO_RETURN
from eventbus.errors import EventBusError
from eventbus.processors import monitoring
from eventbus.processors.registry import get_worker_class, registered_queues
from eventbus.queue import get_broker

#: Exit code of a usage error, as argparse has it.
USAGE = 2


class UsageError(Exception):
    """A bad argument: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE)


def known_queue(name: str) -> str:
    """The queue, if a processor is registered for it."""
    try:
        get_worker_class(name)
    except EventBusError as e:
        raise UsageError(str(e)) from None
    return name


# -- subcommands --------------------------------------------------------------------


def cmd_process_queue(args: argparse.Namespace) -> int:
    from eventbus.processors.runner import run_all, run_worker

    if args.all:
        return run_all(registered_queues(), get_broker())
    return run_worker(known_queue(args.queue), get_broker(), worker_num=args.worker_num)


def cmd_purge_queue(args: argparse.Namespace) -> int:
    count = get_broker().purge(args.queue)
    print(f"purged {count} event(s) from {args.queue}")
    return 0


def cmd_list_queues(args: argparse.Namespace) -> int:
    broker = get_broker()
    reports = monitoring.queue_reports(broker, registered_queues())
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
        return 0
    rows = [("queue", "depth", "consumers", "avg consume", "backlog", "errors", "state")]
    for r in reports:
        rows.append((r.name, str(r.depth), str(r.consumers), _seconds(r.average_consume_time),
                     _seconds(r.backlog_seconds), str(r.errors), r.state.name))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in pairs]
        print("  ".join(cells))
    return 0


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.1f} s"


def cmd_check_queue(args: argparse.Namespace) -> int:
    queues = [known_queue(args.queue)] if args.queue else registered_queues()
    state, line = monitoring.check_queue(get_broker(), queues)
    print(line)
    return int(state)


def cmd_check_consumers(args: argparse.Namespace) -> int:
    state, line = monitoring.check_consumers(get_broker(), registered_queues())
    print(line)
    return int(state)


def cmd_supervisor_conf(args: argparse.Namespace) -> int:
    from eventbus.processors.supervisor import supervisor_conf
    from eventbus.settings import get_settings

    path = shutil.which("eventbus") or os.path.abspath(sys.argv[0])
    print(supervisor_conf(registered_queues(), path, args.log_dir, args.user, get_settings().sharding.count), end="")
    return 0


def cmd_nginx_conf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eventbus import nginx
    from eventbus.settings import get_settings

    settings = get_settings()
    if args.standalone:
        text = nginx.standalone_conf(settings, args.listen, Path(args.standalone).resolve())
    else:
        text = nginx.http_conf(settings, args.listen, args.server_name)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


def cmd_replay_errors(args: argparse.Namespace) -> int:
    broker = get_broker()
    replayed = 0

    def replay(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal replayed
        events = [e["event"] for e in entries if "event" in e]
        broker.publish_many(args.queue, events)
        replayed = len(events)
        return [e for e in entries if "event" not in e]  # a body that was not JSON cannot be sent again

    broker.error_store.take(args.queue, replay)
    left = broker.error_store.count(args.queue)
    print(f"replayed {replayed} event(s) to {args.queue}" + (f"; {left} undecodable left in the store" if left else ""))
    return 0


def cmd_runtornado(args: argparse.Namespace) -> int:
    import asyncio

    from eventbus.app import serve
    from eventbus.settings import get_settings

    settings = get_settings()
    if args.shard is not None:
        settings = settings.replace(tornado_shard=args.shard)
        settings.validate()
    port, host = settings.port, "127.0.0.1"
    if settings.sharding.sharded:  # a shard listens where the sharding says it does
        shard = settings.sharding.shard(settings.tornado_shard)
        port, host = shard.port, shard.host
    asyncio.run(serve(settings, args.port or port, args.host or host))
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    from eventbus.settings import get_settings
    from eventbus.users import UserError, UserStore

    try:
        user = UserStore(get_settings().database).create_user(args.email, args.full_name)
    except UserError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"user_id": user.id, "email": user.email, "full_name": user.full_name,
                      "api_key": user.api_key}))
    return 0


def cmd_deactivate_user(args: argparse.Namespace) -> int:
    from functools import partial

    from eventbus.accounts import deactivate_user
    from eventbus.sessions import SessionStore
    from eventbus.settings import get_settings
    from eventbus.tornado_events import send_event
    from eventbus.users import UserError, UserStore

    database = get_settings().database
    try:
        done = deactivate_user(UserStore(database), SessionStore(database), args.email,
                               partial(send_event, get_broker()))
    except UserError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"user_id": done.user.id, "email": done.user.email, "sessions_ended": done.sessions_ended}))
    return 0


def cmd_create_stream(args: argparse.Namespace) -> int:
    from eventbus.messages import MessageStore
    from eventbus.settings import get_settings

    store = MessageStore(get_settings().database)
    subscribers = []
    for email in args.subscribers:
        user = store.users.get_by_email(email)
        if user is None:
            raise UsageError(f"no user with email {email!r} (create it with eventbus create_user)")
        subscribers.append(user.id)
    stream = store.create_stream(args.name, subscribers)
    print(json.dumps({"stream_id": stream.id, "name": stream.name, "subscribers": store.subscribers(stream.id),
                      "email_address": f"{stream.email_token}@{get_settings().email_gateway_domain}"}))
    return 0


def cmd_email_mirror_server(args: argparse.Namespace) -> int:
    from eventbus.processors.mirror_server import serve

    return serve(args.host, args.port, get_broker())


def cmd_rabbitmq(args: argparse.Namespace) -> int:
    from eventbus.queue import rabbitmq_node

    argv = [args.action, "--dir", args.dir, "--name", args.name]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.nodes is not None:
        argv += ["--nodes", str(args.nodes)]
    return rabbitmq_node.main(argv)


def cmd_migrate_queues(args: argparse.Namespace) -> int:
    from eventbus.queue.migration import QueueMigrator
    from eventbus.settings import get_settings

    settings = get_settings()
    if settings.broker != "amqp":
        raise UsageError("migrate_queues is for RabbitMQ queues (EVENTBUS_BROKER=amqp)")
    queues = args.queues or known_queues(settings.queue_type)
    changed = 0
    with QueueMigrator(settings).connected() as migrator:
        for queue in queues:
            migration = migrator.migrate_queue(queue)
            changed += migration.changed
            if migration.changed or args.queues:  # the queues named are reported whatever happened
                print(migration.describe(), flush=True)
    print(f"{len(queues)} queue(s) checked, {changed} migrated to EVENTBUS_QUEUE_TYPE={settings.queue_type}")
    return 0


def cmd_copy_database(args: argparse.Namespace) -> int:
    from eventbus.database import DatabaseError, open_database
    from eventbus.migrations import copy_database
    from eventbus.settings import get_settings, redact_url

    source = get_settings().database
    try:
        copied = copy_database(open_database(source), open_database(args.target))
    except DatabaseError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"from": redact_url(str(source)), "to": redact_url(args.target), "rows": copied}))
    return 0


def known_queues(queue_type: str) -> list[str]:
    """Every queue eventbus declares that can be named in advance: the processors' queues, their retry delay
    queues and dead-letter queues, and the Tornado server's."""
    from eventbus.queue.declarations import dead_letter_queue_name, takes_dead_letters
    from eventbus.queue.delay import delay_queue_name
    from eventbus.settings import get_settings

    sharding = get_settings().sharding
    shards = range(sharding.count) if sharding.sharded else range(0)
    tornado = [NOTIFY_TORNADO, TORNADO_RETURN,
               *(queue for shard in shards for queue in (sharding.notify_queue(shard), sharding.return_queue(shard)))]
    queues = []
    for name in [*registered_queues(enabled_only=False), *tornado]:
        queues.append(name)
        if takes_dead_letters(name, queue_type):
            queues.append(dead_letter_queue_name(name))
    for name in registered_queues(enabled_only=False):
        options = get_worker_class(name).options
        queues += [delay_queue_name(name, options.retry_delay * 2 ** (tries - 1)) for tries in range(1, options.tries)]
    return queues


# -- the parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eventbus", description="Run, inspect and operate eventbus queues.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=globals()[f"cmd_{name}"])
        return sub

    process = command("process_queue", "run the processor of a queue (or of every queue)")
    which = process.add_mutually_exclusive_group(required=True)
    which.add_argument("--queue", "--queue_name", dest="queue", metavar="NAME", help="the queue to process")
    which.add_argument("--all", action="store_true", help="every registered queue, one thread each")
    process.add_argument("--worker_num", type=int, default=0, metavar="N",
                         help="this worker's number when several process one queue (default 0)")

    purge = command("purge_queue", "delete every event waiting in a queue")
    purge.add_argument("queue", metavar="NAME")

    listing = command("list_queues", "depth, consumers, consume time and backlog of every queue")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = command("check_queue", "Nagios check: queues stuck or falling behind")
    check.add_argument("--queue", metavar="NAME", help="check only this queue")

    command("check_consumers", "Nagios check: every queue has a consumer")

    supervisor = command("supervisor_conf", "print the supervisord configuration for the workers")
    supervisor.add_argument("--log-dir", default="/var/log/eventbus", help="folder for the workers' logs")
    supervisor.add_argument("--user", help="user the workers run as")

    replay = command("replay_errors", "publish the events of a queue's error store again")
    replay.add_argument("queue", metavar="NAME")

    tornado = command("runtornado", "run the Tornado event server")
    tornado.add_argument("--port", type=int, default=None,
                         help="port to listen on (default: the shard's in EVENTBUS_TORNADO_SHARDS, else EVENTBUS_PORT)")
    tornado.add_argument("--host", default=None,
                         help="address to listen on (default: the shard's in EVENTBUS_TORNADO_SHARDS, else 127.0.0.1)")
    tornado.add_argument("--shard", type=int, default=None, metavar="N",
                         help="which shard of EVENTBUS_TORNADO_SHARDS this process is (default EVENTBUS_TORNADO_SHARD)")

    proxy = command("nginx_conf", "print the nginx configuration that routes requests to the Tornado shards")
    proxy.add_argument("--listen", default="80", help="nginx's listen address (default 80)")
    proxy.add_argument("--server-name", default="_", help="nginx's server_name (default _: any)")
    proxy.add_argument("--standalone", metavar="PREFIX",
                       help="a whole configuration keeping its files under PREFIX, for nginx -p PREFIX (development)")
    proxy.add_argument("--output", metavar="FILE", help="write it to FILE instead of standard output")

    user = command("create_user", "create a user and print its API key as JSON")
    user.add_argument("email")
    user.add_argument("--full-name", default=None, help="the user's name (default: the email's local part)")

    deactivate = command("deactivate_user", "deactivate a user: sessions, websockets, queues and API key end")
    deactivate.add_argument("email")

    stream = command("create_stream", "create a stream (or add subscribers to it) and print it as JSON")
    stream.add_argument("name")
    stream.add_argument("--subscribers", nargs="*", default=[], metavar="EMAIL", help="users to subscribe")

    mirror = command("email_mirror_server", "receive mail over SMTP and queue it to email_mirror")
    mirror.add_argument("--port", type=int, default=2525, help="port to listen on (default 2525)")
    mirror.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")

    migrate = command("migrate_queues", "declare queues again with EVENTBUS_QUEUE_TYPE, moving their events over")
    migrate.add_argument("queues", nargs="*", metavar="NAME",
                         help="queues to migrate (default: every queue eventbus declares; name other delay queues)")

    copy = command("copy_database", "copy every store from EVENTBUS_DATABASE into a new, empty database (from a "
                   "SQLite file to PostgreSQL, say), ids kept; stop every eventbus process first")
    copy.add_argument("target", metavar="DATABASE", help="a postgresql:// URL or a SQLite file's path")

    rabbitmq = command("rabbitmq", "start, stop or check a private RabbitMQ node, or a local cluster")
    rabbitmq.add_argument("action", choices=["start", "stop", "status"])
    rabbitmq.add_argument("--dir", default="var/rabbitmq", help="the node's folder (default var/rabbitmq)")
    rabbitmq.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    rabbitmq.add_argument("--name", default="eventbus", help="node name before @localhost")
    rabbitmq.add_argument("--nodes", type=int, default=None, metavar="N",
                          help="start a local cluster of N nodes; prints their comma-separated URLs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # pika warns of every failed passive declare, aiosmtpd logs every SMTP command: our modules log what matters.
        logging.getLogger("pika").setLevel(logging.ERROR)
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except (UsageError, ValueError) as e:
        print(f"eventbus {args.command}: error: {e}", file=sys.stderr)
        return USAGE
    except EventBusError as e:
        print(f"eventbus {args.command}: {e}", file=sys.stderr)
        return 3 if args.command.startswith("check_") else 1


if __name__ == "__main__":
    sys.exit(main())
