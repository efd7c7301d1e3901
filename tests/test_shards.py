"""Several Tornado shards behind nginx: users on both, reached through the proxy as clients reach them.

The cluster tests run two real ``eventbus runtornado --shard N`` processes on
RabbitMQ, Debian's nginx with the configuration ``eventbus nginx_conf``
writes, and the workers a scenario needs. User ``n`` belongs to shard
``n % 2``: users 1 and 3 to shard 1, users 2 and 4 to shard 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.parse
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import zulip
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from eventbus import codec
from eventbus.errors import ConfigurationError
from eventbus.messages import MessageStore
from eventbus.queue import MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from eventbus.sharding import Sharding
from eventbus.tornado_events import send_event
from eventbus.users import User, UserStore
from tests.conftest import EVENT_SECRET, until
from tests.eventserver import Api, StartServer, run
from tests.shards import ShardCluster, require_nginx
from tests.workers import run_cli

# -- the rule and the routing, without processes ------------------------------------------


def test_users_belong_to_their_id_modulo_the_shards_unless_moved() -> None:
    sharding = Sharding.parse("127.0.0.1:9800, 127.0.0.1:9801", "7=0")
    assert [sharding.shard_for(user) for user in (1, 2, 3, 4, 7)] == [1, 0, 1, 0, 0]
    assert sharding.notify_queue(1) == "notify_tornado_1" and sharding.return_queue(0) == "tornado_return_0"
    queue_id = sharding.new_queue_id(1)
    assert queue_id.startswith("1:") and sharding.shard_of_queue(queue_id) == 1
    assert sharding.shard_of_queue("2:abc") is None and sharding.shard_of_queue("abc") is None
    single = Sharding.parse("127.0.0.1:9800")  # one shard: the names of a single process
    assert single.notify_queue(0) == "notify_tornado" and ":" not in single.new_queue_id(0)


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("EVENTBUS_TORNADO_SHARDS", "127.0.0.1", "EVENTBUS_TORNADO_SHARDS"),
    ("EVENTBUS_TORNADO_SHARD_OVERRIDES", "7=2", "EVENTBUS_TORNADO_SHARD_OVERRIDES"),
    ("EVENTBUS_TORNADO_SHARD", "2", "EVENTBUS_TORNADO_SHARD"),
    ("EVENTBUS_TRUSTED_PROXIES", "nginx.local", "EVENTBUS_TRUSTED_PROXIES"),
])
def test_a_bad_sharding_setting_is_named(tmp_path: Any, variable: str, value: str, named: str) -> None:
    env = {"EVENTBUS_SECRETS_FILE": str(tmp_path / "none"), "EVENTBUS_TORNADO_SHARDS": "127.0.0.1:1,127.0.0.1:2",
           variable: value}
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_send_event_publishes_one_notice_per_shard_and_a_deactivation_to_every_shard(
        event_settings: Settings) -> None:
    broker = MemoryBroker(event_settings.replace(sharding=Sharding.parse("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3")))
    send_event(broker, {"type": "custom"}, [1, 4, 2, {"id": 7, "flags": []}])
    # Users 1, 4 and 7 are shard 1's, user 2 shard 2's: one notice each, none for shard 0.
    assert [broker.queue_info(f"notify_tornado_{n}").depth for n in range(3)] == [0, 1, 1]
    deactivated = {"type": "realm_user", "op": "update", "person": {"user_id": 4, "is_active": False}}
    send_event(broker, deactivated, [4])
    assert [broker.queue_info(f"notify_tornado_{n}").depth for n in range(3)] == [1, 2, 2]


def test_forwarded_for_is_believed_from_a_trusted_proxy_only(start_server: StartServer,
                                                            users: tuple[User, User]) -> None:
    """The internal endpoint takes loopback callers: a client claiming to be elsewhere is believed only when
    the claim comes from the proxy, and a client cannot pass for loopback through it either."""
    async def notify(trusted: tuple[str, ...]) -> int:
        server = start_server(trusted_proxies=trusted)
        data = json.dumps({"event": {"type": "custom"}, "users": [users[0].id]})
        body = urllib.parse.urlencode({"data": data, "secret": EVENT_SECRET})
        response = await AsyncHTTPClient().fetch(
            server.url("/api/internal/notify_tornado"), method="POST", body=body, raise_error=False,
            headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"})
        return response.code

    async def scenario() -> None:
        assert await notify(()) == 200  # no proxy: the headers are not read
        assert await notify(("10.1.2.3",)) == 200  # a proxy elsewhere: not read from this peer
        assert await notify(("127.0.0.1",)) == 401  # from the proxy: the client is 203.0.113.9, not loopback

    run(scenario)


# -- shards behind nginx ------------------------------------------------------------------


@pytest.fixture
def people(settings: Settings) -> list[User]:
    """Users 1 to 4, subscribed to the stream Denmark."""
    store = UserStore(settings.database)
    made = [store.create_user(f"{name}@example.com", name.title()) for name in ("iago", "othello", "cordelia",
                                                                                "desdemona")]
    MessageStore(settings.database).create_stream("Denmark", [user.id for user in made])
    assert [user.id for user in made] == [1, 2, 3, 4]
    return made


@pytest.fixture
def cluster(settings: Settings, broker: RabbitMQBroker, people: list[User]) -> Iterator[ShardCluster]:
    require_nginx()
    shards = ShardCluster(settings)
    shards.purge(broker)
    yield shards
    shards.stop()


@pytest.fixture
def producer(cluster: ShardCluster) -> Iterator[RabbitMQBroker]:
    """A producer with the shards' settings: send_event routes."""
    broker = RabbitMQBroker(cluster.settings)
    yield broker
    broker.close()


