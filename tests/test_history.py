"""GET /api/v1/messages (narrows, anchors, search), message objects as Zulip's spec has them, and sending as
Zulip clients do (stream ids, Zulip's error codes, local echo), on the real server with the message_sender
processor, with the zulip package too. Every answer is checked against tests/zulip_schemas.py."""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import zulip

from eventbus.messages import LARGER_THAN_MAX_MESSAGE_ID, HistoryQuery, MessageStore
from eventbus.narrow import parse_narrow
from eventbus.processors.runner import WorkerThreads
from eventbus.settings import Settings
from eventbus.users import User
from tests.eventserver import Api, StartServer, run
from tests.test_messages import next_events
from tests.test_websocket import connect, login, receive
from tests.test_websocket import send as ws_send
from tests.zulip_schemas import (
    BAD_NARROW_ERROR,
    CODED_ERROR,
    EVENT_MESSAGE,
    HISTORY_ANSWER,
    HISTORY_BY_IDS_ANSWER,
    INCOMPATIBLE_PARAMETERS_ERROR,
    MESSAGE_EVENT,
    MISSING_ARGUMENT_ERROR,
    NON_EXISTING_CHANNEL_ID_ERROR,
    NON_EXISTING_CHANNEL_NAME_ERROR,
    SEND_ANSWER,
    Schema,
    check,
    check_message,
)


class World:
    """Iago, Othello and Desdemona; Iago and Othello are subscribed to Denmark and Verona."""

    def __init__(self, settings: Settings, users: tuple[User, User]) -> None:
        self.store = MessageStore(settings.database)
        self.iago, self.othello = users
        self.desdemona = self.store.users.create_user("desdemona@example.com", "Desdemona")
        both = [self.iago.id, self.othello.id]
        self.denmark, self.verona = self.store.create_stream("Denmark", both), self.store.create_stream("Verona", both)


@pytest.fixture
def world(event_settings: Settings, users: tuple[User, User]) -> World:
    return World(event_settings, users)


async def send(api: Api, **params: Any) -> int:
    status, body = await api.call("POST", "/messages", **params)
    assert status == 200, body
    check(body, SEND_ANSWER)
    return int(body["id"])


async def history(api: Api, narrow: Any = (), **params: Any) -> dict[str, Any]:
    """GET /messages (newest, 100 before, unless told), its answer and every message checked against the spec."""
    if "message_ids" not in params:
        params = {"anchor": "newest", "num_before": 100, "num_after": 0, **params}
    status, body = await api.call("GET", "/messages", narrow=list(narrow), **params)
    assert status == 200, body
    check(body, HISTORY_BY_IDS_ANSWER if "message_ids" in params else HISTORY_ANSWER)
    for i, message in enumerate(body["messages"]):
        check_message(message, where=f"messages[{i}]")
    return body


async def ids(api: Api, narrow: Any, **params: Any) -> list[int]:
    return [m["id"] for m in (await history(api, narrow, **params))["messages"]]


async def error(api: Api, method: str, schema: Schema, code: str, **params: Any) -> dict[str, Any]:
    """A 400 answer with Zulip's ``code``, shaped as ``schema``."""
    status, body = await api.call(method, "/messages", **params)
    assert (status, body.get("code")) == (400, code), (params, body)
    check(body, schema)
    return dict(body)


