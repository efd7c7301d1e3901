"""Email processors with a real SMTP server (aiosmtpd) in-process: what arrives, once, and what fails where."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventbus.claims import Claimed, Done
from eventbus.contracts import Email, MissedMessage
from eventbus.messages import MessageStore, StoredMessage
from eventbus.processors.mailer import queue_email
from eventbus.processors.message_send import check_request, send
from eventbus.processors.queues.email import SentEmails
from eventbus.processors.queues.missed_emails import PendingMissed
from eventbus.processors.registry import get_worker_class
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import Broker, MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User, UserStore
from tests.conftest import chosen_database, eventbus_command, wait_for, worker_threads
from tests.racing import race
from tests.smtp_server import REFUSED_DOMAIN, SmtpServer

QUEUES = ("email_senders", "signups", "invites", "missedmessage_emails", "error_reports", "slow_queries")
ADMIN = "admin@example.com"

Running = Callable[..., WorkerThreads]


#: The production waits (seconds to fill a batch, to retry) shortened; nothing else changes.
QUICK = {"batch_wait": 0.05, "retry_delay": 0.05}


@pytest.fixture
def mail_settings(tmp_path: Path, smtp: SmtpServer, request: pytest.FixtureRequest) -> Settings:
    """On the ``database`` of a test that asks for one (SQLite, then PostgreSQL), else on a SQLite file; the claim
    on an email a dead worker left lapses within a test."""
    return Settings(broker="memory", var_dir=tmp_path, smtp_port=smtp.port, missed_email_window_seconds=0.3,
                    admin_emails=(ADMIN,), database_setting=chosen_database(request), claim_lease_seconds=1.0)


@pytest.fixture
def memory(mail_settings: Settings) -> MemoryBroker:
    return MemoryBroker(mail_settings)


@pytest.fixture
def running(memory: MemoryBroker) -> Iterator[Running]:
    """Start the processors of some queues in threads (on ``memory`` unless told); all stopped at the end."""
    with worker_threads(memory) as start_threads:

        def start(*queues: str, broker: Broker | None = None) -> WorkerThreads:
            threads = start_threads(*queues, broker=broker, **QUICK)
            target = broker or memory
            wait_for(lambda: all(target.queue_info(q).consumers for q in queues), what="the workers consuming")
            return threads

        yield start


def join(broker: MemoryBroker, *queues: str) -> None:
    for queue in queues:
        broker.join(queue, timeout=30)


# -- email_senders ------------------------------------------------------------------------


def test_a_batch_of_emails_goes_out_over_one_connection(memory: MemoryBroker, running: Running,
                                                         smtp: SmtpServer, database: Path | str) -> None:
    for n in range(20):
        queue_email(memory, [f"user{n}@example.com"], f"Note {n}", f"Body {n}\n",
                    html=f"<p>Body {n}</p>" if n == 0 else None)
    running("email_senders")
    join(memory, "email_senders")

    assert smtp.count() == 20
    assert smtp.connections == 1
    first = smtp.to("user0@example.com")[0]
    assert (first.subject, first.text, first.html) == ("Note 0", "Body 0\n", "<p>Body 0</p>\n")
    assert first.mail_from == "noreply@eventbus.localhost"
    assert [r.rcpt_tos for r in smtp.received] == [[f"user{n}@example.com"] for n in range(20)]
    assert memory.error_store.read("email_senders") == []


def test_a_connection_the_server_dropped_is_replaced(memory: MemoryBroker, running: Running,
                                                      smtp: SmtpServer) -> None:
    running("email_senders")
    queue_email(memory, ["iago@example.com"], "Before", "sent before the restart")
    wait_for(lambda: smtp.count() == 1, what="the first email")

    smtp.stop()  # a server restart cuts the connection the mailer holds
    smtp.start()
    queue_email(memory, ["iago@example.com"], "After", "sent after the restart")
    join(memory, "email_senders")

    assert [r.subject for r in smtp.received] == ["Before", "After"]
    assert smtp.connections == 2
    assert memory.error_store.read("email_senders") == []


def test_a_redelivered_email_is_not_sent_again(memory: MemoryBroker, running: Running, smtp: SmtpServer,
                                                database: Path | str) -> None:
    email = Email("welcome:iago", ("iago@example.com",), "Welcome", "Hello Iago\n")
    running("email_senders")
    memory.publish("email_senders", email.event())
    join(memory, "email_senders")
    assert smtp.count() == 1

    # As RabbitMQ redelivers after a crash, as a retry carries it, and twice in one batch.
    memory.publish_many("email_senders", [email.event(), {**email.event(), "failed_tries": 1}, email.event()])
    join(memory, "email_senders")
    assert smtp.count() == 1
    assert memory.error_store.read("email_senders") == []


def test_an_email_a_dead_worker_claimed_goes_out_once_its_claim_lapses(
        memory: MemoryBroker, running: Running, smtp: SmtpServer, database: Path | str) -> None:
    email = Email("welcome:iago", ("iago@example.com",), "Welcome", "Hello Iago\n")
    # Given a worker (on another machine, say) that claimed the email, then died before sending it,
    claimed_at = time.monotonic()
    assert SentEmails(database).claim(email.email_id, lease=1.0) == Claimed()
    # when RabbitMQ redelivers the email to a worker here,
    running("email_senders")
    memory.publish("email_senders", email.event())
    # then it waits for the claim to lapse, and goes out once.
    wait_for(lambda: smtp.count() == 1, what="the email")
    assert time.monotonic() - claimed_at >= 1.0
    join(memory, "email_senders")
    assert smtp.count() == 1 and memory.error_store.read("email_senders") == []
    assert SentEmails(database).claim(email.email_id) == Done()


def test_while_the_server_is_down_emails_are_retried_then_stored_and_replay_sends_them(
        memory: MemoryBroker, running: Running, smtp: SmtpServer, database: Path | str) -> None:
    smtp.stop()
    running("email_senders")
    email_id = queue_email(memory, ["iago@example.com"], "Important", "Do not lose me\n")
    join(memory, "email_senders")

    [entry] = memory.error_store.read("email_senders")
    assert entry["event"]["email_id"] == email_id
    assert entry["tries"] == get_worker_class("email_senders").options.tries
    assert entry["error"].startswith("ConnectionRefusedError")

    smtp.start()
    assert eventbus_command(memory, "replay_errors", "email_senders") == 0
    join(memory, "email_senders")
    assert [r.subject for r in smtp.to("iago@example.com")] == ["Important"]


def test_refused_and_malformed_emails_go_to_the_error_store_and_the_rest_are_sent(
        memory: MemoryBroker, running: Running, smtp: SmtpServer) -> None:
    queue_email(memory, [f"ghost{REFUSED_DOMAIN}"], "Lost", "nobody is there\n")
    memory.publish("email_senders", {"email_id": "no-subject", "to": ["iago@example.com"], "body": "x"})
    queue_email(memory, ["iago@example.com", f"ghost{REFUSED_DOMAIN}"], "Partly", "one of two\n")
    queue_email(memory, ["othello@example.com"], "Fine", "all good\n")
    running("email_senders")
    join(memory, "email_senders")

    assert sorted((r.subject, tuple(r.rcpt_tos)) for r in smtp.received) == [
        ("Fine", ("othello@example.com",)), ("Partly", ("iago@example.com",))]
    errors = {e["event"]["email_id"]: e for e in memory.error_store.read("email_senders")}
    assert len(errors) == 2
    assert errors["no-subject"]["error"] == "ContractError: 'subject' must be a string of one line"
    [refused] = [e for email_id, e in errors.items() if email_id != "no-subject"]
    assert "refused every recipient" in refused["error"] and f"ghost{REFUSED_DOMAIN}" in refused["error"]
    assert refused["tries"] == 1


# -- signups and invites ------------------------------------------------------------------


def test_a_signup_gets_one_welcome_email(memory: MemoryBroker, running: Running, smtp: SmtpServer,
                                         database: Path | str) -> None:
    running("signups", "email_senders")
    signup = {"email": "desdemona@example.com", "full_name": "Desdemona"}
    memory.publish("signups", signup)
    wait_for(lambda: smtp.to("desdemona@example.com"), what="the welcome email")

    [welcome] = smtp.to("desdemona@example.com")
    assert welcome.subject == "Welcome to eventbus"
    assert "Hello Desdemona" in welcome.text and memory.settings.site_url in welcome.text

    memory.publish("signups", signup)  # redelivered
    join(memory, "signups", "email_senders")
    assert smtp.count() == 1


def test_inviting_500_returns_at_once_and_the_invitations_follow(memory: MemoryBroker, running: Running,
                                                                 smtp: SmtpServer) -> None:
    inviter = UserStore(memory.settings.database).create_user("iago@example.com", "Iago")
    invited = [f"guest{n}@example.com" for n in range(500)]
    running("invites", "email_senders")

    started = time.monotonic()
    memory.publish("invites", {"inviter_id": inviter.id, "emails": invited, "stream": "Denmark"})
    assert time.monotonic() - started < 0.5  # the producer only published one event

    wait_for(lambda: smtp.count() == 500, timeout=60, what="500 invitations")
    join(memory, "invites", "email_senders")
    assert sorted(a for r in smtp.received for a in r.rcpt_tos) == sorted(invited)
    assert {r.subject for r in smtp.received} == {"Iago invited you to eventbus"}
    assert "#Denmark" in smtp.received[0].text
    assert smtp.connections == 1

    memory.publish("invites", {"inviter_id": inviter.id, "emails": invited, "stream": "Denmark"})  # redelivered
    join(memory, "invites", "email_senders")
    assert smtp.count() == 500


def test_an_invitation_with_bad_addresses_invites_the_others_and_names_the_bad_ones(
        memory: MemoryBroker, running: Running, smtp: SmtpServer, database: Path | str) -> None:
    inviter = UserStore(memory.settings.database).create_user("iago@example.com", "Iago")
    running("invites", "email_senders")
    memory.publish("invites", {"inviter_id": inviter.id, "emails": ["cassio@example.com", "not an address", 7]})
    join(memory, "invites", "email_senders")

    assert [r.rcpt_tos for r in smtp.received] == [["cassio@example.com"]]
    [entry] = memory.error_store.read("invites")
    assert entry["error"] == "PermanentError: invited 1; not email addresses: 'not an address', 7"


# -- missed message emails ----------------------------------------------------------------


@pytest.fixture
def store(memory: MemoryBroker) -> MessageStore:
    return MessageStore(memory.settings.database)


@pytest.fixture
def people(store: MessageStore) -> tuple[User, User]:
    iago, othello = store.users.create_user("iago@example.com", "Iago"), store.users.create_user(
        "othello@example.com", "Othello")
    store.create_stream("Denmark", [iago.id, othello.id])
    return iago, othello


def post(broker: Broker, store: MessageStore, sender: User, **request: str) -> StoredMessage:
    return send(broker, store, check_request(store, sender, request), None)


def test_messages_missed_within_the_window_go_out_in_one_email(memory: MemoryBroker, running: Running,
                                                               smtp: SmtpServer, store: MessageStore,
                                                               people: tuple[User, User]) -> None:
    iago, othello = people
    mention = post(memory, store, iago, type="stream", to="Denmark", topic="castle",
                   content="@**Othello** look **here**")
    private = post(memory, store, iago, type="private", to=othello.email, content="just between us")
    running("missedmessage_emails", "email_senders")
    memory.publish_many("missedmessage_emails", [
        {"user_id": othello.id, "message_id": mention.id, "trigger": "mentioned"},
        {"user_id": othello.id, "message_id": private.id, "trigger": "private_message"},
        {"user_id": othello.id, "message_id": mention.id, "trigger": "mentioned"},  # the same one again
    ])
    wait_for(lambda: smtp.to(othello.email), what="the missed message email")
    join(memory, "missedmessage_emails", "email_senders")

    [email] = smtp.received
    assert email.rcpt_tos == [othello.email]
    assert email.subject == "2 missed messages from Iago"
    assert "Iago in #Denmark > castle (mentioned you):\n@**Othello** look **here**" in email.text
    assert "Iago (private):\njust between us" in email.text
    assert email.html is not None and "<strong>here</strong>" in email.html

    # Redelivered after the email went out: a missed message event, and the flush.
    memory.publish("missedmessage_emails", {"user_id": othello.id, "message_id": private.id,
                                            "trigger": "private_message", "failed_tries": 1})
    memory.publish("missedmessage_emails", {"flush_user": othello.id})
    join(memory, "missedmessage_emails", "email_senders")
    assert smtp.count() == 1

    later = post(memory, store, iago, type="private", to=othello.email, content="are you there?")
    memory.publish("missedmessage_emails", {"user_id": othello.id, "message_id": later.id,
                                            "trigger": "private_message"})
    wait_for(lambda: smtp.count() == 2, what="the email of the next window")
    assert smtp.received[1].subject == "1 missed message from Iago"
    assert "are you there?" in smtp.received[1].text
    assert PendingMissed(memory.settings.database).users() == []


def test_missed_messages_a_crash_left_pending_are_sent_on_start(memory: MemoryBroker, running: Running,
                                                                smtp: SmtpServer, store: MessageStore,
                                                                people: tuple[User, User]) -> None:
    iago, othello = people
    first = post(memory, store, iago, type="private", to=othello.email, content="first")
    second = post(memory, store, iago, type="private", to=othello.email, content="second")
    pending = PendingMissed(memory.settings.database)
    pending.add([MissedMessage(othello.id, first.id, "private_message")])
    pending.claim(othello.id)  # a flush crashed after claiming
    pending.add([MissedMessage(othello.id, second.id, "private_message")])  # and the next flush was lost

    running("missedmessage_emails", "email_senders")
    wait_for(lambda: len(smtp.to(othello.email)) == 2, what="both emails")
    join(memory, "missedmessage_emails", "email_senders")
    assert sorted(("first" in r.text, "second" in r.text) for r in smtp.received) == [(False, True), (True, False)]
    assert pending.users() == []


def flush(database: Path | str, user_id: int) -> Callable[[], dict[str, list[int]]]:
    """A flush of ``user_id``'s missed messages (in a process of its own): the claims it found, by email id."""
    pending = PendingMissed(database)

    def go() -> dict[str, list[int]]:
        return {email_id: [m.message_id for m in missed] for email_id, missed in pending.claim(user_id).items()}

    return go