async def poll(api: Api, queue_id: str, last_event_id: int = -1) -> list[dict[str, Any]]:
    """The events of one long-poll, heartbeats left out."""
    status, body = await api.events(queue_id, last_event_id)
    assert status == 200, body
    return [event for event in body["events"] if event["type"] != "heartbeat"]


def test_register_long_poll_and_delete_reach_the_users_shard(cluster: ShardCluster, people: list[User],
                                                            producer: RabbitMQBroker) -> None:
    cluster.start()

    async def scenario() -> None:
        apis = [Api(cluster, user) for user in people]
        queues = [await api.register(event_types=["custom"]) for api in apis]
        # Each queue lives on its user's shard, whichever shard nginx handed the register to.
        assert [queue.split(":")[0] for queue in queues] == ["1", "0", "1", "0"]
        polls = [asyncio.ensure_future(poll(api, queue)) for api, queue in zip(apis, queues, strict=True)]
        await asyncio.sleep(0)  # the polls are sent; whether held or not, each gets the one event
        await asyncio.get_running_loop().run_in_executor(
            None, send_event, producer, {"type": "custom", "n": 1}, [user.id for user in people])
        answers = await asyncio.wait_for(asyncio.gather(*polls), 20)
        assert [[event["n"] for event in events] for events in answers] == [[1], [1], [1], [1]]
        # The zulip client sends DELETE's queue_id in the body, where nginx cannot read it: handed over.
        for api, queue in zip(apis, queues, strict=True):
            status, body = await api.call("DELETE", "/events", queue_id=queue)
            assert status == 200, body
            status, body = await api.events(queue, 0, dont_block=True)
            assert status == 400 and body["code"] == "BAD_EVENT_QUEUE_ID"

    run(scenario)


def test_the_zulip_client_gets_a_stream_message_on_both_shards_once(cluster: ShardCluster,
                                                                    people: list[User]) -> None:
    cluster.start("message_sender")
    clients = [zulip.Client(email=user.email, api_key=user.api_key, site=cluster.url("")) for user in people]
    queues = [client.register(event_types=["message"]) for client in clients]
    assert {queue["queue_id"].split(":")[0] for queue in queues} == {"0", "1"}
    sent = clients[0].send_message({"type": "stream", "to": "Denmark", "topic": "shards", "content": "hello"})
    assert sent["result"] == "success", sent
    for client, queue in zip(clients, queues, strict=True):
        got = client.get_events(queue_id=queue["queue_id"], last_event_id=-1)
        messages = [event["message"]["id"] for event in got["events"] if event["type"] == "message"]
        assert messages == [sent["id"]]
        again = client.get_events(queue_id=queue["queue_id"], last_event_id=got["events"][-1]["id"],
                                  dont_block=True)
        assert [event for event in again["events"] if event["type"] == "message"] == []
        assert client.deregister(queue["queue_id"])["result"] == "success"


