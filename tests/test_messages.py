"""Messages: safe rendering with mentions, the message_sender path through the server, history, away users."""

from __future__ import annotations

import asyncio
import html.parser
import json
import time
import urllib.parse
from functools import partial
from typing import Any

import pytest

from eventbus.messages import MessageStore
from eventbus.processors.markdown import render
from eventbus.processors.message_send import Draft, check_request, send_batch
from eventbus.processors.queues.messages import MessageSenderWorker
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import EVENT_SECRET, take, wait_for
from tests.eventserver import Api, StartServer, run

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java&#x09;script:alert(1))",
    "[click](  javascript:alert(1))",
    "<javascript:alert(1)>",
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    "![x](data:image/svg+xml,<svg onload=alert(1)>)",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=https://evil.example></iframe>",
    '[x](https://ok.example/" onmouseover="alert(1))',
    "<svg><script>alert(1)</script></svg>",
    "**<style>body{display:none}</style>**",
    "[x](vbscript:msgbox(1)) [y](file:///etc/passwd)",
]
ALLOWED_TAGS = {"p", "a", "img", "strong", "em", "code", "pre", "span", "br", "del", "ul", "ol", "li", "blockquote",
                "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td"}
ALLOWED_ATTRS = {"href", "src", "alt", "title", "class", "data-user-id", "data-stream-id", "target", "rel", "lang",
                 "align"}


def queued(broker: MemoryBroker, queue: str, depth: int) -> bool:
    """Whether ``queue`` holds ``depth`` events."""
    return broker.queue_info(queue).depth == depth


