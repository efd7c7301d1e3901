"""The event server with real RabbitMQ: send_event through notify_tornado, the zulip client, runtornado."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import zulip

from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.tornado_events import send_event
from eventbus.users import User, UserStore
from tests.conftest import wait_for
from tests.eventserver import ServerThread
from tests.workers import ROOT, cli_env, run_cli


@pytest.fixture
def amqp_settings(settings: Settings) -> Settings:
    return settings.replace(shared_secret="s3cret")


@pytest.fixture
def server(amqp_settings: Settings, broker: RabbitMQBroker) -> Iterator[ServerThread]:
    broker.purge("notify_tornado") if broker.queue_info("notify_tornado").exists else None
    thread = ServerThread(amqp_settings, broker).start()
    yield thread
    thread.stop()


@pytest.fixture
def iago(amqp_settings: Settings) -> User:
    return UserStore(amqp_settings.database).create_user("iago@example.com", "Iago")


def zulip_client(server: ServerThread, user: User) -> zulip.Client:
    return zulip.Client(email=user.email, api_key=user.api_key, site=server.url(""), insecure=True)


def test_zulip_client_register_get_events_deregister(server: ServerThread, iago: User, broker: RabbitMQBroker) -> None:
    client = zulip_client(server, iago)
    registered = client.register(event_types=["custom"])
    assert registered["result"] == "success"
    send_event(broker, {"type": "other"}, [iago.id])
    send_event(broker, {"type": "custom", "text": "through RabbitMQ"}, [iago.id])
    result = client.get_events(queue_id=registered["queue_id"], last_event_id=-1)
    assert result["result"] == "success"
    assert [e["text"] for e in result["events"]] == ["through RabbitMQ"]
    assert client.deregister(registered["queue_id"])["result"] == "success"
    gone = client.get_events(queue_id=registered["queue_id"], last_event_id=-1, dont_block=True)
    assert gone["code"] == "BAD_EVENT_QUEUE_ID"


def test_zulip_client_call_on_each_event(server: ServerThread, iago: User, broker: RabbitMQBroker) -> None:
    client = zulip_client(server, iago)
    received: list[dict[str, Any]] = []

    class Enough(Exception):
        pass

    def callback(event: dict[str, Any]) -> None:
        received.append(event)
        if len(received) == 3:
            raise Enough

    def produce() -> None:
        wait_for(lambda: len(server.server.registry), what="the client's queue")
        for n in range(3):
            send_event(broker, {"type": "custom", "n": n}, [iago.id])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        producer = pool.submit(produce)
        with pytest.raises(Enough):
            client.call_on_each_event(callback, event_types=["custom"])
        producer.result(10)
    assert [e["n"] for e in received] == [0, 1, 2]


def test_notice_that_cannot_be_processed_goes_to_the_error_store(server: ServerThread, broker: RabbitMQBroker,
                                                                 iago: User) -> None:
    broker.publish("notify_tornado", {"event": {"type": "x"}, "users": ["iago"]})
    broker.publish_bodies("notify_tornado", [b"not json at all"])
    wait_for(lambda: broker.error_store.count("notify_tornado") == 2, what="both in the error store")
    errors = broker.error_store.read("notify_tornado")
    assert "'users' holds 'iago'" in errors[0]["error"]
    assert errors[1]["raw"] == "not json at all"
    wait_for(lambda: broker.queue_info("notify_tornado").depth == 0, what="both acked")


def test_runtornado_saves_its_queues_on_sigterm(amqp_settings: Settings, iago: User) -> None:
    port = free_port()
    env = cli_env(amqp_settings, EVENTBUS_PORT=str(port))
    log = amqp_settings.var_dir / "runtornado.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "eventbus", "runtornado"], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: f"listening on http://127.0.0.1:{port}" in log.read_text(), timeout=30,
                 what="the server to listen")
        client = zulip.Client(email=iago.email, api_key=iago.api_key, site=f"http://127.0.0.1:{port}")
        queue_id = client.register()["queue_id"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    saved = json.loads((amqp_settings.var_dir / "event_queues.json").read_text())
    assert [q["queue_id"] for q in saved] == [queue_id]


def test_create_user_prints_one_line_of_json(amqp_settings: Settings) -> None:
    result = run_cli(amqp_settings, "create_user", "desdemona@example.com", "--full-name", "Desdemona")
    assert result.returncode == 0
    [line] = result.stdout.strip().splitlines()
    created = json.loads(line)
    assert created["email"] == "desdemona@example.com" and created["full_name"] == "Desdemona"
    assert len(created["api_key"]) >= 24
    user = UserStore(amqp_settings.database).authenticate("desdemona@example.com", created["api_key"])
    assert user is not None and user.id == created["user_id"]
    again = run_cli(amqp_settings, "create_user", "desdemona@example.com")
    assert again.returncode == 2 and "exists already" in again.stderr
    bad = run_cli(amqp_settings, "create_user", "not-an-email")
    assert bad.returncode == 2 and "not an email address" in bad.stderr


def test_send_event_refuses_a_malformed_notice(broker: RabbitMQBroker) -> None:
    with pytest.raises(ValueError, match="must not carry an 'id'"):
        send_event(broker, {"type": "x", "id": 3}, [1])
    with pytest.raises(ValueError, match="user id"):
        send_event(broker, {"type": "x"}, [True])
