"""A private RabbitMQ node, started from the installed Debian rabbitmq-server.

The node has its own name, AMQP port, distribution port, Erlang port mapper
(epmd) port, data, logs and Erlang cookie, all under one folder, so it never
meets the system's RabbitMQ or another private node. The test session and
run_dev.py start one; operators can too::

    python -m eventbus.queue.rabbitmq_node start --dir var/rabbitmq --port 5673
    eventbus rabbitmq status --dir var/rabbitmq
    eventbus rabbitmq start --nodes 3      # a local three-node cluster; prints its URLs

Starting needs root (the Debian package's layout is root's) and takes 6 to 9 s.

A cluster (``RabbitMQCluster``) is nodes like these, one folder each under the
cluster's folder, that share one HOME (so one Erlang cookie) and one epmd
port (so they find each other by name), joined to the first node with
``rabbitmqctl stop_app``, ``join_cluster`` and ``start_app``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: Where Debian's rabbitmq-server package puts the real start script.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
#: Nodes on one machine (development, the tests) take a peer that stopped answering for gone after 2 s, not the
#: default 60: until then, quorum queues led by that node elect no new leader, and their consumers wait. When the
#: peer answers again, the split is healed automatically (autoheal): the side that lost restarts and rejoins.
NODE_CONFIG = "cluster_partition_handling = autoheal\nnet_ticktime = 2\n"
#: A node that autoheal restarts waits for the winner's word to start again; on RabbitMQ 3.10 that word can be
#: lost, and the node starts only when this wait times out (60 s by default).
NODE_ADVANCED_CONFIG = "[{rabbit, [{autoheal_state_transition_timeout, 5000}]}].\n"
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

    def __init__(self, base_dir: Path | str, name: str = "eventbus", port: int | None = None, *,
                 home: Path | None = None, epmd_port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.nodename = f"{name}@localhost"
        #: The Erlang cookie is read from $HOME: the nodes of a cluster share one.
        self.home = home or self.base_dir
        saved = self._load()
        self.port = port or saved.get("port") or free_port()
        self.dist_port = saved.get("dist_port") or free_port()
        self.epmd_port = epmd_port or saved.get("epmd_port") or free_port()

    @property
    def url(self) -> str:
        """The AMQP URL of the node (the guest user may connect over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def label(self) -> str:
        return f"RabbitMQ node {self.nodename}"

    def status(self) -> tuple[bool, list[str]]:
        """Whether the node runs, and a line saying so."""
        running = self.is_running()
        return running, [f"{self.label} is {'up: ' + self.url if running else 'not running'}"]

    @property
    def log_file(self) -> Path:
        return self.base_dir / "log" / "start.log"

    def env(self) -> dict[str, str]:
        """The environment rabbitmq-server and rabbitmqctl need to find this node and only it."""
        b = self.base_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.home),  # the Erlang cookie lives in $HOME
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
        (self.base_dir / "rabbitmq.conf").write_text(NODE_CONFIG)
        (self.base_dir / "advanced.config").write_text(NODE_ADVANCED_CONFIG)
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

    def stop(self, *, epmd: bool = True) -> None:
        """Stop the node and (with ``epmd``) its private epmd, and wait until the node's process is gone.

        A node that does not answer (one whose start timed out, say) is killed
        by the process id it wrote, if that process is still this node. The
        nodes of a cluster share one epmd: the cluster stops it after them.
        """
        if self.is_running():
            result = self._ctl("stop", str(self.base_dir / "node.pid"), timeout=60)
            if result.returncode != 0:
                raise NodeError(f"rabbitmqctl stop failed: {result.stdout}{result.stderr}")
        self._kill_leftover()
        if epmd:
            self.stop_epmd()

    def stop_epmd(self) -> None:
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

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; its output, or NodeError saying what failed."""
        result = self._ctl(*args, timeout=timeout)
        if result.returncode != 0:
            raise NodeError(f"rabbitmqctl {' '.join(args)} on {self.nodename} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([str(CTL), "-q", "-n", self.nodename, *args], env=self.env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 1, "", f"timed out after {timeout} s")

    def _load(self) -> dict[str, int]:
        return _load_json(self.base_dir / "node.json")

    def _save(self) -> None:
        _save_json(self.base_dir / "node.json", {"port": self.port, "dist_port": self.dist_port,
                                                 "epmd_port": self.epmd_port})


class RabbitMQCluster:
    """``count`` private nodes under ``base_dir`` (``node1``, ``node2``, ...), clustered with the first one."""

    def __init__(self, base_dir: Path | str, count: int = 3, name: str = "eventbus") -> None:
        if count < 1:
            raise ValueError("a cluster has at least one node")
        self.base_dir = Path(base_dir).resolve()
        saved = self._load()
        # A cluster started before keeps its size and names: ``stop`` and ``status`` need only its folder.
        self.count = int(saved.get("nodes", count))
        self.name = str(saved.get("name", name))
        self.epmd_port = int(saved.get("epmd_port") or free_port())
        home = self.base_dir / "home"
        self.nodes = [RabbitMQNode(self.base_dir / f"node{n}", f"{self.name}-{n}", home=home,
                                   epmd_port=self.epmd_port)
                      for n in range(1, self.count + 1)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The value of ``EVENTBUS_AMQP_URL`` for the cluster: every node's URL, comma-separated."""
        return ",".join(self.urls)

    @property
    def label(self) -> str:
        return f"RabbitMQ cluster of {self.count} nodes"

    def status(self) -> tuple[bool, list[str]]:
        """Whether every node runs in the cluster, and a line for each node."""
        running = self.running_nodes()
        lines = [f"{node.label} is {'up: ' + node.url if node.nodename in running else 'not running'}"
                 for node in self.nodes]
        return len(running) == self.count, lines

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node (at once: a node boots in seconds, mostly waiting), then join the others to the first."""
        self._save()
        cookie = self.nodes[0].home / ".erlang.cookie"
        if not cookie.exists():
            # Written before any node starts: nodes starting together would each write a cookie of their own.
            cookie.parent.mkdir(parents=True, exist_ok=True)
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(timeout), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            if first.nodename not in self.running_nodes(node):
                node.ctl("stop_app")
                node.ctl("join_cluster", first.nodename)
                node.ctl("start_app")

    def running_nodes(self, via: RabbitMQNode | None = None) -> list[str]:
        """The names of the nodes running in the cluster, as ``via`` (default: the first that answers) sees it."""
        for node in [via] if via is not None else self.nodes:
            result = node._ctl("cluster_status", "--formatter", "json", timeout=30)
            if result.returncode == 0:
                return list(json.loads(result.stdout).get("running_nodes", []))
        return []

    def stop(self) -> None:
        """Stop every node; the cluster keeps its membership and data for the next start."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(epmd=False), self.nodes))
        self.nodes[0].stop_epmd()

    def _load(self) -> dict[str, Any]:
        return _load_json(self.base_dir / "cluster.json")

    def _save(self) -> None:
        _save_json(self.base_dir / "cluster.json", {"nodes": self.count, "name": self.name,
                                                    "epmd_port": self.epmd_port})


