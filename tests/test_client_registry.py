"""ClientRegistry and its queues on their own: the heartbeat sweep, the bounds, what the garbage collector sees."""

from __future__ import annotations

import gc
import logging

import pytest

from eventbus import codec
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor, EventQueue, QueuedEvent

INTERVAL = 50.0


class Recorder:
    """A listener that records what it is handed: answered once like a held GET, or kept like a websocket."""

    def __init__(self, wants_heartbeats: bool) -> None:
        self.wants_heartbeats = wants_heartbeats
        self.got: list[dict[str, object]] = []

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        self.got += [q.as_dict() for q in events]
        if self.wants_heartbeats:
            client.detach(self)  # a held GET is answered once

    def drop(self, client: ClientDescriptor, reason: str) -> None:
        raise AssertionError("not dropped here")

    def replace(self, client: ClientDescriptor) -> None:
        raise AssertionError("not replaced here")


def held_clients(registry: ClientRegistry, count: int, *, wants_heartbeats: bool = True) -> list[Recorder]:
    listeners = []
    for _ in range(count):
        client = registry.add(ClientDescriptor(user_id=1))
        listener = Recorder(wants_heartbeats)
        client.attach(listener)
        client.last_connection_time = 1000.0  # attached at t=1000
        listeners.append(listener)
    return listeners


def test_heartbeats_go_between_0_9_and_1_1_intervals_spread_over_the_clients() -> None:
    registry = ClientRegistry(max_queues_per_user=200)  # one user's, all held
    listeners = held_clients(registry, 200)
    assert registry.send_heartbeats(INTERVAL, now=1000 + 0.89 * INTERVAL) == 0
    early = registry.send_heartbeats(INTERVAL, now=1000 + 0.95 * INTERVAL)
    assert 0 < early < 200  # the spread: some are due before others
    # The sweep runs every tenth of the interval: by 1.0 interval every client is due, so by 1.1 all have one.
    assert early + registry.send_heartbeats(INTERVAL, now=1000 + 1.0 * INTERVAL) == 200
    assert all(listener.got == [{"id": 0, "type": "heartbeat"}] for listener in listeners)


def test_no_heartbeats_for_websockets_or_clients_without_a_listener() -> None:
    registry = ClientRegistry()
    sockets = held_clients(registry, 3, wants_heartbeats=False)
    idle = registry.add(ClientDescriptor(user_id=2))
    idle.last_connection_time = 0.0
    assert registry.send_heartbeats(INTERVAL, now=10_000.0) == 0
    assert all(not s.got for s in sockets) and len(idle.queue) == 0


# -- queues: what they hold, and what the garbage collector sees of it ------------------------


def test_a_queue_gives_back_each_event_with_its_id_after_any_prune() -> None:
    queue = EventQueue(next_id=5)
    bodies = [codec.encode({"type": "custom", "n": n}) for n in range(700)]  # several chunks and a tail
    for body in bodies:
        queue.push(body)
    for last_event_id, first in [(3, 5), (5, 6), (200, 201), (260, 261), (261, 262), (600, 601), (704, 705)]:
        queue.prune(last_event_id)
        assert [q.id for q in queue.events] == list(range(first, 705))
        assert [q.body for q in queue.events] == bodies[first - 5:]
        assert queue.size == sum(map(len, bodies[first - 5:])) and len(queue) == 705 - first
    queue.push(codec.encode({"type": "custom", "n": 700}))
    assert [q.as_dict() for q in queue.events] == [{"id": 705, "type": "custom", "n": 700}]


def test_queued_events_add_nothing_for_the_garbage_collector_to_walk() -> None:
    # Given 100 idle clients, when 2,000 events reach each of them (200,000 queued events in all)...
    registry = ClientRegistry()
    for user_id in range(100):
        registry.add(ClientDescriptor(user_id=user_id))
    gc.collect()
    tracked = len(gc.get_objects())
    for n in range(2_000):
        registry.deliver({"type": "custom", "n": n, "text": "x" * 100}, range(100))
    gc.collect()
    # ... then the collector tracks no object per queued event: a full pass costs the same as before.
    assert len(gc.get_objects()) - tracked < 1_000
    assert all(len(client.queue) == 2_000 for client in registry)


class Dropped:
    """A listener that records why its queue was dropped."""

    wants_heartbeats = False

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def deliver(self, client: ClientDescriptor, events: list[QueuedEvent]) -> None:
        pass

    def drop(self, client: ClientDescriptor, reason: str) -> None:
        self.reasons.append(reason)

    def replace(self, client: ClientDescriptor) -> None:
        raise AssertionError("not replaced here")


def test_a_queue_over_its_bytes_is_dropped_its_listener_told_and_the_drop_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = ClientRegistry(max_queue_events=1_000, max_queue_bytes=1_000)
    client = registry.add(ClientDescriptor(user_id=1))
    listener = Dropped()
    client.attach(listener)
    event = {"type": "custom", "text": "x" * 280}  # 300 bytes of JSON
    with caplog.at_level(logging.WARNING, logger="eventbus.tornado_events.clients"):
        counts = [registry.deliver(event, [1]) for _ in range(5)]
    assert counts == [1, 1, 1, 1, 0]  # the fourth event took it over 1,000 bytes; the fifth found no queue
    assert listener.reasons == ["the queue overflowed"] and registry.get(client.queue_id, 1) is None
    [record] = [r for r in caplog.records if client.queue_id in r.getMessage()]
    assert "1000 bytes" in record.getMessage() and record.levelno == logging.WARNING


def test_one_event_alone_never_overflows_a_queue() -> None:
    registry = ClientRegistry(max_queue_bytes=1_000)
    client = registry.add(ClientDescriptor(user_id=1))
    assert registry.deliver({"type": "custom", "text": "x" * 5_000}, [1]) == 1
    assert registry.get(client.queue_id, 1) is client


def test_a_saved_queue_splices_its_events_json_and_restores_the_same_events() -> None:
    client = ClientDescriptor(user_id=7, event_types=frozenset({"custom"}), narrow=(("stream", "Denmark"),))
    for n in range(300):
        client.add({"type": "custom", "n": n, "text": "é\u2028"})
    client.queue.prune(9)
    saved = client.to_json()
    assert codec.decode(saved) == client.to_dict()
    restored = ClientDescriptor.from_dict(codec.decode(saved))
    assert [q.as_dict() for q in restored.queue.events] == [q.as_dict() for q in client.queue.events]
    assert (restored.queue.first_id, restored.queue.next_id, restored.queue.size) == (10, 300, client.queue.size)
    assert (restored.queue_id, restored.narrow, restored.event_types) == (client.queue_id, client.narrow,
                                                                          client.event_types)
