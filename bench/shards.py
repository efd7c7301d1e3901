"""Shards (issue 12): fan-out and sustained delivery with one Tornado shard, and with two behind nginx.

Three set-ups run side by side, each of eventbus event servers
(``bench._eventbus_server``) on the run's RabbitMQ node:

- one shard: one server, as without sharding (the baseline);
- two shards behind nginx: two servers of ``EVENTBUS_TORNADO_SHARDS``, and
  Debian's nginx with the configuration ``eventbus nginx_conf`` writes
  (``eventbus.nginx.standalone_conf``), which the clients talk to;
- the same two shards reached directly: two more servers, each client
  talking to its user's shard.

Fan-out: as ``bench.fanout``, one event to ``CLIENTS`` clients, websocket
and long-poll (each kind its own users, so a fan-out reaches only its own
clients), timed from the client process. The trigger goes to the first
shard (``POST /api/internal/notify_tornado``), which routes the other
shard's part through its notify queue, as ``send_event`` would.

Sustained delivery: the websocket clients of the one-shard and nginx
set-ups, and a producer (``bench._sender``, ``send_events`` routing by the
same sharding, what is due handed over in pipelined batches) sending
events each to one user for ``SECONDS`` at each rate of a ladder: from
``FIRST_RATE`` doubling until a rate fails (or ``MAX_RATE``), then
``REFINEMENTS`` halvings of the step between the last rate that held and
the first that failed. A rate holds if every event arrived with a p99 under
``P99_LIMIT_MS`` (as ``bench.latency`` measures it); a set-up's figure is
the highest that held. A rate the producer cannot keep up fails
(``bench.latency``); one at which it handed events over late (waiting for
confirms, or for a core), in bursts, is logged with a warning: a figure may
then be the producer's rather than the shards'. Each step logs the CPU each process took (shards, nginx's
workers, the clients, RabbitMQ, the producer), so that a figure can be told
from the machine's ceiling.

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
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

from bench import register
from bench._processes import STOP_TIMEOUT, EventServers, LoadClient, Server
from bench.harness import BenchError, Context, Outcome, Result, in_rounds
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
    users = servers.users(2 * len(KINDS) * count)
    # Every shard consumes the plain notify_tornado too, and shards of two sets would share their notify
    # queues: the set-ups run one after the other, and the nginx and direct cases share one pair of shards.
    with ExitStack() as stack:
        one = stack.enter_context(servers.start("shards-one", context.amqp_url))
        clients = {(ONE, kind): stack.enter_context(servers.clients(kind, "eventbus", one, own, f"shards-one-{kind}"))
                   for (kind, _), own in zip(KINDS, _split(users, count)[:len(KINDS)], strict=True)}
        one_fanouts = _fanouts(context, clients, [ONE])
        sockets = clients[ONE, "websocket"]
        one_rates = _sustained(context, servers, sockets, ONE, lambda: {"shard": one.pid, "clients": sockets.pid})
    with ExitStack() as stack:
        pair = _start_shards(stack, servers, context, "shards-pair")
        proxy = stack.enter_context(_nginx(nginx, context.work_dir / "nginx", pair))
        shares = iter(_split(users, count))
        clients = {}
        for kind, _ in KINDS:
            for setup, options, port in ((NGINX, [], proxy.port), (DIRECT, ["--direct"], None)):
                clients[setup, kind] = stack.enter_context(servers.clients(
                    kind, "eventbus", pair[0], next(shares), f"shards-{kind}-{'direct' if port is None else 'nginx'}",
                    [*_options(pair), *options, "--held", str(2 * count)], port=port))
        pair_fanouts = _fanouts(context, clients, [NGINX, DIRECT])
        sockets = clients[NGINX, "websocket"]

        def processes() -> dict[str, int]:
            workers = {f"nginx worker {n}": pid for n, pid in enumerate(_children(proxy.pid))}
            return {"shard 0": pair[0].pid, "shard 1": pair[1].pid, **workers, "clients": sockets.pid}

        pair_rates = _sustained(context, servers, sockets, NGINX, processes, EVENTBUS_TORNADO_SHARDS=_sharding(pair))
    return _fanout_results(one_fanouts | pair_fanouts, count) + _sustained_results(one_rates, pair_rates)


def _split(users: list[User], count: int) -> list[list[User]]:
    """Consecutive ids, so that each share has as many users of either shard."""
    return [users[i:i + count] for i in range(0, len(users), count)]


def _start_shards(stack: ExitStack, servers: EventServers, context: Context, name: str) -> list[Server]:
    ports = [free_port(), free_port()]
    shards = _sharding_of(ports)
    return [stack.enter_context(servers.start(
        f"{name}-{number}", context.amqp_url, port, EVENTBUS_TORNADO_SHARDS=shards,
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


def _fanouts(context: Context, clients: dict[tuple[str, str], LoadClient],
             setups: list[str]) -> dict[tuple[str, str], list[float]]:
    """The fan-out times of ``setups``, both kinds, in rounds.

    Every other round runs the cases in the reverse order: what one case leaves behind (the re-armed polls'
    requests finishing, a server's websocket pings, every 25 s) would otherwise fall on the same next case.
    """
    cases = [(setup, kind) for kind, _ in KINDS for setup in setups]
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


def _sustained(context: Context, servers: EventServers, clients: LoadClient, setup: str,
               processes: Callable[[], dict[str, int]], **settings: str) -> list[float]:
    """The highest rate of the ladder with a p99 under the limit, once per round; ``processes`` are the
    set-up's, by name, whose CPU each step logs."""
    first, ceiling, refinements = (QUICK_RATE, QUICK_RATE, 0) if context.quick else (FIRST_RATE, MAX_RATE, REFINEMENTS)
    seconds = QUICK_SECONDS if context.quick else SECONDS
    limit = QUICK_P99_LIMIT_MS if context.quick else P99_LIMIT_MS
    first_ids = itertools.count(10_000_000 if setup == ONE else 200_000_000, 1_000_000)  # a step sends fewer

    def holds(rate: float) -> bool:
        watch = CpuWatch({**processes(), "RabbitMQ": context.broker_pid()})
        try:
            found = latencies(servers, clients, "eventbus", rate, seconds, next(first_ids), context.amqp_url,
                              to_all=None, **settings)
        except BenchError as e:
            logger.warning("  %s at %.0f/s: %s", setup, rate, str(e).splitlines()[0])
            return False
        logger.info("  %s at %.0f/s: %s; CPU: %s", setup, rate, _describe(found), watch.shares())
        if found.producer_late >= limit:
            # Latencies count from the hand-over, so a late producer hides nothing: it only sends in bursts.
            logger.warning("  %s at %.0f/s: the producer handed events over up to %.0f ms late, in bursts: where "
                           "this rate fails, the producer may be the limit", setup, rate, found.producer_late)
        return found.p99 < limit

    def ladder() -> float:
        best, failed, rate = 0.0, 0.0, first
        while rate <= ceiling:
            if not holds(rate):
                failed = rate
                break
            best, rate = rate, rate * 2
        for _ in range(refinements if best and failed else 0):
            middle = (best + failed) / 2
            if holds(middle):
                best = middle
            else:
                failed = middle
        if not best:
            raise BenchError(f"shards, {setup}: no rate from {first:.0f}/s kept the p99 under {limit:.0f} ms")
        if not failed:
            logger.warning("  %s held at every rate up to %.0f/s: the figure is the ladder's top", setup, ceiling)
        return best

    return in_rounds([ladder], repeats=context.repeats)[0]


def _describe(found: Latencies) -> str:
    return f"p50 {found.p50:.1f} ms, p99 {found.p99:.1f} ms, producer at most {found.producer_late:.1f} ms late"


class CpuWatch:
    """The CPU processes take from now on, as shares of one core: named processes by their pid, and the
    children this process reaps meanwhile (the producer, which exits at the end of a step)."""

    def __init__(self, processes: Mapping[str, int | None]) -> None:
        self.processes = {name: pid for name, pid in processes.items() if pid is not None}
        self.start = time.perf_counter()
        self.used = {name: _cpu_seconds(pid) for name, pid in self.processes.items()}
        self.children = _children_cpu_seconds()

    def shares(self) -> str:
        elapsed = time.perf_counter() - self.start
        used = {name: _cpu_seconds(pid) - self.used[name] for name, pid in self.processes.items()}
        used["producer"] = _children_cpu_seconds() - self.children
        return ", ".join(f"{name} {100 * seconds / elapsed:.0f}%" for name, seconds in used.items())


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


def _sustained_results(one: list[float], two: list[float]) -> list[Outcome]:
    # A rate is events per second: as a Result, one event over 1/rate seconds.
    baseline = f"sustained, {ONE}, p99 < {P99_LIMIT_MS:.0f} ms"
    return [
        Result("shards", baseline, 1, [1 / rate for rate in one], baseline=True),
        Result("shards", f"sustained, {NGINX}, p99 < {P99_LIMIT_MS:.0f} ms", 1, [1 / rate for rate in two],
               versus=baseline, target=TWO_SHARDS_TARGET),
    ]