#: Held polls through nginx per shard: more than nginx would keep alive to a shard if it kept the 64 of old.
HELD_PER_SHARD = 90


def nginx_connections_to_shards(cluster: ShardCluster) -> set[int]:
    """The sockets (by inode) nginx's workers have open to the shards, from /proc: what the shards are asked on."""
    assert cluster.nginx is not None
    master = cluster.nginx.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    owned = set()
    for worker in workers:
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            with contextlib.suppress(OSError):  # a socket closed meanwhile
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owned.add(int(target[8:-1]))
    shard_ports = {f"{port:04X}" for port in cluster.ports}
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].split(":")[1] in shard_ports and fields[3] == "01":  # to a shard, ESTABLISHED
            established.add(int(fields[9]))
    return owned & established


def test_answered_polls_keep_their_connections_to_the_shards(cluster: ShardCluster, people: list[User],
                                                             producer: RabbitMQBroker) -> None:
    """A shard holding thousands of polls must not see nginx close and reopen a connection per answered poll."""
    cluster.start()

    async def scenario() -> None:
        apis = [Api(cluster, user) for user in people]
        for api in apis:  # every poll at once, not the client's default of 10
            api.http = AsyncHTTPClient(force_instance=True, max_clients=4 * HELD_PER_SHARD)
        per_user = 2 * HELD_PER_SHARD // len(apis)
        queues = [(api, await api.register(event_types=["custom"])) for api in apis for _ in range(per_user)]

        async def hold_all(last_event_id: int) -> tuple[list[asyncio.Task[list[dict[str, Any]]]], set[int]]:
            polls = [asyncio.ensure_future(poll(api, queue, last_event_id)) for api, queue in queues]
            await until(lambda: len(nginx_connections_to_shards(cluster)) >= len(queues), 20,
                        "every poll to be held through nginx")
            return polls, nginx_connections_to_shards(cluster)

        # Given a poll of each queue held through nginx,
        polls, first = await hold_all(-1)
        # when an event answers them all and each client polls again,
        await asyncio.get_running_loop().run_in_executor(
            None, send_event, producer, {"type": "custom", "n": 1}, [user.id for user in people])
        answers = await asyncio.wait_for(asyncio.gather(*polls), 20)
        assert all([event["n"] for event in events] == [1] for events in answers)
        polls, second = await hold_all(answers[0][-1]["id"])
        # then the second polls went over the connections the first ones were answered on: none was closed.
        assert first <= second, f"nginx closed {len(first - second)} of its {len(first)} connections to the shards"
        await asyncio.get_running_loop().run_in_executor(
            None, send_event, producer, {"type": "custom", "n": 2}, [user.id for user in people])
        await asyncio.wait_for(asyncio.gather(*polls), 20)

    run(scenario)


async def login(cluster: ShardCluster, user: User) -> str:
    """Log in through nginx; the Cookie header to send."""
    response = await AsyncHTTPClient().fetch(cluster.url("/accounts/login"), method="POST",
                                             body=f"email={user.email}&api_key={user.api_key}")
    jar = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())


async def open_socket(cluster: ShardCluster, cookie: str, query: str = "") -> WebSocketClientConnection:
    request = HTTPRequest(f"ws://127.0.0.1:{cluster.port}/json/events/websocket{query}",
                          headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{cluster.port}"})
    return await websocket_connect(request)


async def frame(ws: WebSocketClientConnection, *kinds: str) -> dict[str, Any]:
    """The next frame of one of ``kinds`` (others are skipped)."""
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 15)
        assert raw is not None, f"the socket closed waiting for {kinds}"
        got = codec.decode(raw)
        if got["type"] in kinds:
            return dict(got)


async def send(ws: WebSocketClientConnection, data: dict[str, Any]) -> None:
    await ws.write_message(codec.encode(data).decode())


