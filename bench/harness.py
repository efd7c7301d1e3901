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
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from eventbus.queue.rabbitmq_node import RabbitMQNode

logger = logging.getLogger(__name__)

T = TypeVar("T")

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
    _vhosts: set[str] = field(default_factory=set, init=False, repr=False)

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

    def vhost_url(self, name: str) -> str | None:
        """The URL of the private node's virtual host ``name``, made on first use, where set-ups whose queue
        names are the same run beside each other; None on a given broker (a benchmark then runs them in turn)."""
        if self.given_url:
            return None
        url = self.amqp_url  # the node, started if need be
        assert self._node is not None
        if name not in self._vhosts:
            self._node.ctl("add_vhost", name)
            self._node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
            self._vhosts.add(name)
        return f"{url.rsplit('/', 1)[0]}/{name}"

    def node_pid(self) -> int | None:
        """The process id of the private node's Erlang VM, if one runs (None with ``--amqp-url``)."""
        return self._node.pid() if self._node is not None else None

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
    """Seconds taken by each run of each trial: ``repeats`` timed rounds after ``WARMUPS`` untimed ones."""
    return in_rounds([partial(_timed, trial) for trial in trials], repeats=repeats)


def _timed(trial: Trial) -> float:
    start = time.perf_counter()
    timed = trial.run()
    elapsed = time.perf_counter() - start if timed is None else timed
    if trial.after is not None:
        trial.after()
    return elapsed


def in_rounds(runs: Sequence[Callable[[], T]], *, repeats: int) -> list[list[T]]:
    """What each of ``runs`` returned, run after run: ``repeats`` rounds after ``WARMUPS`` discarded ones.

    A round calls every run once, so that a slow spell of a shared machine
    slows every case alike and their ratios hold.
    """
    samples: list[list[T]] = [[] for _ in runs]
    for round_ in range(WARMUPS + repeats):
        for run, values in zip(runs, samples, strict=True):
            value = run()
            if round_ >= WARMUPS:
                values.append(value)
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

    @property
    def summary(self) -> str:
        return f"{self.case:<45} {self.rate:9.0f} events/s (median of {len(self.seconds)})"


@dataclass(frozen=True)
class Figure:
    """A quantity measured once per run that is not a rate (a latency percentile, memory per connection).

    Lower is better. It is compared with its baseline as its median over the
    baseline's median, and its target is a most: in its unit (``limit``) or
    as that ratio (``limit_ratio``).
    """

    benchmark: str
    case: str
    #: What one run measured it over: clients, events, connections.
    count: int
    values: Sequence[float]
    unit: str
    baseline: bool = False
    #: The baseline case this one is compared with, by name (default: its benchmark's first).
    versus: str | None = None
    limit: float | None = None
    limit_ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Largest minus smallest value, relative to the median."""
        return (max(self.values) - min(self.values)) / self.median if self.median else 0.0

    @property
    def summary(self) -> str:
        return f"{self.case:<45} {self.median:9.2f} {self.unit} (median of {len(self.values)})"


#: What a benchmark returns: rates, figures, or both.
Outcome = Result | Figure

#: The tables' columns: title, and whether its cells align right (numbers).
COLUMNS = (
    ("benchmark", False), ("case", False), ("events", True), ("runs", True), ("median s", True),
    ("events/s", True), ("spread", True), ("vs baseline", True), ("target", False),
)
FIGURE_COLUMNS = (
    ("benchmark", False), ("case", False), ("over", True), ("runs", True), ("median", True),
    ("spread", True), ("vs baseline", True), ("target", False),
)


def format_table(results: Sequence[Outcome]) -> str:
    """Markdown tables of the results: rates (each also as a ratio to its baseline), then figures, if any."""
    rates = [r for r in results if isinstance(r, Result)]
    figures = [r for r in results if isinstance(r, Figure)]
    tables = []
    if rates or not figures:
        tables.append(_table(COLUMNS, [_cells(r, _baseline_rate(r, rates)) for r in rates]))
    if figures:
        tables.append(_table(FIGURE_COLUMNS, [_figure_cells(f, _baseline_figure(f, figures)) for f in figures]))
    return "\n\n".join(tables)


def _table(columns: Sequence[tuple[str, bool]], body: list[list[str]]) -> str:
    rows = [[title for title, _ in columns], *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    rule = ["-" * (w - 1) + ":" if right else "-" * w for w, (_, right) in zip(widths, columns, strict=True)]
    lines = [_line(row, widths, columns) for row in rows]
    lines.insert(1, _line(rule, widths, columns))
    return "\n".join(lines)


def _baseline_rate(result: Result, results: Sequence[Result]) -> float | None:
    """The rate of the baseline ``result`` is compared with: the one it names, else its benchmark's first."""
    for other in results:
        if other.baseline and other.benchmark == result.benchmark and result.versus in (None, other.case):
            return other.rate
    return None


def _baseline_figure(figure: Figure, figures: Sequence[Figure]) -> float | None:
    """The median of the baseline ``figure`` is compared with, found as for rates."""
    for other in figures:
        if other.baseline and other.benchmark == figure.benchmark and figure.versus in (None, other.case):
            return other.median
    return None


def _line(cells: Sequence[str], widths: Sequence[int], columns: Sequence[tuple[str, bool]]) -> str:
    aligned = [c.rjust(w) if right else c.ljust(w) for c, w, (_, right) in zip(cells, widths, columns, strict=True)]
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


def _figure_cells(figure: Figure, baseline: float | None) -> list[str]:
    ratio = figure.median / baseline if baseline else None
    return [
        figure.benchmark,
        figure.case,
        f"{figure.count:,}",
        str(len(figure.values)),
        f"{figure.median:,.{_decimals(figure.median)}f} {figure.unit}",
        f"{figure.spread:.0%}",
        "baseline" if figure.baseline else (f"{ratio:.2f}x" if ratio is not None else "-"),
        _figure_verdict(figure, ratio),
    ]


def _decimals(value: float) -> int:
    """Three significant digits, or none after the point for 100 and more."""
    return 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2


def _verdict(target: float | None, ratio: float | None) -> str:
    if target is None:
        return ""
    if ratio is None:
        return f">= {target:.2f}x: no baseline"
    return f">= {target:.2f}x: {'met' if ratio >= target else 'MISSED'}"


def _figure_verdict(figure: Figure, ratio: float | None) -> str:
    verdicts = []
    if figure.limit is not None:
        met = figure.median <= figure.limit
        verdicts.append(f"<= {figure.limit:g} {figure.unit}: {'met' if met else 'MISSED'}")
    if figure.limit_ratio is not None:
        met_ratio = "no baseline" if ratio is None else "met" if ratio <= figure.limit_ratio else "MISSED"
        verdicts.append(f"<= {figure.limit_ratio:.2f}x: {met_ratio}")
    return "; ".join(verdicts)


def describe_machine() -> str:
    """One line on where the figures come from: cores, CPU, OS, Python and the client libraries."""
    libraries = ", ".join(f"{name} {_version(name)}" for name in ("pika", "kombu", "ujson", "tornado"))
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
