"""Queue contracts: one definition of each queue's name and events, shared by producers and consumers.

Every queue a processor consumes is named in ``eventbus.contracts``, every
publish and consume in the package names its queue through it, each event
kind goes over the wire and back unchanged, and an event that breaks its
contract is refused with the field named: at the producer, before anything
is published, or at the consumer, into the error store at once, never retried.
"""

from __future__ import annotations

import ast
from typing import Any

import pytest

from eventbus import codec, contracts, queue
from eventbus.contracts import (
    ActivityInterval,
    Email,
    ErrorReport,
    Invite,
    MessageRequest,
    MessageResponse,
    MirrorMail,
    MissedMessage,
    MissedMessageFlush,
    Notice,
    PresenceUpdate,
    Signup,
    SlowQuery,
    UserActivity,
)
from eventbus.errors import ContractError, PermanentError
from eventbus.messages import MessageStore
from eventbus.processors.registry import get_worker_class, registered_queues
from eventbus.processors.runner import WorkerThreads
from eventbus.queue import MemoryBroker
from eventbus.tornado_events import send_event
from eventbus.users import User
from tests.conftest import wait_for
from tests.workers import ROOT

#: Calls whose first argument is a queue name.
QUEUE_CALLS = frozenset({"publish", "publish_nowait", "publish_many", "publish_later", "queue_json_publish",
                         "queue_json_publish_many", "consume", "consumer", "assign_queue", "queue_info", "purge"})

#: Each contract with the event producers published before the contracts existed (tests and clients pin these).
WIRE = [
    (Notice({"type": "message", "message": {"id": 7}}, (1, {"id": 2, "flags": ["mentioned"]})),
     {"event": {"type": "message", "message": {"id": 7}}, "users": [1, {"id": 2, "flags": ["mentioned"]}]}),
    (MessageRequest("r1", 3, {"type": "stream", "to": "Denmark"}, "tornado_return", "tornado", "s1", 12),
     {"request_id": "r1", "server_id": "tornado", "return_queue": "tornado_return", "user_id": 3,
      "request": {"type": "stream", "to": "Denmark"}, "socket_id": "s1", "req_id": 12}),
    (MessageResponse("r1", {"result": "success", "msg": "", "id": 5}, "tornado", "s1", "abc"),
     {"request_id": "r1", "server_id": "tornado", "socket_id": "s1", "req_id": "abc",
      "response": {"result": "success", "msg": "", "id": 5}}),
    (UserActivity(3, "/api/v1/events", "ZulipPython", 1000.5, 4),
     {"user_id": 3, "client": "ZulipPython", "query": "/api/v1/events", "time": 1000.5, "count": 4}),
    (ActivityInterval(3, 10, 20.5), {"user_id": 3, "start": 10, "end": 20.5}),
    (PresenceUpdate(3, "idle", "website", 1000.0),
     {"user_id": 3, "status": "idle", "time": 1000.0, "client": "website"}),
    (ErrorReport("browser", "TypeError", "at f (app.js:1:1)", "iago@example.com", "https://app/#",
                 {"user_id": 3, "user_agent": "Firefox"}),
     {"type": "browser", "user_id": 3, "user_email": "iago@example.com", "message": "TypeError",
      "stacktrace": "at f (app.js:1:1)", "href": "https://app/#", "user_agent": "Firefox"}),
    (SlowQuery(2500.5, path="/api/v1/messages", method="GET", status=200, user_email="iago@example.com", time=5.0),
     {"path": "/api/v1/messages", "method": "GET", "time_ms": 2500.5, "status": 200,
      "user_email": "iago@example.com", "time": 5.0}),
    (Email("email:1", ("iago@example.com",), "Hello", "text", "<p>text</p>"),
     {"email_id": "email:1", "to": ["iago@example.com"], "subject": "Hello", "body": "text", "html": "<p>text</p>"}),
    (Signup("iago@example.com", "Iago"), {"email": "iago@example.com", "full_name": "Iago"}),
    (Invite(3, ("a@example.com", "b@example.com"), "Denmark"),
     {"inviter_id": 3, "emails": ["a@example.com", "b@example.com"], "stream": "Denmark"}),
    (MissedMessage(3, 7, "mentioned"), {"user_id": 3, "message_id": 7, "trigger": "mentioned"}),
    (MissedMessageFlush(3), {"flush_user": 3}),
    (MirrorMail(b"From: a@b.c\r\n\r\n\xff", "token@streams.example"),
     {"raw": "RnJvbTogYUBiLmMNCg0K/w==", "rcpt_to": "token@streams.example"}),
]


@pytest.mark.parametrize(("contract", "wire"), WIRE, ids=[type(c).__name__ for c, _ in WIRE])
def test_each_event_kind_keeps_its_wire_format_and_comes_back_unchanged(contract: Any, wire: dict[str, Any]) -> None:
    assert contract.event() == wire
    received = codec.decode(codec.encode(contract.event()))
    assert type(contract).from_event(received) == contract


