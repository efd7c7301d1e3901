"""A three-node RabbitMQ cluster with quorum queues: failover of every client, poison events, queue migration.

One cluster serves the module (started and stopped by the ``cluster``
fixture). Every client gets the three URLs, with a 2 s heartbeat so that a
node that stops answering is noticed in seconds. Before each scenario the
queues are declared afresh from one node, which makes that node their
leader: the node the scenario then takes down.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from functools import partial
from pathlib import Path
from typing import Any

import pika
import pytest
import zulip

from eventbus.contracts import NOTIFY_TORNADO as NOTIFY_QUEUE
from eventbus.errors import BrokerError, QueueMismatchError
from eventbus.queue import rabbitmq_node, set_broker
from eventbus.queue.declarations import DEAD_LETTER_REASON, DELIVERY_LIMIT, dead_letter_queue_name, queue_arguments
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import RabbitMQCluster, RabbitMQNode, free_port
from eventbus.settings import Settings
from eventbus.tornado_events import send_event
from eventbus.users import User, UserStore
from tests.conftest import require_rabbitmq, wait_for
from tests.workers import ROOT, WorkerProcess, cli_env, run_cli

#: Clients are back within this many seconds of losing a node (the issue's bound), killed or frozen. Frozen: the
#: other nodes take it for gone after 2 s (net_ticktime) and elect new leaders, and a client whose channel stops
#: confirming sends its publishes again on a new channel after 1.5 s; 4.4 to 4.8 s in five runs with both cores
#: kept busy by two other processes.
RECOVERY_SECONDS = 10.0
#: Per URL: a 2 s heartbeat (a silent node is dropped after 4 s), and a connection attempt to a frozen node
#: given up after 5 s.
URL_OPTIONS = "?heartbeat=2&stack_timeout=5"
#: Environment of the worker and Tornado processes.
QUORUM = {"EVENTBUS_QUEUE_TYPE": "quorum", "EVENTBUS_PUBLISH_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQCluster]:
    require_rabbitmq()
    folder, name = tmp_path_factory.mktemp("cluster"), f"eventbus-cluster-{os.getpid()}"
    printed = io.StringIO()
    with redirect_stdout(printed):  # started as an operator does: `eventbus rabbitmq start --nodes 3`
        started = rabbitmq_node.main(["start", "--nodes", "3", "--dir", str(folder), "--name", name])
    cluster = RabbitMQCluster(folder, name=name)
    try:
        assert started == 0
        assert printed.getvalue() == f"RabbitMQ cluster of 3 nodes is up: {cluster.url}\n"
        assert cluster.url.count(",amqp://") == 2
        yield cluster
    finally:
        for node in cluster.nodes:
            resume(node)  # a scenario that failed with a node frozen must not keep the cluster from stopping
        cluster.stop()


@pytest.fixture
def settings(cluster: RabbitMQCluster, tmp_path: Path) -> Settings:
    """Quorum queues on the cluster, the test's own var folder."""
    url = ",".join(u + URL_OPTIONS for u in cluster.urls)
    return Settings(amqp_url=url, queue_type="quorum", var_dir=tmp_path / "var", publish_timeout=60.0)


@pytest.fixture
def broker(settings: Settings) -> Iterator[RabbitMQBroker]:
    broker = RabbitMQBroker(settings)
    set_broker(broker)
    yield broker
    set_broker(None)
    broker.close()


# -- the cluster ----------------------------------------------------------------------------------------------------

def admin(node: RabbitMQNode) -> pika.adapters.blocking_connection.BlockingChannel:
    return pika.BlockingConnection(pika.URLParameters(node.url)).channel()


def lead_queues(node: RabbitMQNode, queues: list[str], queue_type: str = "quorum") -> None:
    """Declare ``queues`` afresh from ``node``, which makes it their leader (RabbitMQ's client-local placement)."""
    for queue in queues:
        for attempt in range(3):
            channel = admin(node)
            try:
                channel.queue_delete(queue)
                channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue, queue_type))
                break
            except pika.exceptions.AMQPError:
                # RabbitMQ 3.10 may fail a quorum queue declared again at once, just after a node rejoined.
                if attempt == 2:
                    raise
            finally:
                if channel.connection.is_open:
                    channel.connection.close()


