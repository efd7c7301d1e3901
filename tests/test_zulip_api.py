"""Zulip's users, streams, subscriptions, presence, typing and register endpoints on the real event server, driven
by the real ``zulip`` package where it has the call, every answer and event checked against tests/zulip_schemas.py."""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import zulip

from eventbus.messages import MessageStore, NewMessage, Stream
from eventbus.processors.queues.analytics import AnalyticsStore
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.tornado_events import rate_limit, send_event
from eventbus.tornado_events.server import ZULIP_FEATURE_LEVEL
from eventbus.users import User
from tests.eventserver import Api, ServerThread, StartServer, run
from tests.test_messages import next_events
from tests.zulip_schemas import (
    CODED_ERROR,
    LEGACY_PRESENCES,
    MISSING_ARGUMENT_ERROR,
    MODERN_PRESENCES,
    NON_EXISTING_CHANNEL_NAME_ERROR,
    OWN_USER_ANSWER,
    REALM_PRESENCE_ANSWER,
    REGISTER_ANSWER,
    SIMPLE_SUCCESS,
    STREAMS_ANSWER,
    SUBSCRIBE_ANSWER,
    SUBSCRIPTION_ADD_EVENT,
    SUBSCRIPTION_PEER_EVENT,
    SUBSCRIPTION_REMOVE_EVENT,
    SUBSCRIPTIONS_ANSWER,
    TYPING_EVENT,
    UNSUBSCRIBE_ANSWER,
    USER_ANSWER,
    USERS_ANSWER,
    Schema,
    check,
)

T = TypeVar("T")


class World:
    """Iago, Othello and Desdemona; Iago and Othello are subscribed to Denmark, Iago alone to Verona."""

    def __init__(self, settings: Settings, users: tuple[User, User]) -> None:
        self.store = MessageStore(settings.database)
        self.iago, self.othello = users
        self.desdemona = self.store.users.create_user("desdemona@example.com", "Desdemona")
        self.denmark = self.store.create_stream("Denmark", [self.iago.id, self.othello.id])
        self.verona = self.store.create_stream("Verona", [self.iago.id])

    def apis(self, server: ServerThread) -> tuple[Api, Api, Api]:
        """Iago's, Othello's and Desdemona's API clients."""
        return Api(server, self.iago), Api(server, self.othello), Api(server, self.desdemona)

    def client(self, server: ServerThread, user: User) -> zulip.Client:
        return zulip.Client(email=user.email, api_key=user.api_key, site=server.url(""))

    def message(self, sender: User, stream: Stream | None, flags: dict[int, list[str]], topic: str = "t") -> int:
        """A message stored as the processor stores it: to ``stream``, or private to the users of ``flags``."""
        users = [{"id": uid, "email": f"{uid}@x", "full_name": str(uid)} for uid in flags]
        return self.store.store(NewMessage(
            request_id=None, sender_id=sender.id, type="stream" if stream else "private", stream=stream,
            display_recipient=stream.name if stream else users, subject=topic if stream else "", content="hi",
            rendered_content="<p>hi</p>", flags=flags)).id


@pytest.fixture
def world(event_settings: Settings, users: tuple[User, User]) -> World:
    return World(event_settings, users)


