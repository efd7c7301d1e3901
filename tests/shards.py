"""Real Tornado shards behind a real nginx, for tests: ``eventbus runtornado --shard N`` processes on the
test's RabbitMQ node, and nginx (Debian's package) run with ``eventbus nginx_conf --standalone``, its files,
ports and logs under the test's own folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.sharding import Sharding
from tests.conftest import wait_for
from tests.workers import ROOT, WorkerProcess, cli_env

#: The secret the shards share (handed-over requests, CSRF tokens).
SHARD_SECRET = "shard-test-secret"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def require_nginx() -> None:
    """Skip without nginx (apt-get install -y nginx), except in CI, where these tests must run."""
    if not Path(NGINX).exists():
        reason = "nginx is not installed (apt-get install -y nginx; ./run_tests installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": in CI the shard tests must run", pytrace=False)
        pytest.skip(reason)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class ShardCluster:
    """``count`` shards on free ports, nginx in front of them, and the workers a test asks for."""

    def __init__(self, settings: Settings, count: int = 2, **env: str) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.nginx_port = free_port()
        self.dir = Path(settings.var_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        secrets = self.dir / "secrets.conf"
        secrets.write_text(f"[secrets]\nshared_secret = {SHARD_SECRET}\n")
        shards = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.env = {"EVENTBUS_TORNADO_SHARDS": shards, "EVENTBUS_SECRETS_FILE": str(secrets),
                    "EVENTBUS_TRUSTED_PROXIES": "127.0.0.1", "EVENTBUS_PRESENCE_COALESCE_SECONDS": "0", **env}
        #: The test's own settings: a producer of the same sharding.
        self.settings = settings.replace(sharding=Sharding.parse(shards), shared_secret=SHARD_SECRET)
        self.shards: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.workers: list[WorkerProcess] = []

    def purge(self, broker: RabbitMQBroker) -> None:
        """Empty the shards' queues: the RabbitMQ node serves every test of the run."""
        sharding = self.settings.sharding
        for queue in [*(sharding.notify_queue(n) for n in range(len(self.ports))),
                      *(sharding.return_queue(n) for n in range(len(self.ports))), "notify_tornado"]:
            if broker.queue_info(queue).exists:
                broker.purge(queue)

    # -- processes --------------------------------------------------------------------

    def start_shard(self, number: int) -> None:
        self.starts += 1
        log = self.dir / f"shard-{number}-{self.starts}.log"
        with open(log, "wb") as out:
            self.shards[number] = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "runtornado", f"--shard={number}"],
                env=cli_env(self.settings, **self.env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        wait_for(lambda: f"listening on http://127.0.0.1:{self.ports[number]}" in log.read_text(), timeout=30,
                 what=f"shard {number} to listen")

    def stop_shard(self, number: int, sig: signal.Signals = signal.SIGTERM) -> None:
        process = self.shards.pop(number)
        process.send_signal(sig)
        process.wait(30)

    def start_nginx(self) -> None:
        prefix = self.dir / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "eventbus", "nginx_conf", f"--listen=127.0.0.1:{self.nginx_port}",
             f"--standalone={prefix}", f"--output={prefix / 'nginx.conf'}"],
            env=cli_env(self.settings, **self.env), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        with open(prefix / "nginx.out", "wb") as out:
            self.nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                           "-e", str(prefix / "error.log")],
                                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: listening(self.nginx_port), timeout=15, what="nginx to listen")

    def start_worker(self, queue: str) -> None:
        self.workers.append(WorkerProcess(self.settings, f"--queue={queue}", **self.env))

    def start(self, *workers: str) -> ShardCluster:
        for number in range(len(self.ports)):
            self.start_shard(number)
        self.start_nginx()
        for queue in workers:
            self.start_worker(queue)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for number in list(self.shards):
            self.stop_shard(number)
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            self.nginx.wait(15)

    # -- addresses --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """nginx's port: what clients talk to."""
        return self.nginx_port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.nginx_port}{path}"

    def shard_url(self, number: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[number]}{path}"