def test_narrows_select_what_a_zulip_client_asks_for(start_server: StartServer, world: World,
                                                     sender_worker: WorkerThreads) -> None:
    server = start_server()
    iago, othello, desdemona = world.iago, world.othello, world.desdemona

    async def scenario() -> None:
        i, o, d = Api(server, iago), Api(server, othello), Api(server, desdemona)
        gate = await send(i, type="stream", to="Denmark", topic="castle", content="The guards are at the gate")
        hello = await send(o, type="stream", to="Denmark", topic="castle", content="hello @**Iago**")
        ships = await send(i, type="stream", to="Denmark", topic="ships", content="Ships ahoy")
        verona = await send(o, type="stream", to="Verona", topic="castle", content="In Verona")
        psst = await send(o, type="private", to=iago.email, content="psst")
        group = await send(d, type="private", to=f'["{iago.email}", "{othello.email}"]', content="all of us")
        world.store.set_flag(iago.id, [ships], "starred", True)
        cases: list[tuple[list[Any], list[int]]] = [
            ([], [gate, hello, ships, verona, psst, group]),
            ([["stream", "Denmark"]], [gate, hello, ships]),
            ([{"operator": "channel", "operand": world.denmark.id}], [gate, hello, ships]),
            ([["stream", "Denmark"], ["topic", "CASTLE"]], [gate, hello]),  # topics match whatever the case
            ([{"operator": "topic", "operand": "castle"}], [gate, hello, verona]),
            ([["stream", "Denmark"], {"operator": "topic", "operand": "castle", "negated": True}], [ships]),
            ([["sender", othello.email]], [hello, verona, psst]),
            ([{"operator": "sender", "operand": othello.id}], [hello, verona, psst]),
            ([{"operator": "sender", "operand": othello.id, "negated": True}], [gate, ships, group]),
            ([["pm-with", othello.email]], [psst]),
            ([{"operator": "dm", "operand": [othello.id]}], [psst]),
            ([["dm", f"{othello.email},{desdemona.email}"]], [group]),
            ([["is", "dm"]], [psst, group]),
            ([["is", "private"]], [psst, group]),
            ([{"operator": "is", "operand": "dm", "negated": True}], [gate, hello, ships, verona]),
            ([["is", "mentioned"]], [hello]),
            ([["is", "starred"]], [ships]),
            ([["is", "unread"]], [hello, verona, psst, group]),  # what iago sent is read
            ([["search", "guard"]], [gate]),  # "guards": the index stems words
            ([["search", "AHOY ships"]], [ships]),
            ([["stream", "Denmark"], ["search", "castle"]], [gate, hello]),  # topics are searched too
            ([{"operator": "search", "operand": "verona", "negated": True}, ["topic", "castle"]], [gate, hello]),
            ([{"operator": "id", "operand": ships}], [ships]),
            ([["id", str(psst)]], [psst]),
            ([["near", str(ships)], ["stream", "Verona"]], [verona]),  # near only says where to look
        ]
        for narrow, expected in cases:
            assert await ids(i, narrow) == expected, narrow
        [found] = (await history(i, [["search", "guard"]]))["messages"]
        assert found["match_content"] == '<p>The <span class="highlight">guards</span> are at the gate</p>'
        assert found["match_subject"] == "castle"
        # Othello sees his own history only: the private message between Iago and Desdemona is not his.
        assert await ids(o, [["is", "dm"]]) == [psst, group]
        assert await ids(d, [["stream", "Denmark"]]) == []

    run(scenario)


def test_bad_narrows_get_zulip_errors(start_server: StartServer, world: World) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, world.iago)
        params = {"anchor": "newest", "num_before": 10, "num_after": 0}
        for narrow, desc in [
            ([["bogus", "x"]], "unknown operator bogus"),
            ([{"operator": "streams", "operand": "public"}], "unknown operator streams"),
            ([["is", "muted"]], "unknown 'is' operand muted"),
            ([["stream", "Nowhere"]], "unknown channel Nowhere"),
            ([{"operator": "channel", "operand": 999}], "unknown channel 999"),
            ([["sender", "ghost@example.com"]], "unknown user ghost@example.com"),
            ([["dm", "ghost@example.com"]], "unknown user ghost@example.com"),
            ([["id", "seven"]], "Invalid message ID"),
        ]:
            body = await error(api, "GET", BAD_NARROW_ERROR, "BAD_NARROW", narrow=narrow, **params)
            assert (body["msg"], body["desc"]) == (f"Invalid narrow operator: {desc}", desc)
        for narrow in ("not json", '{"operator": "stream"}', '[["stream"]]', '[{"operator": "stream"}]',
                       '[{"operator": "topic", "operand": "x", "extra": 1}]', '[{"operator": "id", "operand": 1.5}]',
                       '[{"operator": "topic", "operand": "x", "negated": "yes"}]', "[" + '["is", "dm"],' * 30 + "]"):
            body = await error(api, "GET", CODED_ERROR, "BAD_REQUEST", narrow=narrow, **params)
            assert "Invalid 'narrow' argument" in body["msg"], narrow

    run(scenario)


