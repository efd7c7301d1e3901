"""The baselines of the consume benchmark: a raw pika consumer in a process of its own.

    EVENTBUS_AMQP_URL=amqp://... python -m bench._raw_consumer QUEUE EVENTS [--ack-every N] [--prefetch N]

It consumes EVENTS events from QUEUE through pika's BlockingConnection,
decoding each body with ujson, and acks each one (``--ack-every 1``) or every
Nth with ``multiple`` (and the rest with the last), then prints the wall-clock
time of its last ack as one JSON line and exits. It imports pika and ujson and
nothing of eventbus: it is the least a worker process can cost. The URL comes
from the environment, as a worker's does, to stay off the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._raw_consumer", description=__doc__.split("\n")[0])
    parser.add_argument("queue")
    parser.add_argument("events", type=int)
    parser.add_argument("--ack-every", type=int, default=1, help="ack every Nth event, multiple (default 1: each)")
    parser.add_argument("--prefetch", type=int, default=100)
    args = parser.parse_args(argv)
    done_at = consume(os.environ["EVENTBUS_AMQP_URL"], args.queue, args.events,
                      ack_every=args.ack_every, prefetch=args.prefetch)
    print(json.dumps({"done": done_at}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
