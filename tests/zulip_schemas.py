"""Zulip's answers, as its OpenAPI description gives them (zerver/openapi/zulip.yaml, feature level 372).

Derived by hand from ``/work/shared/zulip-openapi.yaml`` (``MessagesBase``, ``MessagesEvent``, the ``message``
event of GET /events, the 200 answer of GET /messages, ``CodedError`` and its kinds): each field's types, and
whether it is always there. Zulip's objects there have ``additionalProperties: false``, so a field the spec does
not name is an error too. The spec leaves out which fields are always present; "always" below is what Zulip's
server sends every time (its own examples carry each), "sometimes" what the spec says is only present in some
cases.

``check(value, schema)`` raises AssertionError listing every difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: JSON types by their OpenAPI names.
INTEGER, STRING, BOOLEAN, ARRAY, OBJECT, NULL = "integer", "string", "boolean", "array", "object", "null"


@dataclass(frozen=True)
class Field:
    types: tuple[str, ...]
    always: bool = True
    items: Schema | str | None = None  # each item of an array: an object's schema, or a JSON type
    shape: Schema | None = None  # an object's schema (when the value is an object)
    values: Field | None = None  # each value of an object keyed by ids, emails or names (a map)


@dataclass(frozen=True)
class Schema:
    fields: dict[str, Field] = field(default_factory=dict)


def always(*types: str, items: Schema | str | None = None, shape: Schema | None = None,
           values: Field | None = None) -> Field:
    return Field(types, True, items, shape, values)


def sometimes(*types: str, items: Schema | str | None = None, shape: Schema | None = None,
              values: Field | None = None) -> Field:
    return Field(types, False, items, shape, values)


#: ``display_recipient`` of a private message: one entry per recipient.
DISPLAY_RECIPIENT_USER = Schema({"id": always(INTEGER), "email": always(STRING), "full_name": always(STRING),
                                 "is_mirror_dummy": always(BOOLEAN)})

#: EmojiReaction: a reaction in a message object (the ``user`` object went at feature level 328).
REACTION = Schema({"emoji_name": always(STRING), "emoji_code": always(STRING), "reaction_type": always(STRING),
                   "user_id": always(INTEGER)})

#: MessagesBase: every field of a message object, in events and in the history.
MESSAGE_BASE = {
    "avatar_url": always(STRING, NULL),  # null only when the client said client_gravatar
    "client": always(STRING),
    "content": always(STRING),
    "content_type": always(STRING),
    "display_recipient": always(STRING, ARRAY, items=DISPLAY_RECIPIENT_USER),
    "edit_history": sometimes(ARRAY),  # not present if never edited
    "id": always(INTEGER),
    "is_me_message": always(BOOLEAN),
    "last_edit_timestamp": sometimes(INTEGER),  # only once edited
    "last_moved_timestamp": sometimes(INTEGER),  # only once moved
    "reactions": always(ARRAY, items=REACTION),
    "recipient_id": always(INTEGER),
    "sender_email": always(STRING),
    "sender_full_name": always(STRING),
    "sender_id": always(INTEGER),
    "sender_realm_str": always(STRING),
    "stream_id": sometimes(INTEGER),  # stream messages only (see STREAM_MESSAGE)
    "subject": always(STRING),
    "submessages": always(ARRAY),
    "timestamp": always(INTEGER),
    "topic_links": always(ARRAY),
    "type": always(STRING),
}
#: MessagesEvent: the ``message`` of a message event.
EVENT_MESSAGE = Schema(MESSAGE_BASE)
#: A message of GET /messages: the user's flags too, and the highlighted matches of a keyword search.
HISTORY_MESSAGE = Schema({**MESSAGE_BASE, "flags": always(ARRAY), "match_content": sometimes(STRING),
                          "match_subject": sometimes(STRING)})

#: The ``message`` event of GET /events. ``local_message_id`` is not in the spec, but Zulip's server gives it to
#: the sender's own queue when the send request named it with ``queue_id`` and ``local_id`` (its local echo).
MESSAGE_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "message": always(OBJECT),
                        "flags": always(ARRAY), "local_message_id": sometimes(STRING)})

#: The 200 answer of GET /messages, anchored (with ``message_ids`` instead, no anchor nor found_* fields).
HISTORY_ANSWER = Schema({
    "result": always(STRING), "msg": always(STRING), "ignored_parameters_unsupported": sometimes(ARRAY),
    "anchor": always(INTEGER), "found_newest": always(BOOLEAN), "found_oldest": always(BOOLEAN),
    "found_anchor": always(BOOLEAN), "history_limited": always(BOOLEAN), "messages": always(ARRAY),
})
HISTORY_BY_IDS_ANSWER = Schema({name: f for name, f in HISTORY_ANSWER.fields.items()
                                if name not in ("anchor", "found_newest", "found_oldest", "found_anchor")})
#: The 200 answer of POST /messages.
SEND_ANSWER = Schema({"result": always(STRING), "msg": always(STRING), "id": always(INTEGER),
                      "ignored_parameters_unsupported": sometimes(ARRAY),
                      "automatic_new_visibility_policy": sometimes(INTEGER)})


#: A success answer with nothing more (JsonSuccess).
SIMPLE_SUCCESS = Schema({"result": always(STRING), "msg": always(STRING),
                         "ignored_parameters_unsupported": sometimes(ARRAY)})
#: POST /messages/flags: the messages asked about; marking unread names the channels skipped (feature level 355).
FLAGS_ANSWER = Schema({**SIMPLE_SUCCESS.fields, "messages": always(ARRAY),
                       "ignored_because_not_subscribed_channels": sometimes(ARRAY)})
#: POST /mark_all_as_read.
MARK_ALL_AS_READ_ANSWER = Schema({**SIMPLE_SUCCESS.fields, "complete": always(BOOLEAN)})
#: GET /events: the events, and the queue (a GET without a queue id learns its new queue here).
EVENTS_ANSWER = Schema({**SIMPLE_SUCCESS.fields, "events": always(ARRAY), "queue_id": always(STRING)})

#: The ``update_message_flags`` events of GET /events, op add and op remove (``message_details``: marked unread).
FLAGS_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                      "operation": always(STRING), "flag": always(STRING), "messages": always(ARRAY),
                      "all": always(BOOLEAN), "message_details": sometimes(OBJECT)})
#: An entry of ``message_details``: the message's type, and where it is.
UNREAD_DETAILS = Schema({"type": always(STRING), "mentioned": sometimes(BOOLEAN), "user_ids": sometimes(ARRAY),
                         "stream_id": sometimes(INTEGER), "topic": sometimes(STRING),
                         "unmuted_stream_msg": sometimes(BOOLEAN)})
#: The ``update_message`` event: its required fields, and the ones of a content edit, a topic edit or a move.
UPDATE_MESSAGE_EVENT = Schema({
    **{name: always(kind) for name, kind in (
        ("id", INTEGER), ("type", STRING), ("user_id", INTEGER), ("rendering_only", BOOLEAN), ("message_id", INTEGER),
        ("message_ids", ARRAY), ("flags", ARRAY), ("edit_timestamp", INTEGER))},
    **{name: sometimes(kind) for name, kind in (
        ("stream_name", STRING), ("stream_id", INTEGER), ("new_stream_id", INTEGER), ("propagate_mode", STRING),
        ("orig_subject", STRING), ("subject", STRING), ("topic_links", ARRAY), ("orig_content", STRING),
        ("orig_rendered_content", STRING), ("content", STRING), ("rendered_content", STRING),
        ("is_me_message", BOOLEAN))},
})
#: The ``delete_message`` event: ``message_id`` for clients without bulk_message_deletion, ``message_ids`` with.
DELETE_MESSAGE_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "message_type": always(STRING),
                               "message_id": sometimes(INTEGER), "message_ids": sometimes(ARRAY),
                               "stream_id": sometimes(INTEGER), "topic": sometimes(STRING)})
#: The deprecated ``user`` of a reaction event (EmojiReactionEvent, re-added at feature level 339).
REACTION_EVENT_USER = Schema({"user_id": always(INTEGER), "email": always(STRING), "full_name": always(STRING),
                              "is_mirror_dummy": sometimes(BOOLEAN)})
#: The ``reaction`` event, op add or remove.
REACTION_EVENT = Schema({**REACTION.fields, "id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                         "message_id": always(INTEGER), "user": sometimes(OBJECT)})


def coded_error(**extra: str) -> Schema:
    """CodedError and its kinds: result, msg and code, plus the fields a kind adds (always there)."""
    return Schema({"result": always(STRING), "msg": always(STRING), "code": always(STRING),
                   **{name: always(kind) for name, kind in extra.items()}})


CODED_ERROR = coded_error()
MISSING_ARGUMENT_ERROR = coded_error(var_name=STRING)  # MissingArgumentError
NON_EXISTING_CHANNEL_NAME_ERROR = coded_error(stream=STRING)  # NonExistingChannelNameError
NON_EXISTING_CHANNEL_ID_ERROR = coded_error(stream_id=INTEGER)  # NonExistingChannelIdError
INCOMPATIBLE_PARAMETERS_ERROR = coded_error(parameters=STRING)  # IncompatibleParametersError
#: Zulip's BadNarrowOperatorError (zerver/lib/narrow.py; the spec does not describe it): BAD_NARROW with ``desc``.
BAD_NARROW_ERROR = coded_error(desc=STRING)


# -- users, streams, presence, typing and register (get-own-user, get-users, get-user, get-streams,
# get-subscriptions, subscribe, unsubscribe, get-presence, set-typing-status, register-queue, get-events) --

#: ``User``: every field Zulip's server sends for a user; ``bot_owner_id`` only for bots, ``profile_data`` only when
#: custom profile fields are asked for (always in register's ``realm_users``).
USER_FIELDS = {
    "user_id": always(INTEGER), "delivery_email": always(STRING, NULL), "email": always(STRING),
    "full_name": always(STRING), "date_joined": always(STRING), "is_active": always(BOOLEAN),
    "is_owner": always(BOOLEAN), "is_admin": always(BOOLEAN), "is_guest": always(BOOLEAN), "is_bot": always(BOOLEAN),
    "bot_type": always(INTEGER, NULL), "bot_owner_id": sometimes(INTEGER, NULL), "role": always(INTEGER),
    "timezone": always(STRING), "avatar_url": always(STRING, NULL), "avatar_version": always(INTEGER),
    "profile_data": sometimes(OBJECT),
}
USER = Schema(USER_FIELDS)
#: An entry of register's ``realm_users``: a ``User`` without ``is_active`` (all of them are active).
REALM_USER = Schema({name: f for name, f in USER_FIELDS.items() if name != "is_active"})
SUCCESS = {"result": always(STRING), "msg": always(STRING), "ignored_parameters_unsupported": sometimes(ARRAY)}
#: The 200 answer of GET /users/me: the user's fields but the bot ones, and the newest message's id.
OWN_USER_ANSWER = Schema({**SUCCESS, **{name: f for name, f in USER_FIELDS.items()
                                        if name not in ("bot_type", "bot_owner_id")},
                          "max_message_id": always(INTEGER), "profile_data": always(OBJECT)})
USERS_ANSWER = Schema({**SUCCESS, "members": always(ARRAY, items=USER)})
USER_ANSWER = Schema({**SUCCESS, "user": always(OBJECT, shape=USER)})

#: ``GroupSettingValue``: a group's id, or an anonymous group of users and groups.
GROUP_SETTING = always(INTEGER, OBJECT, shape=Schema({"direct_members": always(ARRAY, items=INTEGER),
                                                      "direct_subgroups": always(ARRAY, items=INTEGER)}))
#: ``BasicChannel`` (GET /streams), every field required by the spec.
CHANNEL_FIELDS = {
    "stream_id": always(INTEGER), "name": always(STRING), "is_archived": always(BOOLEAN),
    "description": always(STRING), "date_created": always(INTEGER), "creator_id": always(INTEGER, NULL),
    "invite_only": always(BOOLEAN), "rendered_description": always(STRING), "is_web_public": always(BOOLEAN),
    "stream_post_policy": always(INTEGER), "message_retention_days": always(INTEGER, NULL),
    "history_public_to_subscribers": always(BOOLEAN), "first_message_id": always(INTEGER, NULL),
    "is_recently_active": always(BOOLEAN), "is_announcement_only": always(BOOLEAN),
    "stream_weekly_traffic": always(INTEGER, NULL),
    **{f"can_{p}_group": GROUP_SETTING for p in ("add_subscribers", "remove_subscribers", "administer_channel",
                                                 "send_message", "subscribe")},
}
CHANNEL = Schema(CHANNEL_FIELDS)
#: register's ``never_subscribed``: a channel, with its subscribers when asked for.
NEVER_SUBSCRIBED = Schema({**CHANNEL_FIELDS, "subscribers": sometimes(ARRAY, items=INTEGER)})
#: ``Subscription``: the channel and the user's settings of it; ``subscribers`` only with include_subscribers.
SUBSCRIPTION = Schema({
    **CHANNEL_FIELDS, "subscribers": sometimes(ARRAY, items=INTEGER), "color": always(STRING),
    "is_muted": always(BOOLEAN), "in_home_view": always(BOOLEAN), "pin_to_top": always(BOOLEAN),
    **{f"{kind}_notifications": always(BOOLEAN, NULL) for kind in ("desktop", "email", "push", "audible")},
    "wildcard_mentions_notify": always(BOOLEAN, NULL),
})
STREAMS_ANSWER = Schema({**SUCCESS, "streams": always(ARRAY, items=CHANNEL)})
SUBSCRIPTIONS_ANSWER = Schema({**SUCCESS, "subscriptions": always(ARRAY, items=SUBSCRIPTION)})
SUBSCRIBE_ANSWER = Schema({**SUCCESS, "subscribed": always(OBJECT, values=always(ARRAY, items=STRING)),
                           "already_subscribed": always(OBJECT, values=always(ARRAY, items=STRING)),
                           "unauthorized": sometimes(ARRAY, items=STRING)})
UNSUBSCRIBE_ANSWER = Schema({**SUCCESS, "removed": always(ARRAY, items=STRING),
                             "not_removed": always(ARRAY, items=STRING)})
SIMPLE_SUCCESS = Schema(SUCCESS)

#: ``LegacyPresenceFormat`` (``pushable`` not in the ``aggregated`` entry) and ``ModernPresenceFormat``.
LEGACY_PRESENCE = Schema({"client": always(STRING), "status": always(STRING), "timestamp": always(INTEGER),
                          "pushable": sometimes(BOOLEAN)})
MODERN_PRESENCE = Schema({"active_timestamp": always(INTEGER), "idle_timestamp": always(INTEGER)})
#: ``presences`` by email, each by client name (and "aggregated"); slim: by user id.
LEGACY_PRESENCES = always(OBJECT, values=always(OBJECT, values=always(OBJECT, shape=LEGACY_PRESENCE)))
MODERN_PRESENCES = always(OBJECT, values=always(OBJECT, shape=MODERN_PRESENCE))
REALM_PRESENCE_ANSWER = Schema({**SUCCESS, "presences": LEGACY_PRESENCES,
                                "server_timestamp": always(INTEGER, "number")})

#: The ``subscription`` events of GET /events: ``add``, ``remove``, ``peer_add`` and ``peer_remove``.
SUBSCRIPTION_ADD_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                                 "subscriptions": always(ARRAY, items=SUBSCRIPTION)})
SUBSCRIPTION_REMOVE_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                                    "subscriptions": always(ARRAY, items=Schema({"stream_id": always(INTEGER),
                                                                                 "name": always(STRING)}))})
SUBSCRIPTION_PEER_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                                  "stream_ids": always(ARRAY, items=INTEGER), "user_ids": always(ARRAY, items=INTEGER)})
#: The ``typing`` events: ``recipients`` for a direct message, ``stream_id`` and ``topic`` for a stream's.
TYPING_USER = Schema({"user_id": always(INTEGER), "email": always(STRING)})
TYPING_EVENT = Schema({"id": always(INTEGER), "type": always(STRING), "op": always(STRING),
                       "message_type": always(STRING), "sender": always(OBJECT, shape=TYPING_USER),
                       "recipients": sometimes(ARRAY, items=TYPING_USER), "stream_id": sometimes(INTEGER),
                       "topic": sometimes(STRING)})

#: register's ``unread_msgs``.
UNREAD_IDS = always(ARRAY, items=INTEGER)
UNREAD_MSGS = Schema({
    "count": always(INTEGER),
    "pms": always(ARRAY, items=Schema({"other_user_id": always(INTEGER), "sender_id": always(INTEGER),
                                       "unread_message_ids": UNREAD_IDS})),
    "streams": always(ARRAY, items=Schema({"topic": always(STRING), "stream_id": always(INTEGER),
                                           "unread_message_ids": UNREAD_IDS})),
    "huddles": always(ARRAY, items=Schema({"user_ids_string": always(STRING), "unread_message_ids": UNREAD_IDS})),
    "mentions": UNREAD_IDS, "old_unreads_missing": always(BOOLEAN),
})
#: The 200 answer of POST /register, with the fields of the event types eventbus serves state for (each present
#: when its type is fetched); ``user_id``, ``email`` and ``full_name`` are Zulip's ``realm_user`` fields, always
#: given here.
REGISTER_ANSWER = Schema({
    **SUCCESS, "queue_id": always(STRING), "last_event_id": always(INTEGER), "zulip_version": always(STRING),
    "zulip_feature_level": always(INTEGER), "zulip_merge_base": sometimes(STRING),
    "user_id": always(INTEGER), "email": always(STRING), "full_name": always(STRING),
    "max_message_id": sometimes(INTEGER),
    "presences": sometimes(OBJECT), "server_timestamp": sometimes(INTEGER, "number"),
    "presence_last_update_id": sometimes(INTEGER), "server_presence_ping_interval_seconds": sometimes(INTEGER),
    "server_presence_offline_threshold_seconds": sometimes(INTEGER),
    "realm_users": sometimes(ARRAY, items=REALM_USER), "realm_non_active_users": sometimes(ARRAY, items=USER),
    "cross_realm_bots": sometimes(ARRAY, items=USER),
    "subscriptions": sometimes(ARRAY, items=SUBSCRIPTION), "unsubscribed": sometimes(ARRAY, items=SUBSCRIPTION),
    "never_subscribed": sometimes(ARRAY, items=NEVER_SUBSCRIBED),
    "unread_msgs": sometimes(OBJECT, shape=UNREAD_MSGS),
})


def check(value: Any, schema: Schema, where: str = "answer") -> None:
    """AssertionError listing every way ``value`` differs from ``schema``."""
    problems = _problems(value, schema, where)
    assert not problems, "\n".join(problems)


def check_message(message: dict[str, Any], schema: Schema = HISTORY_MESSAGE, where: str = "message") -> None:
    """A message object: its schema, and what depends on its type (``stream_id`` exactly for stream messages,
    ``display_recipient`` a name or a list of users)."""
    problems = _problems(message, schema, where)
    stream = message.get("type") == "stream"
    if message.get("type") not in ("stream", "private"):
        problems.append(f"{where}.type is {message.get('type')!r}, not 'stream' or 'private'")
    if stream != ("stream_id" in message):
        problems.append(f"{where}: stream_id must be there for a stream message and only then")
    if stream != isinstance(message.get("display_recipient"), str):
        problems.append(f"{where}.display_recipient: a stream's name, or a list of users for a private message")
    if "rendered_content" in message:
        problems.append(f"{where}: rendered_content is not a field of a message object")
    assert not problems, "\n".join(problems)


def _problems(value: Any, schema: Schema, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where} is {type(value).__name__}, not an object"]
    problems = [f"{where}.{name} is not in the spec" for name in value if name not in schema.fields]
    for name, spec in schema.fields.items():
        if name not in value:
            if spec.always:
                problems.append(f"{where}.{name} is missing")
            continue
        problems += _field_problems(value[name], spec, f"{where}.{name}")
    return problems


def _field_problems(value: Any, spec: Field, where: str) -> list[str]:
    found = _type(value)
    if found not in spec.types:
        return [f"{where} is {found}, not {' or '.join(spec.types)}"]
    problems = []
    if found == ARRAY and isinstance(spec.items, Schema):
        for i, item in enumerate(value):
            problems += _problems(item, spec.items, f"{where}[{i}]")
    elif found == ARRAY and spec.items is not None:
        problems += [f"{where}[{i}] is {_type(item)}, not {spec.items}" for i, item in enumerate(value)
                     if _type(item) != spec.items]
    elif found == OBJECT and spec.shape is not None:
        problems += _problems(value, spec.shape, where)
    elif found == OBJECT and spec.values is not None:
        for key, item in value.items():
            problems += _field_problems(item, spec.values, f"{where}[{key!r}]")
    return problems


def _type(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    for kind, name in ((str, STRING), (list, ARRAY), (dict, OBJECT), (float, "number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