def test_websocket_delivery_resume_and_submission_on_the_users_shard(cluster: ShardCluster, people: list[User],
                                                                     producer: RabbitMQBroker) -> None:
    cluster.start("message_sender")
    iago = people[0]  # shard 1

    async def publish(n: int) -> None:
        await asyncio.get_running_loop().run_in_executor(None, send_event, producer, {"type": "custom", "n": n},
                                                         [iago.id])

    async def scenario() -> None:
        cookie = await login(cluster, iago)
        ws = await open_socket(cluster, cookie)
        await send(ws, {"type": "register", "event_types": ["custom"]})
        answer = await frame(ws, "registered", "error")
        if answer["type"] == "error":  # nginx picked the other shard: it says which is iago's
            assert answer["code"] == "WRONG_SHARD" and answer["shard"] == 1, answer
            ws.close()
            ws = await open_socket(cluster, cookie, "?shard=1")
            await send(ws, {"type": "register", "event_types": ["custom"]})
            answer = await frame(ws, "registered")
        queue_id = answer["queue_id"]
        assert queue_id.startswith("1:")
        await publish(1)
        assert [e["n"] for e in (await frame(ws, "events"))["events"]] == [1]
        await send(ws, {"type": "ack", "last_event_id": 0})
        # Submitted on shard 1: message_sender answers on shard 1's return queue.
        await send(ws, {"type": "request", "req_id": 5, "request": {
            "type": "stream", "to": "Denmark", "topic": "ws", "content": "through the socket"}})
        response = await frame(ws, "response")
        assert response["req_id"] == 5 and response["response"]["result"] == "success", response
        ws.close()
        await publish(2)
        # Resumed by queue id: nginx routes the socket by it, and only what was not acknowledged comes.
        ws = await open_socket(cluster, cookie, f"?queue_id={urllib.parse.quote(queue_id)}")
        await send(ws, {"type": "attach", "queue_id": queue_id, "last_event_id": 0})
        await frame(ws, "attached")
        assert [e["n"] for e in (await frame(ws, "events"))["events"]] == [2]
        ws.close()

    run(scenario)


def test_a_logout_on_one_shard_ends_the_session_on_the_other_at_once(cluster: ShardCluster,
                                                                     people: list[User]) -> None:
    """Both shards trust a session (each cached it for a minute); a logout on one reaches the other through its
    notify queue: the copied cookie is refused there within seconds, not when the cache lets it go."""
    cluster.start()
    iago = people[0]

    async def as_browser(shard: int, path: str, cookie: str, csrf: str) -> HTTPResponse:
        origin = f"http://127.0.0.1:{cluster.ports[shard]}"
        return await AsyncHTTPClient().fetch(cluster.shard_url(shard, path), method="POST", body="", headers={
            "Cookie": cookie, "X-CSRFToken": csrf, "Origin": origin}, raise_error=False)

    async def scenario() -> None:
        response = await AsyncHTTPClient().fetch(cluster.shard_url(0, "/accounts/login"), method="POST",
                                                 body=f"email={iago.email}&api_key={iago.api_key}")
        jar = SimpleCookie()
        for header in response.headers.get_list("Set-Cookie"):
            jar.load(header)
        cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())
        csrf = codec.decode(response.body)["csrf_token"]
        for shard in (0, 1):  # each shard checks the session once, and caches it
            assert (await as_browser(shard, "/json/register", cookie, csrf)).code == 200
        assert (await as_browser(0, "/accounts/logout", cookie, csrf)).code == 200
        deadline = time.monotonic() + 10
        while (await as_browser(1, "/json/register", cookie, csrf)).code != 401:
            assert time.monotonic() < deadline, "shard 1 still takes the session 10 s after the logout"
            await asyncio.sleep(0.1)

    run(scenario)


def test_presence_crosses_shards(cluster: ShardCluster, people: list[User]) -> None:
    cluster.start("user_presence")
    iago, othello = people[0], people[1]  # shards 1 and 0

    async def scenario() -> None:
        watcher = Api(cluster, othello)
        queue = await watcher.register(event_types=["presence"])
        assert queue.startswith("0:")
        status, body = await Api(cluster, iago).call("POST", "/users/me/presence", status="active")
        assert status == 200, body
        [presence] = await poll(watcher, queue)
        assert presence["user_id"] == iago.id and presence["email"] == iago.email

    run(scenario)


def test_typing_crosses_shards(cluster: ShardCluster, people: list[User]) -> None:
    cluster.start()
    iago, othello = people[0], people[1]  # shards 1 and 0

    async def scenario() -> None:
        # Given Othello's client on shard 0, when Iago (shard 1) starts typing to him through nginx,
        watcher = Api(cluster, othello)
        queue = await watcher.register(event_types=["typing"])
        assert queue.startswith("0:")
        status, body = await Api(cluster, iago).call("POST", "/typing", op="start", to=[othello.id])
        assert status == 200, body
        # then Othello's client on the other shard is told who is typing.
        [typing] = await poll(watcher, queue)
        assert (typing["op"], typing["sender"]["user_id"]) == ("start", iago.id)

    run(scenario)