def test_flushes_racing_for_a_user_claim_each_missed_message_under_one_email_id(database: Path | str) -> None:
    # Given messages a user missed, stored twice (as by two workers given the same events),
    pending = PendingMissed(database)
    missed = [MissedMessage(7, message_id, "private_message") for message_id in (10, 11, 12)]
    pending.add(missed)
    pending.add(missed)
    # when flushes race for the user in several processes (as on several machines),
    found = race(flush, database, 7)
    # then one claim holds every message, once, and every flush finds that same claim: they queue one email id,
    # which email_senders sends once (test_claims).
    [email_id] = {email_id for claims in found for email_id in claims}
    assert all(claims == {email_id: [10, 11, 12]} for claims in found)
    pending.mark_sent(email_id)
    assert pending.users() == [] and pending.claim(7) == {}
    pending.add(missed)  # redelivered after the email went out: not stored again
    assert pending.users() == []


def test_a_malformed_missed_message_event_goes_to_the_error_store(memory: MemoryBroker, running: Running,
                                                                  smtp: SmtpServer) -> None:
    running("missedmessage_emails")
    memory.publish("missedmessage_emails", {"user_id": "seven", "message_id": 1})
    join(memory, "missedmessage_emails")
    [entry] = memory.error_store.read("missedmessage_emails")
    assert entry["error"] == "ContractError: 'user_id' must be an id (an integer from 1 to 2**63 - 1), not 'seven'"


