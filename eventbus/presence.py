"""Every user's presence, as Zulip's API shows it at start: what a client that loads knows of who is online.

The ``user_presence`` processor (``processors.queues.analytics``) keeps each
user's latest status in the ``user_presence`` table of the shared database
and tells everyone of changes through ``presence`` events; ``PresenceStore``
reads that table for the answers that carry everyone's presence at once
(``GET /realm/presence``, register's ``presences``). A user whose last status
is ``offline``, or who never reported one, is left out, as Zulip leaves out
users long gone: clients show them offline. How old a report may be before
its user counts as offline is the client's to judge against
``server_timestamp``, with ``OFFLINE_THRESHOLD_SECONDS``, as in Zulip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from eventbus.database import Store
from eventbus.schema import user_presence, users

#: How often a client reports its user's presence, and how old a report may be before the user shows as
#: offline: Zulip's values, which clients read from register (``server_presence_*``).
PING_INTERVAL_SECONDS = 60
OFFLINE_THRESHOLD_SECONDS = 140
#: The statuses a presence object shows (Zulip's); anything else is offline.
SHOWN = ("active", "idle")
#: The client every presence is reported under since Zulip 7.0, which no longer stores clients.
CLIENT = "website"


@dataclass(frozen=True)
class UserPresence:
    user_id: int
    email: str
    status: str  # one of SHOWN
    timestamp: int

    def legacy(self) -> dict[str, Any]:
        """Zulip's legacy format (``LegacyPresenceFormat`` per client, and ``aggregated``)."""
        entry = {"client": CLIENT, "status": self.status, "timestamp": self.timestamp}
        return {CLIENT: {**entry, "pushable": False}, "aggregated": entry}

    def modern(self) -> dict[str, Any]:
        """Zulip's modern format (``slim_presence``). Only the latest status is stored: an idle user's last
        active time is not known, and is given as 0 (long ago)."""
        return {"active_timestamp": self.timestamp if self.status == "active" else 0,
                "idle_timestamp": self.timestamp}


class PresenceStore(Store):
    """Reads the ``user_presence`` table (the ``user_presence`` processor writes it); safe from any thread."""

    def all(self) -> list[UserPresence]:
        """The presence of every active user who is not offline, by user id."""
        query = (select(user_presence.c.user_id, users.c.email, user_presence.c.status, user_presence.c.time)
                 .join(users, users.c.id == user_presence.c.user_id)
                 .where(users.c.is_active, user_presence.c.status.in_(SHOWN)).order_by(user_presence.c.user_id))
        with self._db() as db:
            rows = db.execute(query).all()
        return [UserPresence(row.user_id, row.email, row.status, int(row.time)) for row in rows]


def presences(found: list[UserPresence], slim: bool = False) -> dict[str, Any]:
    """Zulip's ``presences`` object: by user id in the modern format (``slim``), else by email in the legacy one."""
    if slim:
        return {str(p.user_id): p.modern() for p in found}
    return {p.email: p.legacy() for p in found}