async def stop_shard_1_while_shard_0_polls(cluster: ShardCluster, people: list[User], producer: RabbitMQBroker,
                                           sig: signal.Signals) -> tuple[Api, str]:
    """Iago (shard 1) and Othello (shard 0) register; shard 1 stops by ``sig`` while Othello's poll is held, and
    an event for both is sent: Othello's poll gets it, shard 0 never noticed. Iago's Api and queue id."""
    iago, othello = people[0], people[1]
    stopped, stays = Api(cluster, iago), Api(cluster, othello)
    stopped_queue = await stopped.register(event_types=["custom"])
    stays_queue = await stays.register(event_types=["custom"])
    held = asyncio.ensure_future(poll(stays, stays_queue))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, cluster.stop_shard, 1, sig)
    await loop.run_in_executor(None, send_event, producer, {"type": "custom", "n": 1}, [iago.id, othello.id])
    assert [event["n"] for event in await asyncio.wait_for(held, 20)] == [1]
    return stopped, stopped_queue


def test_graceful_restart_of_one_shard_touches_only_its_users(cluster: ShardCluster, people: list[User],
                                                              producer: RabbitMQBroker) -> None:
    cluster.start()

    async def scenario() -> None:
        moved, moved_queue = await stop_shard_1_while_shard_0_polls(cluster, people, producer, signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start_shard, 1)
        # Shard 1's queue came back with a restart event, and the event that waited in RabbitMQ.
        status, body = await moved.events(moved_queue, -1)
        events = body["events"]
        while not any(event["type"] == "custom" for event in events):
            status, more = await moved.events(moved_queue, events[-1]["id"])
            events += more["events"]
        assert status == 200 and events[0]["type"] == "restart"
        assert [event["n"] for event in events if event["type"] == "custom"] == [1]

    run(scenario)


def test_a_killed_shard_leaves_the_other_alone_and_its_clients_register_again(
        cluster: ShardCluster, people: list[User], producer: RabbitMQBroker) -> None:
    cluster.start()

    async def scenario() -> None:
        lost, lost_queue = await stop_shard_1_while_shard_0_polls(cluster, people, producer, signal.SIGKILL)
        status, body = await lost.events(lost_queue, -1)  # nobody there: a JSON error a client retries
        assert status == 502 and body["code"] == "SHARD_UNAVAILABLE"
        await asyncio.get_running_loop().run_in_executor(None, cluster.start_shard, 1)
        # The event that waited for shard 1 finds no queue there (and no later queue gets it).
        await until(lambda: producer.queue_info("notify_tornado_1").consumers == 1, what="shard 1 consuming")
        await until(lambda: producer.queue_info("notify_tornado_1").depth == 0, what="shard 1 took its events")
        status, body = await lost.events(lost_queue, -1)
        assert status == 400 and body["code"] == "BAD_EVENT_QUEUE_ID"  # as Zulip clients expect: register again
        again = await lost.register(event_types=["custom"])
        assert again.startswith("1:")
        await asyncio.get_running_loop().run_in_executor(None, send_event, producer, {"type": "custom", "n": 2},
                                                         [people[0].id])
        assert [event["n"] for event in await poll(lost, again)] == [2]

    run(scenario)


def test_supervisor_conf_runs_a_program_per_shard(settings: Settings) -> None:
    result = run_cli(settings, "supervisor_conf", "--log-dir=/var/log/eb",
                     EVENTBUS_TORNADO_SHARDS="127.0.0.1:9800,127.0.0.1:9801")
    assert result.returncode == 0, result.stderr
    for n in (0, 1):
        assert f"[program:eventbus_tornado_{n}]\n" in result.stdout
        assert f"runtornado --shard={n}\n" in result.stdout
    assert "[group:eventbus-tornado]\nprograms=eventbus_tornado_0,eventbus_tornado_1\n" in result.stdout
    single = run_cli(settings, "supervisor_conf", "--log-dir=/var/log/eb")
    assert "[program:eventbus_tornado]\ncommand=" in single.stdout and "--shard" not in single.stdout
