"""Fault injection on the worker side: workers killed mid-batch, and malformed bodies among good events.

Real worker processes on the session's RabbitMQ node, a real SMTP server
(aiosmtpd), the push gateway stand-in and the real Tornado server; kill points
and the order of bad and good bodies come from a seeded generator (its seed is
printed). Each test prints what it counted.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import pika
import pytest
from sqlalchemy import func, select

from eventbus import codec, schema
from eventbus.database import open_database
from eventbus.devtools import dev_dir, push_gateway
from eventbus.messages import MessageStore
from eventbus.processors.mailer import queue_email
from eventbus.processors.message_send import check_request, send
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.users import UserStore
from tests.conftest import until, wait_for
from tests.eventserver import Api, ServerThread, run
from tests.faults import Tally, jsonl, seeded
from tests.smtp_server import SmtpServer
from tests.workers import WorkerProcess

#: The processors whose effects users see: messages stored, emails sent, pushes sent.
SIDE_EFFECT_QUEUES = ("message_sender", "email_senders", "missedmessage_mobile_notifications")
#: Events of each kind per wave; a kill falls in the middle of each wave.
EMAILS, MESSAGES, PUSHES = 150, 40, 40
KILLS = 2
#: Five megabytes: big bodies must be processed or stored whole.
BIG = 5 << 20


@pytest.fixture
def purged(broker: RabbitMQBroker) -> RabbitMQBroker:
    """The broker, the shared queues this file uses emptied first (they outlive a test)."""
    for queue in (*SIDE_EFFECT_QUEUES, "test", "notify_tornado"):
        if broker.queue_info(queue).exists:
            broker.purge(queue)
    return broker


def raw_publish(settings: Settings, queue: str, bodies: list[bytes]) -> None:
    """Put bodies into a queue as any AMQP client could, bypassing eventbus's encoder; confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True)
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


# -- workers killed mid-batch -------------------------------------------------------------------


@pytest.fixture
def effects_settings(settings: Settings, smtp: SmtpServer) -> Iterator[Settings]:
    """Settings with the SMTP server and the push gateway stand-in, which keeps pushes in <var>/dev."""
    port = free_port()
    gateway = push_gateway.start(settings.var_dir, port)
    yield settings.replace(smtp_port=smtp.port, push_url=f"http://127.0.0.1:{port}/api/v1/remotes/push/notify")
    gateway.shutdown()


class SideEffects:
    """Publishes waves of events to the three processors and counts what users would see of them."""

    def __init__(self, settings: Settings, broker: RabbitMQBroker, smtp: SmtpServer) -> None:
        self.settings, self.broker, self.smtp = settings, broker, smtp
        self.store = MessageStore(settings.database)
        users = UserStore(settings.database)
        self.iago, self.othello = (users.create_user(f"{n}@example.com", n.title()) for n in ("iago", "othello"))
        self.store.create_stream("Denmark", [self.iago.id, self.othello.id])
        self.sent: dict[str, list[Any]] = {"emails": [], "messages": [], "pushes": []}

    def wave(self, number: int) -> None:
        emails = [f"fault-{number}-{n}" for n in range(EMAILS)]
        for email_id in emails:
            queue_email(self.broker, [f"{email_id}@example.com"], f"Fault {email_id}", "body\n", email_id=email_id)
        requests = [f"fault-{number}-{n}" for n in range(MESSAGES)]
        self.broker.publish_many("message_sender", [
            {"request_id": r, "user_id": self.iago.id,
             "request": {"type": "stream", "to": "Denmark", "topic": "faults", "content": f"message {r}"}}
            for r in requests])
        missed = [self._message(f"missed-{number}-{n}") for n in range(PUSHES)]
        self.broker.publish_many("missedmessage_mobile_notifications", [
            {"user_id": self.othello.id, "message_id": m, "trigger": "mentioned"} for m in missed])
        self.sent["emails"] += [f"Fault {e}" for e in emails]
        self.sent["messages"] += [f"message {r}" for r in requests]
        self.sent["pushes"] += missed

    def _message(self, request_id: str) -> int:
        request = {"type": "stream", "to": "Denmark", "topic": "missed", "content": f"@**Othello** {request_id}"}
        return send(self.broker, self.store, check_request(self.store, self.iago, request), request_id).id

    def tallies(self) -> dict[str, Tally]:
        emails = [r.subject for r in list(self.smtp.received)]
        messages = [re.sub(r"<[^>]*>", "", m["content"]).strip()
                    for m in self.store.recent(self.iago.id, 100_000) if m["subject"] == "faults"]
        pushes = [p["payload"]["message_id"] for p in jsonl(dev_dir(self.settings.var_dir) / "pushes.jsonl")
                  if p["payload"]["user_id"] == self.othello.id]
        return {"emails": Tally(self.sent["emails"], emails), "messages": Tally(self.sent["messages"], messages),
                "pushes": Tally(self.sent["pushes"], pushes)}

    def message_ids_per_subject(self) -> dict[str, set[str]]:
        """The Message-IDs each email arrived under: one each, or mail clients would show a duplicate."""
        ids: dict[str, set[str]] = {}
        for received in list(self.smtp.received):
            ids.setdefault(received.subject, set()).add(str(received.message["Message-ID"]))
        return ids

    def effects(self) -> int:
        """Distinct effects so far."""
        return sum(len(t.arrived) for t in self.tallies().values())

    def reached(self, count: int) -> bool:
        return self.effects() >= count


