"""Register's initial state: what a client knows at start, for the event types it fetches, as Zulip gives it.

``POST /register`` answers, besides the queue, the state of each type in
``fetch_event_types`` (by default ``event_types``; neither: every type), so
that the events that follow keep it current. Served here:

- ``message``: ``max_message_id``, the id of the user's newest message (-1: none);
- ``presence``: ``presences`` of every user not offline (``eventbus.presence``),
  by email in Zulip's legacy format or, with ``slim_presence``, by user id in its
  modern one; ``server_timestamp``, ``presence_last_update_id`` (-1: eventbus keeps
  no presence update ids) and the ``server_presence_*`` intervals;
- ``realm_user``: ``realm_users`` (active users, Zulip's ``User`` objects without
  ``is_active``), ``realm_non_active_users``, ``cross_realm_bots`` (none);
- ``subscription``: ``subscriptions`` (with ``subscribers`` when
  ``include_subscribers``), ``unsubscribed`` (streams the user has messages of but
  is not subscribed to), ``never_subscribed``;
- ``message`` with ``update_message_flags``: ``unread_msgs``, from the flags of the
  user's newest ``MAX_UNREAD_MESSAGES`` unread messages;
- ``typing``: nothing (Zulip has no typing state).

Other types get no state: a client finds no key for them. Everything here reads
the database: call ``fetch`` in the executor, never on the IOLoop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from eventbus.channels import channel_object, subscription_object
from eventbus.messages import MessageStore, UnreadMessage
from eventbus.presence import OFFLINE_THRESHOLD_SECONDS, PING_INTERVAL_SECONDS, PresenceStore, presences
from eventbus.users import User

#: The event types whose initial state is served (see the module docstring).
SERVED_TYPES = frozenset({"message", "presence", "realm_user", "subscription", "update_message_flags", "typing"})
#: At most this many unread messages are read for ``unread_msgs`` (Zulip's ``MAX_UNREAD_MESSAGES``).
MAX_UNREAD_MESSAGES = 50_000
#: Flags that make an unread message one of ``unread_msgs.mentions`` (Zulip's wildcard mentions count).
MENTION_FLAGS = frozenset({"mentioned", "wildcard_mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned"})


@dataclass(frozen=True)
class StateRequest:
    """What a register asks of the initial state: the types (None: all) and how to show them."""

    fetch_event_types: frozenset[str] | None = None
    slim_presence: bool = False
    include_subscribers: bool = False

    def wants(self, kind: str) -> bool:
        return self.fetch_event_types is None or kind in self.fetch_event_types


class InitialState:
    """Builds register's initial state from the stores it reads; safe from any thread."""

    def __init__(self, messages: MessageStore, presence: PresenceStore) -> None:
        self.messages = messages
        self.presence = presence

    def fetch(self, user: User, request: StateRequest) -> dict[str, Any]:
        """The state of every served type ``request`` wants, for ``user``."""
        state: dict[str, Any] = {}
        if request.wants("message"):
            state["max_message_id"] = self.messages.max_message_id(user.id)
        if request.wants("presence"):
            state.update(self.presence_state(request.slim_presence))
        if request.wants("realm_user"):
            state.update(self.users_state())
        if request.wants("subscription"):
            state.update(self.subscriptions_state(user, request.include_subscribers))
        if request.wants("message") and request.wants("update_message_flags"):
            state["unread_msgs"] = unread_msgs(user.id, self.messages.unread(user.id, MAX_UNREAD_MESSAGES + 1))
        return state

    def presence_state(self, slim: bool) -> dict[str, Any]:
        return {"presences": presences(self.presence.all(), slim), "server_timestamp": time.time(),
                "presence_last_update_id": -1, "server_presence_ping_interval_seconds": PING_INTERVAL_SECONDS,
                "server_presence_offline_threshold_seconds": OFFLINE_THRESHOLD_SECONDS}

    def users_state(self) -> dict[str, Any]:
        users = self.messages.users.all()
        return {
            "realm_users": [{**without_is_active(u.api_object()), "profile_data": {}} for u in users if u.is_active],
            "realm_non_active_users": [{**u.api_object(), "profile_data": {}} for u in users if not u.is_active],
            "cross_realm_bots": [],
        }

    def subscriptions_state(self, user: User, include_subscribers: bool) -> dict[str, Any]:
        subscribed = {stream.id for stream in self.messages.subscriptions(user.id)}
        infos = self.messages.channel_info(self.messages.all_streams(), include_subscribers)
        others = [info for info in infos if info.stream_id not in subscribed]
        unsubscribed = [info for info in others if self.messages.received_from(user.id, info.stream_id)]
        never = [info for info in others if info not in unsubscribed]
        return {"subscriptions": [subscription_object(info) for info in infos if info.stream_id in subscribed],
                "unsubscribed": [subscription_object(info) for info in unsubscribed],
                "never_subscribed": [channel_object(info) for info in never]}


def without_is_active(user: dict[str, Any]) -> dict[str, Any]:
    """A ``realm_users`` entry: all of them are active, so Zulip leaves the key out."""
    return {key: value for key, value in user.items() if key != "is_active"}


def unread_msgs(user_id: int, unread: list[UnreadMessage]) -> dict[str, Any]:
    """Zulip's ``unread_msgs`` of ``user_id`` from their unread messages, newest first (one more than
    ``MAX_UNREAD_MESSAGES`` if some are left out)."""
    missing = len(unread) > MAX_UNREAD_MESSAGES
    unread = sorted(unread[:MAX_UNREAD_MESSAGES], key=lambda m: m.id)
    topics: dict[tuple[int, str], list[int]] = defaultdict(list)
    pms: dict[int, list[int]] = defaultdict(list)
    huddles: dict[str, list[int]] = defaultdict(list)
    for message in unread:
        if message.stream_id is not None:
            topics[(message.stream_id, message.topic)].append(message.id)
        elif len(message.private_users) <= 2:  # one-on-one, or with oneself
            others = [uid for uid in message.private_users if uid != user_id]
            pms[others[0] if others else user_id].append(message.id)
        else:
            huddles[",".join(map(str, message.private_users))].append(message.id)
    return {
        "count": len(unread),
        "pms": [{"other_user_id": uid, "sender_id": uid, "unread_message_ids": ids} for uid, ids in pms.items()],
        "streams": [{"stream_id": stream_id, "topic": topic, "unread_message_ids": ids}
                    for (stream_id, topic), ids in topics.items()],
        "huddles": [{"user_ids_string": users, "unread_message_ids": ids} for users, ids in huddles.items()],
        "mentions": [m.id for m in unread if MENTION_FLAGS & set(m.flags)],
        "old_unreads_missing": missing,
    }

