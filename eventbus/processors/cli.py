"""The ``eventbus`` command line: one subcommand per operator task.

Each subcommand is a function ``cmd_<name>(args)`` registered with its
arguments in ``build_parser``; modules behind a subcommand are imported only
when it runs, so ``eventbus --help`` stays fast. Logging is configured here,
never in library modules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def cmd_rabbitmq(args: argparse.Namespace) -> int:
    from eventbus.queue import rabbitmq_node

    argv = [args.action, "--dir", args.dir, "--name", args.name]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    return rabbitmq_node.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description="Run, inspect and operate eventbus queues.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rabbitmq = commands.add_parser("rabbitmq", help="start, stop or check a private RabbitMQ node")
    rabbitmq.add_argument("action", choices=["start", "stop", "status"])
    rabbitmq.add_argument("--dir", default="var/rabbitmq", help="the node's folder (default var/rabbitmq)")
    rabbitmq.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    rabbitmq.add_argument("--name", default="eventbus", help="node name before @localhost")
    rabbitmq.set_defaults(handler=cmd_rabbitmq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
