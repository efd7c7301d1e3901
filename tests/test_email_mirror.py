"""The email mirror: the email_mirror processor in-process, and the SMTP server end to end with RabbitMQ."""

from __future__ import annotations

import base64
import signal
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from eventbus.contracts import EMAIL_MIRROR, MirrorMail
from eventbus.messages import MessageStore, Stream
from eventbus.processors.queues.email_mirror import html_to_text
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import wait_for
from tests.workers import ROOT, WorkerProcess, cli_env

DOMAIN = "streams.eventbus.localhost"


def mail_event(raw: bytes, rcpt_to: str | None = None) -> dict[str, Any]:
    return MirrorMail(raw, rcpt_to).event()


def stream_address(stream: Stream) -> str:
    return f"{stream.email_token}@{DOMAIN}"


def plain_email(to: str, *, sender: str = "Iago <iago@example.com>", subject: str | None = "The castle",
                body: str = "The guards are at the gate.\n", message_id: str | None = "<castle-1@example.com>",
                ) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    if subject is not None:
        mail["Subject"] = subject
    if message_id is not None:
        mail["Message-ID"] = message_id
    mail.set_content(body)
    return mail


@pytest.fixture
def denmark(event_settings: Settings, event_broker: MemoryBroker, users: tuple[User, User]) -> Stream:
    return MessageStore(event_settings.database).create_stream("Denmark", [u.id for u in users])


@pytest.fixture
def mirror(event_broker: MemoryBroker, denmark: Stream) -> Iterator[MemoryBroker]:
    """The email_mirror processor in a thread on the in-process broker."""
    threads = WorkerThreads([EMAIL_MIRROR], event_broker)
    threads.start()
    yield event_broker
    threads.stop()
    assert threads.join(10)


