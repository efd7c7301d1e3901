"""user_activity, user_activity_interval and user_presence, in-process on the memory broker, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from eventbus.errors import BrokerUnreachable
from eventbus.presence import PresenceStore, UserPresence
from eventbus.processors.queues import analytics
from eventbus.processors.queues.analytics import (
    ActivityCounts,
    AnalyticsStore,
)
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User, UserStore
from tests.conftest import worker_threads

Start = Callable[..., None]


@pytest.fixture
def start(event_broker: MemoryBroker, users: tuple[User, User]) -> Iterator[Start]:
    """Start processors in threads on the in-process broker (once the database exists); stopped at the end.

    Batches as in production, without waiting seconds for one to fill.
    """
    with worker_threads(event_broker) as start_threads:

        def start(*queues: str) -> None:
            start_threads(*queues, batch_wait=0.1)

        yield start


@pytest.fixture
def event_settings(event_settings: Settings, database: Path | str) -> Settings:
    """On SQLite, then on PostgreSQL; presence broadcasts coalesced over a short window, so that a deferred one
    comes within the test."""
    return event_settings.replace(presence_coalesce_seconds=1.0, database_setting=database)


@pytest.fixture
def store(event_settings: Settings) -> AnalyticsStore:
    return AnalyticsStore(event_settings.database)


def take_notices(broker: MemoryBroker) -> list[dict[str, Any]]:
    """Every notice waiting in notify_tornado, taken off the queue."""
    taken: list[dict[str, Any]] = []
    consumer = broker.consumer("notify_tornado", taken.extend, batch_size=100, on_idle=lambda: consumer.stop())
    consumer.run()
    return taken


# -- user_activity ----------------------------------------------------------------------


def test_a_batch_is_counted_per_user_client_and_query_in_one_upsert(
        event_broker: MemoryBroker, start: Start, store: AnalyticsStore, users: tuple[User, User],
        monkeypatch: pytest.MonkeyPatch) -> None:
    iago, othello = users
    upserts: list[ActivityCounts] = []
    add_activity = AnalyticsStore.add_activity

    def recording(self: AnalyticsStore, counts: ActivityCounts) -> None:
        upserts.append(counts)
        add_activity(self, counts)

    store.add_activity({(iago.id, "ZulipPython", "/api/v1/events"): (10, 500.0)})  # from earlier batches
    monkeypatch.setattr(AnalyticsStore, "add_activity", recording)

    event_broker.publish_many("user_activity", [
        {"user_id": iago.id, "client": "ZulipPython", "query": "/api/v1/events", "time": 100.0},
        {"user_id": iago.id, "client": "ZulipPython", "query": "/api/v1/events", "time": 900.0},
        {"user_id": iago.id, "client": "ZulipPython", "query": "/api/v1/events", "time": 300.0},
        {"user_id": iago.id, "client": "ZulipPython", "query": "/api/v1/messages", "time": 200.0},
        {"user_id": iago.id, "client": "website", "query": "/api/v1/events", "time": 150.0},
        {"user_id": othello.id, "client": "ZulipPython", "query": "/api/v1/events", "time": 400.0},
        {"user_id": othello.id, "client": "ZulipPython", "query": "/api/v1/events", "time": 250.0},
        {"user_id": othello.id, "client": "ZulipPython", "time": 250.0},
    ])
    start("user_activity")
    event_broker.join("user_activity", timeout=10)

    assert len(upserts) == 1 and len(upserts[0]) == 4
    assert store.activity(iago.id) == {
        ("ZulipPython", "/api/v1/events"): (13, 900.0),
        ("ZulipPython", "/api/v1/messages"): (1, 200.0),
        ("website", "/api/v1/events"): (1, 150.0),
    }
    assert store.activity(othello.id) == {("ZulipPython", "/api/v1/events"): (2, 400.0)}
    [bad] = event_broker.error_store.read("user_activity")
    assert bad["event"] == {"user_id": othello.id, "client": "ZulipPython", "time": 250.0}
    assert bad["error"] == "ContractError: 'query' must be a non-empty string, not None"


def test_a_later_batch_never_moves_last_visit_back(event_broker: MemoryBroker, start: Start,
                                                   store: AnalyticsStore, users: tuple[User, User]) -> None:
    iago = users[0]
    start("user_activity")
    for when in (500.0, 100.0):
        event_broker.publish("user_activity", {"user_id": iago.id, "client": "c", "query": "q", "time": when})
        event_broker.join("user_activity", timeout=10)
    assert store.activity(iago.id) == {("c", "q"): (2, 500.0)}


# -- user_activity_interval -------------------------------------------------------------


def test_overlapping_and_touching_intervals_are_merged_per_user(
        event_broker: MemoryBroker, start: Start, store: AnalyticsStore, users: tuple[User, User]) -> None:
    iago, othello = users
    start("user_activity_interval")
    for user, begin, end in [(iago, 0, 10), (iago, 20, 30), (iago, 10, 15), (iago, 40, 50), (othello, 12, 22),
                             (iago, 25, 45), (iago, 60, 70), (iago, 0, 10)]:
        event_broker.publish("user_activity_interval", {"user_id": user.id, "start": begin, "end": end})
        event_broker.join("user_activity_interval", timeout=10)  # one at a time: the merge rule, not a race
    assert store.intervals(iago.id) == [(0, 15), (20, 50), (60, 70)]
    assert store.intervals(othello.id) == [(12, 22)]


def test_an_interval_that_ends_before_it_starts_is_a_permanent_error(
        event_broker: MemoryBroker, start: Start, store: AnalyticsStore, users: tuple[User, User]) -> None:
    start("user_activity_interval")
    event_broker.publish_many("user_activity_interval", [
        {"user_id": users[0].id, "start": 30, "end": 20},
        {"user_id": users[0].id, "start": "yesterday", "end": 20},
    ])
    event_broker.join("user_activity_interval", timeout=10)
    assert [e["error"] for e in event_broker.error_store.read("user_activity_interval")] == [
        "ContractError: 'start' (30.0) is after 'end' (20.0)",
        "ContractError: 'start' must be a number (Unix time), not 'yesterday'",
    ]
    assert store.intervals(users[0].id) == []


# -- user_presence ----------------------------------------------------------------------


def presence(user: User, status: str, when: float, client: str = "website") -> dict[str, Any]:
    return {"user_id": user.id, "status": status, "time": when, "client": client}


def test_a_presence_change_is_sent_to_the_users_peers(
        event_broker: MemoryBroker, start: Start, store: AnalyticsStore, users: tuple[User, User],
        event_settings: Settings) -> None:
    iago, othello = users
    desdemona = UserStore(event_settings.database).create_user("desdemona@example.com", "Desdemona")
    start("user_presence")
    event_broker.publish("user_presence", presence(iago, "active", 1000.0))
    event_broker.join("user_presence", timeout=10)

    [notice] = take_notices(event_broker)
    assert sorted(notice["users"]) == [othello.id, desdemona.id]
    event = notice["event"]
    assert event.pop("server_timestamp") > 1000
    assert event == {"type": "presence", "user_id": iago.id, "email": iago.email, "presence": {
        "website": {"client": "website", "status": "active", "timestamp": 1000, "pushable": False}}}
    stored = store.presence(iago.id)
    assert stored is not None and (stored.status, stored.time) == ("active", 1000.0)


def test_an_unchanged_status_is_stored_but_not_sent(event_broker: MemoryBroker, start: Start,
                                                    store: AnalyticsStore, users: tuple[User, User]) -> None:
    iago, othello = users
    start("user_presence")
    event_broker.publish("user_presence", presence(iago, "active", 1000.0))
    event_broker.join("user_presence", timeout=10)
    assert len(take_notices(event_broker)) == 1

    event_broker.publish("user_presence", presence(iago, "active", 1060.0, client="ZulipMobile"))
    event_broker.publish("user_presence", presence(othello, "offline", 1000.0))  # none yet counts as offline
    event_broker.join("user_presence", timeout=10)
    assert take_notices(event_broker) == []
    stored = store.presence(iago.id)
    assert stored is not None and (stored.status, stored.client, stored.time) == ("active", "ZulipMobile", 1060.0)


def test_only_the_latest_presence_counts(event_broker: MemoryBroker, start: Start, store: AnalyticsStore,
                                         users: tuple[User, User]) -> None:
    iago = users[0]
    start("user_presence")
    for status, when in [("active", 1000.0), ("idle", 1200.0), ("offline", 1100.0)]:  # the last one came late
        event_broker.publish("user_presence", presence(iago, status, when))
        event_broker.join("user_presence", timeout=10)
    assert [n["event"]["presence"]["website"]["status"] for n in take_notices(event_broker)] == ["active", "idle"]
    stored = store.presence(iago.id)
    assert stored is not None and (stored.status, stored.time) == ("idle", 1200.0)


def test_a_burst_of_changes_reaches_peers_as_its_first_and_its_last(
        event_broker: MemoryBroker, start: Start, store: AnalyticsStore, users: tuple[User, User]) -> None:
    iago = users[0]
    start("user_presence")
    # Given iago's status changes 20 times within the coalescing window,
    event_broker.publish_many("user_presence", [presence(iago, ("active", "idle")[n % 2], 1000.0 + n)
                                                for n in range(20)])
    event_broker.join("user_presence", timeout=10)  # the one deferred broadcast included
    # then the peers hear of the first change at once and of the last one after the window, and of nothing else.
    assert [n["event"]["presence"]["website"]["status"] for n in take_notices(event_broker)] == ["active", "idle"]
    stored = store.presence(iago.id)
    assert stored is not None and (stored.status, stored.announced_status) == ("idle", "idle")


def test_a_presence_table_of_an_older_database_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "older.sqlite3"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE user_presence (user_id INTEGER PRIMARY KEY, status TEXT NOT NULL, "
                   "client TEXT NOT NULL, time REAL NOT NULL, announced_status TEXT NOT NULL DEFAULT 'offline')")
        db.execute("INSERT INTO user_presence VALUES (1, 'active', 'website', 1000.0, 'active')")
    assert AnalyticsStore(path).presence(1) == analytics.Presence(1, "active", "website", 1000.0, "active", 0.0, 0.0)


def test_bad_presence_events_go_to_the_error_store(event_broker: MemoryBroker, start: Start,
                                                   users: tuple[User, User]) -> None:
    start("user_presence")
    event_broker.publish_many("user_presence", [
        {"user_id": users[0].id, "status": "away", "time": 1.0},
        {"user_id": 9999, "status": "active", "time": 1.0},
        {"user_id": None, "status": "active"},
    ])
    event_broker.join("user_presence", timeout=10)
    assert [e["error"] for e in event_broker.error_store.read("user_presence")] == [
        "ContractError: 'status' must be one of active, idle, offline, not 'away'",
        "PermanentError: no user 9999",
        "ContractError: 'user_id' must be an id (an integer from 1 to 2**63 - 1), not None",
    ]
    assert take_notices(event_broker) == []


class NotifyFailsOnce(MemoryBroker):
    """The in-process broker, but the first publish to notify_tornado fails as when RabbitMQ goes away."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.failures = [BrokerUnreachable("RabbitMQ went away")]

    def publish_bodies(self, queue: str, bodies: list[bytes]) -> None:
        if queue == "notify_tornado" and self.failures:
            raise self.failures.pop()
        super().publish_bodies(queue, bodies)


