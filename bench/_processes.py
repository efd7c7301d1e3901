"""The processes of the event server benchmarks, seen from the benchmark: servers, load clients, senders.

Each runs Python from the project root, its stderr (and what it says
besides its answers) in a log of the scratch folder, and answers in JSON
lines on stdout. Each is started inside a ``with`` block and stopped by
its pid when the block ends, however it ends: a server with SIGTERM (it
saves its queues and exits), a load client by the end of its stdin, either
killed if it is still there after ``STOP_TIMEOUT``. A process that fails
raises BenchError with the end of its log.

The event servers' users live in one SQLite database of the run's scratch
folder, created as the first benchmark needs them and shared by the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Self

from bench.harness import BenchError, Context
from eventbus.users import User, UserStore

logger = logging.getLogger(__name__)

#: The project root: ``python -m bench._...`` runs from there.
ROOT = Path(__file__).resolve().parent.parent
#: How long a process may take to start answering (a server that imports, a client that connects thousands).
START_TIMEOUT = 180.0
#: How long a stopped process may take to exit before it is killed.
STOP_TIMEOUT = 20.0
#: The longest one answer of a load client may take (a fan-out and re-arming, a latency report).
ANSWER_TIMEOUT = 150.0
#: Where ``EVENTBUS_BENCH_PROFILE`` names a folder, every server runs under cProfile and leaves its profile there.
PROFILE_ENV = "EVENTBUS_BENCH_PROFILE"


class Process:
    """One helper process: started at once, read from line by line, stopped by its pid."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str], *, stdin: bool = False) -> None:
        self.log = log
        self.name = " ".join(argv)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *argv], cwd=ROOT, env=env, stderr=output, stdout=subprocess.PIPE,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            )
        self._pending = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the process prints; BenchError if it exits or says nothing in ``timeout`` s."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise self.failed(f"no answer in {timeout:.0f} s")
            chunk = os.read(stdout.fileno(), 1 << 16)
            if not chunk:
                raise self.failed(f"exited with {self.process.wait(STOP_TIMEOUT)}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return dict(json.loads(line))

    def rss_kib(self) -> int:
        """The process's resident memory now (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise self.failed("no VmRSS in its /proc status")

    def stop(self) -> None:
        """Ask the process to exit (SIGTERM), then kill it if it has not after ``STOP_TIMEOUT``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self._reap()

    def _reap(self) -> None:
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit in %.0f s: killing it", self.name, STOP_TIMEOUT)
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def failed(self, what: str) -> BenchError:
        """An error naming the process, with the end of its log (the log goes with the scratch folder)."""
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return BenchError(f"{self.name}: {what}; its log ends:\n{tail}")


class Server(Process):
    """A server of ``bench._serving``: its port once it listens."""

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        """What an eventbus server's ``GET /bench/stats`` says (see ``bench._eventbus_server``)."""
        url = f"http://127.0.0.1:{self.port}/bench/stats{'?reset=1' if reset else ''}"
        with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT) as answer:
            return dict(json.loads(answer.read()))

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:
            argv = [*argv, "--profile", str(Path(profile_dir).resolve() / f"{log.stem}.{int(time.time())}.prof")]
        super().__init__(argv, log, env)
        try:
            self.port = int(self.read(START_TIMEOUT)["port"])
        except BaseException:
            self.stop()
            raise