# -- error reports and slow queries -------------------------------------------------------

BROWSER_STACK = "TypeError: x is undefined\n    at render (https://app.example/app.js:10:5)\n    at main (app.js:1:1)"
SERVER_STACK = ('Traceback (most recent call last):\n  File "app.py", line 3, in view\n    load()\n'
                '  File "{file}", line 9, in load\n    raise KeyError(k)\nKeyError: \'user\'')


def reports() -> list[dict[str, str]]:
    browser = [{"type": "browser", "message": "TypeError: x is undefined", "stacktrace": BROWSER_STACK,
                "user_email": f"user{n}@example.com", "href": f"https://app.example/#{n}"} for n in range(3)]
    server = [{"type": "server", "message": "KeyError: 'user'", "stacktrace": SERVER_STACK.format(file="db.py"),
               "host": "web1"} for _ in range(2)]
    other = {"type": "server", "message": "KeyError: 'user'", "stacktrace": SERVER_STACK.format(file="cache.py")}
    return [*browser, *server, other]


def test_error_reports_are_grouped_into_one_email_with_counts(memory: MemoryBroker, running: Running,
                                                              smtp: SmtpServer) -> None:
    memory.publish_many("error_reports", reports())
    running("error_reports", "email_senders")
    wait_for(lambda: smtp.to(ADMIN), what="the error report email")
    join(memory, "error_reports", "email_senders")

    [email] = smtp.received
    assert email.subject == "[eventbus] 6 error reports (3 kinds): browser: TypeError: x is undefined"
    sections = email.text.split("\n\n")
    assert [s.split("\n")[0] for s in sections] == [
        "3 x browser error: TypeError: x is undefined",
        "2 x server error: KeyError: 'user'",
        "1 x server error: KeyError: 'user'",
    ]
    assert "at render (https://app.example/app.js:10:5)" in sections[0]
    assert "users: user0@example.com, user1@example.com, user2@example.com" in sections[0]
    assert 'File "db.py", line 9, in load' in sections[1] and "host: web1" in sections[1]
    assert 'File "cache.py", line 9, in load' in sections[2]


