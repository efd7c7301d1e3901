"""Consuming (issue 3): events/s a worker process drains from a queue, against raw pika consumers.

Every case drains the same load: ``EVENTS`` message events of about 200
bytes of JSON (``publish.make_event``), published persistent to a durable
queue with ``RabbitMQBroker.publish_many`` while no consumer is attached.
Then the case's consumer is started as a process of its own, and timed from
the moment RabbitMQ counts it as the queue's consumer to the moment it has
processed and acked the last event:

- the start is observed from outside, by polling the queue's consumer count
  (a passive declare, one round trip) every ``POLL`` seconds, and taken as
  halfway between the last poll that saw no consumer and the first that saw
  it; Python's start-up, imports and connecting are thus left out, alike for
  every case;
- the end is the consumer's own clock, read from a file it writes: the raw
  consumer writes the time of its last ack; a worker writes its stats file
  when its queue runs empty (``QueueStats.emptied``), and the file's
  ``update_time`` once it counts every event processed is the end;
- then the consumer is stopped with SIGTERM and must exit 0, and the queue
  must be empty with no consumer: an event left unacked would be back in it.

The consumer's CPU time over the same span (its threads together, from
``/proc``) is reported too, per event: the consumer is CPU-bound, and its
CPU time moves much less than its wall time when other work shares the
machine.

The baselines are the least a consumer process costs: pika's
BlockingConnection with a prefetch of 100, decoding each body with ujson,
acking each event (A, for the one-at-a-time ``noop`` worker), or every 100th
with ``multiple`` (B, for the ``noop_batch`` worker). Each baseline drains
the same queue as the worker it is compared with. The batch worker asks for
a prefetch of twice its batch (200); one more raw case shows what that alone
is worth to B. ``EVENTS`` is a multiple of the batch size, so no batch waits
out ``batch_wait`` at the tail of the queue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.adapters.blocking_connection

from bench import register
from bench._processes import ROOT, environment
from bench.harness import BenchError, Context, Figure, Outcome, Result, in_rounds
from bench.publish import Event, make_event
from eventbus.contracts import NOOP, NOOP_BATCH
from eventbus.processors.stats import read_stats, stats_path
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings

#: The queues of the shipped NoopWorker and NoopBatchWorker.
ONE_QUEUE = NOOP
BATCH_QUEUE = NOOP_BATCH
#: Events per run: a run then lasts one to several seconds, against a few ms of uncertainty at its start.
EVENTS = 20_000
QUICK_EVENTS = 1_000
#: Unacked events RabbitMQ sends ahead: eventbus's default (``EVENTBUS_PREFETCH``), for the baselines too.
PREFETCH = 100
#: NoopBatchWorker's batch size (``QueueOptions.batch_size``), which baseline B acks by.
BATCH = 100
#: A worker should keep most of raw pika's speed one at a time, and match it in batches.
ONE_TARGET = 0.9
BATCH_TARGET = 1.0
#: How often the consumer count is polled while a consumer starts: the start is known to within this.
POLL = 0.005
#: How often the end is looked for: the end time comes from the consumer, so this only adds a little wall time.
END_POLL = 0.01
#: Longest a consumer may take to start, to drain the queue, or to exit, before the case fails.
TIMEOUT = 120.0
#: Units of the CPU times in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ConsumerProcess(ABC):
    """One case's consumer, started as a process on a loaded queue, stopped by SIGTERM; its output goes to ``log``."""

    def __init__(self, argv: list[str], settings: Settings, log: Path) -> None:
        self.argv = argv
        self.log = log
        env = environment(EVENTBUS_BROKER="amqp", EVENTBUS_AMQP_URL=settings.connection_url,
                          EVENTBUS_VAR_DIR=str(settings.var_dir), EVENTBUS_PREFETCH=str(PREFETCH))
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as output:
            self.process = subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT)

    @abstractmethod
    def finished_at(self) -> float | None:
        """The wall-clock time of its last ack, once it has processed every event; None until then."""

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, all its threads, user and system."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            raise self.failed("exited early") from None
        fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime

    def stop(self) -> None:
        """Ask the process to end; it must exit 0."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT)
        if code != 0:
            raise self.failed(f"exited with {code} on SIGTERM")

    def kill(self) -> None:
        """Kill the process if it still runs (a case that failed halfway)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise self.failed(f"exited early with {code}")

    def failed(self, what: str) -> BenchError:
        """An error naming the process, with the end of its log (the log goes with the scratch folder)."""
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return BenchError(f"python {' '.join(self.argv)}: {what}; its log ends:\n{tail}")


