"""The message store itself, on SQLite and on PostgreSQL (the ``database`` fixture): narrows and search,
flags, edits, deletes and reactions once per request, one message per request id when two writers store it
at once, and the indexes each database reads a narrow through."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select, text

from eventbus import codec, schema
from eventbus.messages import ActionError, HistoryQuery, MessageStore, NewMessage, Stream
from eventbus.narrow import NarrowError, parse_narrow
from eventbus.users import User

T = TypeVar("T")


class World:
    """Iago, Othello and Desdemona; Iago and Othello are subscribed to Denmark and Verona."""

    def __init__(self, database: Path | str) -> None:
        self.store = MessageStore(database)
        make = self.store.users.create_user
        self.iago, self.othello, self.desdemona = (make("iago@example.com", "Iago"),
                                                   make("othello@example.com", "Othello"),
                                                   make("desdemona@example.com", "Desdemona"))
        both = [self.iago.id, self.othello.id]
        self.denmark, self.verona = self.store.create_stream("Denmark", both), self.store.create_stream("Verona", both)

    def new(self, sender: User, to: Stream | list[User], content: str, topic: str = "t",
            request_id: str | None = None, flags: dict[int, list[str]] | None = None) -> NewMessage:
        """A message as the message_sender processor makes it: read by its sender, unread by the others."""
        users = [self.iago, self.othello] if isinstance(to, Stream) else to
        return NewMessage(
            request_id=request_id, sender_id=sender.id, type="stream" if isinstance(to, Stream) else "private",
            stream=to if isinstance(to, Stream) else None,
            display_recipient=to.name if isinstance(to, Stream) else [
                {"id": u.id, "email": u.email, "full_name": u.full_name} for u in to],
            subject=topic if isinstance(to, Stream) else "", content=content, rendered_content=f"<p>{content}</p>",
            flags=flags or {u.id: ["read"] if u.id == sender.id else [] for u in users})

    def send(self, sender: User, to: Stream | list[User], content: str, topic: str = "t",
             flags: dict[int, list[str]] | None = None) -> int:
        return self.store.store(self.new(sender, to, content, topic, flags=flags)).id

    def ids(self, user: User, narrow: list[Any], **query: Any) -> list[int]:
        answer = self.store.history(user.id, HistoryQuery(parse_narrow(narrow), num_before=100, **query))
        return [m["id"] for m in answer["messages"]]


@pytest.fixture
def world(database: Path | str) -> World:
    return World(database)


def test_narrows_and_search_select_the_same_messages_on_either_database(world: World) -> None:
    iago, othello, desdemona = world.iago, world.othello, world.desdemona
    gate = world.send(iago, world.denmark, "The guards are at the gate", "castle")
    hello = world.send(othello, world.denmark, "hello Iago", "Castle",
                       flags={iago.id: ["mentioned"], othello.id: ["read"]})
    ships = world.send(iago, world.denmark, "Ships ahoy", "ships")
    verona = world.send(othello, world.verona, "In Verona", "castle")
    psst = world.send(othello, [iago, othello], "psst")
    group = world.send(desdemona, [iago, othello, desdemona], "all of us")
    world.store.set_flag(iago.id, [ships], "starred", True)
    cases: list[tuple[list[Any], list[int]]] = [
        ([], [gate, hello, ships, verona, psst, group]),
        ([["stream", "Denmark"]], [gate, hello, ships]),
        ([["stream", "denmark"], ["topic", "CASTLE"]], [gate, hello]),  # names and topics whatever the case
        ([{"operator": "topic", "operand": "castle"}], [gate, hello, verona]),
        ([["stream", "Denmark"], {"operator": "topic", "operand": "castle", "negated": True}], [ships]),
        ([["sender", "OTHELLO@example.com"]], [hello, verona, psst]),
        ([{"operator": "sender", "operand": othello.id, "negated": True}], [gate, ships, group]),
        ([["dm", othello.email]], [psst]),
        ([["dm", f"{othello.email},{desdemona.email}"]], [group]),
        ([["is", "dm"]], [psst, group]),
        ([["is", "mentioned"]], [hello]),
        ([["is", "starred"]], [ships]),
        ([{"operator": "is", "operand": "starred", "negated": True}, ["stream", "Denmark"]], [gate, hello]),
        ([["is", "unread"]], [hello, verona, psst, group]),
        ([["search", "guard"]], [gate]),  # "guards": both indexes stem words
        ([["search", "AHOY ships"]], [ships]),  # every word, in any case
        ([["search", "ships ahoy gate"]], []),
        ([["stream", "Denmark"], ["search", "castle"]], [gate, hello]),  # topics are searched too
        ([{"operator": "search", "operand": "verona", "negated": True}, ["topic", "castle"]], [gate, hello]),
        ([["search", "us"], ["is", "dm"]], [group]),
        ([{"operator": "id", "operand": ships}], [ships]),
    ]
    for narrow, expected in cases:
        assert world.ids(iago, narrow) == expected, narrow
    [found] = world.store.history(iago.id, HistoryQuery(parse_narrow([["search", "guard"]]), num_before=9))["messages"]
    assert found["match_content"] == '<p>The <span class="highlight">guards</span> are at the gate</p>'
    assert world.ids(othello, [["is", "dm"]]) == [psst, group]  # his own messages only
    assert world.ids(desdemona, [["stream", "Denmark"]]) == []
    # Anchors: around a message, and the first unread one.
    assert world.ids(iago, [], anchor=ships, num_after=1) == [gate, hello, ships, verona]
    assert world.ids(iago, [], anchor="first_unread", num_after=0) == [gate, hello]
    for narrow in ([["stream", "Nowhere"]], [["sender", "ghost@example.com"]], [["id", "seven"]]):
        with pytest.raises(NarrowError):
            world.ids(iago, narrow)


def test_a_nul_in_a_name_or_narrow_is_refused_before_the_database_sees_it(world: World) -> None:
    """PostgreSQL cannot store or even compare a string holding NUL: such input is a clear error (or no such
    stream) on both databases, never a database error."""
    for narrow in ([["topic", "a\x00b"]], [["stream", "a\x00b"]], [["sender", "a\x00b@example.com"]]):
        with pytest.raises(ValueError, match="NUL"):
            parse_narrow(narrow)
    with pytest.raises(ValueError, match="NUL"):
        world.store.create_stream("Den\x00mark")
    assert world.store.get_stream("Denmark\x00") is None and world.store.get_stream("Denmark") == world.denmark


def test_flags_edits_deletes_and_reactions_are_made_once_per_request(world: World) -> None:
    iago, othello = world.iago, world.othello
    first = world.send(othello, world.denmark, "first", "castle", flags={iago.id: ["mentioned"], othello.id: []})
    second = world.send(othello, world.verona, "second", "fair")
    third = world.send(othello, [iago, othello], "third")
    # Mark all as read: "read" added to whatever flags each unread message had, and recorded once.
    done = world.store.mark_all_as_read("all-1", iago.id)
    assert done.data == {"count": 3} and not done.delivered
    assert world.store.get(first).flags[iago.id] == ["mentioned", "read"]  # type: ignore[union-attr]
    assert world.store.get(second).flags[iago.id] == ["read"]  # type: ignore[union-attr]
    assert world.ids(iago, [["is", "unread"]]) == []
    world.store.mark_action_delivered("all-1")
    assert world.store.mark_all_as_read("all-1", iago.id) == done.__class__("all-1", {"count": 3}, True)
    # Unread again, skipping a stream Iago left.
    world.store.unsubscribe([world.verona.id], [iago.id])
    unread = world.store.update_flags("flags-1", iago.id, [first, second, third], "read", False)
    assert unread.data["messages"] == [first, third] and unread.data["skipped_streams"] == [world.verona.id]
    assert unread.data["details"][str(first)] == {"type": "stream", "stream_id": world.denmark.id,
                                                  "topic": "castle", "mentioned": True}
    with pytest.raises(ActionError):
        world.store.update_flags("flags-2", world.desdemona.id, [first], "starred", True)
    # An edit: the topic moves (search finds the new words), mention flags recomputed.
    edit = world.store.edit("edit-1", first, content="quokka", rendered_content="<p>quokka</p>", subject="moat",
                            mention_flags={})
    assert (edit.data["orig_content"], edit.data["content"], edit.data["subject"]) == ("first", "quokka", "moat")
    assert world.ids(iago, [["search", "quokka"]]) == world.ids(iago, [["topic", "MOAT"]]) == [first]
    assert world.store.get(first).flags[iago.id] == []  # type: ignore[union-attr]
    # Reactions, oldest first whatever their codes; each made once.
    world.store.react("react-1", first, iago.id, {"emoji_name": "zzz", "emoji_code": "1f634",
                                                  "reaction_type": "unicode_emoji"}, True)
    world.store.react("react-2", first, othello.id, {"emoji_name": "+1", "emoji_code": "1f44d",
                                                     "reaction_type": "unicode_emoji"}, True)
    assert [r["emoji_name"] for r in world.store.get(first).reactions] == ["zzz", "+1"]  # type: ignore[union-attr]
    assert world.store.react("react-1", first, iago.id, {"emoji_name": "zzz", "emoji_code": "1f634",
                                                         "reaction_type": "unicode_emoji"}, True).data == {
        "users": [iago.id, othello.id]}  # the same request: its outcome, nothing made again
    with pytest.raises(ActionError) as again:
        world.store.react("react-3", first, iago.id, {"emoji_name": "zzz", "emoji_code": "1f634",
                                                      "reaction_type": "unicode_emoji"}, True)
    assert again.value.code == "REACTION_ALREADY_EXISTS"
    [shown] = world.store.history(iago.id, HistoryQuery(parse_narrow([["id", str(first)]]), num_before=1))["messages"]
    assert [r["user_id"] for r in shown["reactions"]] == [iago.id, othello.id]
    # A delete takes the message, its flags and its reactions.
    gone = world.store.delete("delete-1", first)
    assert gone.data["users"] == [iago.id, othello.id] and world.store.get(first) is None
    assert world.ids(iago, [["stream", "Denmark"]]) == [] and world.ids(iago, [["search", "quokka"]]) == []


def at_once(writers: int, call: Callable[[int], T]) -> list[T]:
    """``call(n)`` in ``writers`` threads let go together, each with a store of its own; what each returned.
    Fails with what any raised."""
    start = threading.Barrier(writers)
    results: list[T | BaseException | None] = [None] * writers

    def write(n: int) -> None:
        start.wait(10)
        try:
            results[n] = call(n)
        except BaseException as e:  # reported below, with the others' results
            results[n] = e

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(isinstance(r, BaseException) or r is None for r in results), results
    return results  # type: ignore[return-value]


def test_two_writers_storing_the_same_requests_at_once_make_one_message_each(world: World) -> None:
    """Message_sender workers given the same redelivered batch at the same moment (on several machines, with
    PostgreSQL): all get the same messages, none gets an error, and each request is stored once."""
    batch = [world.new(world.iago, world.denmark, f"message {n}", request_id=f"request-{n}") for n in range(20)]

    def store(n: int) -> dict[str | None, int]:  # each in its own order, as batches of redelivered events come
        stored = MessageStore(world.store.database).store_many(random.Random(n).sample(batch, len(batch)))
        return {m.request_id: m.id for m in stored}

    results = at_once(4, store)
    assert all(ids == results[0] for ids in results) and len(results[0]) == len(batch), results
    with world.store.database.transaction() as db:
        assert db.scalar(select(func.count()).select_from(schema.messages)) == len(batch)
    more = world.store.store_many([world.new(world.othello, world.verona, f"more {n}") for n in range(5)])
    assert [m.id for m in more] == sorted(m.id for m in more)  # ids increase in a batch's order


def test_two_workers_making_the_same_change_at_once_make_it_once(world: World) -> None:
    message = world.send(world.othello, world.denmark, "react to me")
    thumbs = {"emoji_name": "+1", "emoji_code": "1f44d", "reaction_type": "unicode_emoji"}
    outcomes = at_once(4, lambda n: MessageStore(world.store.database).react("react-1", message, world.iago.id,
                                                                             thumbs, True))
    assert all(outcome == outcomes[0] for outcome in outcomes), outcomes
    assert world.store.get(message).reactions == ({**thumbs, "user_id": world.iago.id},)  # type: ignore[union-attr]


def _fill(world: World, count: int, topics: int) -> None:
    """``count`` messages to Denmark over ``topics`` topics, one in 500 holding "quokka", all Iago's: in bulk."""
    messages, user_messages = schema.messages, schema.user_messages
    recipient = world.store.get(world.send(world.othello, world.denmark, "a first one")).recipient_id  # type: ignore
    with world.store.database.transaction(write=True) as db:
        first = db.scalar(select(func.max(messages.c.id))) + 1
        db.execute(messages.insert(), [
            {"id": first + n, "sender_id": world.othello.id, "type": "stream", "stream_id": world.denmark.id,
             "display_recipient": codec.encode("Denmark").decode(), "subject": f"topic {n % topics}",
             "content": f"message {n} about the {'quokka' if n % 500 == 0 else 'castle'}", "rendered_content": "",
             "timestamp": float(n), "recipient_id": recipient} for n in range(count)])
        db.execute(user_messages.insert(), [{"user_id": world.iago.id, "message_id": first + n, "flags": "[]"}
                                            for n in range(count)])
    if world.store.database.is_postgresql:  # after a bulk load, as autovacuum soon would
        with world.store.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            db.execute(text("VACUUM ANALYZE messages, user_messages"))


def test_postgresql_reads_a_topic_and_a_search_through_their_indexes(postgresql_url: str) -> None:
    """PostgreSQL's plans (SQLite's: tests/test_history.py::test_every_narrow_is_read_through_an_index)."""
    world = World(postgresql_url)
    _fill(world, 5000, topics=100)
    topic = parse_narrow([["stream", "Denmark"], ["topic", "TOPIC 7"]])
    plan = world.store.explain(world.iago.id, topic)
    assert any("messages_by_topic" in step for step in plan), plan
    assert len(world.ids(world.iago, [["stream", "Denmark"], ["topic", "TOPIC 7"]])) == 50
    search = parse_narrow([["search", "quokkas"]])
    plan = world.store.explain(world.iago.id, search)
    assert any("messages_search_words" in step for step in plan), "\n".join(plan)
    assert len(world.ids(world.iago, [["search", "quokkas"]])) == 10