def test_anchors_and_counts(start_server: StartServer, world: World, sender_worker: WorkerThreads) -> None:
    server = start_server()

    async def scenario() -> None:
        iago, othello = Api(server, world.iago), Api(server, world.othello)
        sent = [await send(iago, type="stream", to="Denmark", topic="count", content=f"message {n}")
                for n in range(10)]
        denmark = [["stream", "Denmark"]]
        newest = await history(othello, denmark, anchor="newest", num_before=3)
        assert [m["id"] for m in newest["messages"]] == sent[7:]
        assert (newest["anchor"], newest["found_anchor"], newest["found_newest"], newest["found_oldest"],
                newest["history_limited"]) == (LARGER_THAN_MAX_MESSAGE_ID, False, True, False, False)
        oldest = await history(othello, denmark, anchor="oldest", num_before=0, num_after=3)
        assert [m["id"] for m in oldest["messages"]] == sent[:3]
        assert (oldest["anchor"], oldest["found_oldest"], oldest["found_newest"]) == (0, True, False)
        around = await history(othello, denmark, anchor=sent[4], num_before=2, num_after=2)
        assert [m["id"] for m in around["messages"]] == sent[2:7]
        assert (around["anchor"], around["found_anchor"], around["found_oldest"], around["found_newest"]) == (
            sent[4], True, False, False)
        without = await history(othello, denmark, anchor=sent[4], num_before=2, num_after=2, include_anchor=False)
        assert [m["id"] for m in without["messages"]] == [*sent[2:4], *sent[5:7]]
        assert without["found_anchor"] is False
        everything = await history(othello, denmark, anchor=sent[4], num_before=50, num_after=50)
        assert [m["id"] for m in everything["messages"]] == sent
        assert (everything["found_oldest"], everything["found_newest"]) == (True, True)
        world.store.set_flag(world.othello.id, sent[:6], "read", True)
        unread = await history(othello, denmark, anchor="first_unread", num_before=1, num_after=1)
        assert unread["anchor"] == sent[6] and [m["id"] for m in unread["messages"]] == sent[5:8]
        legacy = await othello.call("GET", "/messages", use_first_unread_anchor="true", num_before=0, num_after=0)
        assert [m["id"] for m in legacy[1]["messages"]] == [sent[6]]
        world.store.set_flag(world.othello.id, sent, "read", True)
        nothing_unread = await history(othello, denmark, anchor="first_unread", num_before=2, num_after=2)
        assert nothing_unread["anchor"] == LARGER_THAN_MAX_MESSAGE_ID and nothing_unread["found_newest"] is True
        by_ids = await history(othello, denmark, message_ids=[sent[9], sent[0], 10**6])
        assert [m["id"] for m in by_ids["messages"]] == [sent[0], sent[9]]
        # Zulip's errors: every one names its parameter.
        base = {"anchor": "newest", "num_before": 1, "num_after": 0}
        for missing in base:
            params = {k: v for k, v in base.items() if k != missing}
            body = await error(othello, "GET", MISSING_ARGUMENT_ERROR, "REQUEST_VARIABLE_MISSING", **params)
            assert body["var_name"] == missing
        too_many = await error(othello, "GET", CODED_ERROR, "BAD_REQUEST", **{**base, "num_before": 4000,
                                                                                "num_after": 1001})
        assert too_many["msg"] == "Too many messages requested (maximum 5000)."
        for name, value in [("num_after", "-1"), ("num_before", "5001"), ("anchor", "chocolate"),
                            ("include_anchor", "maybe"), ("apply_markdown", "2")]:
            body = await error(othello, "GET", CODED_ERROR, "BAD_REQUEST", **{**base, name: value})
            assert f"Invalid '{name}' argument" in body["msg"]
        body = await error(othello, "GET", CODED_ERROR, "BAD_REQUEST", message_ids='["x"]')
        assert "Invalid 'message_ids' argument" in body["msg"]
        both = await error(othello, "GET", INCOMPATIBLE_PARAMETERS_ERROR, "BAD_REQUEST", message_ids=[sent[0]],
                           anchor="newest")
        assert both["parameters"] == "message_ids, anchor"

    run(scenario)


