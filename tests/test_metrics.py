"""/metrics: Prometheus text from RabbitMQ, the workers' stats files and the server; loopback or the secret."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from eventbus.metrics import metrics_handlers
from eventbus.processors.stats import QueueStats, stats_path
from eventbus.queue import MemoryBroker, set_broker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.eventserver import ServerThread


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def metrics_server(settings: Settings, broker: RabbitMQBroker) -> Iterator[ServerThread]:
    server = ServerThread(settings.replace(shared_secret="metrics-secret"), broker, address="0.0.0.0",
                          extra_handlers=metrics_handlers).start()
    yield server
    server.stop()


def fetch(url: str, **kwargs: Any) -> Any:
    async def get() -> Any:
        return await AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)

    return asyncio.run(get())


def test_metrics_from_queues_stats_and_server(metrics_server: ServerThread, settings: Settings,
                                              broker: RabbitMQBroker) -> None:
    if broker.queue_info("noop").exists:
        broker.purge("noop")
    broker.publish_many("noop", [{"n": n} for n in range(7)])
    stats = QueueStats(stats_path(settings.var_dir, "noop"))
    for seconds in (0.0004, 0.003, 0.2):
        stats.record(1, seconds, failed=False)
    stats.record(2, 0.002, failed=True)
    stats.write()
    response = fetch(metrics_server.url("/metrics"))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("eventbus_queue_depth", (("queue", "noop"),))] == 7
    assert samples[("eventbus_events_consumed_total", (("queue", "noop"),))] == 3
    assert samples[("eventbus_events_failed_total", (("queue", "noop"),))] == 2
    assert samples[("eventbus_consume_seconds_bucket", (("le", "0.001"), ("queue", "noop")))] == 3  # 0.0004, 2x 0.001
    assert samples[("eventbus_consume_seconds_count", (("queue", "noop"),))] == 5
    assert samples[("eventbus_event_queues", ())] == 0
    assert ("eventbus_connected_clients", ()) in samples and ("eventbus_publish_failures_total", ()) in samples
    broker.purge("noop")


def test_metrics_need_loopback_or_the_secret(metrics_server: ServerThread) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback to ask from")
    url = f"http://{address}:{metrics_server.port}/metrics"
    denied = fetch(url)
    assert denied.code == 401 and b"UNAUTHORIZED" in denied.body
    assert fetch(url, headers={"Authorization": "Bearer wrong"}).code == 401
    assert fetch(url, headers={"Authorization": "Bearer metrics-secret"}).code == 200
    notify = fetch(f"http://{address}:{metrics_server.port}/api/internal/notify_tornado", method="POST",
                   body="secret=metrics-secret&data={}")
    assert notify.code == 401  # the internal endpoint wants loopback even with the secret


def test_metrics_read_the_queues_of_the_servers_own_broker(event_settings: Settings,
                                                           event_broker: MemoryBroker) -> None:
    # The server is given its broker (as embedded mode does); the process-wide one is another, empty, one.
    set_broker(MemoryBroker(event_settings))
    server = ServerThread(event_settings, event_broker, extra_handlers=metrics_handlers).start()
    try:
        event_broker.publish_many("noop", [{"n": n} for n in range(4)])
        response = fetch(server.url("/metrics"))
    finally:
        server.stop()
        set_broker(None)
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    depths = {s.labels["queue"]: s.value for s in families["eventbus_queue_depth"].samples}
    assert depths["noop"] == 4
