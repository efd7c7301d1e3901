"""missedmessage_mobile_notifications against a real HTTP push gateway on a free local port."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import update

from eventbus.claims import Claimed
from eventbus.messages import MessageStore, StoredMessage
from eventbus.processors.message_send import check_request, send
from eventbus.processors.queues.push import PushNotificationWorker, SentNotifications
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.schema import push_notifications_sent
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import eventbus_command

QUEUE = "missedmessage_mobile_notifications"
API_KEY = "push-k3y"


class Gateway:
    """A push gateway stand-in: records every POST; can answer errors or drop connections the next N times."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self._script: deque[int | None] = deque()  # a status to answer, or None to drop the connection
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _GatewayHandler)
        self.server.gateway = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/remotes/push/notify"

    def answer(self, status: int, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` requests."""
        self._script.extend([status] * times)

    def drop(self, times: int = 1) -> None:
        """Close the next ``times`` connections without an answer."""
        self._script.extend([None] * times)

    def next_answer(self, request: dict[str, Any]) -> int | None:
        with self._lock:
            self.requests.append(request)
            status = self._script.popleft() if self._script else 200
            if status == 200:
                self.accepted.append(request)
            return status

    def close(self) -> None:
        """Stop listening: from now on connections are refused."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class _GatewayHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
        status = self.server.gateway.next_answer(request)  # type: ignore[attr-defined]
        if status is None:
            self.close_connection = True
            return
        answer = b'{"result": "success"}' if status == 200 else f"error {status}: bad token".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


@pytest.fixture
def event_settings(event_settings: Settings, gateway: Gateway) -> Settings:
    """The gateway's; the claim on a push a dead worker left lapses within a test."""
    return event_settings.replace(push_url=gateway.url, push_api_key=API_KEY, site_url="https://chat.example.com",
                                  claim_lease_seconds=1.0)


@pytest.fixture
def pusher(event_broker: MemoryBroker, users: tuple[User, User]) -> Iterator[MemoryBroker]:
    """The push processor running in a thread on the in-process broker (once the database exists)."""
    threads = WorkerThreads([QUEUE], event_broker, retry_delay=0.02)  # production's tries, without the waits
    threads.start()
    yield event_broker
    threads.stop()
    assert threads.join(10)


@pytest.fixture
def mention(event_settings: Settings, event_broker: MemoryBroker, users: tuple[User, User]) -> StoredMessage:
    """Iago mentions Othello on the stream Denmark."""
    iago, othello = users
    store = MessageStore(event_settings.database)
    store.create_stream("Denmark", [iago.id, othello.id])
    request = {"type": "stream", "to": "Denmark", "topic": "castle",
               "content": "@**Othello** the   guards\nare at the gate"}
    return send(event_broker, store, check_request(store, iago, request), "mention-1")


def notice(user: User, message: StoredMessage, trigger: str = "mentioned") -> dict[str, Any]:
    return {"user_id": user.id, "message_id": message.id, "trigger": trigger}


def test_a_missed_mention_is_pushed_with_its_payload(pusher: MemoryBroker, gateway: Gateway,
                                                     users: tuple[User, User], mention: StoredMessage) -> None:
    iago, othello = users
    pusher.publish(QUEUE, notice(othello, mention))
    pusher.join(QUEUE, timeout=10)
    [request] = gateway.requests
    assert request["path"] == "/api/v1/remotes/push/notify"
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == f"{othello.id}:{mention.id}"
    assert request["json"] == {
        "user_id": othello.id, "user_email": othello.email, "message_id": mention.id, "trigger": "mentioned",
        "sender_id": iago.id, "sender_email": iago.email, "sender_full_name": "Iago", "recipient_type": "stream",
        "stream": "Denmark", "topic": "castle", "content": "@**Othello** the guards are at the gate",
        "time": int(mention.timestamp), "site_url": "https://chat.example.com",
    }


def test_a_private_message_payload_has_no_stream_and_a_short_text(
        pusher: MemoryBroker, gateway: Gateway, event_settings: Settings, users: tuple[User, User]) -> None:
    iago, othello = users
    store = MessageStore(event_settings.database)
    request = {"type": "private", "to": othello.email, "content": "word " * 100}
    message = send(pusher, store, check_request(store, iago, request), "private-1")
    pusher.publish(QUEUE, notice(othello, message, "private_message"))
    pusher.join(QUEUE, timeout=10)
    [sent] = gateway.requests
    payload = sent["json"]
    assert payload["recipient_type"] == "private" and payload["trigger"] == "private_message"
    assert "stream" not in payload and "topic" not in payload
    assert len(payload["content"]) == 200 and payload["content"].endswith("word…")


def test_one_push_per_message_per_user_even_when_delivered_again(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    iago, othello = users
    pusher.publish_many(QUEUE, [notice(othello, mention)] * 2 + [notice(iago, mention, "private_message")])
    pusher.join(QUEUE, timeout=10)
    pusher.publish(QUEUE, notice(othello, mention))  # much later, say after a Tornado restart
    pusher.join(QUEUE, timeout=10)
    assert sorted(r["json"]["user_id"] for r in gateway.requests) == sorted([othello.id, iago.id])
    assert pusher.error_store.read(QUEUE) == []


def test_5xx_and_dropped_connections_are_retried_until_the_gateway_accepts(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    gateway.answer(500, times=2)
    gateway.drop()
    gateway.answer(503)
    pusher.publish(QUEUE, notice(users[1], mention))
    pusher.join(QUEUE, timeout=10)
    assert len(gateway.requests) == 5
    assert len(gateway.accepted) == 1
    assert pusher.error_store.read(QUEUE) == []


def test_a_4xx_answer_goes_to_the_error_store_at_once(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    gateway.answer(400)
    pusher.publish(QUEUE, notice(users[1], mention))
    pusher.join(QUEUE, timeout=10)
    assert len(gateway.requests) == 1
    [entry] = pusher.error_store.read(QUEUE)
    assert entry["event"] == notice(users[1], mention)
    assert entry["error"] == "PermanentError: push gateway answered 400 Bad Request: error 400: bad token"
    assert entry["tries"] == 1


def test_a_push_the_gateway_refused_is_pushed_when_replayed(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    # Given a push the gateway refused (a wrong API key, say), which went to the error store,
    gateway.answer(401)
    pusher.publish(QUEUE, notice(users[1], mention))
    pusher.join(QUEUE, timeout=10)
    assert len(pusher.error_store.read(QUEUE)) == 1 and gateway.accepted == []
    # when the operator replays it once the key is fixed,
    assert eventbus_command(pusher, "replay_errors", QUEUE) == 0
    pusher.join(QUEUE, timeout=10)
    # then it is pushed: the refused try did not count as sent.
    assert [r["json"]["message_id"] for r in gateway.accepted] == [mention.id]


def test_a_push_a_dead_worker_claimed_is_made_once_its_claim_lapses(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    othello = users[1]
    # Given a worker (on another machine, say) that claimed the push, then died before making it,
    claimed_at = time.monotonic()
    assert SentNotifications(pusher.settings.database).claim(othello.id, mention.id, lease=1.0) == Claimed()
    # when RabbitMQ redelivers the event to a worker here,
    pusher.publish(QUEUE, notice(othello, mention))
    # then the push waits for the claim to lapse, and is made once.
    pusher.join(QUEUE, timeout=10)
    assert time.monotonic() - claimed_at >= 1.0
    assert [r["json"]["user_id"] for r in gateway.accepted] == [othello.id]
    assert pusher.error_store.read(QUEUE) == []


def test_an_unreachable_gateway_sends_the_event_to_the_error_store_after_the_last_try(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    gateway.close()
    pusher.publish(QUEUE, notice(users[1], mention))
    pusher.join(QUEUE, timeout=10)
    [entry] = pusher.error_store.read(QUEUE)
    assert entry["tries"] == PushNotificationWorker.options.tries == 5
    assert entry["error"].startswith(f"GatewayUnavailable: push gateway {gateway.url} unreachable: ")
    assert "Connection refused" in entry["error"]


def test_events_that_refer_to_nothing_are_permanent_errors(
        pusher: MemoryBroker, gateway: Gateway, users: tuple[User, User], mention: StoredMessage) -> None:
    outsider = MessageStore(pusher.settings.database).users.create_user("emilia@example.com", "Emilia")
    pusher.publish_many(QUEUE, [
        {"user_id": users[1].id, "message_id": 9999, "trigger": "mentioned"},
        {"user_id": 9999, "message_id": mention.id, "trigger": "mentioned"},
        notice(outsider, mention),
        {"user_id": "othello", "message_id": mention.id, "trigger": "mentioned"},
        {"user_id": users[1].id, "message_id": mention.id},
    ])
    pusher.join(QUEUE, timeout=10)
    assert [e["error"] for e in pusher.error_store.read(QUEUE)] == [
        "PermanentError: no message 9999", "PermanentError: no user 9999",
        f"PermanentError: user {outsider.id} is not a recipient of message {mention.id}",
        "ContractError: 'user_id' must be an id (an integer from 1 to 2**63 - 1), not 'othello'",
        "ContractError: 'trigger' must be a non-empty string, not None",
    ]
    assert gateway.requests == []


def test_without_a_push_url_events_are_logged_and_acked(
        event_settings: Settings, gateway: Gateway, users: tuple[User, User], mention: StoredMessage,
        caplog: pytest.LogCaptureFixture) -> None:
    worker = PushNotificationWorker(MemoryBroker(event_settings.replace(push_url=None)))
    with caplog.at_level(logging.INFO, logger="eventbus.processors.queues.push"):
        worker.before_start()
        worker.consume(notice(users[1], mention))  # returns: the event is acked
    assert caplog.messages == [
        "EVENTBUS_PUSH_URL is not set: mobile push notifications are switched off",
        f"push notifications are switched off (no EVENTBUS_PUSH_URL): not pushing message {mention.id} "
        f"to user {users[1].id}",
    ]
    assert gateway.requests == []


def test_pushes_sent_long_ago_are_forgotten_when_the_worker_starts(event_settings: Settings,
                                                                   event_broker: MemoryBroker) -> None:
    sent = SentNotifications(event_settings.database)
    for message_id in (10, 11):
        sent.claim(1, message_id)
        sent.finish(1, message_id)
    with sent.database.transaction(write=True) as db:
        db.execute(update(push_notifications_sent).where(push_notifications_sent.c.message_id == 10)
                   .values(sent_at=time.time() - 40 * 86400))
    PushNotificationWorker(event_broker).before_start()
    assert (sent.is_done(1, 10), sent.is_done(1, 11)) == (False, True)