def test_message_objects_carry_every_field_of_the_spec(start_server: StartServer, world: World,
                                                       sender_worker: WorkerThreads) -> None:
    server = start_server()
    iago, othello = world.iago, world.othello

    async def scenario() -> None:
        i, o = Api(server, iago), Api(server, othello)
        i.headers["User-Agent"] = "ZulipMobile/27.1 (Android 14)"
        html_queue, markdown_queue = await o.register(apply_markdown=True), await o.register(apply_markdown=False)
        stream = await send(i, type="stream", to="Denmark", topic="castle", content="/me waves *slowly*")
        private = await send(i, type="private", to=othello.email, content="just **you**")
        answer = await send(o, type="private", to=iago.email, content="and you")
        events = await next_events(o, html_queue, 3)
        raw_events = await next_events(o, markdown_queue, 3)
        for event in [*events, *raw_events]:
            check(event, MESSAGE_EVENT)
            check_message(event["message"], EVENT_MESSAGE, where="event.message")
        on_stream, to_othello, from_othello = (e["message"] for e in events)
        assert [m["id"] for m in (on_stream, to_othello, from_othello)] == [stream, private, answer]
        assert on_stream["content"] == "<p>/me waves <em>slowly</em></p>" and on_stream["is_me_message"] is True
        assert raw_events[0]["message"]["content"] == "/me waves *slowly*"
        assert raw_events[0]["message"]["content_type"] == "text/x-markdown"
        assert (on_stream["stream_id"], on_stream["display_recipient"], on_stream["client"]) == (
            world.denmark.id, "Denmark", "ZulipMobile")
        assert to_othello["is_me_message"] is False and "stream_id" not in to_othello
        assert to_othello["display_recipient"] == [
            {"id": u.id, "email": u.email, "full_name": u.full_name, "is_mirror_dummy": False} for u in (iago, othello)]
        # One conversation, one recipient id, whoever writes in it (Zulip since feature level 327).
        assert to_othello["recipient_id"] == from_othello["recipient_id"] != on_stream["recipient_id"]
        assert isinstance(on_stream["timestamp"], int) and on_stream["avatar_url"].startswith("https://")
        assert on_stream["sender_realm_str"] == "" and on_stream["reactions"] == on_stream["submessages"] == []
        # The history shows the same objects, with the reader's flags and the content they ask for.
        html = (await history(o))["messages"]
        assert [m["flags"] for m in html] == [[], [], ["read"]]
        for shown, event in zip(html, events, strict=True):
            assert {k: v for k, v in shown.items() if k not in ("flags", "avatar_url")} == {
                k: v for k, v in event["message"].items() if k != "avatar_url"}
        assert html[0]["avatar_url"] is None  # client_gravatar is true unless told: the client computes it
        raw = (await history(o, apply_markdown="false", client_gravatar="false"))["messages"]
        assert [(m["content"], m["content_type"]) for m in raw] == [
            ("/me waves *slowly*", "text/x-markdown"), ("just **you**", "text/x-markdown"),
            ("and you", "text/x-markdown")]
        assert raw[0]["avatar_url"] == on_stream["avatar_url"]
        # What the chat page sends over its websocket is the "website" client's, as Zulip's web app's is.
        cookie, _ = await login(server, iago)
        ws = await connect(server, cookie)
        await ws_send(ws, {"type": "request", "req_id": 1, "request": {
            "type": "stream", "to": "Denmark", "topic": "castle", "content": "from the page"}})
        response = (await receive(ws, "response"))["response"]
        [from_page] = (await history(o, message_ids=[response["id"]]))["messages"]
        assert from_page["client"] == "website"
        ws.close()

    run(scenario)


