"""Zulip's stream endpoints: ``GET /streams`` and ``GET``, ``POST``, ``DELETE /users/me/subscriptions``,
answered as Zulip's API describes them (``eventbus.channels``), under /api/v1 and, for the chat page, /json.

Subscribing sends the newly subscribed users a ``subscription`` ``add`` event
(with the streams' subscribers) and every other active user a ``peer_add``;
unsubscribing sends ``remove`` and ``peer_remove``: every stream is public,
and in Zulip everyone may see a public stream's subscribers. The events go
through the event server's ``route``, the one way events reach client queues (on every shard).
A user may subscribe anyone, and unsubscribe only themselves (the channels'
permissions say so). Streams are named by name, as Zulip's endpoints take them;
subscribing to a stream that does not exist creates it.
"""

from __future__ import annotations

from typing import Any

from tornado.ioloop import IOLoop

from eventbus.channels import channel_object, subscription_object
from eventbus.messages import MAX_STREAM_NAME_CHARS, Stream, check_stream_name
from eventbus.tornado_events.handlers import ApiError, CoreHandler, bad_request, ignored_parameters, missing_argument
from eventbus.users import User
from eventbus.validation import excerpt, is_id

#: At most this many streams, and principals, per request: more than any client asks at once.
MAX_STREAMS_PER_REQUEST = 100
MAX_PRINCIPALS = 1000


class StreamsHandler(CoreHandler):
    """GET /streams: the streams the user may see (all: every stream is public), as ``BasicChannel``s.

    With ``include_public`` false only the subscribed ones, with ``include_subscribed`` false too none, as in
    Zulip; the other filters (web-public, archived, default streams) select nothing here, so change nothing.
    """

    FIELDS = ("include_public", "include_subscribed", "include_all", "include_all_active", "include_web_public",
              "include_default", "exclude_archived", "include_owner_subscribed", "include_can_access_content")

    async def get(self) -> None:
        for name in self.FIELDS[2:]:
            self.bool_arg(name, False)  # a malformed one is still a 400 naming it
        everything = self.bool_arg("include_all", False) or self.bool_arg("include_all_active", False)
        public, subscribed = self.bool_arg("include_public", True), self.bool_arg("include_subscribed", True)
        messages = self.server.messages
        loop = IOLoop.current()
        if everything or public:
            streams = await loop.run_in_executor(None, messages.all_streams)
        else:
            streams = await loop.run_in_executor(None, messages.subscriptions, self.user.id) if subscribed else []
        infos = await loop.run_in_executor(None, messages.channel_info, streams, False)
        self.success(streams=[channel_object(info) for info in infos], **ignored_parameters(self, self.FIELDS))


