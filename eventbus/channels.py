"""Streams (Zulip's channels) as Zulip's API shows them: ``BasicChannel`` in ``GET /streams``, ``Subscription``
in ``GET /users/me/subscriptions``, subscription events and register's initial state.

Every stream here is public, open to anyone, kept forever, without a
description, created by nobody in particular: what Zulip's objects say of
such a stream. Permissions are Zulip's group settings: anyone may subscribe
anyone to any stream and send to it (the group of everyone,
``EVERYONE_GROUP_ID``: eventbus has no user groups to serve), and nobody may
unsubscribe others or administer a stream (an empty anonymous group,
``NOBODY``: users leave streams themselves). A subscription's personal
settings are Zulip's defaults (notifications inherited from the user's
settings, not muted, not pinned), with a color picked from Zulip's palette.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: The id of Zulip's "role:everyone" system group: who may subscribe anyone, and send, to every stream.
EVERYONE_GROUP_ID = 1
#: Zulip's anonymous group of no one: who may unsubscribe others from a stream, or administer it.
NOBODY: dict[str, list[int]] = {"direct_members": [], "direct_subgroups": []}
#: Zulip's ``stream_post_policy`` "any user can post".
ANYONE_MAY_POST = 1
#: A stream with a message in this many days is recently active (Zulip's window for demoting inactive ones).
RECENTLY_ACTIVE_DAYS = 180
#: Subscription colors, from Zulip's palette; a stream's color is picked by its id, so it stays the same.
COLORS = ("#76ce90", "#fae589", "#a6c7e5", "#e79ab5", "#bfd56f", "#f4ae55", "#b0a5fd", "#addfe5", "#f5ce6e",
          "#c2726a", "#94c849", "#bd86e5", "#ee7e4a", "#a6dcbf", "#95a5fd", "#53a063", "#9987e1", "#e4523d")


@dataclass(frozen=True)
class ChannelInfo:
    """What the objects show of one stream; ``subscribers`` only when asked for (None: not asked)."""

    stream_id: int
    name: str
    date_created: float
    first_message_id: int | None
    last_message_time: float | None
    subscribers: list[int] | None = None

    @property
    def recently_active(self) -> bool:
        return (self.last_message_time is not None
                and time.time() - self.last_message_time < RECENTLY_ACTIVE_DAYS * 86400)


def channel_object(info: ChannelInfo) -> dict[str, Any]:
    """Zulip's ``BasicChannel`` (and ``subscribers``, when the info has them, as ``never_subscribed`` shows)."""
    channel: dict[str, Any] = {
        "stream_id": info.stream_id, "name": info.name, "is_archived": False, "description": "",
        "rendered_description": "", "date_created": int(info.date_created), "creator_id": None,
        "invite_only": False, "is_web_public": False, "stream_post_policy": ANYONE_MAY_POST,
        "message_retention_days": None, "history_public_to_subscribers": True,
        "first_message_id": info.first_message_id, "is_recently_active": info.recently_active,
        "is_announcement_only": False, "stream_weekly_traffic": None,
        "can_add_subscribers_group": EVERYONE_GROUP_ID, "can_send_message_group": EVERYONE_GROUP_ID,
        "can_subscribe_group": EVERYONE_GROUP_ID, "can_remove_subscribers_group": dict(NOBODY),
        "can_administer_channel_group": dict(NOBODY),
    }
    if info.subscribers is not None:
        channel["subscribers"] = info.subscribers
    return channel


def subscription_object(info: ChannelInfo) -> dict[str, Any]:
    """Zulip's ``Subscription``: the channel, with the subscriber's personal settings (Zulip's defaults)."""
    return {
        **channel_object(info), "color": COLORS[info.stream_id % len(COLORS)], "is_muted": False,
        "in_home_view": True, "pin_to_top": False,
        **{f"{kind}_notifications": None for kind in ("desktop", "email", "push", "audible")},
        "wildcard_mentions_notify": None,
    }