def test_sending_as_zulip_documents_it(start_server: StartServer, world: World, sender_worker: WorkerThreads) -> None:
    server = start_server()

    async def scenario() -> None:
        api = Api(server, world.iago)
        by_id = await send(api, type="stream", to=str(world.denmark.id), topic="ids", content="by id")
        in_list = await send(api, type="channel", to=f"[{world.verona.id}]", topic="ids", content="in a list")
        by_name = await send(api, type="channel", to='"Verona"', topic="ids", content="by JSON name")
        assert [m["display_recipient"] for m in (await history(api, [["topic", "ids"]]))["messages"]] == [
            "Denmark", "Verona", "Verona"]
        assert [by_id, in_list, by_name] == sorted([by_id, in_list, by_name])
        body = await error(api, "POST", NON_EXISTING_CHANNEL_NAME_ERROR, "STREAM_DOES_NOT_EXIST", type="stream",
                           to="Nowhere", topic="t", content="x")
        assert (body["msg"], body["stream"]) == ("Channel 'Nowhere' does not exist", "Nowhere")
        body = await error(api, "POST", NON_EXISTING_CHANNEL_ID_ERROR, "STREAM_DOES_NOT_EXIST", type="stream",
                           to="999", topic="t", content="x")
        assert (body["msg"], body["stream_id"]) == ("Channel with ID '999' does not exist", 999)
        full: dict[str, Any] = {"type": "stream", "to": "Denmark", "topic": "t", "content": "x"}
        for name in ("type", "to", "content", "topic"):
            params = {k: v for k, v in full.items() if k != name}
            body = await error(api, "POST", MISSING_ARGUMENT_ERROR, "REQUEST_VARIABLE_MISSING", **params)
            assert (body["var_name"], body["msg"]) == (name, f"Missing '{name}' argument")
        body = await error(api, "POST", MISSING_ARGUMENT_ERROR, "REQUEST_VARIABLE_MISSING", queue_id="q", **full)
        assert body["var_name"] == "local_id"
        for name, value in [("to", '{"a": 1}'), ("to", "[1, 2]"), ("type", "pigeon"), ("local_id", "x" * 101)]:
            body = await error(api, "POST", CODED_ERROR, "BAD_REQUEST", **{**full, "queue_id": "q", "local_id": "1",
                                                                         name: value})
            assert f"Invalid '{name}' argument" in body["msg"], (name, body)
        status, body = await api.call("POST", "/messages", read_by_sender="true", **full)
        assert status == 200 and body["ignored_parameters_unsupported"] == ["read_by_sender"]

    run(scenario)