class Audit(html.parser.HTMLParser):
    """Collects every tag, attribute and URL of rendered HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            self.attrs.add(name)
            if name in ("href", "src"):
                self.urls.append(value or "")


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_markdown_renders_harmless(source: str) -> None:
    audit = Audit()
    audit.feed(render(source).html)
    assert audit.tags <= ALLOWED_TAGS, audit.tags
    assert audit.attrs <= ALLOWED_ATTRS, audit.attrs
    for url in audit.urls:
        assert urllib.parse.urlsplit(url).scheme in ("http", "https", "mailto"), url


def test_markdown_features_and_mentions() -> None:
    users = {"Iago": (1, "Iago"), "Othello Moor": (2, "Othello Moor")}
    streams = {"Denmark": (5, "Denmark")}
    source = ("**bold** _it_ `@**Iago**` see https://example.com and #**Denmark**, @**Othello Moor** @**Nobody**\n\n"
              "```python\nprint('<b>')\n```")
    rendered = render(source, users.get, streams.get)
    assert "<strong>bold</strong>" in rendered.html and "<em>it</em>" in rendered.html
    assert '<span class="user-mention" data-user-id="2">@Othello Moor</span>' in rendered.html
    assert "<code>@**Iago**</code>" in rendered.html  # code is left alone
    assert '<a class="stream" data-stream-id="5" href="/#narrow/stream/5-Denmark">#Denmark</a>' in rendered.html
    assert '<a href="https://example.com" target="_blank" rel="noopener noreferrer">' in rendered.html
    assert ('<div class="codehilite" data-code-language="python"><pre><span></span><code>print(\'&lt;b&gt;\')'
            in rendered.html)
    assert "@**Nobody**" in rendered.html  # a mention of no one stays as typed
    assert rendered.mentioned_user_ids == {2}


@pytest.fixture
def world(event_settings: Settings, users: tuple[User, User]) -> tuple[MessageStore, User, User, User]:
    """Iago, Othello and Desdemona; Iago and Othello are subscribed to Denmark."""
    store = MessageStore(event_settings.database)
    iago, othello = users
    desdemona = store.users.create_user("desdemona@example.com", "Desdemona")
    store.create_stream("Denmark", [iago.id, othello.id])
    return store, iago, othello, desdemona


async def next_events(api: Api, queue_id: str, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        events += (await api.events(queue_id, -1))[1]["events"][len(events):]
    return events


def test_send_render_store_and_deliver(start_server: StartServer, world: Any, sender_worker: WorkerThreads,
                                       event_broker: MemoryBroker) -> None:
    _store, iago, othello, desdemona = world
    server = start_server()

    async def scenario() -> None:
        iago_api, othello_api = Api(server, iago), Api(server, othello)
        othello_queue = await othello_api.register(apply_markdown=True)
        iago_raw = await iago_api.register(apply_markdown=False)
        status, body = await iago_api.call("POST", "/messages", type="stream", to="Denmark", topic="plans",
                                           content="hello @**Othello**, *see* <b>this</b>")
        assert status == 200, body
        assert body["result"] == "success" and isinstance(body["id"], int)
        [event] = await next_events(othello_api, othello_queue, 1)
        message = event["message"]
        assert event["flags"] == ["mentioned"]
        assert (message["id"], message["sender_email"], message["display_recipient"], message["subject"]) == (
            body["id"], "iago@example.com", "Denmark", "plans")
        mention = f'<span class="user-mention" data-user-id="{othello.id}">@Othello</span>'
        assert message["content"] == f"<p>hello {mention}, <em>see</em> &lt;b&gt;this&lt;/b&gt;</p>"
        assert message["content_type"] == "text/html"
        [own] = await next_events(iago_api, iago_raw, 1)
        assert own["message"]["content"] == "hello @**Othello**, *see* <b>this</b>"
        assert own["flags"] == ["read"]
        status, history = await othello_api.call("GET", "/messages", anchor="newest", num_before=10, num_after=0)
        assert [m["id"] for m in history["messages"]] == [body["id"]]
        assert history["messages"][0]["flags"] == ["mentioned"]
        # Desdemona is not subscribed: nothing for her.
        status, history = await Api(server, desdemona).call("GET", "/messages", anchor="newest", num_before=10,
                                                            num_after=0)
        assert history["messages"] == []

    run(scenario)


def test_private_message_and_errors(start_server: StartServer, world: Any, sender_worker: WorkerThreads) -> None:
    store, iago, _othello, desdemona = world
    server = start_server()

    async def scenario() -> None:
        api = Api(server, iago)
        status, body = await api.call("POST", "/messages", type="private", to='["desdemona@example.com"]',
                                      content="psst")
        assert status == 200, body
        stored = store.get(body["id"])
        assert stored is not None and sorted(stored.flags) == sorted([iago.id, desdemona.id])
        errors: list[tuple[dict[str, Any], str, str]] = [
            ({"type": "stream", "to": "Nowhere", "topic": "t", "content": "x"}, "STREAM_DOES_NOT_EXIST",
             "Channel 'Nowhere' does not exist"),
            ({"type": "stream", "to": "Denmark", "content": "x"}, "REQUEST_VARIABLE_MISSING", "Missing 'topic'"),
            ({"type": "private", "to": '["ghost@example.com"]', "content": "x"}, "BAD_REQUEST",
             "Invalid email 'ghost@example.com'"),
            ({"type": "private", "to": '[{"x": 1}]', "content": "x"}, "BAD_REQUEST",
             "is neither an email nor a user id"),
            ({"type": "private", "to": "[true]", "content": "x"}, "BAD_REQUEST", "is neither an email nor a user id"),
            ({"type": "stream", "to": "Denmark", "topic": "t"}, "REQUEST_VARIABLE_MISSING",
             "Missing 'content' argument"),
            ({"type": "carrier-pigeon", "to": "Denmark", "content": "x"}, "BAD_REQUEST", "Invalid 'type' argument"),
            ({"type": "stream", "to": "Denmark", "topic": "t" * 61, "content": "x"}, "BAD_REQUEST",
             "Topic is longer than 60"),
        ]
        for params, code, msg in errors:
            status, body = await api.call("POST", "/messages", **params)
            assert (status, body["result"], body["code"]) == (400, "error", code), params
            assert msg in body["msg"]

    run(scenario)


def test_malformed_message_sender_events_go_to_the_error_store(world: Any, event_broker: MemoryBroker,
                                                               sender_worker: WorkerThreads) -> None:
    request = {"type": "stream", "to": "Denmark", "topic": "t", "content": "x"}
    event_broker.publish_many("message_sender", [
        {"request_id": "r1", "user_id": "1", "return_queue": "nowhere", "request": request},
        {"request_id": "r2", "user_id": 1.5, "return_queue": "nowhere", "request": request},
    ])
    wait_for(lambda: event_broker.error_store.count("message_sender") == 2, what="both events in the error store")
    errors = [e["error"] for e in event_broker.error_store.read("message_sender")]
    assert errors == ["ContractError: 'user_id' must be an id (an integer from 1 to 2**63 - 1), not '1'",
                      "ContractError: 'user_id' must be an id (an integer from 1 to 2**63 - 1), not 1.5"]
    assert [e["tries"] for e in event_broker.error_store.read("message_sender")] == [1, 1]  # not retried


def test_a_redelivered_request_is_stored_and_delivered_once(start_server: StartServer, world: Any,
                                                            event_broker: MemoryBroker) -> None:
    store, iago, othello, _ = world
    server = start_server()

    async def scenario() -> None:
        api = Api(server, othello)
        queue_id = await api.register()
        request = {"request_id": "req-1", "user_id": iago.id, "server_id": "tornado", "return_queue": "nowhere",
                   "request": {"type": "stream", "to": "Denmark", "topic": "t", "content": "once"}}
        event_broker.publish_many("message_sender", [request, request])
        threads = WorkerThreads(["message_sender"], event_broker)
        threads.start()
        await asyncio.to_thread(event_broker.join, "message_sender", 10)
        threads.stop()
        assert threads.join(10)
        [event] = await next_events(api, queue_id, 1)
        assert event["message"]["content"] == "once"
        assert len(store.recent(othello.id)) == 1
        # both requests were answered, with the one message
        answers = [a for m in take(event_broker, "nowhere") for a in m["answers"]]
        assert [a["request_id"] for a in answers] == ["req-1", "req-1"]
        assert answers[0]["response"] == answers[1]["response"] == {"result": "success", "msg": "",
                                                                    "id": event["message"]["id"]}

    run(scenario)


def test_a_backlog_is_sent_in_batches_with_ids_in_request_order(start_server: StartServer, world: Any,
                                                               event_broker: MemoryBroker) -> None:
    _store, iago, othello, _ = world
    server = start_server()
    count = 50

    async def scenario() -> None:
        # Given Othello's client and a backlog of requests waiting for message_sender
        api = Api(server, othello)
        queue_id = await api.register()
        event_broker.publish_many("message_sender", [
            {"request_id": f"req-{n}", "user_id": iago.id, "server_id": "tornado", "return_queue": "nowhere",
             "request": {"type": "stream", "to": "Denmark", "topic": "t", "content": f"message {n}"}}
            for n in range(count)])
        # When the processor works through it
        threads = WorkerThreads(["message_sender"], event_broker)
        threads.start()
        await asyncio.to_thread(event_broker.join, "message_sender", 10)
        threads.stop()
        assert threads.join(10)
        # Then every request is answered, several answers to a message (a batch: one publish for its answers),
        answered = take(event_broker, "nowhere")
        answers = [a for m in answered for a in m["answers"]]
        assert [a["request_id"] for a in answers] == [f"req-{n}" for n in range(count)]
        assert len(answered) < count
        # the ids follow the requests' order, and Othello's client has the messages in that order
        ids = [a["response"]["id"] for a in answers]
        assert ids == sorted(ids)
        events = await next_events(api, queue_id, count)
        assert [e["message"]["id"] for e in events] == ids
        assert [e["message"]["content"] for e in events] == [f"message {n}" for n in range(count)]

    run(scenario)


def test_senders_are_answered_before_their_messages_are_marked_delivered(world: Any,
                                                                         event_broker: MemoryBroker) -> None:
    """The mark only spares a redelivered request sending its event again (which the event server would drop):
    the senders need not wait for its commit."""
    store, iago, _othello, _ = world
    worker = MessageSenderWorker(event_broker)
    worker.before_start()
    answered_when_marked: list[int] = []
    mark = worker.store.mark_delivered

    def spied_mark(*message_ids: int) -> None:
        answered_when_marked.append(event_broker.queue_info("nowhere").depth)
        mark(*message_ids)

    worker.store.mark_delivered = spied_mark  # type: ignore[method-assign]
    worker.consume_batch([{"request_id": f"req-{n}", "user_id": iago.id, "server_id": "tornado",
                           "return_queue": "nowhere",
                           "request": {"type": "stream", "to": "Denmark", "topic": "t", "content": f"message {n}"}}
                          for n in range(3)])
    assert answered_when_marked == [1]  # the batch's one answer message was out when the mark began
    assert [a["response"]["result"] for m in take(event_broker, "nowhere") for a in m["answers"]] == ["success"] * 3
    assert len(store.recent(iago.id)) == 3


def test_topic_wildcard_mentions_whoever_sent_to_the_topic_earlier_in_the_same_batch(
        world: Any, event_broker: MemoryBroker) -> None:
    store, iago, othello, desdemona = world
    store.create_stream("Denmark", [desdemona.id])

    def draft(sender: User, content: str) -> Draft:
        return check_request(store, sender, {"type": "stream", "to": "Denmark", "topic": "new", "content": content})

    # Given Othello's first message to a topic, and Iago's @**topic** after it, in one batch
    # When the batch is sent
    first, mention = send_batch(event_broker, store, [(draft(othello, "hello"), "r1"), (draft(iago, "@**topic** hi"),
                                                                                          "r2")])
    # Then Othello is mentioned by it (he took part in the topic), Desdemona is not
    topic = ["topic_wildcard_mentioned", "wildcard_mentioned"]
    assert first.id < mention.id
    assert mention.flags[othello.id] == topic and mention.flags[iago.id] == ["read", *topic]
    assert mention.flags[desdemona.id] == []


def test_away_users_are_notified_once_per_mention(start_server: StartServer, world: Any,
                                                  sender_worker: WorkerThreads, event_broker: MemoryBroker) -> None:
    _store, iago, _othello, _desdemona = world
    server = start_server()

    async def scenario() -> None:
        api = Api(server, iago)
        await api.register()  # iago is here; othello (mentioned) and desdemona (private) are away
        valid: list[dict[str, Any]] = [{"type": "stream", "to": "Denmark", "topic": "t", "content": "hi @**Othello**"},
                                        {"type": "stream", "to": "Denmark", "topic": "t", "content": "no mention"},
                                        {"type": "private", "to": "desdemona@example.com", "content": "psst"}]
        for params in valid:
            status, body = await api.call("POST", "/messages", **params)
            assert status == 200, body

    run(scenario)
    for queue in ("missedmessage_mobile_notifications", "missedmessage_emails"):
        wait_for(partial(queued, event_broker, queue, 2), what=f"two {queue} events")
    assert server.call(lambda: server.server.away.sent) == 2


def test_a_message_posted_to_the_internal_endpoint_notifies_away_users_too(
        start_server: StartServer, world: Any, event_broker: MemoryBroker) -> None:
    _store, iago, othello, _desdemona = world
    server = start_server()
    notice = {"event": {"type": "message", "message": {"id": 77, "sender_id": iago.id, "type": "private",
                                                        "content": "psst"}}, "users": [othello.id]}

    async def scenario() -> None:
        internal = Api(server, None, prefix="/api/internal")
        status, body = await internal.call("POST", "/notify_tornado", data=json.dumps(notice), secret=EVENT_SECRET)
        assert (status, body["delivered"]) == (200, 0)  # othello has no queue: he is away

    run(scenario)
    for queue in ("missedmessage_mobile_notifications", "missedmessage_emails"):
        wait_for(partial(queued, event_broker, queue, 1), what=f"the {queue} event")


def test_unread_mentions_left_in_expired_queues_notify(start_server: StartServer, world: Any,
                                                       sender_worker: WorkerThreads,
                                                       event_broker: MemoryBroker) -> None:
    _store, iago, othello, _ = world
    server = start_server()

    async def scenario() -> None:
        await Api(server, othello).register()  # othello has a queue but never reads it
        status, _ = await Api(server, iago).call("POST", "/messages", type="stream", to="Denmark", topic="t",
                                                 content="@**Othello** are you there?")
        assert status == 200

    run(scenario)
    assert event_broker.queue_info("missedmessage_emails").exists is False  # othello had a live queue
    server.call(lambda: server.server.registry.collect_garbage(time.monotonic() + 3600))
    wait_for(lambda: event_broker.queue_info("missedmessage_emails").depth == 1, what="the email notification")


def test_rendering_does_not_leak_memory() -> None:
    def resident_kib() -> int:
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])

    source = "**bold** @**Iago** [link](https://example.com)\n\n```\ncode\n```\n" * 5
    render(source)
    before = resident_kib()
    for _ in range(20_000):
        render(source)
    # cmarkgfm's own helper keeps about 2.4 KB a message: 20,000 would be some 50 MB.
    assert resident_kib() - before < 10_000
