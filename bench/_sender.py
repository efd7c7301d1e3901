"""The producer of the latency benchmarks: message events at a steady rate, each to one user, round robin.

    python -m bench._sender FLAVOR RATE SECONDS FIRST_ID USERS_FILE [--queue QUEUE] [--threads N] [--to-all]

Each event is ``bench._load_client.message_event`` with message ids from
FIRST_ID on, stamped ``"sent": time.time()`` just before it is handed over;
with ``--to-all``, each goes to every user of USERS_FILE (a message to a
stream they are all subscribed to).
Events are due every 1/RATE s from the start, shared round robin by
``--threads`` threads (default ``THREADS``), as by the threads of a web
server. A thread hands over every event of its share that is due, at once
(at most ``BATCH`` in one go): one at a time while it keeps up, and in a
batch when it has fallen behind, so that it catches up at once.

``eventbus``
    ``eventbus.tornado_events.send_events(broker, events)``, settings from
    ``EVENTBUS_*``: confirmed publishes to the notify queues, a batch's
    confirms pipelined (one round trip), as a producer calls it (a
    connection per thread, as eventbus keeps them).
``pika``
    pika's BlockingConnection (one per thread), ``basic_publish`` of the
    same notice to QUEUE (URL in ``EVENTBUS_AMQP_URL``), persistent,
    without confirms: the least a producer does.

Every thread connects and sends one notice to no user before the clock
starts. Prints ``{"sent": N, "seconds": S, "late_ms": L}``: S the time the
sending took, L how far behind its due time the latest event was handed
over (the producer's own lag: where it nears the latency being measured,
the producer, not the server, is the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pika
import ujson

from bench._load_client import message_event

#: One notice: the event and its users.
Notice = tuple[dict[str, Any], list[int]]
#: What a producer does with the notices that are due: hands them over, in order.
Send = Callable[[list[Notice]], None]
#: send_event waits for RabbitMQ's confirm, a round trip of 1 to 3 ms here: one thread alone managed 390/s, two
#: fell behind in some runs. More threads than needed fight for the GIL and lengthen the tail (p99 with 4 threads
#: was 3 to 5 times that with 2). Threads that hand over what is due in batches keep up with thousands a second.
THREADS = 3
#: The most events a thread hands over in one go: a batch of confirms is one round trip, but a huge one would
#: leave the events at its end waiting for those at its start.
BATCH = 100


def eventbus_sender() -> Send:
    from eventbus.queue import get_broker
    from eventbus.tornado_events.notify import send_events

    broker = get_broker()  # this benchmark process is an entry point: the process's broker

    def send(notices: list[Notice]) -> None:
        send_events(broker, notices)

    return send


def pika_sender(queue: str) -> Send:
    channel = pika.BlockingConnection(pika.URLParameters(os.environ["EVENTBUS_AMQP_URL"])).channel()
    channel.queue_declare(queue, durable=True)
    persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def send(notices: list[Notice]) -> None:
        for event, users in notices:
            channel.basic_publish("", queue, ujson.dumps({"event": event, "users": users}).encode(), persistent)

    return send


def run(connect: Callable[[], Send], rate: float, seconds: float, first_id: int, user_ids: list[int],
        threads: int, to_all: bool = False) -> dict[str, Any]:
    total = int(rate * seconds)
    connected = threading.Barrier(threads + 1)
    go = threading.Event()
    start = 0.0
    failures: list[BaseException] = []
    late = [0.0] * threads

    def notice(i: int) -> Notice:
        return message_event(first_id + i, sent=time.time()), user_ids if to_all else [user_ids[i % len(user_ids)]]

    def produce(offset: int) -> None:
        try:
            send = connect()
            send([({"type": "bench_warmup"}, [])])
        except BaseException as e:
            failures.append(e)
            raise
        finally:
            connected.wait()
        go.wait()
        mine = range(offset, total, threads)
        at = 0
        while at < len(mine):
            wait = start + mine[at] / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = time.perf_counter()
            due = at + 1
            while due < len(mine) and due - at < BATCH and start + mine[due] / rate <= now:
                due += 1
            late[offset] = max(late[offset], now - (start + mine[at] / rate))
            send([notice(i) for i in mine[at:due]])
            at = due

    workers = [threading.Thread(target=produce, args=(t,), daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    connected.wait()
    if failures:
        raise failures[0]
    start = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    return {"sent": total, "seconds": time.perf_counter() - start, "late_ms": round(max(late) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._sender", description=__doc__.split("\n")[0])
    parser.add_argument("flavor", choices=["eventbus", "pika"])
    parser.add_argument("rate", type=float, help="events per second")
    parser.add_argument("seconds", type=float)
    parser.add_argument("first_id", type=int, help="the first message id")
    parser.add_argument("users", type=Path, help="a JSON list of [id, email, api_key]")
    parser.add_argument("--queue", help="the queue the pika producer publishes to")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"producer threads (default {THREADS})")
    parser.add_argument("--to-all", action="store_true", help="send each event to every user, not to one")
    args = parser.parse_args(argv)
    user_ids = [entry[0] for entry in json.loads(args.users.read_text())]
    connect = eventbus_sender if args.flavor == "eventbus" else partial(pika_sender, args.queue)
    sent = run(connect, args.rate, args.seconds, args.first_id, user_ids, args.threads, args.to_all)
    print(json.dumps(sent), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