def test_workers_killed_mid_batch_twice_lose_nothing_and_repeat_no_effect(
        effects_settings: Settings, purged: RabbitMQBroker, smtp: SmtpServer) -> None:
    rng = seeded("workers killed mid-batch")
    settings = effects_settings
    env = {"EVENTBUS_SMTP_PORT": str(smtp.port), "EVENTBUS_PUSH_URL": str(settings.push_url)}

    def start_workers() -> list[WorkerProcess]:
        return [WorkerProcess(settings, f"--queue={queue}", **env) for queue in SIDE_EFFECT_QUEUES]

    workers = start_workers()
    effects = SideEffects(settings, purged, smtp)
    try:
        for kill in range(1, KILLS + 1):
            # Given a wave of events being processed
            before = effects.effects()
            effects.wave(kill)
            # When every worker is killed (SIGKILL) once the generator's share of the wave has taken effect
            kill_at = before + rng.randint(10, (EMAILS + MESSAGES + PUSHES) // 2)
            wait_for(partial(effects.reached, kill_at), timeout=60, what=f"{kill_at} effects before kill {kill}")
            for worker in workers:
                worker.kill()
            print(f"kill {kill}: after {effects.effects() - before} effects of a wave of "
                  f"{EMAILS + MESSAGES + PUSHES}")
            # and started again
            workers += start_workers()
        # Then every event took effect, and none twice where users would see it
        wait_for(lambda: not any(t.missing for t in effects.tallies().values()), timeout=90,
                 what="every email, message and push")
        tallies = effects.tallies()
        for what, tally in tallies.items():
            print(tally.report(what))
        assert tallies["messages"].duplicates == 0  # the request id is unique in the database
        # SMTP cannot take part in a transaction: a kill between "sent" and "recorded as sent" sends that one
        # email again, under the same Message-ID, by which mail clients drop it. At most one such per kill.
        assert tallies["emails"].duplicates <= KILLS
        assert all(len(ids) == 1 for ids in effects.message_ids_per_subject().values())
        # A push sent again carries the same Idempotency-Key, and the gateway delivers it once.
        assert tallies["pushes"].duplicates == 0
        assert purged.error_store.queues() == []
    finally:
        for worker in workers:
            worker.stop()


# -- message_sender killed inside a batch -------------------------------------------------------

#: Requests waiting when the first message_sender starts: it works through them in batches.
BACKLOG = 400
#: Kills, each where a batch is stored but its events are not all confirmed and marked delivered.
BATCH_KILLS = 3


def undelivered_after(settings: Settings, message_id: int) -> int:
    """How many messages above ``message_id`` are stored without their events marked as sent."""
    messages = schema.messages
    with open_database(settings.database).transaction() as db:
        return int(db.execute(select(func.count()).select_from(messages)
                              .where(messages.c.id > message_id, ~messages.c.delivered)).scalar_one())


def newest_id(settings: Settings) -> int:
    with open_database(settings.database).transaction() as db:
        return int(db.execute(select(func.coalesce(func.max(schema.messages.c.id), 0))).scalar_one())


def test_message_sender_killed_inside_batches_shows_every_message_once_in_id_order(
        settings: Settings, purged: RabbitMQBroker) -> None:
    store = MessageStore(settings.database)
    users = UserStore(settings.database)
    iago, othello = (users.create_user(f"{n}@example.com", n.title()) for n in ("iago", "othello"))
    store.create_stream("Denmark", [iago.id, othello.id])
    server = ServerThread(settings, purged).start()
    workers: list[WorkerProcess] = []
    answers: dict[int, list[Any]] = {}

    async def scenario() -> None:
        # Given Othello's client, and a backlog of Iago's messages submitted through the server
        reader = Api(server, othello)
        queue_id = await reader.register(event_types=["message"])
        submissions = server.server.submissions
        for n in range(BACKLOG):
            request = {"type": "stream", "to": "Denmark", "topic": "batches", "content": f"message {n}"}
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                submissions.submit(iago, request, partial(answers.setdefault(n, []).append)), server.loop))
        # When message_sender is killed (SIGKILL) each time a batch of it is stored and its events are not all
        # confirmed and marked sent, and started again
        # (the window between a batch's commit and its confirms is short: a kill that finds the backlog all sent
        # lands wherever the worker is; the first, with the whole backlog waiting, is always in a window)
        in_window = 0
        for kill in range(BATCH_KILLS):
            before = newest_id(settings)
            workers.append(WorkerProcess(settings, "--queue=message_sender"))

            def batch_stored_or_all_sent(before: int = before) -> bool:
                return bool(undelivered_after(settings, before)) or (len(store.recent(othello.id, 2 * BACKLOG)) \
                    >= BACKLOG and not undelivered_after(settings, 0))

            await until(batch_stored_or_all_sent, timeout=60, what=f"a batch stored ({kill})")
            workers[-1].kill()
            unsent = undelivered_after(settings, before)
            in_window += unsent > 0
            print(f"kill {kill + 1}: {newest_id(settings) - before} messages stored by the killed worker, "
                  f"{unsent} of them not marked sent")
        assert in_window >= 1, "no kill landed between a batch's commit and its confirms"
        workers.append(WorkerProcess(settings, "--queue=message_sender"))
        # Then Othello's client has every message once, in the order of their ids
        received: list[dict[str, Any]] = []
        last = -1
        while len(received) < BACKLOG:
            events = (await reader.events(queue_id, last))[1]["events"]
            received += [e["message"] for e in events if e["type"] == "message"]
            last = events[-1]["id"] if events else last
        ids = [m["id"] for m in received]
        assert sorted(m["content"] for m in received) == sorted(f"message {n}" for n in range(BACKLOG))
        assert ids == sorted(set(ids))
        # and every sender was answered once, with the id of the message stored once
        await until(lambda: len(answers) == BACKLOG and all(answers.values()), timeout=60, what="every answer")
        assert all(len(a) == 1 and a[0]["result"] == "success" for a in answers.values())
        assert sorted(a[0]["id"] for a in answers.values()) == ids

    try:
        run(scenario, timeout=240)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
    assert len(store.recent(othello.id, 10 * BACKLOG)) == BACKLOG
    assert purged.error_store.queues() == []


