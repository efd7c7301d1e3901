"""Fixtures shared by the whole suite: one private RabbitMQ node for the session, and helpers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from eventbus import cli
from eventbus.database import close_database
from eventbus.devtools.postgresql import PostgreSQLServer
from eventbus.devtools.postgresql import is_installed as postgresql_installed
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import Broker, MemoryBroker, set_broker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import RabbitMQNode, is_installed
from eventbus.settings import Settings
from eventbus.users import User, UserStore
from tests.eventserver import ServerThread
from tests.forwarder import Forwarder
from tests.smtp_server import SmtpServer

# The test processors (tests/processors.py) are registered in every test process and worker.
os.environ["EVENTBUS_PROCESSOR_MODULES"] = "tests.processors"


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """One private RabbitMQ node for the whole run, stopped at the end."""
    require_rabbitmq()
    node = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), name=f"eventbus-test-{os.getpid()}")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def require_rabbitmq() -> None:
    """Skip the test unless rabbitmq-server is installed; in CI, fail it."""
    if not is_installed():
        reason = "rabbitmq-server is not installed (apt-get install -y rabbitmq-server)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": in CI the RabbitMQ tests must run", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def settings(rabbitmq_node: RabbitMQNode, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings pointing at the session's node, with a var folder of the test's own (and the ``database`` of a
    test that asks for one)."""
    return Settings(amqp_url=rabbitmq_node.url, var_dir=tmp_path / "var", publish_timeout=5.0,
                    database_setting=chosen_database(request))


@pytest.fixture
def broker(settings: Settings) -> Iterator[RabbitMQBroker]:
    broker = RabbitMQBroker(settings)
    yield broker
    broker.close()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    return f"t_{base}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free port, recording what arrives."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def forwarder(rabbitmq_node: RabbitMQNode) -> Iterator[Forwarder]:
    """A TCP forwarder to the node that the test can cut."""
    fwd = Forwarder(rabbitmq_node.port)
    yield fwd
    fwd.close()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def take(broker: MemoryBroker, queue: str) -> list[dict[str, Any]]:
    """Every event waiting in ``queue``, taken off it."""
    taken: list[dict[str, Any]] = []
    consumer = broker.consumer(queue, taken.extend, batch_size=100, on_idle=lambda: consumer.stop())
    consumer.run()
    return taken


async def until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """``wait_for`` inside a coroutine: the loop goes on while it polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# -- the databases: SQLite files, and a private PostgreSQL server --------------------------

#: The databases every store test runs against (the ``database`` fixture).
DATABASES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """One private PostgreSQL server for the whole run (fsync off: its databases are thrown away), stopped at the
    end. In a folder of its own under /tmp: the server runs as the postgres user when the tests run as root."""
    if not postgresql_installed():
        reason = "PostgreSQL is not installed (apt-get install -y postgresql)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": in CI the PostgreSQL tests must run", pytrace=False)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="eventbus-postgresql-"))
    server = PostgreSQLServer(root, durable=False).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgresql_url(postgresql_server: PostgreSQLServer) -> Iterator[str]:
    """A new, empty PostgreSQL database of the test's own; this process's connections to it closed at the end."""
    url = postgresql_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    yield url
    close_database(url)


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The database of a store test (``EVENTBUS_DATABASE``): a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "eventbus.sqlite3"
        yield path
        close_database(path)
    else:
        yield request.getfixturevalue("postgresql_url")


# -- the event server on the in-process broker ----------------------------------------

EVENT_SECRET = "test-shared-secret"


def chosen_database(request: pytest.FixtureRequest) -> Path | str | None:
    """The ``database`` fixture's value for a test that asks for it (the test then runs on SQLite, then on
    PostgreSQL), else None: the default SQLite file under var/."""
    return request.getfixturevalue("database") if "database" in request.fixturenames else None


@pytest.fixture
def event_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for an event server on the in-process broker (on the ``database`` of a test that asks for one)."""
    return Settings(broker="memory", var_dir=tmp_path / "var", shared_secret=EVENT_SECRET, heartbeat_seconds=30,
                    database_setting=chosen_database(request))


@pytest.fixture
def event_broker(event_settings: Settings) -> MemoryBroker:
    """The in-process broker the event server consumes from (producers hand it to send_event)."""
    return MemoryBroker(event_settings)


@pytest.fixture
def users(event_settings: Settings) -> tuple[User, User]:
    store = UserStore(event_settings.database)
    return store.create_user("iago@example.com", "Iago"), store.create_user("othello@example.com", "Othello")


@pytest.fixture
def start_server(event_settings: Settings, event_broker: MemoryBroker) -> Iterator[Callable[..., ServerThread]]:
    """Start event servers (settings overridden by keyword); all are stopped at the end."""
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        server = ServerThread(event_settings.replace(**overrides), event_broker).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def eventbus_command(broker: Broker, *argv: str) -> int:
    """The ``eventbus`` command run in this process on ``broker``: an entry point, it works on the process's
    broker, which is ``broker`` while it runs."""
    set_broker(broker)
    try:
        return cli.main(argv)
    finally:
        set_broker(None)


@contextmanager
def worker_threads(default: Broker) -> Iterator[Callable[..., WorkerThreads]]:
    """``start(*queues, broker=None, **options)`` runs the processors of queues in threads (on ``default`` unless
    told, with queue options overridden by keyword); every one is stopped, and must end, when the block ends."""
    started: list[WorkerThreads] = []

    def start(*queues: str, broker: Broker | None = None, **options: Any) -> WorkerThreads:
        threads = WorkerThreads(queues, broker or default, **options)
        threads.start()
        started.append(threads)
        return threads

    yield start
    for threads in started:
        threads.stop()
        assert threads.join(10)


@pytest.fixture
def sender_worker(event_broker: MemoryBroker) -> Iterator[WorkerThreads]:
    """The message_sender processor, in a thread, on the in-process broker."""
    with worker_threads(event_broker) as start:
        yield start("message_sender")