def leader(cluster: RabbitMQCluster, queue: str) -> str:
    rows = cluster.nodes[0].ctl("list_queues", "name", "leader", "--formatter", "json")
    return str({row["name"]: row["leader"] for row in json.loads(rows)}[queue])


def resume(node: RabbitMQNode) -> None:
    pid = node.pid()
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


def all_running(cluster: RabbitMQCluster) -> bool:
    return sorted(cluster.running_nodes()) == sorted(n.nodename for n in cluster.nodes)


def test_status_names_every_node_of_the_cluster(cluster: RabbitMQCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert rabbitmq_node.main(["status", "--dir", str(cluster.base_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"RabbitMQ node {node.nodename} is up: {node.url}" for node in cluster.nodes]
    assert len({node.port for node in cluster.nodes}) == len({node.dist_port for node in cluster.nodes}) == 3


# -- the clients ----------------------------------------------------------------------------------------------------

class Producer(threading.Thread):
    """Publishes numbered events, one confirmed publish at a time; ``confirmed`` maps each number to the time its
    publish returned."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.publish = publish
        self.confirmed: dict[int, float] = {}
        self.failures: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            try:
                self.publish(n)
            except BrokerError as e:  # not promised, so not expected to arrive; the test wants none
                self.failures.append(e)
            else:
                self.confirmed[n] = time.monotonic()
            n += 1

    def since(self, moment: float) -> set[int]:
        return {n for n, at in list(self.confirmed.items()) if at > moment}

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(90)


class TornadoListener(threading.Thread):
    """A Zulip client long-polling the Tornado server for ``custom`` events; ``received`` holds their ``n``."""

    def __init__(self, port: int, user: User) -> None:
        super().__init__(daemon=True)
        self.client = zulip.Client(email=user.email, api_key=user.api_key, site=f"http://127.0.0.1:{port}")
        self.queue_id = self.client.register(event_types=["custom"])["queue_id"]
        self.received: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        last = -1
        while not self.stopping.is_set():
            try:
                result = self.client.get_events(queue_id=self.queue_id, last_event_id=last)
            except Exception:
                if self.stopping.is_set():  # the server was stopped under a long-poll
                    return
                raise
            for event in result.get("events", []):
                last = max(last, event["id"])
                if event["type"] == "custom":
                    self.received.append(event["n"])


@pytest.fixture
def runtornado(settings: Settings) -> Iterator[Callable[[], int]]:
    """``start()`` runs ``eventbus runtornado`` on the cluster and returns its port; it is killed at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        port = free_port()
        log = settings.var_dir / "runtornado.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "eventbus", "runtornado"], env=cli_env(settings, EVENTBUS_PORT=str(port),
                                                                             **QUORUM),
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        wait_for(lambda: f"listening on http://127.0.0.1:{port}" in log.read_text(), timeout=30,
                 what="the Tornado server to listen")
        return port

    yield start
    for process in processes:
        process.kill()
        process.wait(10)


def processed(settings: Settings) -> list[int]:
    path = settings.test_queue_file
    return [json.loads(line)["n"] for line in path.read_text().splitlines()] if path.exists() else []


# -- losing the node that leads the queues --------------------------------------------------------------------------

def freeze(node: RabbitMQNode) -> Callable[[], None]:
    """SIGSTOP: the node stops answering, its connections stay open (a hung VM, a network cut); undone by
    SIGCONT."""
    pid = node.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def kill(node: RabbitMQNode) -> Callable[[], None]:
    """SIGKILL: the node dies at once; undone by starting it again, when it rejoins the cluster."""
    pid = node.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return node.start


@pytest.mark.parametrize("failure", [kill, freeze])
def test_losing_the_leader_mid_stream_loses_no_confirmed_event(
        failure: Callable[[RabbitMQNode], Callable[[], None]], cluster: RabbitMQCluster, settings: Settings,
        broker: RabbitMQBroker, runtornado: Callable[[], int]) -> None:
    # Given quorum queues led by the second node, two workers, the Tornado server and a client of it
    doomed = cluster.nodes[1]
    lead_queues(doomed, [name for queue in ["test", NOTIFY_QUEUE] for name in (queue, dead_letter_queue_name(queue))])
    # The queues the Tornado server publishes to exist already, as in production: on RabbitMQ 3.10 the first
    # declaration of a quorum queue waits for every node, and holds up its channel (Tornado's one) until then.
    lead_queues(cluster.nodes[0], [name for queue in ["user_activity", "slow_queries", "error_reports"]
                                   for name in (queue, dead_letter_queue_name(queue))])
    assert leader(cluster, "test") == leader(cluster, NOTIFY_QUEUE) == doomed.nodename
    user = UserStore(settings.database).create_user("iago@example.com", "Iago")
    workers = [WorkerProcess(settings, "--queue=test", f"--worker_num={n}", **QUORUM) for n in range(2)]
    listener = TornadoListener(runtornado(), user)
    # and producers publishing confirmed events to the workers and, through send_event, to the Tornado server
    to_workers = Producer(lambda n: broker.publish("test", {"n": n}))
    to_tornado = Producer(lambda n: send_event(broker, {"type": "custom", "n": n}, [user.id]))
    try:
        for thread in (listener, to_workers, to_tornado):
            thread.start()
        wait_for(lambda: len(set(processed(settings))) >= 50 and len(set(listener.received)) >= 50, timeout=60,
                 what="events flowing through workers and Tornado")

        # When the node that leads the queues is lost mid-stream
        undo = failure(doomed)
        lost = time.monotonic()

        # Then producers, workers and the Tornado server are all back within 10 s: events published after the loss
        # went through (confirmed more than half a second after it: not a confirm that was on its way already)
        def back() -> bool:
            after_workers, after_tornado = to_workers.since(lost + 0.5), to_tornado.since(lost + 0.5)
            return bool(after_workers & set(processed(settings))) and bool(after_tornado & set(listener.received))

        try:
            wait_for(back, timeout=RECOVERY_SECONDS, what="every client back after the loss of a node")
        finally:
            print(f"{failure.__name__}: after {time.monotonic() - lost:.1f} s, published since: "
                  f"{len(to_workers.since(lost))} to workers, {len(to_tornado.since(lost))} to Tornado; "
                  f"processed: {len(set(processed(settings)))}, received: {len(set(listener.received))}")

        # and the node rejoins the cluster when started (or woken) again
        undo()
        undone = time.monotonic()
        wait_for(lambda: all_running(cluster), timeout=60, what="the node back in the cluster")
        print(f"{failure.__name__}: the node was back in the cluster {time.monotonic() - undone:.1f} s after")
        to_workers.stop()
        to_tornado.stop()

        # and every confirmed event was processed, by the workers and by the Tornado server
        wait_for(lambda: set(to_workers.confirmed) <= set(processed(settings)), timeout=60,
                 what="every confirmed event processed by a worker")
        wait_for(lambda: set(to_tornado.confirmed) <= set(listener.received), timeout=60,
                 what="every confirmed event delivered by the Tornado server")
        assert to_workers.failures == to_tornado.failures == []
        assert all(w.process.poll() is None for w in workers), [w.log for w in workers]
        duplicates = len(processed(settings)) - len(set(processed(settings)))
        print(f"{len(to_workers.confirmed)} events to workers ({duplicates} processed twice), "
              f"{len(to_tornado.confirmed)} to Tornado")
    finally:
        resume(doomed)
        listener.stopping.set()
        to_workers.stop()
        to_tornado.stop()
        for worker in workers:
            worker.stop()


# -- a poison event -------------------------------------------------------------------------------------------------

def test_an_event_that_kills_its_worker_every_time_ends_in_the_error_store(
        cluster: RabbitMQCluster, settings: Settings, broker: RabbitMQBroker) -> None:
    # Given an event that kills the worker that takes it
    lead_queues(cluster.nodes[0], ["test_poison", dead_letter_queue_name("test_poison")])
    broker.publish("test_poison", {"id": "poison", "poison": True})

    # When its worker is started again each time it dies, as supervisord would
    starts = 0
    while not broker.error_store.count("test_poison"):
        assert starts <= DELIVERY_LIMIT + 1, "the poison event loops"
        worker = WorkerProcess(settings, "--queue=test_poison", **QUORUM)
        starts += 1
        wait_for(partial(died_or_stored, worker, broker), timeout=30,
                 what="the worker to die, or the event to reach the error store")

    # Then after the delivery limit RabbitMQ dead-letters it, and the worker moves it to the error store
    [entry] = broker.error_store.read("test_poison")
    assert entry["event"] == {"id": "poison", "poison": True}
    assert entry["error"] == DEAD_LETTER_REASON
    assert starts == DELIVERY_LIMIT + 2  # one delivery per start up to the limit, then one start that survives
    # and the queue goes on: the next event is processed by the same worker
    try:
        broker.publish("test_poison", {"id": "fine"})
        path = settings.var_dir / "test_poison.jsonl"
        wait_for(lambda: path.exists() and "fine" in path.read_text(), timeout=20, what="the next event processed")
        assert worker.process.poll() is None
        assert broker.queue_info("test_poison.dead").depth == 0
    finally:
        worker.stop()


def died_or_stored(worker: WorkerProcess, broker: RabbitMQBroker) -> bool:
    return worker.process.poll() is not None or broker.error_store.count("test_poison") > 0


# -- migrating queues to another type -------------------------------------------------------------------------------

def publish_raw(node: RabbitMQNode, queue: str, events: list[dict[str, Any]]) -> None:
    channel = admin(node)
    channel.confirm_delivery()
    for event in events:
        channel.basic_publish("", queue, json.dumps(event).encode(), pika.BasicProperties(delivery_mode=2))
    channel.connection.close()


def queue_type(cluster: RabbitMQCluster, queue: str) -> str:
    rows = json.loads(cluster.nodes[0].ctl("list_queues", "name", "type", "--formatter", "json"))
    return str({row["name"]: row["type"] for row in rows}[queue])


def test_a_classic_queue_is_a_clear_error_until_migrate_queues_moves_its_events(
        cluster: RabbitMQCluster, settings: Settings, broker: RabbitMQBroker) -> None:
    # Given a classic queue "test" holding events, from before the switch to quorum queues
    node = cluster.nodes[0]
    lead_queues(node, ["test"], queue_type="classic")
    publish_raw(node, "test", [{"n": n} for n in range(100)])

    # When a producer and a worker use it with EVENTBUS_QUEUE_TYPE=quorum
    # Then both say which queue, and how to migrate it, instead of retrying forever
    with pytest.raises(QueueMismatchError, match=r"queue 'test' exists .*eventbus migrate_queues"):
        broker.publish("test", {"n": 100})
    worker = WorkerProcess(settings, "--queue=test", **QUORUM)
    assert worker.wait(30) != 0
    assert "queue 'test' exists on RabbitMQ with other arguments" in worker.log
    assert "Run `eventbus migrate_queues`" in worker.log

    # When migrate_queues is interrupted after it moved part of the events aside, and is run again
    lead_queues(node, ["test.migrating"])
    channel = admin(node)
    for _ in range(30):
        method, properties, body = channel.basic_get("test")
        channel.basic_publish("", "test.migrating", body, properties)
        channel.basic_ack(method.delivery_tag)
    channel.connection.close()
    result = run_cli(settings, "migrate_queues", EVENTBUS_QUEUE_TYPE="quorum")

    # Then "test" is a quorum queue holding every event, in order, and nothing is left aside
    assert result.returncode == 0, result.stderr
    assert "test: declared again the current way, 100 event(s) moved into it" in result.stdout
    assert queue_type(cluster, "test") == "quorum"
    assert broker.queue_info("test").depth == 100
    assert not broker.queue_info("test.migrating").exists
    again = run_cli(settings, "migrate_queues", "test", EVENTBUS_QUEUE_TYPE="quorum")
    assert "test: already declared the current way" in again.stdout
    # and the worker, started again, processes them all; the producer publishes again
    worker = WorkerProcess(settings, "--queue=test", **QUORUM)
    try:
        broker.publish("test", {"n": 100})
        wait_for(lambda: sorted(processed(settings)) == list(range(101)), timeout=30, what="every event processed")
        assert processed(settings)[:100] == list(range(100))  # in their order
    finally:
        worker.stop()