class RawConsumer(ConsumerProcess):
    """``bench._raw_consumer``: writes when it acked the last event to ``done_file``."""

    def __init__(self, settings: Settings, queue: str, events: int, log: Path, *, ack_every: int,
                 prefetch: int) -> None:
        self.done_file = log.with_suffix(".done")
        self.done_file.unlink(missing_ok=True)
        super().__init__(["-m", "bench._raw_consumer", queue, str(events), str(self.done_file),
                          f"--ack-every={ack_every}", f"--prefetch={prefetch}"], settings, log)

    def finished_at(self) -> float | None:
        self.check_running()
        try:
            return float(json.loads(self.done_file.read_text())["done"])
        except FileNotFoundError:
            return None


class WorkerProcess(ConsumerProcess):
    """``python -m eventbus process_queue``: done when its stats file counts every event."""

    def __init__(self, settings: Settings, queue: str, events: int, log: Path) -> None:
        self.var_dir = settings.var_dir
        self.queue = queue
        self.events = events
        stats_path(settings.var_dir, queue).unlink(missing_ok=True)  # a file of an earlier run would end this one
        super().__init__(["-m", "eventbus", "process_queue", f"--queue={queue}"], settings, log)

    def finished_at(self) -> float | None:
        self.check_running()
        stats = read_stats(self.var_dir, self.queue) or {}
        if stats.get("processed", 0) + stats.get("failed", 0) < self.events:
            return None
        if stats["processed"] != self.events or stats["failed"]:
            raise self.failed(f"processed {stats['processed']} and failed {stats['failed']} of {self.events} events")
        return float(stats["update_time"])


#: Starts a case's consumer on a queue loaded with that many events, its output to the log.
Starter = Callable[[Settings, str, int, Path], ConsumerProcess]


def raw_pika(ack_every: int, prefetch: int = PREFETCH) -> Starter:
    def start(settings: Settings, queue: str, events: int, log: Path) -> ConsumerProcess:
        return RawConsumer(settings, queue, events, log, ack_every=ack_every, prefetch=prefetch)

    return start


@dataclass(frozen=True)
class Case:
    name: str
    queue: str
    start: Starter
    baseline: bool = False
    versus: str | None = None
    target: float | None = None


ONE_BASELINE = "raw pika, ack each"
BATCH_BASELINE = f"raw pika, ack multiple per {BATCH}"
#: Each worker runs right after its baseline: a slow spell of the machine is then likelier to hit both.
CASES = (
    Case(ONE_BASELINE, ONE_QUEUE, raw_pika(1), baseline=True),
    Case("noop worker, one at a time (vs ack each)", ONE_QUEUE, WorkerProcess,
         versus=ONE_BASELINE, target=ONE_TARGET),
    Case(BATCH_BASELINE, BATCH_QUEUE, raw_pika(BATCH), baseline=True),
    Case(f"noop_batch worker, batches of {BATCH} (vs ack multiple)", BATCH_QUEUE, WorkerProcess,
         versus=BATCH_BASELINE, target=BATCH_TARGET),
    # The batch worker's own prefetch (twice its batch): what baseline B gains from it.
    Case(f"raw pika, ack multiple per {BATCH}, prefetch {2 * BATCH} (vs ack multiple)", BATCH_QUEUE,
         raw_pika(BATCH, prefetch=2 * BATCH), versus=BATCH_BASELINE),
)


class QueueWatch:
    """Depth and consumer count of queues, over one channel held open: a poll is one round trip."""

    def __init__(self, settings: Settings) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(settings.connection_url))
        self._channel: pika.adapters.blocking_connection.BlockingChannel = self._connection.channel()

    def counts(self, queue: str) -> tuple[int, int]:
        """Events ready in ``queue`` (delivered and unacked ones are not counted), and its consumers."""
        ok = self._channel.queue_declare(queue, passive=True).method
        return ok.message_count, ok.consumer_count

    def wait_consumer(self, queue: str, consumer: ConsumerProcess) -> float:
        """When ``consumer`` registered, to within ``POLL`` and a round trip.

        It registered after the broker answered the last poll that did not
        see it (sent at ``missed``) and before the first poll that did came
        back: the estimate is the middle of that span.
        """
        deadline = time.monotonic() + TIMEOUT
        missed = time.time()
        while True:
            sent = time.time()
            if self.counts(queue)[1]:
                return (missed + time.time()) / 2
            missed = sent
            consumer.check_running()
            if time.monotonic() > deadline:
                raise consumer.failed(f"did not consume {queue} within {TIMEOUT:.0f} s")
            time.sleep(POLL)

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True)
class Sample:
    """One run of a case: wall seconds from registration to the last ack, and the consumer's CPU seconds then."""

    seconds: float
    cpu_seconds: float


