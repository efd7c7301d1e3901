"""Running workers: one per process, all in threads of one process, and shutting down cleanly.

Shutdown: the first SIGTERM or SIGINT lets each worker finish and ack the
batch in hand, then the process exits 0; a second one exits at once, and
RabbitMQ delivers the unacked events again.

A worker that crashes (its processor's ``before_start`` raised, the broker
went away for longer than the retry budget, the error store cannot be
written) is logged at CRITICAL with its traceback, and the process exits
``CRASHED`` (1): not 2, which says "usage error" to an operator. Its unacked
events go back to the queue; the supervisor starts it again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventbus.processors.registry import get_worker
from eventbus.processors.worker import Worker
from eventbus.queue import Broker

logger = logging.getLogger(__name__)

#: How long the other workers get to finish their batch after one crashed.
CRASH_GRACE = 30.0
#: Exit code of a process whose worker crashed (2 is a usage error, as argparse has it).
CRASHED = 1


@contextmanager
def shutdown_signals(stop: Callable[[], None]) -> Iterator[None]:
    """First SIGTERM/SIGINT: call ``stop()``; second: exit the process at once. Main thread only."""
    received = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal received
        received += 1
        if received == 1:
            logger.info("%s: finishing the current batch, then exiting", signal.Signals(signum).name)
            stop()
        else:
            logger.warning("second %s: exiting now; unacked events go back to the queue",
                           signal.Signals(signum).name)
            os._exit(1)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_worker(queue_name: str, broker: Broker, *, worker_num: int = 0) -> int:
    """Run the processor of one queue in this thread until a signal stops it; the exit code."""
    worker = get_worker(queue_name, broker, worker_num=worker_num)
    logger.info("processing queue %s (worker %d)", queue_name, worker_num)
    with shutdown_signals(worker.stop):
        if not run_logging_crash(worker):
            return CRASHED
    logger.info("queue %s: stopped", queue_name)
    return 0


def run_logging_crash(worker: Worker) -> bool:
    """Run ``worker`` until it stops (True) or crashes (False, logged at CRITICAL with the traceback)."""
    try:
        worker.start()
    except BaseException:  # a SystemExit or KeyboardInterrupt from a processor is a crash as well
        logger.critical("worker for queue %s crashed; its unacked events go back to the queue",
                        worker.queue_name, exc_info=True)
        return False
    return True


class WorkerThreads:
    """The processors of several queues, each in a thread of its own, in this process, all on one broker.

    Keyword arguments override the queues' options for these workers (see ``get_worker``).
    """

    def __init__(self, queue_names: Sequence[str], broker: Broker, **options: Any) -> None:
        self.workers: list[Worker] = [get_worker(name, broker, **options) for name in queue_names]
        self.crashed = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            thread = threading.Thread(target=self._run, args=(worker,), name=f"worker {worker.queue_name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, worker: Worker) -> None:
        if not run_logging_crash(worker):
            self.crashed.set()  # the process stops: see run_all

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Ask every worker to finish its batch; safe in a signal handler."""
        for worker in self.workers:
            worker.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every thread to end; False if some are still running after ``timeout``."""
        for thread in self._threads:
            thread.join(timeout)
        return not self.alive


def run_all(queue_names: Sequence[str], broker: Broker) -> int:
    """Run several processors as threads of this process until a signal or a crash; the exit code.

    A crashed worker brings the whole process down (exit 1), so that the
    supervisor restarts it, rather than leaving its queue silently unserved.
    """
    threads = WorkerThreads(queue_names, broker)
    logger.info("processing %d queues in one process: %s", len(queue_names), ", ".join(queue_names))
    with shutdown_signals(threads.stop):
        threads.start()
        # Short waits keep the main thread responsive to signals.
        while threads.alive and not threads.crashed.wait(0.5):
            pass
        if threads.crashed.is_set():
            threads.stop()
            if not threads.join(CRASH_GRACE):
                logger.error("workers did not stop within %.0f s after a crash; exiting now", CRASH_GRACE)
                os._exit(CRASHED)
            return CRASHED
        threads.join()
    return 0