def _load_json(path: Path) -> dict[str, Any]:
    """The ports and counts saved in ``path`` by an earlier start (none if it never started)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _save_json(path: Path, saved: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved))


def main(argv: list[str] | None = None) -> int:
    """``start``, ``stop`` or ``status`` of a private node or cluster; prints the AMQP URL(s)."""
    parser = argparse.ArgumentParser(prog="eventbus rabbitmq", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default="var/rabbitmq", help="the node's folder (default var/rabbitmq)")
    parser.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    parser.add_argument("--name", default="eventbus", help="node name before @localhost")
    parser.add_argument("--nodes", type=int, default=None,
                        help="a local cluster of this many nodes (start; stop and status find it in --dir)")
    args = parser.parse_args(argv)
    try:
        if args.nodes is not None or (Path(args.dir) / "cluster.json").exists():
            if args.port is not None:
                raise NodeError("--port is for one node: a cluster's nodes take free ports")
            return _run(args.action, RabbitMQCluster(args.dir, args.nodes or 3, name=args.name))
        return _run(args.action, RabbitMQNode(args.dir, name=args.name, port=args.port))
    except NodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(action: str, target: RabbitMQNode | RabbitMQCluster) -> int:
    if action == "start":
        target.start()
        print(f"{target.label} is up: {target.url}")
    elif action == "stop":
        target.stop()
        print(f"{target.label} stopped")
    else:
        up, lines = target.status()
        print("\n".join(lines))
        return 0 if up else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
