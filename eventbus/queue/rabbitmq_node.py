"""A private RabbitMQ node, started from the installed Debian rabbitmq-server.

The node has its own name, AMQP port, distribution port, Erlang port mapper
(epmd) port, data, logs and Erlang cookie, all under one folder, so it never
meets the system's RabbitMQ or another private node. The test session and
run_dev.py start one; operators can too::

    python -m eventbus.queue.rabbitmq_node start --dir var/rabbitmq --port 5673
    eventbus rabbitmq status --dir var/rabbitmq

Starting needs root (the Debian package's layout is root's) and takes 6 to 9 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Where Debian's rabbitmq-server package puts the real start script.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
#: A node starts in 6 to 9 s on these machines; a loaded one can take several times that.
START_TIMEOUT = 90.0


class NodeError(RuntimeError):
    """The node could not be started or stopped; the message says why and where the log is."""


def is_installed() -> bool:
    """Whether Debian's rabbitmq-server is installed here."""
    return SERVER.exists() and CTL.exists()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitMQNode:
    """One private node whose whole state lives in ``base_dir``.

    Ports are chosen on first start and kept in ``base_dir/node.json``, so a
    later ``stop`` or ``status`` from another process finds the same node.
    """

    def __init__(self, base_dir: Path | str, name: str = "eventbus", port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.nodename = f"{name}@localhost"
        saved = self._load()
        self.port = port or saved.get("port") or free_port()
        self.dist_port = saved.get("dist_port") or free_port()
        self.epmd_port = saved.get("epmd_port") or free_port()

    @property
    def url(self) -> str:
        """The AMQP URL of the node (the guest user may connect over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "log" / "start.log"

    def env(self) -> dict[str, str]:
        """The environment rabbitmq-server and rabbitmqctl need to find this node and only it."""
        b = self.base_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(b),  # the Erlang cookie lives in $HOME
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_PID_FILE=str(b / "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
        )
        return env

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node unless it is up already, and wait until it answers."""
        if not is_installed():
            raise NodeError("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
        if self.is_running():
            return
        for sub in ("mnesia", "log"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self._save()
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        # Output goes to a file: a detached server must not hold its parent's stdout open.
        with open(self.log_file, "ab") as log:
            subprocess.run(
                [str(SERVER), "-detached"], env=self.env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, check=False, timeout=60,
            )
        self._wait_until_up(timeout)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._amqp_port_open() and self.is_running():
                return
            time.sleep(0.3)  # a node boots in seconds; polling faster only loads the machine
        raise NodeError(f"RabbitMQ node {self.nodename} did not start within {timeout:.0f} s; see {self.log_file}")

    def _amqp_port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def is_running(self) -> bool:
        """Whether the node answers ``rabbitmqctl status``."""
        if not is_installed() or not (self.base_dir / "node.json").exists():
            return False
        return self._ctl("status", timeout=30).returncode == 0

    def stop(self) -> None:
        """Stop the node and its private epmd, and wait until the node's process is gone.

        A node that does not answer (one whose start timed out, say) is killed
        by the process id it wrote, if that process is still this node.
        """
        if self.is_running():
            result = self._ctl("stop", str(self.base_dir / "node.pid"), timeout=60)
            if result.returncode != 0:
                raise NodeError(f"rabbitmqctl stop failed: {result.stdout}{result.stderr}")
        self._kill_leftover()
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(),
                           capture_output=True, check=False, timeout=10)

    def _kill_leftover(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def pid(self) -> int | None:
        """The process id of this node's Erlang VM while it runs (from its pid file, checked against the
        process's environment: the node name is not on the command line of every RabbitMQ release)."""
        try:
            pid = int((self.base_dir / "node.pid").read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if f"RABBITMQ_NODENAME={self.nodename}".encode() in environ else None

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([str(CTL), "-q", "-n", self.nodename, *args], env=self.env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 1, "", f"timed out after {timeout} s")

    def _load(self) -> dict[str, int]:
        try:
            return dict(json.loads((self.base_dir / "node.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ports = {"port": self.port, "dist_port": self.dist_port, "epmd_port": self.epmd_port}
        (self.base_dir / "node.json").write_text(json.dumps(ports))


def main(argv: list[str] | None = None) -> int:
    """``start``, ``stop`` or ``status`` of a private node; prints its AMQP URL."""
    parser = argparse.ArgumentParser(prog="eventbus rabbitmq", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default="var/rabbitmq", help="the node's folder (default var/rabbitmq)")
    parser.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    parser.add_argument("--name", default="eventbus", help="node name before @localhost")
    args = parser.parse_args(argv)
    node = RabbitMQNode(args.dir, name=args.name, port=args.port)
    try:
        if args.action == "start":
            node.start()
            print(f"RabbitMQ node {node.nodename} is up: {node.url}")
        elif args.action == "stop":
            node.stop()
            print(f"RabbitMQ node {node.nodename} stopped")
        else:
            running = node.is_running()
            print(f"RabbitMQ node {node.nodename} is {'up: ' + node.url if running else 'not running'}")
            return 0 if running else 3
    except NodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
