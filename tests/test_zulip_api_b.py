"""Flags, edits, deletes and reactions as Zulip's API has them, GET /events without a queue id, and the npm
zulip-js package as a second real client: on the real server with the message_sender and message_actions
processors, with the zulip package where it has the call. Every answer and event is checked against
tests/zulip_schemas.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zulip

from eventbus.contracts import MESSAGE_ACTIONS
from eventbus.message_actions import MessageAction, Op
from eventbus.messages import MessageStore
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.users import User
from tests.conftest import until, worker_threads
from tests.eventserver import Api, StartServer, run
from tests.test_history import World, history, send
from tests.zulip_schemas import (
    CODED_ERROR,
    DELETE_MESSAGE_EVENT,
    EVENT_MESSAGE,
    EVENTS_ANSWER,
    FLAGS_ANSWER,
    FLAGS_EVENT,
    HISTORY_ANSWER,
    MARK_ALL_AS_READ_ANSWER,
    MESSAGE_EVENT,
    MISSING_ARGUMENT_ERROR,
    REACTION,
    REACTION_EVENT,
    REACTION_EVENT_USER,
    SEND_ANSWER,
    SIMPLE_SUCCESS,
    UNREAD_DETAILS,
    UPDATE_MESSAGE_EVENT,
    Schema,
    check,
    check_message,
)

#: Where the zulip-js client script and its package are (``./run_tests`` installs the package).
JS_DIR = Path(__file__).parent / "js"

#: The schema of each event type these tests read.
EVENT_SCHEMAS = {"update_message_flags": FLAGS_EVENT, "update_message": UPDATE_MESSAGE_EVENT,
                 "delete_message": DELETE_MESSAGE_EVENT, "reaction": REACTION_EVENT, "message": MESSAGE_EVENT}


@pytest.fixture
def world(event_settings: Settings, users: tuple[User, User]) -> World:
    return World(event_settings, users)


@pytest.fixture
def processors(event_broker: MemoryBroker) -> Iterator[None]:
    """message_sender and message_actions, in threads, on the in-process broker."""
    with worker_threads(event_broker) as start:
        start("message_sender", MESSAGE_ACTIONS)
        yield


class Queue:
    """A registered event queue read in order, as a client reads it: each event once, checked against the spec."""

    def __init__(self, api: Api, queue_id: str) -> None:
        self.api, self.queue_id, self.last = api, queue_id, -1
        self.read: list[dict[str, Any]] = []

    @classmethod
    async def register(cls, api: Api, **params: Any) -> Queue:
        return cls(api, await api.register(**params))

    async def next(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next event of type ``kind`` (with these ``fields``, if told); those before it are read too."""
        while True:
            for event in self.read:
                if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    self.read.remove(event)
                    return event
            await self.poll(dont_block=False)

    async def poll(self, dont_block: bool = True) -> list[dict[str, Any]]:
        status, body = await self.api.events(self.queue_id, self.last, dont_block=dont_block)
        assert status == 200, body
        check(body, EVENTS_ANSWER)
        for event in body["events"]:
            if event["type"] in EVENT_SCHEMAS:
                check(event, EVENT_SCHEMAS[event["type"]], where=f"{event['type']} event")
            self.last = event["id"]
        self.read += [e for e in body["events"] if e["type"] != "heartbeat"]
        return list(body["events"])


async def ok(api: Api, method: str, path: str, schema: Schema = SIMPLE_SUCCESS, **params: Any) -> dict[str, Any]:
    status, body = await api.call(method, path, **params)
    assert status == 200, (path, params, body)
    check(body, schema)
    return dict(body)


async def refused(api: Api, method: str, path: str, code: str = "BAD_REQUEST", schema: Schema = CODED_ERROR,
                  **params: Any) -> str:
    """A 400 with Zulip's ``code``; its message."""
    status, body = await api.call(method, path, **params)
    assert (status, body.get("code")) == (400, code), (path, params, body)
    check(body, schema)
    return str(body["msg"])


