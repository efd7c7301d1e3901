"""``/metrics`` in Prometheus text format, served by the Tornado server.

Queue figures come from where they live: depth and consumers from RabbitMQ,
what each worker consumed and failed and its consume time histogram from the
workers' stats files (``<var>/queue_stats``), the rest from the event
server's ``statistics()``; the handler is handed the server and the broker
to read. Only loopback may ask, or whoever sends ``Authorization: Bearer
<shared secret>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from tornado.ioloop import IOLoop

from eventbus.errors import BrokerError
from eventbus.processors.registry import registered_queues
from eventbus.processors.stats import read_stats
from eventbus.queue import Broker
from eventbus.tornado_events.auth import Auth, is_loopback
from eventbus.tornado_events.handlers import ApiError, BaseHandler, handler_args
from eventbus.tornado_events.server import EventServer


def queue_snapshot(broker: Broker) -> list[dict[str, Any]]:
    """Depth, consumers and worker stats of every registered queue (blocking: run it in an executor)."""
    queues = registered_queues()
    try:
        infos = {info.name: info for info in broker.queue_infos(queues)}
    except BrokerError:
        infos = {}
    return [{"queue": q, "info": infos.get(q), "stats": read_stats(broker.settings.var_dir, q) or {}} for q in queues]


class Snapshot(Collector):
    """A collector over figures gathered beforehand (collecting must not block the IOLoop)."""

    def __init__(self, queues: list[dict[str, Any]], server: dict[str, Any]) -> None:
        self.queues = queues
        self.server = server

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("eventbus_queue_depth", "Events waiting in the queue", labels=["queue"])
        consumers = GaugeMetricFamily("eventbus_queue_consumers", "Consumers of the queue", labels=["queue"])
        consumed = CounterMetricFamily("eventbus_events_consumed", "Events processed by the queue's worker",
                                       labels=["queue"])
        failed = CounterMetricFamily("eventbus_events_failed", "Event tries that failed", labels=["queue"])
        seconds = HistogramMetricFamily("eventbus_consume_seconds", "Time to process one event", labels=["queue"])
        for q in self.queues:
            name, info, stats = q["queue"], q["info"], q["stats"]
            if info is not None:
                depth.add_metric([name], info.depth)
                consumers.add_metric([name], info.consumers)
            consumed.add_metric([name], stats.get("processed", 0))
            failed.add_metric([name], stats.get("failed", 0))
            histogram = stats.get("histogram")
            if histogram:
                running, buckets = 0, []
                for bound, count in zip([*histogram["buckets"], float("inf")], histogram["counts"], strict=True):
                    running += count
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
                seconds.add_metric([name], buckets, histogram["sum"])
        yield from (depth, consumers, consumed, failed, seconds)
        s = self.server
        yield GaugeMetricFamily("eventbus_connected_clients", "Websockets and held long-polls", value=s["connected"])
        yield GaugeMetricFamily("eventbus_event_queues", "Live client event queues", value=s["clients"])
        yield CounterMetricFamily("eventbus_events_delivered", "Events queued for clients",
                                  value=s["events_delivered"])
        yield CounterMetricFamily("eventbus_publish_failures", "Events the server could not publish",
                                  value=s["publish_failures"])


class MetricsHandler(BaseHandler):
    """GET /metrics: loopback, or the shared secret as a bearer token."""

    def initialize(self, server: EventServer, broker: Broker, **base: Any) -> None:
        super().initialize(**base)
        self.server = server
        # The server's own broker: the queue depths of where its queues are (metrics_handlers makes it once).
        self.broker = broker

    async def get(self) -> None:
        given = self.request.headers.get("Authorization", "").removeprefix("Bearer ")
        allowed = is_loopback(self.request.remote_ip) or self.authenticator.secret_ok(given)
        if not allowed:
            raise ApiError(401, "UNAUTHORIZED", "Metrics: loopback or the shared secret required")
        queues = await IOLoop.current().run_in_executor(None, queue_snapshot, self.broker)
        stats = self.server.statistics()
        registry = CollectorRegistry()
        registry.register(Snapshot(queues, {
            "connected": stats["sockets"] + stats["long_polls"], "clients": stats["clients"],
            "events_delivered": stats["events_delivered"],
            "publish_failures": stats["queue_client"].get("publish_failures", 0),
        }))
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(generate_latest(registry))


def metrics_handlers(server: EventServer) -> list[Any]:
    return [(r"/metrics", MetricsHandler, handler_args(server, Auth.NONE, server=server,
                                                       broker=server.monitoring_broker()))]
