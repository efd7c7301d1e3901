"""The whole system in one process, on the in-process broker: for running with no RabbitMQ at all.

``python -m eventbus.devtools.embedded --port 9991`` runs the Tornado server,
every queue processor (a thread each), the SMTP sink and the push gateway
stand-in, until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from eventbus.app import serve
from eventbus.devtools import push_gateway, smtp_sink
from eventbus.processors.registry import registered_queues
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker, set_broker
from eventbus.settings import get_settings, set_settings

logger = logging.getLogger("eventbus.embedded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventbus.devtools.embedded", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9991)
    parser.add_argument("--smtp-port", type=int, default=None, help="port of the SMTP sink (default: the setting)")
    parser.add_argument("--push-port", type=int, default=None, help="port of the push gateway stand-in")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every connection at INFO
    settings = get_settings().replace(broker="memory")
    set_settings(settings)
    broker = MemoryBroker(settings)
    set_broker(broker)
    sink = smtp_sink.start(settings.var_dir, args.smtp_port or settings.smtp_port)
    gateway = push_gateway.start(settings.var_dir, args.push_port) if args.push_port else None
    workers = WorkerThreads(registered_queues(), broker)
    workers.start()
    logger.info("running everything in one process on the in-process broker")
    try:
        asyncio.run(serve(settings, args.port, broker=broker))
    finally:
        workers.stop()
        workers.join(10)
        sink.stop()
        if gateway is not None:
            gateway.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
