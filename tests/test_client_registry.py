"""ClientRegistry on its own: the heartbeat sweep, without a server or real minutes."""

from __future__ import annotations

from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor, QueuedEvent

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