def test_a_broadcast_that_failed_is_made_when_the_event_is_retried(
        event_settings: Settings, users: tuple[User, User]) -> None:
    iago, othello = users
    broker = NotifyFailsOnce(event_settings)
    with worker_threads(broker) as start_threads:
        start_threads("user_presence", retry_delay=0.01)
        broker.publish("user_presence", presence(iago, "active", 1000.0))  # stored, then the broadcast fails
        broker.join("user_presence", timeout=10)
    assert broker.failures == []  # it did fail once
    [notice] = take_notices(broker)
    assert notice["users"] == [othello.id]
    assert broker.error_store.read("user_presence") == []


# -- the presence of everyone (PresenceStore) ---------------------------------------------


def test_the_presence_of_everyone_leaves_out_the_offline_and_the_deactivated(
        event_settings: Settings, store: AnalyticsStore, users: tuple[User, User]) -> None:
    iago, othello = users
    everyone = PresenceStore(event_settings.database)
    assert everyone.all() == []  # no presence was ever reported
    user_store = UserStore(event_settings.database)
    desdemona = user_store.create_user("desdemona@example.com", "Desdemona")
    store.set_presence(iago.id, "active", "website", 1000.5)
    store.set_presence(othello.id, "offline", "website", 1000.0)
    store.set_presence(desdemona.id, "idle", "ZulipMobile", 990.0)
    assert everyone.all() == [UserPresence(iago.id, iago.email, "active", 1000),
                              UserPresence(desdemona.id, desdemona.email, "idle", 990)]
    user_store.deactivate(desdemona.id)
    assert [p.user_id for p in everyone.all()] == [iago.id]
