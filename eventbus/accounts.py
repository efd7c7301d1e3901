"""Ending a user's access: ``deactivate_user``, the one code path of the CLI and of any admin API.

Deactivation marks the user inactive (the API key stops working for every
fresh lookup), ends their sessions, and sends one notice through
``send_event``: a Zulip ``realm_user`` update with ``is_active: false``,
addressed to the user (so that it reaches the Tornado process owning them,
however ``send_event`` routes) and to every active user (whose clients learn
it, as Zulip's do). Every Tornado process that gets it forgets the user at
once (``deactivated_user``): cached credentials and sessions, websockets,
event queues. The notice is a contract: ``user_deactivated_event`` builds it,
``deactivated_user`` recognizes it, nothing else does either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eventbus.sessions import SessionStore
from eventbus.users import User, UserError, UserStore
from eventbus.validation import is_id

logger = logging.getLogger(__name__)

#: ``send_event`` bound to the caller's broker (``partial(send_event, broker)``), or whatever an admin API's process
#: uses.
SendEvent = Callable[[dict[str, Any], Iterable[int]], None]


@dataclass(frozen=True, slots=True)
class Deactivation:
    user: User
    sessions_ended: int


def user_deactivated_event(user_id: int) -> dict[str, Any]:
    """The event of a deactivation, as Zulip sends it to clients."""
    return {"type": "realm_user", "op": "update", "person": {"user_id": user_id, "is_active": False}}


def deactivated_user(event: dict[str, Any]) -> int | None:
    """The user a deactivation event is about, or None for any other event."""
    if event.get("type") != "realm_user" or event.get("op") != "update":
        return None
    person = event.get("person")
    if not isinstance(person, dict) or person.get("is_active") is not False:
        return None
    user_id = person.get("user_id")
    return user_id if is_id(user_id) else None


def deactivate_user(users: UserStore, sessions: SessionStore, email: str, send_event: SendEvent) -> Deactivation:
    """Deactivate the user with ``email`` and tell every Tornado process; UserError if there is none.

    Deactivating an inactive user again does it all again: after a failed
    ``send_event`` (the broker was down), running it once more completes it.
    """
    user = users.get_by_email(email)
    if user is None:
        raise UserError(f"no user with email {email!r}")
    users.deactivate(user.id)
    ended = sessions.end_all(user.id)
    send_event(user_deactivated_event(user.id), [user.id, *users.active_ids(besides=user.id)])
    logger.info("deactivated user %d (%s): %d session(s) ended", user.id, user.email, ended)
    return Deactivation(user, ended)


#: The type of the notice a logout sends every other Tornado process: internal, it never reaches a client.
SESSION_ENDED = "eventbus_session_ended"


def session_ended_event(key: str) -> dict[str, Any]:
    """The notice event of a logout: the ended session's key (the hash the database keeps, never the cookie's id),
    for every Tornado process that may hold the session in its credential cache to forget it."""
    return {"type": SESSION_ENDED, "session_key": key}


def ended_session(event: dict[str, Any]) -> str | None:
    """The session key a logout notice is about, or None for any other event."""
    if event.get("type") != SESSION_ENDED:
        return None
    key = event.get("session_key")
    return key if isinstance(key, str) and 0 < len(key) <= 128 else None