def mirrored(broker: MemoryBroker, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Queue the events, wait until they are processed, and return every message of the stream Denmark."""
    broker.publish_many(EMAIL_MIRROR, events)
    broker.join(EMAIL_MIRROR, timeout=10)
    store = MessageStore(broker.settings.database)
    stream = store.get_stream("Denmark")
    assert stream is not None
    return [m for m in store.recent(store.subscribers(stream.id)[0]) if m["display_recipient"] == "Denmark"]


def errors(broker: MemoryBroker) -> list[str]:
    return [e["error"].partition(": ")[2] for e in broker.error_store.read(EMAIL_MIRROR)]


# -- the processor ----------------------------------------------------------------------


def test_a_plain_email_from_a_user_is_posted_on_the_stream_by_that_user(
        mirror: MemoryBroker, denmark: Stream, users: tuple[User, User]) -> None:
    iago = users[0]
    mail = plain_email(stream_address(denmark), subject="Re: FWD: The   castle")
    [message] = mirrored(mirror, mail_event(mail.as_bytes(), stream_address(denmark)))
    assert (message["sender_id"], message["subject"]) == (iago.id, "The castle")
    assert message["content"] == "The guards are at the gate."
    assert "<p>The guards are at the gate.</p>" in message["rendered_content"]
    assert errors(mirror) == []


def test_without_an_envelope_recipient_the_address_comes_from_the_headers(
        mirror: MemoryBroker, denmark: Stream) -> None:
    mail = plain_email(f"Horatio <horatio@example.com>, Denmark <{stream_address(denmark).upper()}>")
    [message] = mirrored(mirror, mail_event(mail.as_bytes()))
    assert message["content"] == "The guards are at the gate."


def test_an_html_only_email_from_a_stranger_is_posted_as_text_by_the_mirror_bot(
        mirror: MemoryBroker, denmark: Stream) -> None:
    mail = plain_email(stream_address(denmark), sender="Fortinbras <fortinbras@norway.example>", subject=None)
    mail.set_content("<html><head><style>p {color: red}</style><script>alert('x')</script></head><body>"
                     "<p>We march <b>at dawn</b>.</p><ul><li>Horse</li><li>Foot</li></ul>"
                     "<p>Map: <a href='https://maps.example/elsinore'>here</a></p></body></html>", subtype="html")
    [message] = mirrored(mirror, mail_event(mail.as_bytes(), stream_address(denmark)))
    assert message["sender_email"] == "mirror-bot@eventbus.localhost"
    assert message["sender_full_name"] == "Email Gateway"
    assert message["subject"] == "(no topic)"
    assert message["content"] == ("From: Fortinbras <fortinbras@norway.example>\n\nWe march at dawn.\n\n"
                                  "- Horse\n- Foot\n\nMap: here (https://maps.example/elsinore)")
    assert "alert" not in message["content"] and "color" not in message["content"]


def test_the_plain_part_of_an_alternative_email_wins_and_attachments_are_left_out(
        mirror: MemoryBroker, denmark: Stream) -> None:
    mail = plain_email(stream_address(denmark), body="Plain words.\n")
    mail.add_alternative("<p>HTML words.</p>", subtype="html")
    mail.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename="map.png")
    [message] = mirrored(mirror, mail_event(mail.as_bytes(), stream_address(denmark)))
    assert message["content"] == "Plain words."


def test_an_8bit_latin1_email_arrives_intact(mirror: MemoryBroker, denmark: Stream) -> None:
    raw = (f"From: iago@example.com\r\nTo: {stream_address(denmark)}\r\nSubject: Caf\xe9\r\n"
           "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "D\xe9j\xe0 vu \xe0 Elsinore.\r\n").encode("latin-1")
    [message] = mirrored(mirror, mail_event(raw, stream_address(denmark)))
    assert message["content"] == "Déjà vu à Elsinore."


def test_a_long_subject_is_cut_to_a_topic(mirror: MemoryBroker, denmark: Stream) -> None:
    mail = plain_email(stream_address(denmark), subject="word " * 30)
    [message] = mirrored(mirror, mail_event(mail.as_bytes(), stream_address(denmark)))
    assert len(message["subject"]) == 60 and message["subject"].endswith("word…")


def test_the_same_email_delivered_twice_is_posted_once(mirror: MemoryBroker, denmark: Stream) -> None:
    with_id = plain_email(stream_address(denmark)).as_bytes()
    without_id = plain_email(stream_address(denmark), message_id=None, body="No Message-ID.\n").as_bytes()
    events = [mail_event(raw, stream_address(denmark)) for raw in (with_id, with_id, without_id, without_id)]
    messages = mirrored(mirror, *events)
    assert [m["content"] for m in messages] == ["The guards are at the gate.", "No Message-ID."]
    assert mirrored(mirror, events[0]) == messages  # again, much later


def test_email_that_cannot_become_a_message_goes_to_the_error_store_with_the_reason(
        mirror: MemoryBroker, denmark: Stream) -> None:
    address = stream_address(denmark)
    events = [
        mail_event(plain_email("nobody@elsewhere.example").as_bytes()),
        mail_event(plain_email(f"0000@{DOMAIN}").as_bytes(), f"0000@{DOMAIN}"),
        mail_event(b"\x00\x01 this is not an email \xff", address),
        {"raw": "not base64 at all!"},
        {"text": "no raw"},
        mail_event(plain_email(address, body="   \n\n").as_bytes(), address),
    ]
    assert mirrored(mirror, *events) == []
    assert errors(mirror) == [
        f"the email is not addressed to a stream: no address at {DOMAIN} (To: nobody@elsewhere.example)",
        f"no stream has the address 0000@{DOMAIN}",
        "no sender address in the From header ('')",
        "'raw' is not base64: the email must be base64-encoded",
        "an email_mirror event needs 'raw': the email, base64-encoded",
        "the email has no text: no text/plain or text/html body with content",
    ]


def test_html_to_text_keeps_preformatted_text_and_drops_what_is_not_shown() -> None:
    html = ("<title>Newsletter</title><h1>News</h1><pre>  indented\n    code</pre>"
            "<p>a&amp;b<br>c   d <a href='mailto:x@y.example'>x@y.example</a></p><template>hidden</template>")
    assert html_to_text(html) == "News\n\n  indented\n    code\n\na&b\nc d x@y.example"


# -- the SMTP server --------------------------------------------------------------------


class MirrorServer:
    """``eventbus email_mirror_server`` in a subprocess on a free port, its output in a log file."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.port = free_port()
        self.log_path = Path(settings.var_dir) / f"mirror-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "email_mirror_server", "--port", str(self.port)],
                env=cli_env(settings, **env), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        wait_for(lambda: "email mirror: listening" in self.log or self.process.poll() is not None, timeout=30,
                 what="the mirror server to listen")
        assert self.process.poll() is None, self.log

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def send(self, mail: EmailMessage, recipients: list[str]) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.send_message(mail, to_addrs=recipients)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_mirror_server() -> Iterator[Any]:
    servers: list[MirrorServer] = []

    def start(settings: Settings, **env: str) -> MirrorServer:
        server = MirrorServer(settings, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def amqp_denmark(settings: Settings, broker: RabbitMQBroker) -> Stream:
    """The stream Denmark in the test's database, and an empty email_mirror queue on the session's node."""
    if broker.queue_info(EMAIL_MIRROR).exists:
        broker.purge(EMAIL_MIRROR)
    store = MessageStore(settings.database)
    iago = store.users.create_user("iago@example.com", "Iago")
    return store.create_stream("Denmark", [iago.id])


def take(broker: RabbitMQBroker, queue: str, count: int) -> list[Any]:
    """Consume ``count`` events from ``queue`` (acked), waiting for them."""
    taken: list[Any] = []
    consumer = broker.consumer(queue, taken.extend)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(taken) >= count, what=f"{count} event(s) in {queue}")
    finally:
        consumer.stop()
        thread.join(10)
    return taken


def test_the_server_queues_each_email_for_its_stream_recipients(
        settings: Settings, broker: RabbitMQBroker, amqp_denmark: Stream, start_mirror_server: Any) -> None:
    server = start_mirror_server(settings)
    address = stream_address(amqp_denmark)
    mail = plain_email(address, body="Sent over SMTP.\n")
    server.send(mail, [address])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        server.send(mail, ["horatio@example.com"])
    assert refused.value.recipients["horatio@example.com"][0] == 550

    [event] = take(broker, EMAIL_MIRROR, 1)
    assert event["rcpt_to"] == address
    raw = base64.b64decode(event["raw"])
    assert b"Subject: The castle" in raw and b"Sent over SMTP." in raw
    assert server.terminate() == 0, server.log
    assert broker.queue_info(EMAIL_MIRROR).depth == 0


def test_an_email_sent_over_smtp_becomes_a_message_on_the_stream(
        settings: Settings, broker: RabbitMQBroker, amqp_denmark: Stream, start_mirror_server: Any) -> None:
    worker = WorkerProcess(settings, "--queue", EMAIL_MIRROR)
    try:
        server = start_mirror_server(settings)
        address = stream_address(amqp_denmark)
        server.send(plain_email(address, subject="Over the wire", body="Over SMTP to the stream.\n"), [address])
        store = MessageStore(settings.database)
        iago = store.users.get_by_email("iago@example.com")
        assert iago is not None
        wait_for(lambda: store.recent(iago.id), timeout=30, what="the message on the stream")
        [message] = store.recent(iago.id)
        assert (message["subject"], message["content"]) == ("Over the wire", "Over SMTP to the stream.")
        assert message["sender_id"] == iago.id
        assert server.terminate() == 0, server.log
    finally:
        worker.signal()
        assert worker.wait() == 0, worker.log


def test_when_the_broker_cannot_take_the_email_the_client_gets_a_temporary_failure(
        tmp_path: Path, start_mirror_server: Any) -> None:
    nowhere = Settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", var_dir=tmp_path / "var")
    server = start_mirror_server(nowhere, EVENTBUS_PUBLISH_TIMEOUT="1")
    address = f"0123456789abcdef@{DOMAIN}"
    with pytest.raises(smtplib.SMTPDataError) as failed:
        server.send(plain_email(address), [address])
    assert failed.value.smtp_code == 451
    assert server.terminate() == 0, server.log
    assert "could not queue an email" in server.log