class LoadClient(Process):
    """A ``bench._load_client`` process: every client of one case, connected and armed."""

    def __init__(self, kind: str, flavor: str, port: int, users: Sequence[User], log: Path,
                 env: dict[str, str], options: Sequence[str] = ()) -> None:
        self.users_file = write_users(log.with_suffix(".users.json"), users)
        super().__init__(["bench._load_client", kind, flavor, str(port), str(self.users_file), *options],
                         log, env, stdin=True)
        try:
            ready = self.read(START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        logger.info("  %d %s clients of %s connected in %.1f s", ready["ready"], kind, flavor, ready["seconds"])

    def ask(self, command: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        """Send one command and return its answer."""
        stdin: IO[bytes] | None = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(command.encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            raise self.failed(f"exited with {self.process.wait(STOP_TIMEOUT)}") from None
        return self.read(timeout)

    def stop(self) -> None:
        """Close stdin: the client closes its connections and exits."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        self._reap()


def write_users(path: Path, users: Sequence[User]) -> Path:
    """Write ``users`` to ``path`` as the helper processes read them: a JSON list of ``[id, email, api_key]``."""
    path.write_text(json.dumps([[u.id, u.email, u.api_key] for u in users]))
    return path


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without its ``EVENTBUS_*`` variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env.update(variables)
    return env


class EventServers:
    """What every event server of a run shares: its users' database and the shared secret."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.dir = context.work_dir / "eventserver"
        self.database = self.dir / "users.sqlite3"
        self.secrets_file = self.dir / "secrets.conf"
        if not self.secrets_file.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            self.secrets_file.write_text(f"[secrets]\nshared_secret = {secrets.token_hex(16)}\n")
            self.secrets_file.chmod(0o600)
        self.secret = self.secrets_file.read_text().split("=", 1)[1].strip()
        self._started = 0

    def users(self, count: int) -> list[User]:
        """``count`` users, the first ones of the database, created if there are fewer."""
        store = UserStore(self.database)
        known = store.all()
        if len(known) < count:
            logger.info("  creating %d users", count - len(known))
            known += [store.create_user(f"user{i}@example.com") for i in range(len(known), count)]
        return known[:count]

    def start(self, name: str, amqp_url: str, port: int = 0, **settings: str) -> Server:
        """An eventbus event server on RabbitMQ, as in production; its log named ``name``; no heartbeats;
        listening on ``port`` (0: a free one); ``settings`` are more ``EVENTBUS_*`` variables.

        Each server gets a var folder of its own: it starts without the queues an earlier one saved.
        """
        self._started += 1
        var_dir = self.dir / f"{name}-{self._started}"
        env = environment(
            EVENTBUS_BROKER="amqp", EVENTBUS_AMQP_URL=amqp_url, EVENTBUS_VAR_DIR=str(var_dir),
            EVENTBUS_DATABASE=str(self.database), EVENTBUS_SECRETS_FILE=str(self.secrets_file),
            EVENTBUS_HEARTBEAT_SECONDS="3600", **settings,
        )
        return Server(["bench._eventbus_server", f"--port={port}"], var_dir.with_suffix(".log"), env)

    def start_bare(self, name: str, *, amqp_url: str | None = None, queue: str | None = None) -> Server:
        """The bare Tornado baseline; with ``queue``, relaying notices from RabbitMQ."""
        env = environment(**({"EVENTBUS_AMQP_URL": amqp_url} if amqp_url else {}))
        argv = ["bench._bare_server", *(["--amqp-queue", queue] if queue else [])]
        return Server(argv, self.dir / f"{name}.log", env)

    def start_socketio(self, name: str) -> Server:
        return Server(["bench._socketio_server"], self.dir / f"{name}.log", environment())

    def send(self, flavor: str, clients: LoadClient, *, rate: float, seconds: float, first_id: int,
             amqp_url: str, queue: str | None = None, to_all: Sequence[User] | None = None,
             **settings: str) -> Process:
        """A ``bench._sender`` process sending to the users of ``clients``, one user an event, round robin, or
        each event to every user of ``to_all``; it prints what it sent, and exits. ``settings`` are more
        ``EVENTBUS_*`` variables (the sharding that ``send_event`` routes by)."""
        env = environment(EVENTBUS_BROKER="amqp", EVENTBUS_AMQP_URL=amqp_url,
                          EVENTBUS_VAR_DIR=str(self.dir / "sender"), **settings)
        users_file = clients.users_file
        if to_all is not None:
            users_file = write_users(self.dir / f"sender-{flavor}.users.json", to_all)
        argv = ["bench._sender", flavor, str(rate), str(seconds), str(first_id), str(users_file),
                *(["--queue", queue] if queue else []), *(["--to-all"] if to_all is not None else [])]
        return Process(argv, self.dir / f"sender-{flavor}.log", env)

    def clients(self, kind: str, flavor: str, server: Server, users: Sequence[User], name: str,
                options: Sequence[str] = (), port: int | None = None) -> LoadClient:
        """A load client process of ``kind`` for ``server`` (or a proxy in front of it at ``port``), connected
        and armed; ``options`` are more of its arguments (``--shards``, ``--direct``)."""
        return LoadClient(kind, flavor, port or server.port, users, self.dir / f"{name}.log",
                          environment(EVENTBUS_BENCH_SECRET=self.secret), options)
