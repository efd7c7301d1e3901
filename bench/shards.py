"""Shards (issue 12): fan-out and sustained delivery with one Tornado shard, and with two behind nginx.

Two set-ups of eventbus event servers (``bench._eventbus_server``) run side
by side on the run's RabbitMQ node, each in a vhost of its own (every shard
also consumes the plain ``notify_tornado``, so they could not share one;
on a broker given with ``--amqp-url`` they run in turn):

- one shard: one server, as without sharding (the baseline);
- two shards: two servers of ``EVENTBUS_TORNADO_SHARDS`` with Debian's nginx
  in front, running the configuration ``eventbus nginx_conf`` writes
  (``eventbus.nginx.standalone_conf``). Some clients talk to nginx, others
  (other users, as many on each shard) to their user's shard directly.

Fan-out: as ``bench.fanout``, one event to ``CLIENTS`` clients, websocket
and long-poll (each case its own users, so a fan-out reaches only its own
clients), timed from the client process. The trigger goes to the first
shard (``POST /api/internal/notify_tornado``), which routes the other
shard's part through its notify queue, as ``send_event`` would. Every case
of both set-ups runs once a round, in the reverse order every other round.

Sustained delivery: the websocket clients of the one-shard set-up and those
through nginx, and a producer (``bench._sender``, ``send_events`` routing by
the same sharding, what is due handed over in pipelined batches) sending
events each to one user for ``SECONDS`` at each rate of a ladder: from
``FIRST_RATE`` doubling until a rate fails (or ``MAX_RATE``), then
``REFINEMENTS`` halvings of the step between the last rate that held and
the first that failed. A rate holds if every event arrived with a p99 under
``P99_LIMIT_MS`` (as ``bench.latency`` measures it), at the first try or
the second; a set-up's figure is the highest that held, both ladders run
in the same rounds. A rate the producer cannot keep up fails
(``bench.latency``); one at which it handed events over late (waiting for
confirms, or for a core), in bursts, is logged with a warning. Each step
logs the CPU each process took (shards, nginx's workers, the clients,
RabbitMQ, the producer), so that a figure can be told from the machine's
ceiling, and the shards' CPU per event at the top rate is reported.

Targets: two shards deliver at least ``TWO_SHARDS_TARGET`` times what one
delivers; nginx adds at most 15% to the fan-out time of the shards reached
directly. Skipped, with a warning, where nginx is not installed.
"""

from __future__ import annotations

import itertools
import logging
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

from bench import register
from bench._processes import STOP_TIMEOUT, EventServers, LoadClient, Server
from bench.harness import BenchError, Context, Figure, Outcome, Result, in_rounds
from bench.latency import Latencies
from bench.latency import measure as latencies
from eventbus.nginx import standalone_conf
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.sharding import Sharding
from eventbus.users import User

logger = logging.getLogger(__name__)

CLIENTS = 2_000
QUICK_CLIENTS = 100
#: Sustained delivery, events/s: the ladder's first rate, doubled until one fails...
FIRST_RATE = 250.0
#: ... or until this, beyond what the broker of a small machine takes.
MAX_RATE = 32_000.0
#: Then the step between the last rate that held and the first that failed is halved this often: a figure to
#: within an eighth of the first failing rate.
REFINEMENTS = 2
QUICK_RATE = 100.0
SECONDS = 5.0
QUICK_SECONDS = 1.0
#: Issue 12: delivery counts at a p99 under 50 ms.
P99_LIMIT_MS = 50.0
#: A --quick run only shows that the pieces work together, on whatever the machine is doing meanwhile.
QUICK_P99_LIMIT_MS = 1000.0
#: Issue 12: two shards deliver at least 1.6x what one delivers.
TWO_SHARDS_TARGET = 1.6
#: Issue 12: nginx adds at most 15% to the fan-out time: a rate of at least 1/1.15 of the direct one.
NGINX_TARGET = 1 / 1.15
#: How long nginx may take to listen.
NGINX_START_TIMEOUT = 15.0
KINDS = (("websocket", "websocket"), ("longpoll", "long-poll"))
ONE, NGINX, DIRECT = "one shard", "two shards behind nginx", "two shards, direct"


