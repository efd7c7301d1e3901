"""Analytics and presence: ``user_activity``, ``user_activity_interval`` and ``user_presence``.

All three keep their tables in the shared database (``EVENTBUS_DATABASE``),
through ``AnalyticsStore``:

- ``user_activity`` (batched): ``UserActivity`` (``{"user_id", "query",
  "client"?, "time"?, "count"?}``), sent by Tornado every few seconds for the
  API requests it counted (``record_activity``). A batch is counted per
  (user, client, query) and applied as one bulk upsert: ``count`` grows by the
  batch's count, ``last_visit`` becomes the latest time. A missing client is
  ``""``, a missing time the time of processing. Counts are approximate by
  nature: a batch redelivered after its transaction committed (a worker killed
  between commit and ack) is counted twice, as in Zulip.
- ``user_activity_interval``: ``ActivityInterval`` (``{"user_id", "start", "end"}``, Unix times).
  A user's stored intervals never overlap or touch: a new interval is merged
  with every stored one it overlaps or touches (closed intervals, so
  [1, 2] and [2, 3] become [1, 3]), which also makes a redelivery harmless.
- ``user_presence``: ``PresenceUpdate`` (``{"user_id", "status":
  "active"|"idle"|"offline", "time"?, "client"?}``). The user's latest presence (by ``time``) is stored;
  an older event arriving late changes nothing. When the stored status differs
  from the one the user's peers last heard, they get a ``presence`` event
  through ``send_event`` (a user with no presence yet counts as offline); an
  unchanged status is stored, not broadcast. Peers are every other active
  user: there is one organisation, and in it everyone sees everyone's
  presence (as in a Zulip realm). Broadcasts are coalesced: peers hear of a
  user at most once per ``EVENTBUS_PRESENCE_COALESCE_SECONDS``. A change
  within that time of the last broadcast is stored, and the user's latest
  presence is published again to ``user_presence``, delayed by that time
  (once per window: the row says when it is due); when it comes back, peers
  hear of whatever the status is then. A user toggling fast costs their peers
  two events per window at most, and the last status they set always arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, case, delete, insert, select, update

from eventbus.contracts import (
    USER_ACTIVITY,
    USER_ACTIVITY_INTERVAL,
    USER_PRESENCE,
    ActivityInterval,
    PresenceUpdate,
    UserActivity,
)
from eventbus.database import Store
from eventbus.errors import PermanentError
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, QueueProcessingWorker
from eventbus.schema import user_activity, user_activity_intervals, user_presence
from eventbus.tornado_events import send_event
from eventbus.users import UserStore

#: (user id, client, query) -> (count, last visit).
ActivityCounts = dict[tuple[int, str, str], tuple[int, float]]


@dataclass(frozen=True)
class Presence:
    user_id: int
    status: str
    client: str
    time: float
    announced_status: str  # the status the user's peers last heard of
    announced_at: float  # when they heard of it (Unix time; 0: never)
    recheck_due: float  # when the latest presence published again comes back (0: none pending)

    def update(self) -> PresenceUpdate:
        """This presence as a ``user_presence`` event (published again when its broadcast must wait)."""
        return PresenceUpdate(self.user_id, self.status, self.client, self.time)

    def event(self, email: str) -> dict[str, Any]:
        """The ``presence`` event for the user's peers (Zulip's shape: one entry per client)."""
        entry = {"client": self.client, "status": self.status, "timestamp": int(self.time), "pushable": False}
        return {"type": "presence", "user_id": self.user_id, "email": email, "server_timestamp": time.time(),
                "presence": {self.client: entry}}


class AnalyticsStore(Store):
    """Activity counts, activity intervals and presence; safe from any thread and process."""

    def add_activity(self, counts: ActivityCounts) -> None:
        """Add the counts and last visits, in one transaction: count += n, last_visit = the later of the two."""
        upsert = self.database.insert(user_activity)
        upsert = upsert.on_conflict_do_update(
            index_elements=[user_activity.c.user_id, user_activity.c.client, user_activity.c.query],
            set_={"count": user_activity.c.count + upsert.excluded.count,
                  "last_visit": _later(user_activity.c.last_visit, upsert.excluded.last_visit)})
        rows = [{"user_id": user_id, "client": client, "query": query, "count": count, "last_visit": last_visit}
                for (user_id, client, query), (count, last_visit) in counts.items()]
        with self._db(write=True) as db:
            db.execute(upsert, rows)

    def activity(self, user_id: int) -> dict[tuple[str, str], tuple[int, float]]:
        """(client, query) -> (count, last visit) of a user."""
        with self._db() as db:
            rows = db.execute(select(user_activity).where(user_activity.c.user_id == user_id))
            return {(r.client, r.query): (r.count, r.last_visit) for r in rows}

    def add_interval(self, user_id: int, start: float, end: float) -> tuple[float, float]:
        """Store [start, end] merged with the user's intervals it overlaps or touches; the merged interval."""
        intervals = user_activity_intervals
        with self._db(write=True) as db:
            touching = db.execute(select(intervals).where(
                intervals.c.user_id == user_id, intervals.c.start <= end, intervals.c.end >= start)).all()
            start = min([start, *(r.start for r in touching)])
            end = max([end, *(r.end for r in touching)])
            if touching:
                db.execute(delete(intervals).where(intervals.c.id.in_([r.id for r in touching])))
            db.execute(insert(intervals).values(user_id=user_id, start=start, end=end))
        return start, end

    def intervals(self, user_id: int) -> list[tuple[float, float]]:
        intervals = user_activity_intervals
        with self._db() as db:
            rows = db.execute(select(intervals.c.start, intervals.c.end)
                              .where(intervals.c.user_id == user_id).order_by(intervals.c.start))
            return [(r.start, r.end) for r in rows]

    def set_presence(self, user_id: int, status: str, client: str, when: float) -> Presence:
        """Store the presence unless a newer one is stored; the user's latest presence."""
        upsert = self.database.insert(user_presence).values(user_id=user_id, status=status, client=client, time=when)
        upsert = upsert.on_conflict_do_update(
            index_elements=[user_presence.c.user_id],
            set_={"status": upsert.excluded.status, "client": upsert.excluded.client, "time": upsert.excluded.time},
            where=upsert.excluded.time >= user_presence.c.time)  # only a newer presence replaces the stored one
        with self._db(write=True) as db:
            db.execute(upsert)
            return _presence(db.execute(select(user_presence).where(user_presence.c.user_id == user_id)).one())

    def presence(self, user_id: int) -> Presence | None:
        with self._db() as db:
            row = db.execute(select(user_presence).where(user_presence.c.user_id == user_id)).first()
        return _presence(row) if row else None

    def mark_announced(self, user_id: int, status: str, when: float) -> None:
        """The user's peers have heard of ``status`` at ``when``."""
        self._update_presence(user_id, announced_status=status, announced_at=when)

    def mark_recheck(self, user_id: int, due: float) -> None:
        """The user's latest presence was published again, to come back at ``due``."""
        self._update_presence(user_id, recheck_due=due)

    def _update_presence(self, user_id: int, **values: object) -> None:
        with self._db(write=True) as db:
            db.execute(update(user_presence).where(user_presence.c.user_id == user_id).values(**values))