def test_without_administrators_error_reports_are_logged_at_error_level(
        mail_settings: Settings, running: Running, smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="eventbus.processors.queues.error_reports")
    broker = MemoryBroker(mail_settings.replace(admin_emails=()))
    broker.publish_many("error_reports", reports())
    running("error_reports", "email_senders", broker=broker)
    join(broker, "error_reports", "email_senders")

    [record] = [r for r in caplog.records if r.name == "eventbus.processors.queues.error_reports"]
    assert record.levelno == logging.ERROR
    assert "no EVENTBUS_ADMIN_EMAILS" in record.getMessage()
    assert "3 x browser error: TypeError: x is undefined" in record.getMessage()
    assert smtp.count() == 0


def test_slow_queries_are_posted_as_one_summary_to_the_stream(memory: MemoryBroker, running: Running,
                                                              store: MessageStore) -> None:
    watcher = store.users.create_user("watcher@example.com", "Watcher")
    store.create_stream("logs", [watcher.id])
    slow = [{"path": "GET /api/v1/messages", "time_ms": 1200}, {"path": "GET /api/v1/messages", "time_ms": 800},
            {"query": "SELECT * FROM `users`", "time_ms": 3000}]
    memory.publish_many("slow_queries", slow)
    running("slow_queries")
    join(memory, "slow_queries")

    [message] = store.recent(watcher.id)
    assert (message["display_recipient"], message["subject"]) == ("logs", "slow queries")
    assert message["sender_email"] == memory.settings.notification_bot_email
    lines = message["content"].split("\n")
    assert lines[0] == "**3 slow queries**, slowest first:"
    assert lines[4].split() == ["3000", "3000", "1", "SELECT", "*", "FROM", "`users`"]
    assert lines[5].split() == ["1200", "1000", "2", "GET", "/api/v1/messages"]

    memory.publish_many("slow_queries", slow)  # the same batch, redelivered
    join(memory, "slow_queries")
    assert len(store.recent(watcher.id)) == 1


def test_the_slow_query_stream_is_created_when_missing(memory: MemoryBroker, running: Running,
                                                       store: MessageStore) -> None:
    memory.publish("slow_queries", {"path": "POST /api/v1/messages", "time_ms": 5000})
    running("slow_queries")
    join(memory, "slow_queries")
    stream = store.get_stream(memory.settings.slow_query_stream)
    bot = store.users.get_by_email(memory.settings.notification_bot_email)
    assert stream is not None and bot is not None
    [message] = store.recent(bot.id)
    assert "POST /api/v1/messages" in message["content"]
