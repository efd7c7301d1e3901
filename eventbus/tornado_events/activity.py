"""What the event server records of the requests it answers: user activity, slow requests, server errors.

Every authenticated API request is counted by user, client (its User-Agent)
and path; the counts go to ``user_activity`` every ``FLUSH_SECONDS``, one
event per user, client and path with its count, instead of one publish per
request. A request slower than ``EVENTBUS_SLOW_REQUEST_SECONDS`` goes to
``slow_queries``, a server error (500) to ``error_reports``, at once.
Publishing never waits here: failures are logged and counted by the queue
client.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import tornado.web
from tornado.ioloop import IOLoop, PeriodicCallback

from eventbus.contracts import ERROR_REPORTS, SLOW_QUERIES, USER_ACTIVITY, ErrorReport, SlowQuery, UserActivity
from eventbus.users import User

#: How often the counted API requests go to user_activity, and how many events per loop iteration.
FLUSH_SECONDS = 5.0
SLICE = 100

#: publish_nowait(queue, event): failures are logged by the queue client.
PublishNowait = Callable[[str, Any], None]


class ActivityRecorder:
    """Counts and reports of one event process's requests; see the module docstring. Use from the IOLoop only."""

    def __init__(self, publish_nowait: PublishNowait, slow_request_seconds: float) -> None:
        self.publish_nowait = publish_nowait
        self.slow_request_seconds = slow_request_seconds
        self._activity: dict[tuple[int, str, str], tuple[int, float]] = {}
        self._flush: PeriodicCallback | None = None

    def start(self) -> None:
        """Flush every ``FLUSH_SECONDS`` from now on. Call inside the IOLoop."""
        self._flush = PeriodicCallback(self.flush, FLUSH_SECONDS * 1000)
        self._flush.start()

    def stop(self) -> None:
        """No more periodic flushes (the server stops: it flushes once more, ``at_once``, at the end)."""
        if self._flush is not None:
            self._flush.stop()

    def record(self, user: User, handler: tornado.web.RequestHandler) -> None:
        """Count an API request; the counts go to user_activity every few seconds (see flush)."""
        # Interned: thousands of clients share a handful of user agents and paths.
        key = (user.id, sys.intern(handler.request.headers.get("User-Agent", "")[:100]),
               sys.intern(handler.request.path))
        count, _ = self._activity.get(key, (0, 0.0))
        self._activity[key] = (count + 1, time.time())

    def flush(self, *, at_once: bool = False) -> None:
        """One user_activity event per user, client and query seen since the last flush, with its count.

        A publish per request cost a third of answering a long-poll (three frames and sends each).
        The events go out ``SLICE`` per loop iteration, so that a flush of
        thousands of users does not hold up the loop; at shutdown, all at once.
        """
        activity, self._activity = self._activity, {}
        events = [UserActivity(user_id, query, client, last, count).event()
                  for (user_id, client, query), (count, last) in activity.items()]
        if at_once:
            for event in events:
                self.publish_nowait(USER_ACTIVITY, event)
        else:
            self._publish_activity(events, 0)

    def _publish_activity(self, events: list[dict[str, Any]], start: int) -> None:
        for event in events[start:start + SLICE]:
            self.publish_nowait(USER_ACTIVITY, event)
        if start + SLICE < len(events):
            IOLoop.current().add_callback(self._publish_activity, events, start + SLICE)

    def report_if_slow(self, handler: tornado.web.RequestHandler, user: User | None) -> None:
        """A finished request that took ``slow_request_seconds`` or more goes to slow_queries."""
        seconds = handler.request.request_time()
        if seconds >= self.slow_request_seconds:
            report = SlowQuery(round(seconds * 1000, 1), path=handler.request.path, method=handler.request.method,
                               status=handler.get_status(), user_email=user.email if user else None, time=time.time())
            self.publish_nowait(SLOW_QUERIES, report.event())

    def report_error(self, handler: tornado.web.RequestHandler, exc_info: Any, user: User | None) -> None:
        """A server error goes to the administrators through error_reports (Tornado has logged it already)."""
        stacktrace = "".join(traceback.format_exception(*exc_info)) if exc_info and exc_info[0] else ""
        report = ErrorReport("server", f"{handler.request.method} {handler.request.path}: "
                                       f"{exc_info[1] if exc_info else 'error'}"[:2000],
                             stacktrace[-20000:], user.email if user else None, extra={"time": time.time()})
        self.publish_nowait(ERROR_REPORTS, report.event())