@register("shards", "fan-out to 2,000 clients and sustained delivery, one shard against two behind nginx (issue 12)")
def shards(context: Context) -> list[Outcome]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        logger.warning("  nginx is not installed: no shards benchmark (apt-get install -y nginx)")
        return []
    servers = EventServers(context)
    count = context.size(CLIENTS, QUICK_CLIENTS)
    users = _split(servers.users(2 * len(KINDS) * count), count)
    # Every shard also consumes the plain notify_tornado, so the single server and the pair cannot share a
    # vhost: each gets its own, and their cases run in the same rounds, under the same load of the machine.
    pair_url = context.vhost_url("shards-pair")
    with ExitStack() as stack:
        one = _one_shard(stack, servers, context.amqp_url, users)
        if pair_url is None:
            logger.info("  a given broker: the single shard's cases first, then the pair's")
            first = _measure(context, servers, [one])
            stack.close()
            pair = _two_shards(stack, servers, context.amqp_url, users, context, nginx)
            fanouts, sustained = _measure(context, servers, [pair])
            fanouts |= first[0]
            sustained |= first[1]
        else:
            pair = _two_shards(stack, servers, pair_url, users, context, nginx)
            fanouts, sustained = _measure(context, servers, [one, pair])
    return _fanout_results(fanouts, count) + _sustained_results(sustained[ONE], sustained[NGINX])


class Setup(NamedTuple):
    """Shards and their clients, on a vhost of their own."""

    #: The case of its sustained delivery (its websocket clients, through nginx if it has it).
    name: str
    url: str
    #: Its clients, by case (``ONE``, ``NGINX``, ``DIRECT``) and kind.
    clients: dict[tuple[str, str], LoadClient]
    #: Its processes by name (shards' names start with ``shard``), whose CPU the sustained ladder logs.
    processes: Callable[[], dict[str, int]]
    #: The producer's EVENTBUS_* settings: the sharding send_events routes by.
    settings: dict[str, str]


def _one_shard(stack: ExitStack, servers: EventServers, url: str, users: list[list[User]]) -> Setup:
    one = stack.enter_context(servers.start("shards-one", url))
    clients = {(ONE, kind): stack.enter_context(servers.clients(kind, "eventbus", one, own, f"shards-one-{kind}"))
               for (kind, _), own in zip(KINDS, users[:len(KINDS)], strict=True)}
    sockets = clients[ONE, "websocket"].pid
    return Setup(ONE, url, clients, lambda: {"shard": one.pid, "clients": sockets}, {})


def _two_shards(stack: ExitStack, servers: EventServers, url: str, users: list[list[User]], context: Context,
                nginx: str) -> Setup:
    """Two shards, nginx in front, and clients of each kind through nginx and direct (each their own users)."""
    pair = _start_shards(stack, servers, url, "shards-pair")
    proxy = stack.enter_context(_nginx(nginx, context.work_dir / "nginx", pair))
    shares = iter(users)
    clients = {}
    for kind, _ in KINDS:
        for setup, options, port in ((NGINX, [], proxy.port), (DIRECT, ["--direct"], None)):
            held = 2 * len(users[0])  # the nginx and the direct clients of a kind share the shards
            clients[setup, kind] = stack.enter_context(servers.clients(
                kind, "eventbus", pair[0], next(shares), f"shards-{kind}-{'direct' if port is None else 'nginx'}",
                [*_options(pair), *options, "--held", str(held)], port=port))
    sockets = clients[NGINX, "websocket"].pid

    def processes() -> dict[str, int]:
        workers = {f"nginx worker {n}": pid for n, pid in enumerate(_children(proxy.pid))}
        return {"shard 0": pair[0].pid, "shard 1": pair[1].pid, **workers, "clients": sockets}

    return Setup(NGINX, url, clients, processes, {"EVENTBUS_TORNADO_SHARDS": _sharding(pair)})


def _measure(context: Context, servers: EventServers,
             setups: list[Setup]) -> tuple[dict[tuple[str, str], list[float]], dict[str, list[Held]]]:
    """The fan-outs of every case of ``setups`` in rounds, then their sustained ladders in rounds."""
    fanouts = _fanouts(context, {case: clients for setup in setups for case, clients in setup.clients.items()})
    ladders = in_rounds([_ladder(context, servers, setup) for setup in setups], repeats=context.repeats)
    return fanouts, {setup.name: found for setup, found in zip(setups, ladders, strict=True)}


def _split(users: list[User], count: int) -> list[list[User]]:
    """Consecutive ids, so that each share has as many users of either shard."""
    return [users[i:i + count] for i in range(0, len(users), count)]