@register("consume", "events/s a worker process drains from a queue, against raw pika consumers (issue 3)")
def consume(context: Context) -> list[Outcome]:
    settings = Settings(amqp_url=context.amqp_url, var_dir=context.work_dir / "var")
    events = [make_event(i) for i in range(context.size(EVENTS, QUICK_EVENTS))]
    with ExitStack() as stack:
        loader = RabbitMQBroker(settings)
        stack.callback(loader.close)
        for queue in (ONE_QUEUE, BATCH_QUEUE):
            loader.delete_queue(queue)  # a broker given with --amqp-url may hold old ones
            stack.callback(loader.delete_queue, queue)
        watch = QueueWatch(settings)
        stack.callback(watch.close)
        drain = Drain(settings, loader, watch, events, context.work_dir / "logs")
        samples = in_rounds([drain.runner(case) for case in CASES], repeats=context.repeats)
    return _rates(samples, len(events)) + _cpu_figures(samples, len(events))


def _rates(samples: Sequence[Sequence[Sample]], events: int) -> list[Outcome]:
    return [Result("consume", case.name, events, [s.seconds for s in runs], baseline=case.baseline,
                   versus=case.versus, target=case.target) for case, runs in zip(CASES, samples, strict=True)]


def _cpu_figures(samples: Sequence[Sequence[Sample]], events: int) -> list[Outcome]:
    return [Figure("consume", f"{case.name}: CPU", events, [s.cpu_seconds / events * 1e6 for s in runs],
                   "µs CPU/event", baseline=case.baseline, versus=case.versus and f"{case.versus}: CPU")
            for case, runs in zip(CASES, samples, strict=True)]


@dataclass
class Drain:
    """One run of a case: load its queue, start its consumer, time the draining, check the queue."""

    settings: Settings
    loader: RabbitMQBroker
    watch: QueueWatch
    events: list[Event]
    log_dir: Path

    def runner(self, case: Case) -> Callable[[], Sample]:
        return lambda: self.run(case)

    def run(self, case: Case) -> Sample:
        self._load(case)
        log = self.log_dir / f"{re.sub(r'[^a-z0-9]+', '-', case.name.lower()).strip('-')}.log"
        with self._started(case, log) as consumer:
            registered = self.watch.wait_consumer(case.queue, consumer)
            cpu_at_start = consumer.cpu_seconds()
            finished = self._wait_finished(case, consumer)
            cpu = consumer.cpu_seconds() - cpu_at_start
            consumer.stop()
        depth, consumers = self.watch.counts(case.queue)
        if depth or consumers:
            raise BenchError(f"{case.name}: {depth} event(s) back in {case.queue} after the consumer "
                             f"stopped (unacked), {consumers} consumer(s) left")
        return Sample(finished - registered, cpu)

    def _load(self, case: Case) -> None:
        self.loader.publish_many(case.queue, self.events)
        depth, consumers = self.watch.counts(case.queue)
        if depth != len(self.events) or consumers:
            raise BenchError(f"{case.name}: {case.queue} holds {depth} events and {consumers} consumer(s) "
                             f"after loading {len(self.events)}")

    @contextmanager
    def _started(self, case: Case, log: Path) -> Iterator[ConsumerProcess]:
        consumer = case.start(self.settings, case.queue, len(self.events), log)
        try:
            yield consumer
        finally:
            consumer.kill()

    def _wait_finished(self, case: Case, consumer: ConsumerProcess) -> float:
        deadline = time.monotonic() + TIMEOUT
        while (finished := consumer.finished_at()) is None:
            if time.monotonic() > deadline:
                raise consumer.failed(f"did not drain {case.queue} within {TIMEOUT:.0f} s")
            time.sleep(END_POLL)
        return finished