# -- malformed bodies among good events -----------------------------------------------------------

#: Bodies no processor can take, by what is wrong with them.
MALFORMED = {
    "not JSON": b"{not json",
    "JSON but not an object": b"[1, 2, 3]",
    "a JSON string": b'"just text"',
    "invalid UTF-8": b'{"id": "bad \xff\xfe utf-8"}',
    "5 MB, cut short": b'{"id": "big-bad", "pad": "' + b"x" * BIG,
}


def interleaved(rng: Any, good: list[bytes], bad: list[bytes]) -> list[bytes]:
    """``good`` in order, with each of ``bad`` at a place the generator picks."""
    bodies = list(good)
    for body in bad:
        bodies.insert(rng.randint(0, len(bodies)), body)
    return bodies


def test_malformed_bodies_on_a_worker_queue_go_to_the_error_store_and_good_events_flow(
        settings: Settings, purged: RabbitMQBroker) -> None:
    rng = seeded("malformed bodies on a worker queue")
    worker = WorkerProcess(settings, "--queue=test")
    try:
        # Given good events, one of them 5 MB, with every kind of malformed body among them
        good = [codec.encode({"id": n}) for n in range(30)] + [codec.encode({"id": "big-good", "pad": "x" * BIG})]
        raw_publish(settings, "test", interleaved(rng, good, list(MALFORMED.values())))
        # Then every good event is processed, each bad one is stored whole, and the worker never restarted
        wait_for(lambda: len(jsonl(settings.test_queue_file)) == len(good), timeout=60, what="the good events")
        wait_for(lambda: purged.error_store.count("test") == len(MALFORMED), timeout=30, what="the bad ones")
        processed = jsonl(settings.test_queue_file)
        assert sorted(str(e["id"]) for e in processed) == sorted([str(n) for n in range(30)] + ["big-good"])
        assert len(next(e for e in processed if e["id"] == "big-good")["pad"]) == BIG
        assert sorted(stored_bodies(purged.error_store.read("test"))) == sorted(MALFORMED.values())
        assert worker.process.poll() is None, worker.log
        print(f"worker queue: {len(good)} good events processed, {len(MALFORMED)} malformed stored, no restart")
        wait_for(lambda: purged.queue_info("test").depth == 0, what="every body acked")
    finally:
        worker.stop()