def _start_shards(stack: ExitStack, servers: EventServers, url: str, name: str) -> list[Server]:
    ports = [free_port(), free_port()]
    shards = _sharding_of(ports)
    return [stack.enter_context(servers.start(
        f"{name}-{number}", url, port, EVENTBUS_TORNADO_SHARDS=shards,
        EVENTBUS_TORNADO_SHARD=str(number), EVENTBUS_TRUSTED_PROXIES="127.0.0.1")) for number, port in enumerate(ports)]


def _sharding_of(ports: list[int]) -> str:
    return ",".join(f"127.0.0.1:{port}" for port in ports)


def _sharding(pair: list[Server]) -> str:
    return _sharding_of([server.port for server in pair])


def _options(pair: list[Server]) -> list[str]:
    return ["--shards", ",".join(str(server.port) for server in pair)]


class Proxy(NamedTuple):
    """A running nginx: where it listens, and its master process."""

    port: int
    pid: int


@contextmanager
def _nginx(binary: str, prefix: Path, pair: list[Server]) -> Iterator[Proxy]:
    """nginx in front of ``pair``, its files under ``prefix``, on a free port; stopped by its pid (SIGQUIT)."""
    port = free_port()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    settings = Settings(sharding=Sharding.parse(_sharding(pair)))
    (prefix / "nginx.conf").write_text(standalone_conf(settings, f"127.0.0.1:{port}", prefix.resolve()))
    with open(prefix / "nginx.out", "wb") as out:
        process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                    "-e", str(prefix / "error.log")], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, prefix)
        yield Proxy(port, process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _wait_listening(port: int, process: subprocess.Popen[bytes], prefix: Path) -> None:
    deadline = time.monotonic() + NGINX_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"nginx exited with {process.returncode}: {(prefix / 'nginx.out').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nginx did not listen on {port} in {NGINX_START_TIMEOUT:.0f} s")


def _fanouts(context: Context, clients: dict[tuple[str, str], LoadClient]) -> dict[tuple[str, str], list[float]]:
    """The fan-out times of every case of ``clients``, in rounds.

    Every other round runs the cases in the reverse order: what one case leaves behind (the re-armed polls'
    requests finishing, a server's websocket pings, every 25 s) would otherwise fall on the same next case.
    """
    cases = sorted(clients, key=lambda case: case[1])  # one kind, then the other
    rounds = itertools.count()

    def round_() -> dict[tuple[str, str], float]:
        order = cases if next(rounds) % 2 == 0 else cases[::-1]
        return {case: float(clients[case].ask("fanout")["seconds"]) for case in order}

    samples = in_rounds([round_], repeats=context.repeats)[0]
    return {case: [sample[case] for sample in samples] for case in cases}


def _fanout_results(samples: dict[tuple[str, str], list[float]], count: int) -> list[Outcome]:
    results: list[Outcome] = []
    for kind, label in KINDS:
        def name(setup: str, label: str = label) -> str:
            return f"fan-out, {label}, {setup}, {count:,} clients"
        results += [
            Result("shards", name(ONE), count, samples[ONE, kind], baseline=True),
            Result("shards", name(NGINX), count, samples[NGINX, kind], versus=name(ONE)),
            Result("shards", name(DIRECT), count, samples[DIRECT, kind], baseline=True),
            Result("shards", f"fan-out, {label}, nginx against direct, {count:,} clients", count,
                   samples[NGINX, kind], versus=name(DIRECT), target=NGINX_TARGET),
        ]
    return results


class Held(NamedTuple):
    """What one ladder found: its top rate, and the CPU the shards spent an event at that rate."""

    rate: float
    shard_us: float


