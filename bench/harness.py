"""What the benchmarks share: the run's context and RabbitMQ node, timing, and the results table.

Cases are timed in rounds, each round running every case once, after an
untimed warm-up round, and each is reported by its median: machines here
are shared and noisy, a median shrugs off the run a neighbour slowed down,
and rounds spread a slow spell over every case alike. Rates are compared
with the baseline of their benchmark, as a ratio, which holds better from
one machine to the next than events/s.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from eventbus.queue.rabbitmq_node import RabbitMQNode

logger = logging.getLogger(__name__)

#: Timed repetitions per case: with 5, one or two disturbed runs do not move the median.
REPEATS = 5
#: A smoke test only checks that every case runs.
QUICK_REPEATS = 1
#: Untimed runs first: they open connections, declare queues and warm the broker.
WARMUPS = 1


class BenchError(RuntimeError):
    """A case did not do what it was timed for (events missing from the queue, say)."""


@dataclass
class Context:
    """What a benchmark gets: the run's options, a scratch folder, and a broker URL."""

    quick: bool
    repeats: int
    work_dir: Path
    #: A broker to use instead of a private node.
    given_url: str | None = None
    _node: RabbitMQNode | None = field(default=None, init=False, repr=False)

    def size(self, normal: int, quick: int) -> int:
        """How many events a case handles: ``quick`` in a smoke test, else ``normal``."""
        return quick if self.quick else normal

    @property
    def amqp_url(self) -> str:
        """The broker's URL; a private node is started on first use, so benchmarks without RabbitMQ skip it."""
        if self.given_url:
            return self.given_url
        if self._node is None:
            self._node = RabbitMQNode(self.work_dir / "rabbitmq", name=f"eventbus-bench-{os.getpid()}")
            logger.info("starting a private RabbitMQ node in %s", self._node.base_dir)
            self._node.start()
        return self._node.url

    def close(self) -> None:
        """Stop the private node, if one was started."""
        node, self._node = self._node, None
        if node is not None:
            logger.info("stopping the RabbitMQ node")
            try:
                node.stop()
            finally:
                _kill_leftover(node)


def _kill_leftover(node: RabbitMQNode) -> None:
    """Kill the node's Erlang VM if it outlived ``stop()``.

    A start that timed out can leave a VM that ``rabbitmqctl`` cannot reach,
    and ``RabbitMQNode.stop()`` then does nothing. The pid file may be stale:
    only a process whose command line names this node is killed.
    """
    try:
        pid = int((node.base_dir / "node.pid").read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return  # no pid file, or no such process: the normal case
    if node.nodename.encode() in command:
        os.kill(pid, signal.SIGKILL)
        logger.warning("the RabbitMQ node (pid %d) outlived rabbitmqctl stop and was killed", pid)


@contextmanager
def context(*, quick: bool, repeats: int | None = None, amqp_url: str | None = None) -> Iterator[Context]:
    """A context whose scratch folder and node are gone when the block ends, however it ends."""
    with tempfile.TemporaryDirectory(prefix="eventbus-bench-") as tmp:
        ctx = Context(quick, repeats or (QUICK_REPEATS if quick else REPEATS), Path(tmp), amqp_url)
        try:
            yield ctx
        finally:
            ctx.close()


@dataclass(frozen=True)
class Trial:
    """One case to time: ``run`` is timed; ``after`` follows each run, untimed, to reset the broker's state.

    A ``run`` that returns a number of seconds times itself, and that is its
    time: a case whose timed part lies inside it (a consumer process that is
    started untimed, say) reports only that part.
    """

    run: Callable[[], float | None]
    after: Callable[[], None] | None = None


def measure(trials: Sequence[Trial], *, repeats: int) -> list[list[float]]:
    """Seconds taken by each run of each trial: ``repeats`` timed rounds after ``WARMUPS`` untimed ones.

    A round runs every trial once, so that a slow spell of a shared machine
    slows every trial alike and their ratios hold.
    """
    samples: list[list[float]] = [[] for _ in trials]
    for round_ in range(WARMUPS + repeats):
        for trial, seconds in zip(trials, samples, strict=True):
            start = time.perf_counter()
            timed = trial.run()
            elapsed = time.perf_counter() - start if timed is None else timed
            if trial.after is not None:
                trial.after()
            if round_ >= WARMUPS:
                seconds.append(elapsed)
    return samples


@dataclass(frozen=True)
class Result:
    """The timings of one case; its rate is ``events`` over the median time."""

    benchmark: str
    case: str
    events: int
    seconds: Sequence[float]
    baseline: bool = False
    #: The baseline case this one is compared with, by name, where a benchmark has several (default: its first).
    versus: str | None = None
    #: The least ratio to the baseline this case should reach, if it has a target.
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Events per second at the median time."""
        return self.events / self.median

    @property
    def spread(self) -> float:
        """Slowest minus fastest run, relative to the median: how noisy the figure is."""
        return (max(self.seconds) - min(self.seconds)) / self.median


#: The table's columns: title, and whether its cells align right (numbers).
COLUMNS = (
    ("benchmark", False), ("case", False), ("events", True), ("runs", True), ("median s", True),
    ("events/s", True), ("spread", True), ("vs baseline", True), ("target", False),
)


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table of the results, each rate also as a ratio to its baseline."""
    rows = [[title for title, _ in COLUMNS]] + [_cells(r, _baseline_rate(r, results)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    rule = ["-" * (w - 1) + ":" if right else "-" * w for w, (_, right) in zip(widths, COLUMNS, strict=True)]
    lines = [_line(row, widths) for row in rows]
    lines.insert(1, _line(rule, widths))
    return "\n".join(lines)


def _baseline_rate(result: Result, results: Sequence[Result]) -> float | None:
    """The rate of the baseline ``result`` is compared with: the one it names, else its benchmark's first."""
    for other in results:
        if other.baseline and other.benchmark == result.benchmark and result.versus in (None, other.case):
            return other.rate
    return None


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    aligned = [c.rjust(w) if right else c.ljust(w) for c, w, (_, right) in zip(cells, widths, COLUMNS, strict=True)]
    return "| " + " | ".join(aligned) + " |"


def _cells(result: Result, baseline: float | None) -> list[str]:
    ratio = result.rate / baseline if baseline else None
    return [
        result.benchmark,
        result.case,
        f"{result.events:,}",
        str(len(result.seconds)),
        f"{result.median:.3f}",
        f"{result.rate:,.0f}",
        f"{result.spread:.0%}",
        "baseline" if result.baseline else (f"{ratio:.2f}x" if ratio is not None else "-"),
        _verdict(result.target, ratio),
    ]


def _verdict(target: float | None, ratio: float | None) -> str:
    if target is None:
        return ""
    if ratio is None:
        return f">= {target:.2f}x: no baseline"
    return f">= {target:.2f}x: {'met' if ratio >= target else 'MISSED'}"


def describe_machine() -> str:
    """One line on where the figures come from: cores, CPU, OS, Python and the client libraries."""
    libraries = ", ".join(f"{name} {_version(name)}" for name in ("pika", "kombu", "ujson"))
    return (f"{os.cpu_count()} cores ({_cpu_model()}), {_os_name()}, "
            f"Python {platform.python_version()}, {libraries}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.platform()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
