#!/usr/bin/env python3
"""Starts the whole eventbus system for development, on one machine, with one command.

    ./run_dev.py [--port 9991] [--all-in-one] [--streamlined] [--memory-broker] [--shards N]

It installs the Python dependencies when they are missing (and RabbitMQ with
apt-get when run as root), then starts: RabbitMQ (the one at
EVENTBUS_AMQP_URL when it answers, else a private node under var/rabbitmq),
the Tornado server (API, websocket and pages on one port), every queue
processor (a process each, or threads of one with --all-in-one), an SMTP
sink, the email mirror receiver and a push gateway stand-in. Without any
RabbitMQ it runs everything in one process on the in-process broker. With
``--shards N`` it runs N Tornado shards behind nginx (Debian's package, run
as a process of its own with its files under var/nginx), nginx on the port.

Every output line is prefixed with its process's name. Code changes restart
the processes they concern. Ctrl-C or SIGTERM stops everything, the private
RabbitMQ node too, within a few seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: Imports that tell whether the dependencies are installed.
REQUIRED = ("tornado", "pika", "ujson", "cmarkgfm", "aiosmtpd", "prometheus_client", "eventbus")
COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m", "\033[96m", "\033[93m"]
RESET = "\033[0m"
#: Where Debian's package puts nginx (not on a non-root PATH).
NGINX = "/usr/sbin/nginx"
#: Development users: (email, full name); everyone is subscribed to every development stream.
DEV_USERS = [("iago@example.com", "Iago"), ("othello@example.com", "Othello"),
             ("desdemona@example.com", "Desdemona"), ("cordelia@example.com", "Cordelia")]
DEV_STREAMS = ["general", "Denmark", "Verona"]
#: Where a code change restarts which processes (the longest matching folder wins).
TORNADO, WORKERS, DEVTOOLS = frozenset({"tornado"}), frozenset({"workers"}), frozenset({"devtools"})
ALL_GROUPS = TORNADO | WORKERS | DEVTOOLS
RELOAD_GROUPS = {"eventbus/tornado_events": TORNADO, "eventbus/web": TORNADO, "eventbus/metrics.py": TORNADO,
                 "eventbus/app.py": TORNADO, "eventbus/processors": WORKERS, "eventbus/devtools": DEVTOOLS}

say_lock = threading.Lock()


def say(name: str, line: str, colour: str = "") -> None:
    if not sys.stdout.isatty():
        colour = ""
    with say_lock:
        sys.stdout.write(f"{colour}{name:>14} |{RESET if colour else ''} {line}\n")
        sys.stdout.flush()


# -- installing what is missing --------------------------------------------------------


def ensure_python_packages() -> None:
    """Run inside an interpreter that has the dependencies: this one if it has them, else the project's
    virtual environment (made and kept up to date by bootstrap.py; never an install into this interpreter)."""
    missing = [module for module in REQUIRED if importlib.util.find_spec(module) is None]
    if not missing:
        return
    import bootstrap

    say("run_dev", f"{', '.join(missing)} missing from {sys.executable}: using the project's virtual environment")
    python = str(bootstrap.ensure([]))
    os.execv(python, [python, str(ROOT / "run_dev.py"), *sys.argv[1:]])


def ensure_rabbitmq() -> bool:
    """Whether rabbitmq-server is installed, installing it with apt-get when we are root."""
    from eventbus.queue.rabbitmq_node import is_installed

    if is_installed():
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say("run_dev", "RabbitMQ is not installed (sudo apt-get install -y rabbitmq-server); "
                       "running everything in one process on the in-process broker")
        return False
    say("run_dev", "installing rabbitmq-server with apt-get (once)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = (subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True).returncode == 0
          and subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], env=env,
                             capture_output=True).returncode == 0)
    if not ok or not is_installed():
        say("run_dev", "could not install rabbitmq-server; running everything on the in-process broker")
        return False
    return True


def amqp_reachable(urls: str) -> bool:
    """Whether a node of ``EVENTBUS_AMQP_URL`` (one URL, or a cluster's, comma-separated) answers."""
    import pika
    import pika.exceptions

    for url in filter(None, (u.strip() for u in urls.split(","))):
        parameters = pika.URLParameters(url)
        parameters.socket_timeout = parameters.stack_timeout = 3
        try:
            pika.BlockingConnection(parameters).close()
            return True
        except (pika.exceptions.AMQPError, OSError):
            continue
    return False


# -- processes -------------------------------------------------------------------------


class Child:
    """One process of the system, its output prefixed with its name."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], groups: frozenset[str], colour: str) -> None:
        """``groups``: the code it runs (RELOAD_GROUPS); a change there restarts it."""
        self.name, self.argv, self.env, self.groups, self.colour = name, argv, env, groups, colour
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # A session of its own: Ctrl-C reaches run_dev only, which stops the children in order.
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            say(self.name, raw.decode(errors="replace").rstrip(), self.colour)

    def stop(self, timeout: float = 8.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            say("run_dev", f"{self.name} did not stop within {timeout:.0f} s; killing it")
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


def code_mtimes() -> dict[str, float]:
    return {str(p.relative_to(ROOT)): p.stat().st_mtime for p in (ROOT / "eventbus").rglob("*.py")}


def groups_for(changed: list[str]) -> set[str]:
    groups: set[str] = set()
    for path in changed:
        matches = [prefix for prefix in RELOAD_GROUPS if path.startswith(prefix)]
        groups |= RELOAD_GROUPS[max(matches, key=len)] if matches else ALL_GROUPS
    return groups


# -- the system ------------------------------------------------------------------------


def prepare_var(var: Path) -> dict[str, str]:
    """The var folder and a secrets file of random development secrets (made once)."""
    var.mkdir(parents=True, exist_ok=True)
    secrets_file = Path(os.environ.get("EVENTBUS_SECRETS_FILE", var / "secrets.conf"))
    if not secrets_file.exists():
        secrets_file.write_text(f"[secrets]\nshared_secret = {secrets.token_urlsafe(32)}\n")
        secrets_file.chmod(0o600)
    return {"EVENTBUS_VAR_DIR": str(var), "EVENTBUS_SECRETS_FILE": str(secrets_file)}


def create_dev_data(database: Path | str) -> None:
    """Development users and streams, created once (running again changes nothing)."""
    from eventbus.messages import MessageStore

    store = MessageStore(database)
    user_ids = [store.users.ensure_user(email, name).id for email, name in DEV_USERS]
    for stream in DEV_STREAMS:
        store.create_stream(stream, user_ids)


def shard_count(requested: int, memory: bool) -> int:
    """How many Tornado shards can run: several need RabbitMQ and nginx; else one, saying why."""
    if requested <= 1:
        return 1
    if memory:
        say("run_dev", "several shards need RabbitMQ: running one Tornado process on the in-process broker")
        return 1
    if not shutil.which("nginx") and not Path(NGINX).exists():
        say("run_dev", "several shards need nginx in front (sudo apt-get install -y nginx): running one shard")
        return 1
    return requested


def sharded(env: dict[str, str], shards: int, var: Path) -> dict[str, str]:
    """The environment of ``shards`` shards on free ports, behind nginx (trusted for client addresses)."""
    from eventbus.queue.rabbitmq_node import free_port

    listed = ",".join(f"127.0.0.1:{free_port()}" for _ in range(shards))
    return {**env, "EVENTBUS_TORNADO_SHARDS": listed, "EVENTBUS_TRUSTED_PROXIES": "127.0.0.1",
            "EVENTBUS_NGINX_PREFIX": str(var / "nginx")}


def tornado_children(args: argparse.Namespace, env: dict[str, str], colours: Iterator[str]) -> list[Child]:
    """The Tornado process on the port; or, sharded, one per shard and nginx on the port in front of them."""
    python = sys.executable
    if "EVENTBUS_TORNADO_SHARDS" not in env:
        return [Child("tornado", [python, "-m", "eventbus", "runtornado", "--port", str(args.port)], env, TORNADO,
                      next(colours))]
    from eventbus import nginx
    from eventbus.settings import Settings

    settings = Settings.from_env(env)
    prefix = Path(env["EVENTBUS_NGINX_PREFIX"])
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx.standalone_conf(settings, f"127.0.0.1:{args.port}", prefix))
    shards = [Child(f"tornado-{n}", [python, "-m", "eventbus", "runtornado", f"--shard={n}"], env, TORNADO,
                    next(colours)) for n in range(settings.sharding.count)]
    proxy = Child("nginx", [shutil.which("nginx") or NGINX, "-p", str(prefix), "-c", str(conf),
                            "-e", str(prefix / "error.log")], env, frozenset(), next(colours))
    return [*shards, proxy]


def plan(args: argparse.Namespace, env: dict[str, str], memory: bool, ports: dict[str, int]) -> list[Child]:
    python = sys.executable
    colours = iter(COLOURS * 8)
    if memory:
        return [Child("eventbus", [python, "-m", "eventbus.devtools.embedded", "--port", str(args.port),
                                   "--push-port", str(ports["push"])], env, ALL_GROUPS, next(colours))]
    children = [
        *tornado_children(args, env, colours),
        Child("devtools", [python, "-m", "eventbus.devtools", "--smtp-port", str(ports["smtp"]),
                           "--push-port", str(ports["push"])], env, DEVTOOLS, next(colours)),
        Child("email-mirror", [python, "-m", "eventbus", "email_mirror_server", "--port", str(ports["mirror"])],
              env, WORKERS, next(colours)),
    ]
    if args.streamlined:
        return children
    if args.all_in_one:
        return [*children, Child("workers", [python, "-m", "eventbus", "process_queue", "--all"], env, WORKERS,
                                 next(colours))]
    from eventbus.processors.registry import registered_queues

    return [*children, *(Child(queue, [python, "-m", "eventbus", "process_queue", f"--queue={queue}"], env,
                               WORKERS, next(colours)) for queue in registered_queues())]


def main() -> int:
    parser = argparse.ArgumentParser(description="Start the whole eventbus system for development.")
    parser.add_argument("--port", type=int, default=9991, help="port of the web server (default 9991)")
    parser.add_argument("--all-in-one", action="store_true", help="every queue processor as a thread of one process")
    parser.add_argument("--streamlined", action="store_true", help="no queue processors")
    parser.add_argument("--memory-broker", action="store_true", help="no RabbitMQ: everything in one process")
    parser.add_argument("--shards", type=int, default=1, metavar="N",
                        help="N Tornado shards behind nginx (default 1: one Tornado process, no nginx)")
    args = parser.parse_args()
    ensure_python_packages()
    from eventbus.queue.rabbitmq_node import free_port

    var = Path(os.environ.get("EVENTBUS_VAR_DIR", ROOT / "var")).resolve()
    ports = {"smtp": free_port(), "push": free_port(), "mirror": free_port()}
    env = {**os.environ, **prepare_var(var), "PYTHONUNBUFFERED": "1", "EVENTBUS_DEVELOPMENT": "1",
           "EVENTBUS_SMTP_HOST": "127.0.0.1", "EVENTBUS_SMTP_PORT": str(ports["smtp"]),
           "EVENTBUS_PUSH_URL": f"http://127.0.0.1:{ports['push']}/push",
           "EVENTBUS_SITE_URL": f"http://127.0.0.1:{args.port}", "EVENTBUS_PORT": str(args.port)}
    env.setdefault("EVENTBUS_MISSED_EMAIL_WINDOW", "10")

    node = None
    memory = args.memory_broker
    if not memory:
        url = env.get("EVENTBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        if amqp_reachable(url):
            say("run_dev", f"using RabbitMQ at {url.split('@')[-1]}")
        elif ensure_rabbitmq():
            from eventbus.queue.rabbitmq_node import RabbitMQNode

            node = RabbitMQNode(var / "rabbitmq", name="eventbus-dev")
            say("run_dev", f"starting a private RabbitMQ node under {node.base_dir} (6 to 9 s)")
            node.start()
            env["EVENTBUS_AMQP_URL"] = node.url
        else:
            memory = True
    env["EVENTBUS_BROKER"] = "memory" if memory else "amqp"
    shards = shard_count(args.shards, memory)
    if shards > 1:
        env = sharded(env, shards, var)

    os.environ.update({k: v for k, v in env.items() if k.startswith("EVENTBUS_")})
    from eventbus.settings import get_settings

    create_dev_data(get_settings().database)
    children = plan(args, env, memory, ports)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        for child in children:
            child.start()
        say("run_dev", f"eventbus is running: http://127.0.0.1:{args.port}/ "
                       f"({'in-process broker' if memory else 'RabbitMQ'}, {len(children)} processes"
                       + (f", {shards} Tornado shards behind nginx)" if shards > 1 else ")"))
        say("run_dev", f"log in at http://127.0.0.1:{args.port}/login as any of: "
                       + ", ".join(email for email, _ in DEV_USERS))
        mirror = "" if memory else f"; mail to streams: SMTP 127.0.0.1:{ports['mirror']}"
        say("run_dev", f"emails: /devtools/emails, pushes: /devtools/pushes, queues: /devtools/queues{mirror}; "
                       "Ctrl-C stops everything")
        watch(children, stopping)
    finally:
        say("run_dev", "stopping")
        for child in reversed(children):
            child.stop()
        if node is not None:
            say("run_dev", "stopping the private RabbitMQ node")
            node.stop()
        say("run_dev", "stopped")
    return 0


def watch(children: list[Child], stopping: threading.Event) -> None:
    """Until a signal: restart the processes whose code changed, and report the ones that died."""
    seen = code_mtimes()
    reported: set[str] = set()
    while not stopping.wait(1.0):
        current = code_mtimes()
        changed = sorted(p for p in current.keys() | seen.keys() if current.get(p) != seen.get(p))
        seen = current
        if changed:
            groups = groups_for(changed)
            say("run_dev", f"{', '.join(changed[:3])} changed: restarting {', '.join(sorted(groups))}")
            for child in children:
                if child.groups & groups:
                    child.restart()
                    reported.discard(child.name)
        for child in children:
            if child.process is not None and child.process.poll() is not None and child.name not in reported:
                reported.add(child.name)
                say("run_dev", f"{child.name} exited with code {child.process.returncode}; "
                               "it restarts when its code changes")


if __name__ == "__main__":
    sys.exit(main())