def test_the_senders_own_queue_gets_its_local_id_back(start_server: StartServer, world: World,
                                                      sender_worker: WorkerThreads) -> None:
    server = start_server()

    async def scenario() -> None:
        iago, othello = Api(server, world.iago), Api(server, world.othello)
        echoing, other_tab, peer = await iago.register(), await iago.register(), await othello.register()
        await send(iago, type="stream", to="Denmark", topic="echo", content="mine", queue_id=echoing,
                   local_id="101.01")
        # A queue id that is not the sender's gets no echo, whoever it is.
        await send(iago, type="private", to=world.othello.email, content="yours", queue_id=peer, local_id="102.01")
        [mine, yours] = await next_events(iago, echoing, 2)
        assert mine["local_message_id"] == "101.01" and "local_message_id" not in yours
        for queue_id, api in ((other_tab, iago), (peer, othello)):
            for event in await next_events(api, queue_id, 2):
                check(event, MESSAGE_EVENT)
                assert "local_message_id" not in event, event
        for event in [mine, yours]:
            check(event, MESSAGE_EVENT)  # the sender_queue_id and local_id the event carried are not shown

    run(scenario)


def test_the_zulip_package_reads_history_and_sends_to_a_stream_id(start_server: StartServer, world: World,
                                                                  sender_worker: WorkerThreads) -> None:
    server = start_server()
    client = zulip.Client(email=world.iago.email, api_key=world.iago.api_key, site=server.url(""))

    def scenario() -> None:
        sent = [client.send_message({"type": "stream", "to": world.denmark.id, "topic": "zulip", "content": f"n{n}"})
                for n in range(4)]
        assert all(r["result"] == "success" for r in sent), sent
        client.send_message({"type": "stream", "to": "Verona", "topic": "zulip", "content": "elsewhere"})
        narrow = [{"operator": "channel", "operand": "Denmark"}, {"operator": "topic", "operand": "zulip"}]
        newest = client.get_messages({"anchor": "newest", "num_before": 2, "num_after": 0, "narrow": narrow})
        check(newest, HISTORY_ANSWER)
        assert [m["content"] for m in newest["messages"]] == ["<p>n2</p>", "<p>n3</p>"]
        older = client.get_messages({"anchor": newest["messages"][0]["id"], "num_before": 5, "num_after": 0,
                                     "include_anchor": False, "narrow": narrow, "apply_markdown": False})
        assert [m["content"] for m in older["messages"]] == ["n0", "n1"] and older["found_oldest"] is True
        assert [m["id"] for m in older["messages"]] == [r["id"] for r in sent[:2]]
        bad = client.get_messages({"anchor": "newest", "num_before": 1, "num_after": 0,
                                   "narrow": [{"operator": "bogus", "operand": "x"}]})
        assert (bad["result"], bad["code"]) == ("error", "BAD_NARROW")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the client blocks; the server runs in its thread
        pool.submit(scenario).result(60)


def test_every_narrow_is_read_through_an_index(event_settings: Settings, world: World) -> None:
    """Each side of the anchor reads no more rows than it returns: the narrow's index serves filter and order."""
    expected = {
        '[["stream", "Denmark"], ["topic", "castle"]]': "SEARCH m USING INDEX messages_by_topic",
        '[["stream", "Denmark"]]': "SEARCH m USING INDEX messages_by_recipient",
        '[["dm", "othello@example.com"]]': "SEARCH m USING INDEX messages_by_recipient",
        '[["is", "unread"]]': "SEARCH um USING INDEX user_messages_unread",
        '[["is", "starred"]]': "SEARCH um USING INDEX user_messages_starred",
        '[["is", "mentioned"]]': "SEARCH um USING INDEX user_messages_mentioned",
        '[["sender", "othello@example.com"]]': "SEARCH m USING INDEX messages_by_sender",
        "[]": "SEARCH um USING INDEX sqlite_autoindex_user_messages_1",
        '[["search", "castle"], ["stream", "Denmark"]]': "SCAN messages_fts VIRTUAL TABLE INDEX",  # matches only
    }
    for narrow, first_step in expected.items():
        plan = world.store.explain(world.iago.id, parse_narrow(json.loads(narrow)))
        assert any(step.startswith(first_step) for step in plan), (narrow, plan)
        scans = [step for step in plan if step.startswith("SCAN") and "VIRTUAL TABLE" not in step]
        assert not scans and not any("TEMP B-TREE" in step for step in plan), (narrow, plan)