def stored_bodies(entries: list[dict[str, Any]]) -> list[bytes]:
    """The bodies the error store kept: raw text, raw bytes, or events re-encoded."""
    bodies = []
    for entry in entries:
        if "raw_base64" in entry:
            bodies.append(base64.b64decode(entry["raw_base64"]))
        elif "raw" in entry:
            bodies.append(entry["raw"].encode())
        else:
            bodies.append(codec.encode(entry["event"]).replace(b",", b", "))
    return bodies


def test_malformed_bodies_on_notify_tornado_go_to_the_error_store_and_the_server_keeps_delivering(
        settings: Settings, purged: RabbitMQBroker) -> None:
    rng = seeded("malformed bodies on notify_tornado")
    iago = UserStore(settings.database).create_user("iago@example.com", "Iago")
    server = ServerThread(settings.replace(shared_secret="s3cret"), purged).start()
    notices = [{"event": {"type": "custom", "n": n}, "users": [iago.id]} for n in range(30)]
    bad = {**MALFORMED, "5 MB notice with no event type": codec.encode({"event": {"pad": "x" * BIG},
                                                                       "users": [iago.id]}),
           "a notice for no valid user": codec.encode({"event": {"type": "custom"}, "users": ["iago"]})}

    async def scenario() -> None:
        api = Api(server, iago)
        queue_id = await api.register(event_types=["custom"])
        # Given good notices with malformed bodies among them, straight into notify_tornado
        raw_publish(settings, "notify_tornado", interleaved(rng, [codec.encode(n) for n in notices],
                                                            list(bad.values())))
        # Then the client gets every good event, in order, once
        received: list[int] = []
        last = -1
        while len(received) < len(notices):
            status, body = await api.events(queue_id, last, timeout=30)
            assert status == 200, body
            received += [e["n"] for e in body["events"] if e["type"] == "custom"]
            last = max([last] + [e["id"] for e in body["events"]])
        assert received == list(range(len(notices)))
        # and the server still serves
        assert await api.register(event_types=["custom"])

    try:
        run(scenario, timeout=90)
        wait_for(lambda: purged.error_store.count("notify_tornado") == len(bad), timeout=30, what="the bad ones")
        entries = purged.error_store.read("notify_tornado")
        kept = Counter(len(b) for b in stored_bodies(entries))
        assert kept[BIG + len(b'{"id": "big-bad", "pad": "')] == 1  # the cut-short body, whole
        notices_kept = [e["event"] for e in entries if isinstance(e.get("event"), dict)]
        assert any(n.get("event", {}).get("pad") == "x" * BIG for n in notices_kept)  # the 5 MB notice, whole
        print(f"notify_tornado: {len(notices)} good events delivered in order, {len(bad)} malformed stored")
    finally:
        server.stop()