def _later(stored: Any, given: Any) -> Any:
    """The later of two times, said alike on both engines (SQLite's two-argument ``max`` is ``greatest`` on
    PostgreSQL)."""
    return case((stored > given, stored), else_=given)


def _presence(row: Row[Any]) -> Presence:
    return Presence(row.user_id, row.status, row.client, row.time, row.announced_status, row.announced_at,
                    row.recheck_due)


@assign_queue(USER_ACTIVITY, batch_size=500, batch_wait=2.0)
class UserActivityWorker(LoopQueueProcessingWorker):
    """Counts API requests per user, client and endpoint; see the module docstring."""

    def before_start(self) -> None:
        self.store = AnalyticsStore(self.broker.settings.database)

    def consume_batch(self, events: list[Event]) -> None:
        counts: ActivityCounts = {}
        now = time.time()  # the time of an event that has none
        for _, activity in self.parse(events, UserActivity.from_event):
            key = (activity.user_id, activity.client, activity.query)
            when = now if activity.time is None else activity.time
            count, last_visit = counts.get(key, (0, when))
            counts[key] = (count + activity.count, max(last_visit, when))
        if counts:
            self.store.add_activity(counts)


@assign_queue(USER_ACTIVITY_INTERVAL)
class UserActivityIntervalWorker(QueueProcessingWorker):
    """Stores a user's activity intervals, merged; see the module docstring."""

    def before_start(self) -> None:
        self.store = AnalyticsStore(self.broker.settings.database)

    def consume(self, event: Event) -> None:
        interval = ActivityInterval.from_event(event)
        self.store.add_interval(interval.user_id, float(interval.start), float(interval.end))


@assign_queue(USER_PRESENCE)
class UserPresenceWorker(QueueProcessingWorker):
    """Stores a user's latest presence and tells their peers of a change; see the module docstring."""

    def before_start(self) -> None:
        self.store = AnalyticsStore(self.broker.settings.database)
        self.users = UserStore(self.broker.settings.database)

    def consume(self, event: Event) -> None:
        update = PresenceUpdate.from_event(event)
        user = self.users.get(update.user_id)
        if user is None:
            raise PermanentError(f"no user {update.user_id}")
        when = time.time() if update.time is None else update.time
        self._announce(self.store.set_presence(update.user_id, update.status, update.client, when), user.email)

    def _announce(self, latest: Presence, email: str) -> None:
        """Tell the user's peers of ``latest`` if they have not heard of it: now, or once the window is over."""
        # Compared with what was announced, not with the previous row: a broadcast that failed is made on retry.
        if latest.status == latest.announced_status:
            return
        now, window = time.time(), self.broker.settings.presence_coalesce_seconds
        if now < latest.announced_at + window:
            if latest.recheck_due <= now:  # none pending yet: one comes back after the window, whatever changes
                # Always the whole window, never the rest of it: each delay is a RabbitMQ queue of its own.
                self.broker.publish_later(self.queue_name, [latest.update().event()], window)
                self.store.mark_recheck(latest.user_id, now + window)
            return
        peers = self.users.active_ids(besides=latest.user_id)
        if peers:
            send_event(self.broker, latest.event(email), peers)
        self.store.mark_announced(latest.user_id, latest.status, now)