def _ladder(context: Context, servers: EventServers, setup: Setup) -> Callable[[], Held]:
    """One round of ``setup``'s sustained delivery: the highest rate of the ladder with a p99 under the limit."""
    name, clients = setup.name, setup.clients[setup.name, "websocket"]
    first, ceiling, refinements = (QUICK_RATE, QUICK_RATE, 0) if context.quick else (FIRST_RATE, MAX_RATE, REFINEMENTS)
    seconds = QUICK_SECONDS if context.quick else SECONDS
    limit = QUICK_P99_LIMIT_MS if context.quick else P99_LIMIT_MS
    first_ids = itertools.count(10_000_000 if name == ONE else 200_000_000, 1_000_000)  # a step sends fewer

    def holds(rate: float) -> float | None:
        """The shards' CPU µs per event if ``rate`` holds (at the first try or the second), else None.

        A neighbour's spell of work on a shared machine can push one run's p99 over the limit at any rate;
        the shards' limit fails twice."""
        return step(rate) or step(rate)

    def step(rate: float) -> float | None:
        watch = CpuWatch({**setup.processes(), "RabbitMQ": context.node_pid()})
        try:
            found = latencies(servers, clients, "eventbus", rate, seconds, next(first_ids), setup.url,
                              to_all=None, **setup.settings)
        except BenchError as e:
            logger.warning("  %s at %.0f/s: %s", name, rate, str(e).splitlines()[0])
            return None
        used = watch.used()
        logger.info("  %s at %.0f/s: %s; CPU, share of a core: %s", name, rate, _describe(found),
                    ", ".join(f"{name} {100 * cpu / watch.elapsed:.0f}%" for name, cpu in used.items()))
        if found.producer_late >= limit:
            # Latencies count from the hand-over, so a late producer hides nothing: it only sends in bursts.
            logger.warning("  %s at %.0f/s: the producer handed events over up to %.0f ms late, in bursts: where "
                           "this rate fails, the producer may be the limit", name, rate, found.producer_late)
        shards = sum(cpu for name, cpu in used.items() if name.startswith("shard"))
        return 1e6 * shards / int(rate * seconds) if found.p99 < limit else None

    def ladder() -> Held:
        best, failed, rate = Held(0.0, 0.0), 0.0, first
        while rate <= ceiling:
            shard_us = holds(rate)
            if shard_us is None:
                failed = rate
                break
            best, rate = Held(rate, shard_us), rate * 2
        for _ in range(refinements if best.rate and failed else 0):
            middle = (best.rate + failed) / 2
            shard_us = holds(middle)
            if shard_us is None:
                failed = middle
            else:
                best = Held(middle, shard_us)
        if not best.rate:
            logger.warning("  %s: no rate from %.0f/s kept the p99 under %.0f ms (twice) this round", name, first,
                           limit)
        if not failed:
            logger.warning("  %s held at every rate up to %.0f/s: the figure is the ladder's top", name, ceiling)
        return best

    return ladder


def _describe(found: Latencies) -> str:
    return f"p50 {found.p50:.1f} ms, p99 {found.p99:.1f} ms, producer at most {found.producer_late:.1f} ms late"


class CpuWatch:
    """The CPU processes take from now on, as shares of one core: named processes by their pid, and the
    children this process reaps meanwhile (the producer, which exits at the end of a step)."""

    def __init__(self, processes: Mapping[str, int | None]) -> None:
        self.processes = {name: pid for name, pid in processes.items() if pid is not None}
        self.start = time.perf_counter()
        self.elapsed = 0.0
        self.used_before = {name: _cpu_seconds(pid) for name, pid in self.processes.items()}
        self.children = _children_cpu_seconds()

    def used(self) -> dict[str, float]:
        """CPU seconds each process took since the watch started, the producer's last; sets ``elapsed``."""
        self.elapsed = time.perf_counter() - self.start
        used = {name: _cpu_seconds(pid) - self.used_before[name] for name, pid in self.processes.items()}
        return {**used, "producer": _children_cpu_seconds() - self.children}


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (0 once it is gone)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError):
        pass
    return total / 1e9


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (nginx's workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sustained_results(one: list[Held], two: list[Held]) -> list[Outcome]:
    if not all(held.rate for held in one + two):
        # A machine that busy says nothing of the shards; the fan-outs measured before still stand.
        logger.warning("  no sustained figures: in some round no rate held (see the log)")
        return []
    # A rate is events per second: as a Result, one event over 1/rate seconds.
    baseline = f"sustained, {ONE}, p99 < {P99_LIMIT_MS:.0f} ms"
    cpu = "shards' CPU per event at the top rate"

    def events(ladders: list[Held]) -> int:
        return int(statistics.median(held.rate for held in ladders) * SECONDS)

    return [
        Result("shards", baseline, 1, [1 / held.rate for held in one], baseline=True),
        Result("shards", f"sustained, {NGINX}, p99 < {P99_LIMIT_MS:.0f} ms", 1, [1 / held.rate for held in two],
               versus=baseline, target=TWO_SHARDS_TARGET),
        Figure("shards", f"{cpu}, {ONE}", events(one), [held.shard_us for held in one], "µs", baseline=True),
        Figure("shards", f"{cpu}, {NGINX} (both)", events(two), [held.shard_us for held in two], "µs",
               versus=f"{cpu}, {ONE}"),
    ]