#: An event that breaks its contract, and what the error says.
BROKEN = [
    (Notice, {"event": {"type": "message", "message": {"id": True}}, "users": [1]}, "integer 'id'"),
    (Notice, {"event": {"type": "x"}, "users": [0]}, "'users' holds 0"),
    (MessageRequest, {"request_id": "r", "user_id": 2**63, "request": {}}, "'user_id' must be an id"),
    (MessageRequest, {"request_id": "r", "user_id": 1, "request": {}, "return_queue": "../x"}, "'return_queue'"),
    (MessageRequest, {"request_id": "r", "user_id": 1, "request": {}, "req_id": "x" * 101}, "'req_id'"),
    (MessageResponse, {"response": {}}, "'request_id'"),
    (UserActivity, {"user_id": True, "query": "/q"}, "'user_id' must be an id"),
    (UserActivity, {"user_id": 1, "query": "/q", "time": "now"}, "'time' must be a number"),
    (ActivityInterval, {"user_id": 1, "start": 5, "end": None}, "'end' must be a number"),
    (PresenceUpdate, {"user_id": 1, "status": "active", "client": 7}, "'client' must be a string"),
    (ErrorReport, {"type": "server", "message": ["not", "text"]}, "'message' must be a string"),
    (SlowQuery, {"path": "/x", "time_ms": "slow"}, "'time_ms' must be a number of milliseconds"),
    (Email, {"email_id": "e", "to": "nobody", "subject": "s", "body": "b"}, "'to' must be a non-empty list"),
    (Signup, {"email": "not an address"}, "a signup needs an 'email' address"),
    (Invite, {"inviter_id": "iago", "emails": ["a@example.com"]}, "'inviter_id' must be an id"),
    (MissedMessage, {"user_id": 1, "message_id": -4, "trigger": "mentioned"}, "'message_id' must be an id"),
    (MissedMessageFlush, {"flush_user": 1.0}, "'flush_user' must be an id"),
    (MirrorMail, {"raw": "RnJvbQ==", "rcpt_to": ["a@b.c"]}, "'rcpt_to' must be an address"),
    (MirrorMail, ["not", "an", "object"], "must be a JSON object"),
]


@pytest.mark.parametrize(("contract", "event", "says"), BROKEN,
                         ids=[f"{c.__name__}-{n}" for n, (c, _, _) in enumerate(BROKEN)])
def test_an_event_that_breaks_its_contract_is_refused_naming_the_field(contract: Any, event: Any, says: str) -> None:
    with pytest.raises(ContractError, match=says) as refused:
        contract.from_event(event)
    # A bad value for whoever checks input, and permanent for a worker: no retry can add the missing field.
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, PermanentError)


def test_an_error_quotes_a_huge_value_only_in_part() -> None:
    with pytest.raises(ContractError) as refused:
        UserActivity.from_event({"user_id": "7" * 1_000_000, "query": "/q"})
    assert len(str(refused.value)) < 300


def test_a_producer_cannot_publish_an_event_that_breaks_its_contract(event_broker: MemoryBroker) -> None:
    with pytest.raises(ContractError, match="must not carry an 'id'"):
        send_event(event_broker, {"type": "message", "id": 3, "message": {"id": 1}}, [1])
    with pytest.raises(ContractError, match="'user_id'"):
        MissedMessage(0, 1, "mentioned")
    assert event_broker.queue_info(contracts.NOTIFY_TORNADO).depth == 0


def test_every_processor_consumes_a_queue_the_contracts_name() -> None:
    shipped = {name for name in registered_queues(enabled_only=False)
               if get_worker_class(name).__module__.startswith("eventbus.")}  # not those tests register
    assert shipped and shipped <= set(contracts.QUEUES)
    assert queue.check_queue_name is contracts.check_queue_name  # still public where django.py imports it


def literal_queue_names() -> list[str]:
    """``file:line: call("name")`` for every publish, consume or assign_queue in the package that spells its queue."""
    found = []
    for path in sorted((ROOT / "eventbus").rglob("*.py")):
        if path.name == "contracts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if name in QUEUE_CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}({first.value!r})")
    return found


def test_producers_and_consumers_name_their_queues_through_the_contracts() -> None:
    assert literal_queue_names() == []


def test_a_message_request_naming_a_bad_return_queue_is_stored_at_once_and_no_message_is_sent(
        event_broker: MemoryBroker, sender_worker: WorkerThreads, users: tuple[User, User]) -> None:
    store = MessageStore(event_broker.settings.database)
    iago, othello = users
    store.create_stream("Denmark", [iago.id, othello.id])
    request = {"type": "stream", "to": "Denmark", "topic": "t", "content": "never sent"}
    event_broker.publish(contracts.MESSAGE_SENDER, {"request_id": "r1", "user_id": iago.id, "request": request,
                                                    "return_queue": "../../etc/passwd"})
    wait_for(lambda: event_broker.error_store.count(contracts.MESSAGE_SENDER) == 1, what="the request in the store")
    [entry] = event_broker.error_store.read(contracts.MESSAGE_SENDER)
    assert entry["tries"] == 1 and entry["error"].startswith("ContractError: 'return_queue': invalid queue name")
    assert store.recent(othello.id, 10) == []  # refused before anything was stored or delivered
    assert event_broker.queue_info(contracts.NOTIFY_TORNADO).depth == 0