def blocking(call: Callable[[], T]) -> T:
    """Run a blocking call (the zulip package's) in a thread of its own, bounded in time: the server runs in its."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(60)


async def answer(api: Api, method: str, path: str, schema: Schema, **params: Any) -> dict[str, Any]:
    status, body = await api.call(method, path, **params)
    assert status == 200, body
    check(body, schema)
    return dict(body)


async def refused(api: Api, method: str, path: str, msg: str, code: str = "BAD_REQUEST",
                  schema: Schema | None = None, **params: Any) -> None:
    """A 400 with ``code``, its message holding ``msg``, shaped as ``schema`` (by default the code's)."""
    status, body = await api.call(method, path, **params)
    assert (status, body["code"]) == (400, code) and msg in body["msg"], (params, body)
    check(body, schema or (MISSING_ARGUMENT_ERROR if code == "REQUEST_VARIABLE_MISSING" else CODED_ERROR))


def test_the_zulip_package_reads_users_and_streams(start_server: StartServer, world: World) -> None:
    server = start_server()
    iago = world.client(server, world.iago)
    world.message(world.othello, world.denmark, {world.iago.id: [], world.othello.id: ["read"]})
    world.store.users.deactivate(world.desdemona.id)

    def scenario() -> None:
        me = iago.get_profile()
        check(me, OWN_USER_ANSWER)
        assert (me["user_id"], me["email"], me["full_name"], me["role"]) == (world.iago.id, world.iago.email, "Iago",
                                                                             400)
        assert me["max_message_id"] > 0 and me["date_joined"].startswith(time.strftime("%Y"))
        members = iago.get_members()
        check(members, USERS_ANSWER)
        assert [(m["full_name"], m["is_active"], m["avatar_url"]) for m in members["members"]] == [
            ("Iago", True, None), ("Othello", True, None), ("Desdemona", False, None)]  # client_gravatar: true
        with_avatars = iago.get_members({"client_gravatar": False, "include_custom_profile_fields": True})
        assert with_avatars["members"][1]["avatar_url"].startswith("https://secure.gravatar.com/avatar/")
        assert with_avatars["members"][1]["profile_data"] == {}
        othello = iago.get_user_by_id(world.othello.id)
        check(othello, USER_ANSWER)
        assert othello["user"]["email"] == world.othello.email
        unknown = iago.get_user_by_id(10_000)
        assert (unknown["result"], unknown["code"], unknown["msg"]) == ("error", "BAD_REQUEST", "No such user")
        streams = iago.get_streams()
        check(streams, STREAMS_ANSWER)
        denmark, verona = streams["streams"]
        assert (denmark["name"], denmark["first_message_id"], denmark["is_recently_active"]) == (
            "Denmark", me["max_message_id"], True)
        assert (verona["name"], verona["first_message_id"], verona["is_recently_active"]) == ("Verona", None, False)
        mine = iago.get_subscriptions({"include_subscribers": True})
        check(mine, SUBSCRIPTIONS_ANSWER)
        assert [(s["name"], s["subscribers"]) for s in mine["subscriptions"]] == [
            ("Denmark", [world.iago.id, world.othello.id]), ("Verona", [world.iago.id])]
        othellos = world.client(server, world.othello).get_subscriptions()
        assert [s["name"] for s in othellos["subscriptions"]] == ["Denmark"]
        assert "subscribers" not in othellos["subscriptions"][0]
        # Othello asks only for what he is subscribed to.
        assert [s["name"] for s in world.client(server, world.othello).get_streams(include_public=False)[
            "streams"]] == ["Denmark"]
        settings = iago.get_server_settings()
        assert settings["zulip_feature_level"] == ZULIP_FEATURE_LEVEL == 372

    blocking(scenario)


def test_subscribing_and_unsubscribing_send_subscription_events(start_server: StartServer, world: World) -> None:
    server = start_server()
    iago, othello, desdemona = world.iago, world.othello, world.desdemona

    async def scenario() -> None:
        i, o, d = apis = world.apis(server)
        qi, qo, qd = [await api.register(event_types=["subscription"]) for api in apis]
        # When Desdemona subscribes to Verona and to Rome, which does not exist yet,
        body = await answer(d, "POST", "/users/me/subscriptions", SUBSCRIBE_ANSWER,
                            subscriptions=[{"name": "Verona"}, {"name": "Rome", "description": "eternal"}])
        assert (body["subscribed"], body["already_subscribed"]) == ({str(desdemona.id): ["Verona", "Rome"]}, {})
        # then her queue gets both subscriptions with their subscribers,
        [added] = await next_events(d, qd, 1)
        check(added, SUBSCRIPTION_ADD_EVENT)
        assert [(s["name"], s["subscribers"]) for s in added["subscriptions"]] == [
            ("Verona", [iago.id, desdemona.id]), ("Rome", [desdemona.id])]
        # and everyone else hears who joined which stream.
        rome = world.store.get_stream("Rome")
        assert rome is not None
        for api, queue in ((i, qi), (o, qo)):
            peers = await next_events(api, queue, 2)
            for event in peers:
                check(event, SUBSCRIPTION_PEER_EVENT)
            assert [(e["op"], e["stream_ids"], e["user_ids"]) for e in peers] == [
                ("peer_add", [world.verona.id], [desdemona.id]), ("peer_add", [rome.id], [desdemona.id])]
        # Subscribing again changes nothing and says so; Iago may subscribe Othello too (by email or id).
        again = await answer(d, "POST", "/users/me/subscriptions", SUBSCRIBE_ANSWER, subscriptions=[{"name": "Rome"}])
        assert (again["subscribed"], again["already_subscribed"]) == ({}, {str(desdemona.id): ["Rome"]})
        both = await answer(i, "POST", "/users/me/subscriptions", SUBSCRIBE_ANSWER, subscriptions=[{"name": "Rome"}],
                            principals=[othello.email])
        assert both["subscribed"] == {str(othello.id): ["Rome"]}
        # Desdemona leaves Rome: her queue hears it, the others too.
        gone = await answer(d, "DELETE", "/users/me/subscriptions", UNSUBSCRIBE_ANSWER,
                            subscriptions=["Rome", "Denmark"])
        assert (gone["removed"], gone["not_removed"]) == (["Rome"], ["Denmark"])
        removed = (await next_events(d, qd, 3))[-1]
        check(removed, SUBSCRIPTION_REMOVE_EVENT)
        assert removed["subscriptions"] == [{"stream_id": rome.id, "name": "Rome"}]
        peer_remove = (await next_events(i, qi, 4))[-1]
        check(peer_remove, SUBSCRIPTION_PEER_EVENT)
        assert (peer_remove["op"], peer_remove["user_ids"]) == ("peer_remove", [desdemona.id])
        # Mistakes are refused, naming what is wrong.
        await refused(d, "DELETE", "/users/me/subscriptions", "Channel 'Atlantis' does not exist",
                      "STREAM_DOES_NOT_EXIST", NON_EXISTING_CHANNEL_NAME_ERROR, subscriptions=["Atlantis"])
        await refused(d, "DELETE", "/users/me/subscriptions", "Insufficient permission",
                      subscriptions=["Verona"], principals=[iago.id])
        await refused(d, "POST", "/users/me/subscriptions", "Missing 'subscriptions' argument",
                      "REQUEST_VARIABLE_MISSING")
        await refused(d, "POST", "/users/me/subscriptions", "Invalid 'subscriptions' argument",
                      subscriptions=[{"name": "bad*name"}])
        await refused(d, "POST", "/users/me/subscriptions", "Invalid 'principals' argument",
                      subscriptions=[{"name": "Verona"}], principals="nobody")
        await refused(d, "POST", "/users/me/subscriptions", "No such user",
                      subscriptions=[{"name": "Verona"}], principals=["ghost@example.com"])
        await refused(d, "POST", "/users/me/subscriptions", "Invalid 'invite_only' argument",
                      subscriptions=[{"name": "Secret"}], invite_only=True)
        # What eventbus does not implement is named, not silently dropped.
        ignored = await answer(d, "POST", "/users/me/subscriptions", SUBSCRIBE_ANSWER,
                               subscriptions=[{"name": "Verona"}], announce=True, is_web_public=False)
        assert ignored["ignored_parameters_unsupported"] == ["announce", "is_web_public"]

    run(scenario)


def test_the_zulip_package_subscribes_and_unsubscribes(start_server: StartServer, world: World) -> None:
    server = start_server()
    othello = world.client(server, world.othello)

    def scenario() -> None:
        added = othello.add_subscriptions([{"name": "Verona"}])
        check(added, SUBSCRIBE_ANSWER)
        assert added["subscribed"] == {str(world.othello.id): ["Verona"]}
        assert [s["name"] for s in othello.get_subscriptions()["subscriptions"]] == ["Denmark", "Verona"]
        removed = othello.remove_subscriptions(["Verona"])
        check(removed, UNSUBSCRIBE_ANSWER)
        assert removed["removed"] == ["Verona"]
        assert [s["name"] for s in othello.get_subscriptions()["subscriptions"]] == ["Denmark"]

    blocking(scenario)


def test_typing_notifications_reach_the_recipients(start_server: StartServer, world: World) -> None:
    server = start_server()
    iago, othello = world.iago, world.othello

    async def scenario() -> None:
        i, o, d = apis = world.apis(server)
        qi, qo, qd = [await api.register(event_types=["typing"]) for api in apis]
        # Iago, writing to Othello with the zulip package, starts and stops typing:
        client = world.client(server, iago)
        for op in ("start", "stop"):
            check(blocking(functools.partial(client.set_typing_status, {"op": op, "to": [othello.id]})),
                  SIMPLE_SUCCESS)
        # both of them are told, the sender too (his other clients), with both as recipients; Desdemona is not.
        for api, queue in ((o, qo), (i, qi)):
            events = await next_events(api, queue, 2)
            for event in events:
                check(event, TYPING_EVENT)
            assert [e["op"] for e in events] == ["start", "stop"]
            assert events[0]["sender"] == {"user_id": iago.id, "email": iago.email}
            assert events[0]["recipients"] == [{"user_id": iago.id, "email": iago.email},
                                               {"user_id": othello.id, "email": othello.email}]
        # Othello types in Denmark: its subscribers (Iago and himself) are told where.
        await answer(o, "POST", "/typing", SIMPLE_SUCCESS, op="start", type="channel", stream_id=world.denmark.id,
                     topic="plans")
        stream_typing = (await next_events(i, qi, 3))[-1]
        check(stream_typing, TYPING_EVENT)
        assert (stream_typing["message_type"], stream_typing["stream_id"], stream_typing["topic"]) == (
            "stream", world.denmark.id, "plans")
        assert "recipients" not in stream_typing
        _, nothing = await d.events(qd, dont_block=True)
        assert nothing["events"] == []
        # Mistakes are refused, naming what is wrong.
        await refused(i, "POST", "/typing", "Missing 'op' argument", "REQUEST_VARIABLE_MISSING", to=[othello.id])
        await refused(i, "POST", "/typing", "Invalid 'op' argument", op="maybe", to=[othello.id])
        await refused(i, "POST", "/typing", "Invalid 'type' argument", op="start", type="private", to=[othello.id])
        await refused(i, "POST", "/typing", "Missing 'to' argument", "REQUEST_VARIABLE_MISSING", op="start")
        await refused(i, "POST", "/typing", "Invalid 'to' argument", op="start", to="othello")
        await refused(i, "POST", "/typing", "Invalid user ID 999", op="start", to=[999])
        await refused(i, "POST", "/typing", "Missing channel ID", op="start", type="stream", topic="t")
        await refused(i, "POST", "/typing", "Missing topic", op="start", type="stream", stream_id=world.denmark.id)
        await refused(i, "POST", "/typing", "Invalid channel ID", op="start", type="stream", stream_id=999, topic="t")

        # A user who used up his typing notifications is told to wait.
        def use_up() -> None:
            while not server.server.rate_limits.acquire(rate_limit.TYPING, othello.id):
                pass

        server.call(use_up)
        status, body = await o.call("POST", "/typing", op="start", to=[iago.id])
        assert (status, body["code"]) == (429, "RATE_LIMIT_HIT") and body["retry-after"] > 0

    run(scenario)


def test_register_gives_the_initial_state_of_what_it_fetches(start_server: StartServer, world: World,
                                                             event_settings: Settings) -> None:
    server = start_server()
    iago, othello, desdemona = world.iago, world.othello, world.desdemona
    read, unread_ids = [world.message(iago, world.denmark, {iago.id: ["read"], othello.id: ["read"]})], []
    unread_ids.append(world.message(othello, world.denmark, {iago.id: ["mentioned"], othello.id: ["read"]}, "plans"))
    unread_ids.append(world.message(othello, None, {iago.id: [], othello.id: ["read"]}))
    unread_ids.append(world.message(desdemona, None, {iago.id: [], othello.id: [], desdemona.id: ["read"]}))
    unread_ids.append(world.message(othello, world.denmark, {iago.id: [], othello.id: ["read"]}, "plans"))
    presence = AnalyticsStore(event_settings.database)
    now = int(time.time())
    presence.set_presence(othello.id, "active", "website", now)
    presence.set_presence(desdemona.id, "idle", "website", now - 30)
    presence.set_presence(iago.id, "offline", "website", now)
    rome = world.store.create_stream("Rome", [othello.id])
    world.store.unsubscribe([world.verona.id], [iago.id])  # he has no message there: never subscribed, for Zulip

    async def scenario() -> None:
        i = Api(server, iago)
        every = ["message", "update_message_flags", "presence", "realm_user", "subscription", "typing"]
        state = await answer(i, "POST", "/register", REGISTER_ANSWER, fetch_event_types=every, event_types=["message"],
                             include_subscribers=True, client_capabilities={"notification_settings_null": True},
                             client_gravatar=False)
        assert state["ignored_parameters_unsupported"] == ["client_capabilities", "client_gravatar"]
        assert state["zulip_feature_level"] == 372 and state["max_message_id"] == unread_ids[-1]
        check({"presences": state["presences"]}, Schema({"presences": LEGACY_PRESENCES}))
        assert set(state["presences"]) == {othello.email, desdemona.email}  # Iago is offline
        assert state["presences"][othello.email]["aggregated"] == {"client": "website", "status": "active",
                                                                  "timestamp": now}
        assert [u["full_name"] for u in state["realm_users"]] == ["Iago", "Othello", "Desdemona"]
        assert [(s["name"], s["subscribers"]) for s in state["subscriptions"]] == [
            ("Denmark", [iago.id, othello.id])]
        assert [s["name"] for s in state["never_subscribed"]] == ["Rome", "Verona"]
        assert state["never_subscribed"][0]["subscribers"] == [othello.id] and state["unsubscribed"] == []
        unread = state["unread_msgs"]
        assert unread["count"] == 4 and unread["mentions"] == [unread_ids[0]] and not unread["old_unreads_missing"]
        assert unread["streams"] == [{"stream_id": world.denmark.id, "topic": "plans",
                                      "unread_message_ids": [unread_ids[0], unread_ids[3]]}]
        assert unread["pms"] == [{"other_user_id": othello.id, "sender_id": othello.id,
                                  "unread_message_ids": [unread_ids[1]]}]
        assert unread["huddles"] == [{"user_ids_string": f"{iago.id},{othello.id},{desdemona.id}",
                                      "unread_message_ids": [unread_ids[2]]}]
        assert read[0] not in unread["mentions"]
        # Slim presence: by user id, in the modern format.
        slim = await answer(i, "POST", "/register", REGISTER_ANSWER, fetch_event_types=["presence"], slim_presence=True)
        check({"presences": slim["presences"]}, Schema({"presences": MODERN_PRESENCES}))
        assert slim["presences"] == {str(othello.id): {"active_timestamp": now, "idle_timestamp": now},
                                     str(desdemona.id): {"active_timestamp": 0, "idle_timestamp": now - 30}}
        assert "realm_users" not in slim and "max_message_id" not in slim
        # Without fetch_event_types, the state of the event types, only: no realm_users for a message queue.
        only = await answer(i, "POST", "/register", REGISTER_ANSWER, event_types=["message"])
        assert "max_message_id" in only and not {"realm_users", "presences", "subscriptions", "unread_msgs"} & set(only)
        # Left unsaid, every type the server serves.
        assert {"max_message_id", "presences", "realm_users", "subscriptions", "unread_msgs"} <= set(
            await answer(i, "POST", "/register", REGISTER_ANSWER))
        await refused(i, "POST", "/register", "Invalid 'fetch_event_types' argument", fetch_event_types="message")
        # The presence of everyone at once, as GET /realm/presence answers too.
        realm = await answer(i, "GET", "/realm/presence", REALM_PRESENCE_ANSWER)
        assert realm["presences"] == state["presences"]
        assert rome.id in {s["stream_id"] for s in state["never_subscribed"]}

    run(scenario)


def test_the_zulip_package_registers_with_fetch_event_types(start_server: StartServer, world: World) -> None:
    server = start_server()
    client = world.client(server, world.othello)

    def scenario() -> None:
        state = client.register(event_types=["message", "subscription"], fetch_event_types=["realm_user"])
        check(state, REGISTER_ANSWER)
        assert [u["email"] for u in state["realm_users"]] == [world.iago.email, world.othello.email,
                                                              world.desdemona.email]
        assert "subscriptions" not in state and "max_message_id" not in state

    blocking(scenario)


def test_event_narrows_by_sender_and_is(start_server: StartServer, world: World, event_broker: MemoryBroker) -> None:
    server = start_server()
    iago, othello = world.iago, world.othello

    def message(n: int, sender: User, kind: str = "stream") -> dict[str, Any]:
        return {"type": "message", "message": {
            "id": n, "type": kind, "sender_id": sender.id, "sender_email": sender.email.upper(),
            "display_recipient": "Denmark" if kind == "stream" else [], "subject": "t", "content": "c",
            "rendered_content": "<p>c</p>"}}

    async def scenario() -> None:
        i = Api(server, iago)
        narrows = {"sender": [["sender", othello.email]], "dm": [["is", "dm"]], "private": [["is", "private"]],
                   "starred": [["is", "starred"]], "mentioned": [["is", "mentioned"]],
                   "alerted": [["is", "alerted"]], "channel": [["channel", "denmark"], ["sender", iago.email]]}
        queues = {name: await i.register(narrow=narrow) for name, narrow in narrows.items()}
        everything = await i.register()
        for event, flags in [
                (message(1, othello), []), (message(2, iago, "private"), []), (message(3, iago), ["starred"]),
                (message(4, iago), ["stream_wildcard_mentioned"]), (message(5, iago), ["has_alert_word"])]:
            send_event(event_broker, event, [{"id": iago.id, "flags": flags}])
        expected = {"sender": [1], "dm": [2], "private": [2], "starred": [3], "mentioned": [4], "alerted": [5],
                    "channel": [3, 4, 5]}
        await next_events(i, everything, 5)  # every event has reached every queue
        for name, ids in expected.items():
            _, body = await i.events(queues[name], dont_block=True)
            assert [e["message"]["id"] for e in body["events"]] == ids, name
        await refused(i, "POST", "/register", "unknown 'is' operand 'unread'", narrow=[["is", "unread"]])
        await refused(i, "POST", "/register", "unknown operator 'search'", narrow=[["search", "x"]])

    run(scenario)
