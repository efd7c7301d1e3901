"""Zulip's user endpoints: ``GET /users/me``, ``GET /users``, ``GET /users/{id}`` and ``GET /realm/presence``,
answered as Zulip's API describes them (``eventbus.users.User.api_object``, ``eventbus.presence``), under
/api/v1 and, for the chat page, /json.

Each reads the database in the executor. ``eventbus.app.make_app`` hands each handler the stores it reads.
"""

from __future__ import annotations

import time
from typing import Any

from tornado.ioloop import IOLoop

from eventbus.messages import MessageStore
from eventbus.presence import PresenceStore, presences
from eventbus.tornado_events.handlers import ApiError, BaseHandler, ignored_parameters
from eventbus.users import User, UserStore
from eventbus.validation import is_id


class UsersHandler(BaseHandler):
    """GET /users: every user, deactivated ones too (``is_active``), as Zulip's ``members``."""

    FIELDS = ("client_gravatar", "include_custom_profile_fields")

    def initialize(self, users: UserStore, **base: Any) -> None:
        super().initialize(**base)
        self.users = users

    async def get(self) -> None:
        users = await IOLoop.current().run_in_executor(None, self.users.all)
        self.success(members=[self.shown(user) for user in users], **ignored_parameters(self, self.FIELDS))

    def shown(self, user: User) -> dict[str, Any]:
        """A user as this request asks to see users (Gravatars computed by the client unless told; no custom
        profile fields exist, so ``profile_data`` is empty when asked for)."""
        shown = user.api_object(client_gravatar=self.bool_arg("client_gravatar", True))
        if self.bool_arg("include_custom_profile_fields", False):
            shown["profile_data"] = {}
        return shown


class UserHandler(UsersHandler):
    """GET /users/{user_id}: one user, as Zulip's ``user``; BAD_REQUEST "No such user" for an unknown id."""

    async def get(self, user_id: str) -> None:  # type: ignore[override]
        found = None
        if user_id.isdigit() and is_id(int(user_id)):
            found = await IOLoop.current().run_in_executor(None, self.users.get, int(user_id))
        if found is None:
            raise ApiError(400, "BAD_REQUEST", "No such user")
        self.success(user=self.shown(found), **ignored_parameters(self, self.FIELDS))


class OwnUserHandler(BaseHandler):
    """GET /users/me: the caller, as Zulip's get-own-user answers (no bot fields; the newest message's id)."""

    def initialize(self, messages: MessageStore, **base: Any) -> None:
        super().initialize(**base)
        self.messages = messages

    async def get(self) -> None:
        loop = IOLoop.current()
        user = await loop.run_in_executor(None, self.messages.users.get, self.user.id) or self.user
        max_message_id = await loop.run_in_executor(None, self.messages.max_message_id, self.user.id)
        own = {key: value for key, value in user.api_object().items() if key != "bot_type"}
        self.success(**own, profile_data={}, max_message_id=max_message_id, **ignored_parameters(self, ()))


class RealmPresenceHandler(BaseHandler):
    """GET /realm/presence: the presence of every user not offline, by email, in Zulip's legacy format; how old
    each report is against ``server_timestamp`` tells a client who is offline by now."""

    def initialize(self, presence: PresenceStore, **base: Any) -> None:
        super().initialize(**base)
        self.presence = presence

    async def get(self) -> None:
        found = await IOLoop.current().run_in_executor(None, self.presence.all)
        self.success(presences=presences(found), server_timestamp=time.time(), **ignored_parameters(self, ()))