def blocking(scenario: Any) -> None:
    """Run a scenario of a blocking client (the zulip package) beside the server's thread, bounded in time."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(scenario).result(60)


def test_flags_reach_every_client_of_the_user_and_mark_all_as_read_says_all(
        start_server: StartServer, world: World, processors: None) -> None:
    server = start_server()

    async def scenario() -> None:
        i, o = Api(server, world.iago), Api(server, world.othello)
        tabs = [await Queue.register(i), await Queue.register(i)]
        othello = await Queue.register(o)
        castle = [await send(o, type="stream", to="Denmark", topic="castle", content=f"c{n} @**Iago**")
                  for n in range(3)]
        verona = await send(o, type="stream", to="Verona", topic="fair", content="in Verona")
        psst = await send(o, type="private", to=world.iago.email, content="psst")
        answer = await ok(i, "POST", "/messages/flags", FLAGS_ANSWER, messages=castle[:2], op="add", flag="read")
        assert answer["messages"] == castle[:2]
        for tab in tabs:  # every client of Iago's learns it, in Zulip's shape
            event = await tab.next("update_message_flags")
            assert {k: v for k, v in event.items() if k != "id"} == {
                "type": "update_message_flags", "op": "add", "operation": "add", "flag": "read",
                "messages": castle[:2], "all": False}
        assert [m["id"] for m in (await history(i, [["is", "unread"]]))["messages"]] == [castle[2], verona, psst]
        await ok(i, "POST", "/messages/flags", FLAGS_ANSWER, messages=[castle[1], psst], op="add", flag="starred")
        assert (await tabs[0].next("update_message_flags"))["messages"] == [castle[1], psst]
        assert [m["id"] for m in (await history(i, [["is", "starred"]]))["messages"]] == [castle[1], psst]
        # Marked unread again: the event tells where each message is and that it mentions Iago, for the counts.
        # A channel Iago left is skipped, as Zulip skips it, and named.
        MessageStore(server.settings.database).unsubscribe([world.verona.id], [world.iago.id])  # no events
        await ok(i, "POST", "/messages/flags", FLAGS_ANSWER, messages=[verona, psst], op="add", flag="read")
        await tabs[0].next("update_message_flags")
        answer = await ok(i, "POST", "/messages/flags", FLAGS_ANSWER, messages=[castle[0], verona, psst],
                          op="remove", flag="read")
        assert answer["ignored_because_not_subscribed_channels"] == [world.verona.id]
        unread = await tabs[0].next("update_message_flags")
        assert (unread["op"], unread["messages"]) == ("remove", [castle[0], psst])
        for details in unread["message_details"].values():
            check(details, UNREAD_DETAILS, where="message_details")
        assert unread["message_details"] == {
            str(castle[0]): {"type": "stream", "stream_id": world.denmark.id, "topic": "castle", "mentioned": True},
            str(psst): {"type": "private", "user_ids": [world.othello.id]}}
        # Mark all as read: Zulip's "all", no ids.
        assert (await ok(i, "POST", "/mark_all_as_read", MARK_ALL_AS_READ_ANSWER))["complete"] is True
        read_all = await tabs[1].next("update_message_flags", all=True)
        assert (read_all["flag"], read_all["messages"], read_all["all"]) == ("read", [], True)
        assert (await history(i, [["is", "unread"]]))["messages"] == []
        # Othello's flags are his own: none of Iago's events reached him.
        await othello.poll()
        assert not [e for e in othello.read if e["type"] == "update_message_flags"]
        # Zulip's errors, each naming what is wrong.
        flags: dict[str, Any] = {"messages": castle[:1], "op": "add", "flag": "read"}
        for name in flags:
            params = {k: v for k, v in flags.items() if k != name}
            assert await refused(i, "POST", "/messages/flags", "REQUEST_VARIABLE_MISSING", MISSING_ARGUMENT_ERROR,
                                 **params) == f"Missing '{name}' argument"
        changes: list[tuple[dict[str, Any], str]] = [({"flag": "mentioned"}, "Flag not editable: 'mentioned'"),
                            ({"flag": "bogus"}, "Invalid flag: 'bogus'"),
                            ({"op": "toggle"}, "Invalid message flag operation: 'toggle'"),
                            ({"messages": "[1.5]"}, "Invalid 'messages' argument"),
                            ({"messages": [castle[0], 10**6]}, "Invalid message(s)")]
        for change, msg in changes:
            assert await refused(i, "POST", "/messages/flags", **{**flags, **change}) == msg
        desdemona = Api(server, world.desdemona)  # she received none of them
        assert await refused(desdemona, "POST", "/messages/flags", **flags) == "Invalid message(s)"

    run(scenario)
    client = zulip.Client(email=world.iago.email, api_key=world.iago.api_key, site=server.url(""))

    def with_the_zulip_package() -> None:
        [first] = [m["id"] for m in client.get_messages({"anchor": "oldest", "num_before": 0,
                                                         "num_after": 1})["messages"]]
        answer = client.update_message_flags({"messages": [first], "op": "remove", "flag": "read"})
        check(answer, FLAGS_ANSWER)
        unread = client.get_messages({"anchor": "newest", "num_before": 10, "num_after": 0,
                                      "narrow": [{"operator": "is", "operand": "unread"}]})
        assert [m["id"] for m in unread["messages"]] == [first]
        check(client.mark_all_as_read(), MARK_ALL_AS_READ_ANSWER)

    blocking(with_the_zulip_package)


def test_an_edit_is_rendered_again_and_told_to_everyone_who_received_the_message(
        start_server: StartServer, world: World, processors: None) -> None:
    server = start_server()

    async def scenario() -> None:
        i, o, d = Api(server, world.iago), Api(server, world.othello), Api(server, world.desdemona)
        iago, othello = await Queue.register(i), await Queue.register(o, apply_markdown=False)
        sent = await send(i, type="stream", to="Denmark", topic="castle", content="hello")
        # Iago adds a mention of Othello: the edit is rendered by the processor, and Othello is now mentioned.
        await ok(i, "PATCH", f"/messages/{sent}", content="hello @**Othello**, *again*")
        told = await othello.next("update_message")
        mention = f'<span class="user-mention" data-user-id="{world.othello.id}">@Othello</span>'
        assert {k: v for k, v in told.items() if k not in ("id", "edit_timestamp")} == {
            "type": "update_message", "user_id": world.iago.id, "rendering_only": False, "message_id": sent,
            "message_ids": [sent], "stream_id": world.denmark.id, "stream_name": "Denmark",
            "orig_content": "hello", "orig_rendered_content": "<p>hello</p>",
            "content": "hello @**Othello**, *again*", "rendered_content": f"<p>hello {mention}, <em>again</em></p>",
            "is_me_message": False, "flags": ["mentioned"]}
        assert (await iago.next("update_message"))["flags"] == ["read"]  # each recipient's own flags
        [edited] = (await history(o, [["is", "mentioned"]]))["messages"]
        check_message(edited)
        assert edited["content"] == told["rendered_content"]
        assert edited["last_edit_timestamp"] == told["edit_timestamp"]
        # Taken out again: Othello is no longer mentioned; /me makes a status message.
        await ok(i, "PATCH", f"/messages/{sent}", content="/me waves")
        told = await othello.next("update_message")
        assert (told["flags"], told["is_me_message"], told["orig_content"]) == ([], True, told["orig_content"])
        assert (await history(o, [["is", "mentioned"]]))["messages"] == []
        # A topic edit: Zulip's move fields, for this one message.
        await ok(i, "PATCH", f"/messages/{sent}", topic="ramparts")
        told = await othello.next("update_message")
        assert (told["orig_subject"], told["subject"], told["propagate_mode"], "content" in told) == (
            "castle", "ramparts", "change_one", False)
        assert [m["id"] for m in (await history(o, [["topic", "ramparts"]]))["messages"]] == [sent]
        assert [m["id"] for m in (await history(o, [["search", "waves"]]))["messages"]] == [sent]
        # Only the sender edits; only a recipient sees the message at all.
        psst = await send(o, type="private", to=world.iago.email, content="psst")
        refusals: list[tuple[Api, int, dict[str, Any], str]] = [
            (o, sent, {"content": "mine now"}, "You don't have permission to edit this message"),
            (d, sent, {"content": "x"}, "Invalid message(s)"),
            (i, 10**6, {"content": "x"}, "Invalid message(s)"),
            (i, sent, {}, "Nothing to change"),
            (i, sent, {"topic": " "}, "Topic can't be empty"),
            (o, psst, {"topic": "t"}, "Direct messages cannot have topics."),
            (i, sent, {"content": "x" * 10_001}, "Message is longer than 10000 characters"),
        ]
        for api, message_id, params, msg in refusals:
            assert await refused(api, "PATCH", f"/messages/{message_id}", **params) == msg, params
        unsupported: list[dict[str, Any]] = [{"propagate_mode": "change_all"}, {"stream_id": world.verona.id}]
        for param in unsupported:
            [name] = param
            msg = await refused(i, "PATCH", f"/messages/{sent}", topic="t", **param)
            assert msg.startswith(f"Invalid '{name}' argument"), msg

    run(scenario)
    client = zulip.Client(email=world.iago.email, api_key=world.iago.api_key, site=server.url(""))

    def with_the_zulip_package() -> None:
        sent = client.send_message({"type": "stream", "to": "Denmark", "topic": "zulip", "content": "draft"})["id"]
        check(client.update_message({"message_id": sent, "content": "**final**"}), SIMPLE_SUCCESS)
        [message] = client.get_messages({"message_ids": [sent]})["messages"]
        assert message["content"] == "<p><strong>final</strong></p>" and "last_edit_timestamp" in message

    blocking(with_the_zulip_package)


def test_a_deleted_message_is_gone_for_everyone_who_received_it(start_server: StartServer, world: World,
                                                                processors: None) -> None:
    server = start_server()

    async def scenario() -> None:
        i, o = Api(server, world.iago), Api(server, world.othello)
        othello = await Queue.register(o)
        on_stream = await send(i, type="stream", to="Denmark", topic="castle", content="oops")
        private = await send(i, type="private", to=world.othello.email, content="oops too")
        assert await refused(o, "DELETE", f"/messages/{on_stream}") == (
            "You don't have permission to delete this message")
        await ok(i, "DELETE", f"/messages/{on_stream}")
        await ok(i, "DELETE", f"/messages/{private}")
        told = [await othello.next("delete_message") for _ in range(2)]
        assert [{k: v for k, v in e.items() if k != "id"} for e in told] == [
            {"type": "delete_message", "message_id": on_stream, "message_type": "stream",
             "stream_id": world.denmark.id, "topic": "castle"},
            {"type": "delete_message", "message_id": private, "message_type": "private"}]
        assert (await history(o))["messages"] == []
        assert (await history(o, [["search", "oops"]]))["messages"] == []
        assert await refused(i, "DELETE", f"/messages/{on_stream}") == "Invalid message(s)"

    run(scenario)
    client = zulip.Client(email=world.iago.email, api_key=world.iago.api_key, site=server.url(""))

    def with_the_zulip_package() -> None:
        sent = client.send_message({"type": "stream", "to": "Denmark", "topic": "zulip", "content": "brief"})["id"]
        check(client.delete_message(sent), SIMPLE_SUCCESS)
        assert client.get_messages({"message_ids": [sent]})["messages"] == []

    blocking(with_the_zulip_package)


def test_reactions_are_told_to_everyone_and_shown_in_message_objects(start_server: StartServer, world: World,
                                                                     processors: None) -> None:
    server = start_server()

    async def scenario() -> None:
        i, o, d = Api(server, world.iago), Api(server, world.othello), Api(server, world.desdemona)
        iago = await Queue.register(i)
        sent = await send(i, type="stream", to="Denmark", topic="castle", content="we sail at dawn")
        await ok(o, "POST", f"/messages/{sent}/reactions", emoji_name="octopus")
        told = await iago.next("reaction")
        check(told["user"], REACTION_EVENT_USER, where="reaction.user")
        assert {k: v for k, v in told.items() if k != "id"} == {
            "type": "reaction", "op": "add", "user_id": world.othello.id, "message_id": sent,
            "user": {"user_id": world.othello.id, "email": world.othello.email, "full_name": "Othello"},
            "emoji_name": "octopus", "emoji_code": "1f419", "reaction_type": "unicode_emoji"}
        await ok(i, "POST", f"/messages/{sent}/reactions", emoji_name="+1", emoji_code="1f44d",
                 reaction_type="unicode_emoji")
        await iago.next("reaction")
        [message] = (await history(o))["messages"]
        check_message(message)
        assert message["reactions"] == [
            {"emoji_name": "octopus", "emoji_code": "1f419", "reaction_type": "unicode_emoji",
             "user_id": world.othello.id},
            {"emoji_name": "+1", "emoji_code": "1f44d", "reaction_type": "unicode_emoji", "user_id": world.iago.id}]
        for reaction in message["reactions"]:
            check(reaction, REACTION, where="reaction")
        await ok(o, "DELETE", f"/messages/{sent}/reactions", emoji_name="octopus")
        removed = await iago.next("reaction")
        assert (removed["op"], removed["emoji_name"], removed["user_id"]) == ("remove", "octopus", world.othello.id)
        assert [r["emoji_name"] for r in (await history(o))["messages"][0]["reactions"]] == ["+1"]
        # Zulip's errors.
        path = f"/messages/{sent}/reactions"
        assert await refused(i, "POST", path, "REACTION_ALREADY_EXISTS", emoji_name="+1") == "Reaction already exists."
        assert await refused(o, "DELETE", path, "REACTION_DOES_NOT_EXIST", emoji_name="octopus") == (
            "Reaction doesn't exist.")
        errors: list[tuple[dict[str, Any], str]] = [
            ({"emoji_name": "no_such_emoji"}, "Emoji 'no_such_emoji' does not exist"),
            ({"emoji_name": "octopus", "emoji_code": "1f600"}, "Invalid emoji code"),
            ({"emoji_name": "octopus", "reaction_type": "realm_emoji"},
             "Invalid 'reaction_type' argument: only 'unicode_emoji' emoji exist here")]
        for params, msg in errors:
            assert await refused(o, "POST", path, **params) == msg
        assert await refused(d, "POST", path, emoji_name="octopus") == "Invalid message(s)"
        assert await refused(o, "POST", path, "REQUEST_VARIABLE_MISSING", MISSING_ARGUMENT_ERROR) == (
            "Missing 'emoji_name' argument")

    run(scenario)
    client = zulip.Client(email=world.othello.email, api_key=world.othello.api_key, site=server.url(""))

    def with_the_zulip_package() -> None:
        [message] = client.get_messages({"anchor": "newest", "num_before": 1, "num_after": 0})["messages"]
        reaction = {"message_id": message["id"], "emoji_name": "tada"}
        check(client.add_reaction(reaction), SIMPLE_SUCCESS)
        [message] = client.get_messages({"message_ids": [message["id"]]})["messages"]
        assert [r["emoji_code"] for r in message["reactions"]] == ["1f44d", "1f389"]
        check(client.remove_reaction(reaction), SIMPLE_SUCCESS)

    blocking(with_the_zulip_package)


def test_a_redelivered_request_changes_once_and_is_told_once(start_server: StartServer, world: World,
                                                             event_broker: MemoryBroker, processors: None) -> None:
    """At-least-once from the queue never shows twice: the store records each request's outcome with the
    change, and a request whose change was made but whose events were not sent (a worker killed in between)
    sends them when it comes again."""
    server = start_server()
    answers: list[Any] = []
    consumer = event_broker.consumer("actions_answers", answers.extend)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()

    async def scenario() -> None:
        i, o = Api(server, world.iago), Api(server, world.othello)
        othello = await Queue.register(o)
        sent = await send(o, type="stream", to="Denmark", topic="castle", content="look")
        action = MessageAction(Op.ADD_REACTION, message_id=sent, emoji_name="eyes")
        request = {"request_id": str(uuid.uuid4()), "user_id": world.iago.id, "request": action.event(),
                   "return_queue": "actions_answers"}
        for _ in range(2):  # delivered twice
            event_broker.publish(MESSAGE_ACTIONS, request)
        await othello.next("reaction")
        await until(lambda: len(answers) == 2, what="both answers")
        assert [a["response"]["result"] for a in answers] == ["success", "success"]
        # A change made, its events not sent: the request's next delivery sends them, once.
        crashed: dict[str, Any] = {**request, "request_id": str(uuid.uuid4()),
                                   "request": {**action.event(), "emoji_name": "fire"}}
        world.store.react(crashed["request_id"], sent, world.iago.id, {
            "emoji_name": "fire", "emoji_code": "1f525", "reaction_type": "unicode_emoji"}, add=True)
        for _ in range(2):
            event_broker.publish(MESSAGE_ACTIONS, crashed)
        assert (await othello.next("reaction"))["emoji_name"] == "fire"
        await until(lambda: len(answers) == 4, what="the answers")
        await othello.poll()
        assert [e for e in othello.read if e["type"] == "reaction"] == []  # each told once
        assert [r["emoji_name"] for r in (await history(i))["messages"][0]["reactions"]] == ["eyes", "fire"]

    try:
        run(scenario)
    finally:
        consumer.stop()
        thread.join(5)


def test_events_without_a_queue_id_register_a_queue(start_server: StartServer, world: World,
                                                    processors: None) -> None:
    server = start_server()

    async def scenario() -> None:
        i, o = Api(server, world.iago), Api(server, world.othello)
        status, body = await o.call("GET", "/events", dont_block="true", event_types=["message"])
        assert status == 200 and body["events"] == [], body
        check(body, EVENTS_ANSWER)
        queue = Queue(o, body["queue_id"])
        sent = await send(i, type="stream", to="Denmark", topic="castle", content="to the new queue")
        assert (await queue.next("message"))["message"]["id"] == sent
        # A long-poll without a queue id waits like any other, and its answer names the queue it made.
        held = asyncio.ensure_future(o.call("GET", "/events", event_types=["message"], apply_markdown="false"))
        await until(lambda: server.call(lambda: sum(1 for c in server.server.registry if c.listener)) == 1,
                    what="the held poll")
        await send(i, type="stream", to="Denmark", topic="castle", content="*held*")
        status, body = await held
        check(body, EVENTS_ANSWER)
        assert body["queue_id"] != queue.queue_id and body["events"][0]["message"]["content"] == "*held*"
        msg = await refused(o, "GET", "/events", narrow="not json")
        assert "Invalid 'narrow' argument" in msg

    run(scenario)
    client = zulip.Client(email=world.othello.email, api_key=world.othello.api_key, site=server.url(""))

    def with_the_zulip_package() -> None:
        answer = client.get_events(dont_block=True, event_types=["message"])
        check(answer, EVENTS_ANSWER)
        client.send_message({"type": "stream", "to": "Denmark", "topic": "zulip", "content": "found"})
        events = client.get_events(queue_id=answer["queue_id"], last_event_id=-1)["events"]
        assert [e["message"]["content"] for e in events] == ["found"]  # Markdown: register's default, as Zulip's

    blocking(with_the_zulip_package)


def test_the_zulip_js_package_registers_polls_sends_reads_and_reacts(start_server: StartServer, world: World,
                                                                      processors: None) -> None:
    """The npm zulip-js package, unmodified, in node, against the real server (tests/js/client.js)."""
    node = shutil.which("node")
    assert node is not None, "node is needed: ./run_tests installs it"
    assert (JS_DIR / "node_modules" / "zulip-js").is_dir(), "zulip-js is missing: ./run_tests installs it"
    server = start_server()
    env = {**os.environ, "ZULIP_SITE": server.url(""), "ZULIP_EMAIL": world.iago.email,
           "ZULIP_API_KEY": world.iago.api_key}
    done = subprocess.run([node, str(JS_DIR / "client.js")], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["register"]["result"] == "success" and isinstance(seen["register"]["queue_id"], str)
    check(seen["sent"], SEND_ANSWER)
    check(seen["message_event"], MESSAGE_EVENT)
    check_message(seen["message_event"]["message"], EVENT_MESSAGE, where="zulip-js message event")
    assert seen["message_event"]["message"]["content"] == "from **node**"  # apply_markdown is false unless told
    assert seen["history"]["messages"][0]["content"] == "<p>from <strong>node</strong></p>"
    check(seen["history"], HISTORY_ANSWER)
    assert [m["id"] for m in seen["history"]["messages"]] == [seen["sent"]["id"]]
    for message in seen["history"]["messages"]:
        check_message(message)
    check(seen["reacted"], SIMPLE_SUCCESS)
    check(seen["reaction_event"], REACTION_EVENT)
    assert (seen["reaction_event"]["emoji_name"], seen["reaction_event"]["message_id"]) == (
        "octopus", seen["sent"]["id"])


def test_a_poll_without_a_queue_id_counts_as_a_registration(start_server: StartServer, world: World) -> None:
    server = start_server(rate_limit_register=(1, 3600.0))

    async def scenario() -> None:
        othello = Api(server, world.othello)
        status, body = await othello.call("GET", "/events", dont_block="true")
        assert status == 200, body
        for method, path in (("GET", "/events"), ("POST", "/register")):  # the one registration allowed is used
            status, body = await othello.call(method, path, dont_block="true")
            assert (status, body["code"]) == (429, "RATE_LIMIT_HIT"), (path, body)

    run(scenario)
