"""The baselines of the consume benchmark: a raw pika consumer in a process of its own.

    EVENTBUS_AMQP_URL=amqp://... python -m bench._raw_consumer QUEUE EVENTS DONE_FILE [--ack-every N] [--prefetch N]

It consumes EVENTS events from QUEUE through pika's BlockingConnection,
decoding each body with ujson, and acks each one (``--ack-every 1``) or every
Nth with ``multiple`` (and the rest with the last). It then writes the
wall-clock time of its last ack to DONE_FILE as JSON, closes its connection
and waits for SIGTERM, on which it exits 0: the benchmark stops it as it
stops a worker. It imports pika and ujson and nothing of eventbus: it is the
least a worker process can cost. The URL comes from the environment, as a
worker's does, to stay off the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pika
import ujson


def consume(url: str, queue: str, events: int, *, ack_every: int, prefetch: int) -> float:
    """Consume ``events`` events from ``queue``; the wall-clock time at which the last was acked."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    received = 0
    done_at = 0.0

    def on_message(channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        """Invoked by pika for each delivery."""
        nonlocal received, done_at
        ujson.loads(body)
        received += 1
        if received % ack_every == 0 or received == events:
            channel.basic_ack(method.delivery_tag, multiple=ack_every > 1)
        if received == events:
            done_at = time.time()
            channel.stop_consuming()

    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    finally:
        connection.close()
    return done_at


def write_done(path: Path, done_at: float) -> None:
    """Write the file in one step: the benchmark polls for it and must never read half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"done": done_at}))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._raw_consumer", description=__doc__.split("\n")[0])
    parser.add_argument("queue")
    parser.add_argument("events", type=int)
    parser.add_argument("done_file", type=Path)
    parser.add_argument("--ack-every", type=int, default=1, help="ack every Nth event, multiple (default 1: each)")
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    done_at = consume(os.environ["EVENTBUS_AMQP_URL"], args.queue, args.events,
                      ack_every=args.ack_every, prefetch=args.prefetch)
    write_done(args.done_file, done_at)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