#: The tables as releases before the shared schema made them: no recipients, no client, no edit time, reactions
#: without the time they were made, no full-text index.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    full_name TEXT NOT NULL, api_key TEXT NOT NULL, is_active INTEGER NOT NULL DEFAULT 1, date_joined REAL NOT NULL);
CREATE TABLE streams (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    email_token TEXT NOT NULL UNIQUE, date_created REAL NOT NULL);
CREATE TABLE subscriptions (stream_id INTEGER NOT NULL, user_id INTEGER NOT NULL, PRIMARY KEY (stream_id, user_id));
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT UNIQUE, sender_id INTEGER NOT NULL,
    type TEXT NOT NULL, stream_id INTEGER, display_recipient TEXT NOT NULL, subject TEXT NOT NULL,
    content TEXT NOT NULL, rendered_content TEXT NOT NULL, timestamp REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0);
CREATE TABLE user_messages (user_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (user_id, message_id));
CREATE TABLE reactions (message_id INTEGER NOT NULL, user_id INTEGER NOT NULL, reaction_type TEXT NOT NULL,
    emoji_code TEXT NOT NULL, emoji_name TEXT NOT NULL, PRIMARY KEY (message_id, user_id, reaction_type, emoji_code));
INSERT INTO users VALUES (1, 'iago@example.com', 'Iago', 'k1', 1, 0), (2, 'othello@example.com', 'Othello', 'k2', 1, 0);
INSERT INTO streams VALUES (1, 'Denmark', 'token', 0);
INSERT INTO messages VALUES
    (1, 'r1', 1, 'stream', 1, '"Denmark"', 'castle', 'old gate', '<p>old gate</p>', 1.5, 1),
    (2, 'r2', 2, 'private', NULL,
     '[{"id": 2, "email": "othello@example.com", "full_name": "Othello"},
       {"id": 1, "email": "iago@example.com", "full_name": "Iago"}]', '', 'old secret', '<p>old secret</p>', 2.5, 1);
INSERT INTO user_messages VALUES (1, 1, '["read"]'), (2, 1, '[]'), (1, 2, '[]'), (2, 2, '["read"]');
INSERT INTO reactions VALUES (1, 2, 'unicode_emoji', '1f44d', '+1');
"""


def test_a_database_of_an_earlier_release_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE_SCHEMA)
    store = MessageStore(path)

    def found(user_id: int, narrow: list[Any]) -> list[int]:
        answer = store.history(user_id, HistoryQuery(parse_narrow(narrow), num_before=10))
        return [m["id"] for m in answer["messages"]]

    assert found(1, [["search", "gate"]]) == [1] and found(2, [["search", "secret"]]) == [2]
    assert found(1, [["stream", "Denmark"], ["topic", "castle"]]) == [1]
    assert found(1, [["dm", "othello@example.com"]]) == found(2, [["dm", "iago@example.com"]]) == [2]
    [message] = store.history(1, HistoryQuery(parse_narrow([["id", "2"]]), num_before=1))["messages"]
    assert message["timestamp"] == 2 and message["display_recipient"][0]["is_mirror_dummy"] is False
    [message] = store.history(1, HistoryQuery(parse_narrow([["id", "1"]]), num_before=1))["messages"]
    assert message["reactions"] == [{"emoji_name": "+1", "emoji_code": "1f44d", "reaction_type": "unicode_emoji",
                                     "user_id": 2}]
    store.react("r3", 1, 1, {"emoji_name": "tada", "emoji_code": "1f389", "reaction_type": "unicode_emoji"}, True)
    assert [r["emoji_name"] for r in store.get(1).reactions] == ["+1", "tada"]  # type: ignore[union-attr]
    MessageStore(path)  # opening it again changes nothing
    assert found(1, [["search", "gate"]]) == [1]