class SubscriptionsHandler(CoreHandler):
    """GET, POST and DELETE /users/me/subscriptions; see the module docstring."""

    #: What POST reads; the settings of a stream it creates besides are Zulip's, not implemented here.
    SUBSCRIBE_FIELDS = ("subscriptions", "principals", "authorization_errors_fatal", "invite_only")

    async def get(self) -> None:
        include_subscribers = self.bool_arg("include_subscribers", False)
        messages = self.server.messages
        streams = await IOLoop.current().run_in_executor(None, messages.subscriptions, self.user.id)
        infos = await IOLoop.current().run_in_executor(None, messages.channel_info, streams, include_subscribers)
        self.success(subscriptions=[subscription_object(info) for info in infos],
                     **ignored_parameters(self, ("include_subscribers",)))

    async def post(self) -> None:
        names = [self.stream_name(entry) for entry in self.stream_list("subscriptions", dict)]
        self.bool_arg("authorization_errors_fatal", True)  # nothing is unauthorized: every stream is public
        if self.bool_arg("invite_only", False):
            raise bad_request("Invalid 'invite_only' argument: this server has public streams only")
        users = await self.principals()
        messages = self.server.messages
        try:
            streams, added = await IOLoop.current().run_in_executor(None, messages.subscribe, names,
                                                                    [u.id for u in users])
        except ValueError as e:
            raise bad_request(f"Invalid 'subscriptions' argument: {e}") from None
        await self.announce_subscribed(streams, added)
        subscribed: dict[str, list[str]] = {}
        already: dict[str, list[str]] = {}
        for stream in streams:
            for user in users:
                into = subscribed if user.id in added[stream.id] else already
                into.setdefault(str(user.id), []).append(stream.name)
        self.success(subscribed=subscribed, already_subscribed=already,
                     **ignored_parameters(self, self.SUBSCRIBE_FIELDS))

    async def delete(self) -> None:
        names = self.stream_list("subscriptions", str)
        users = await self.principals()
        if any(user.id != self.user.id for user in users):
            raise bad_request("Insufficient permission: users may unsubscribe only themselves here")
        messages = self.server.messages
        streams = []
        for name in names:
            stream = await IOLoop.current().run_in_executor(None, messages.get_stream, name)
            if stream is None:
                raise ApiError(400, "STREAM_DOES_NOT_EXIST", f"Channel '{excerpt(name)}' does not exist",
                               stream=excerpt(name))
            streams.append(stream)
        removed = await IOLoop.current().run_in_executor(None, messages.unsubscribe, [s.id for s in streams],
                                                         [u.id for u in users])
        gone = [stream for stream in streams if removed[stream.id]]
        for stream in gone:
            await self.notify({"type": "subscription", "op": "remove",
                         "subscriptions": [{"stream_id": stream.id, "name": stream.name}]}, removed[stream.id])
        await self.tell_peers("peer_remove", gone, removed)
        self.success(removed=[s.name for s in gone], not_removed=[s.name for s in streams if s not in gone],
                     **ignored_parameters(self, ("subscriptions", "principals")))

    # -- events -------------------------------------------------------------------

    async def announce_subscribed(self, streams: list[Stream], added: dict[int, list[int]]) -> None:
        """``add`` to each newly subscribed user (the streams with their subscribers), ``peer_add`` to others."""
        fresh = [stream for stream in streams if added[stream.id]]
        infos = await IOLoop.current().run_in_executor(None, self.server.messages.channel_info, fresh, True)
        by_user: dict[int, list[dict[str, Any]]] = {}
        for info in infos:
            for user_id in added[info.stream_id]:
                by_user.setdefault(user_id, []).append(subscription_object(info))
        for user_id, subscriptions in by_user.items():
            await self.notify({"type": "subscription", "op": "add", "subscriptions": subscriptions}, [user_id])
        await self.tell_peers("peer_add", fresh, added)

    async def tell_peers(self, op: str, streams: list[Stream], changed: dict[int, list[int]]) -> None:
        """``peer_add`` or ``peer_remove`` of each stream's changed users, to every other active user."""
        if not streams:
            return
        active = await IOLoop.current().run_in_executor(None, self.server.messages.users.active_ids)
        for stream in streams:
            users = changed[stream.id]
            await self.notify({"type": "subscription", "op": op, "stream_ids": [stream.id], "user_ids": users},
                        [uid for uid in active if uid not in users])

    async def notify(self, event: dict[str, Any], users: list[int]) -> None:
        """``event`` to the users' clients, with shards on each user's own (the server's ``route``)."""
        if users:
            await self.server.route({"event": event, "users": users})

    # -- arguments ----------------------------------------------------------------

    def stream_list(self, name: str, kind: type) -> list[Any]:
        """The JSON list argument ``name`` of items of ``kind`` (stream names, or ``{"name", ...}`` objects)."""
        if self.get_argument(name, None) is None:
            raise missing_argument(name)
        value = self.json_arg(name)
        if not (isinstance(value, list) and 0 < len(value) <= MAX_STREAMS_PER_REQUEST
                and all(isinstance(item, kind) for item in value)):
            what = "channel names" if kind is str else 'objects with a channel "name"'
            raise bad_request(f"Invalid '{name}' argument: a list of 1 to {MAX_STREAMS_PER_REQUEST} {what}")
        return [check_name(item) if kind is str else item for item in value]

    def stream_name(self, entry: dict[str, Any]) -> str:
        """The name of a ``subscriptions`` entry; its ``description`` is not kept (streams have none here)."""
        if not isinstance(entry.get("name"), str) or not set(entry) <= {"name", "description"}:
            raise bad_request("Invalid 'subscriptions' argument: each entry is {\"name\": ..., \"description\": ...}")
        return check_name(entry["name"])

    async def principals(self) -> list[User]:
        """The users ``principals`` names (user ids or emails), the caller when absent; BAD_REQUEST for a user
        who does not exist or is deactivated."""
        value = self.json_arg("principals")
        if value is None:
            return [self.user]
        if not (isinstance(value, list) and 0 < len(value) <= MAX_PRINCIPALS
                and (all(is_id(p) for p in value) or all(isinstance(p, str) for p in value))):
            raise bad_request(f"Invalid 'principals' argument: a list of 1 to {MAX_PRINCIPALS} user ids or emails")
        store = self.server.messages.users
        found = []
        for principal in dict.fromkeys(value):
            lookup = store.get if isinstance(principal, int) else store.get_by_email
            user = await IOLoop.current().run_in_executor(None, lookup, principal)
            if user is None or not user.is_active:
                raise bad_request(f"No such user: {excerpt(str(principal))}")
            found.append(user)
        return found


def check_name(name: str) -> str:
    """A stream name of a request; BAD_REQUEST naming ``subscriptions`` for one no stream may have."""
    try:
        return check_stream_name(name)
    except ValueError:
        raise bad_request(f"Invalid 'subscriptions' argument: a channel name has 1 to {MAX_STREAM_NAME_CHARS}"
                          " characters, none of '*', '`' or a newline") from None
