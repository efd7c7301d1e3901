"""The Tornado event server's core: one process holding every client's event queue.

``EventServer`` holds the clients (``ClientRegistry``), takes notices in
(``notify``: from ``notify_tornado`` or POSTed), runs the process's
lifecycle (``start``, ``shutdown``) and reports its statistics. What else the
process does lives beside it, each in a module of its own that the server
creates, starts and stops, and that ``eventbus.app.make_app`` hands to the
handlers that use it: who is asking (``auth.Authenticator``), the open
websockets (``sockets.OpenSockets``), the requests waiting for
message_sender (``submissions.Submissions``) and what is recorded of each
request (``activity.ActivityRecorder``).

``eventbus.app.serve`` runs it until SIGTERM or SIGINT, then stops accepting,
saves every queue to ``<var>/event_queues.json`` and exits. The next start
restores them, each with a ``restart`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback

from eventbus import __version__
from eventbus.accounts import deactivated_user, ended_session, session_ended_event
from eventbus.contracts import (
    MESSAGE_SENDER,
    NOTIFY_TORNADO,
    Notice,
)
from eventbus.messages import MessageStore
from eventbus.presence import PresenceStore
from eventbus.queue import Broker, make_broker
from eventbus.settings import Settings
from eventbus.tornado_events.activity import ActivityRecorder
from eventbus.tornado_events.auth import Authenticator
from eventbus.tornado_events.away import AwayNotifier
from eventbus.tornado_events.clients import ClientRegistry
from eventbus.tornado_events.event_queue import ClientDescriptor
from eventbus.tornado_events.handlers import EventsHandler, HeldAnswers
from eventbus.tornado_events.handover import Handover
from eventbus.tornado_events.initial_state import InitialState
from eventbus.tornado_events.notify import split_notice
from eventbus.tornado_events.rate_limit import RateLimits
from eventbus.tornado_events.sockets import OpenSockets
from eventbus.tornado_events.submissions import Submissions
from eventbus.users import User

logger = logging.getLogger(__name__)

#: The Zulip API feature level whose behaviour eventbus follows (Zulip 10.0's, of the OpenAPI description the
#: endpoints were checked against); README lists what below it is not served.
ZULIP_FEATURE_LEVEL = 372

#: Websocket close code: the server restarts (RFC 6455's registry).
SERVICE_RESTART = 1012

#: How long a stopping server waits for its answers to be written, its websockets to close and message_sender to
#: answer the requests it was sent: clients resume either way, this only spares them a retry.
SHUTDOWN_GRACE_SECONDS = 5.0
#: How often it looks.
SHUTDOWN_POLL_SECONDS = 0.02


class EventServer:
    """The state of one Tornado event process; see the module docstring."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.shard = settings.tornado_shard
        self.sharding = settings.sharding
        self.registry = ClientRegistry(settings.max_queue_events, settings.max_queue_bytes,
                                       settings.max_queues_per_user, lambda: self.sharding.new_queue_id(self.shard))
        self.broker = broker if broker is not None else make_broker(settings)
        self.queue_client = self.broker.tornado_client(name=f"tornado {settings.server_id}")
        self.away = AwayNotifier(self.registry, self.queue_client.publish_nowait)
        self.registry.after_last_queue_expired.append(self.away.on_queues_expired)
        self.messages = MessageStore(settings.database)
        self.presence = PresenceStore(settings.database)
        self.start_state = InitialState(self.messages, self.presence)
        self.rate_limits = RateLimits.from_settings(settings)
        self.sockets = OpenSockets()
        #: The held long-polls that have events, answered together after the loop's current callbacks.
        self.held_answers = HeldAnswers()
        self.authenticator = Authenticator(settings, self.messages.users, self.sockets)
        if self.sharding.sharded and not settings.shared_secret:
            logger.error("shard %d of %d without a shared_secret in %s: CSRF tokens of another shard fail here, "
                         "and requests handed over count twice against rate limits", self.shard,
                         self.sharding.count, settings.secrets_file)
        self.handover = Handover(self.sharding, self.shard, settings.shared_secret, settings.heartbeat_seconds)
        self.submissions = Submissions(self.queue_client.publish, settings.server_id, settings.return_queue)
        self.activity = ActivityRecorder(self.queue_client.publish_nowait, settings.slow_request_seconds)
        # Shards may share a var folder: each saves its own queues.
        self.queues_file = Path(settings.var_dir) / (
            f"event_queues_{self.shard}.json" if self.sharding.sharded else "event_queues.json")
        self.started = time.time()
        #: Set once shutdown() stopped consuming: no request is held from then on.
        self.stopping = False
        self._gc: PeriodicCallback | None = None
        self._heartbeats: PeriodicCallback | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Restore saved queues, start consuming, start collecting expired queues. Call inside the IOLoop."""
        restored = self.registry.load(self.queues_file, self.restart_event())
        if restored:
            logger.info("restored %d event queue(s) from %s", restored, self.queues_file)
        for queue in self.notify_queues:
            self.queue_client.consume(queue, self.on_notice if queue == self.settings.notify_queue
                                      else self.on_notice_to_route)
        self.queue_client.consume(self.settings.return_queue, self.submissions.on_return)
        self.queue_client.start()
        self._gc = PeriodicCallback(self._collect_garbage, self.settings.queue_gc_seconds * 1000)
        self._gc.start()
        self._heartbeats = PeriodicCallback(self._send_heartbeats, self.settings.heartbeat_seconds * 100)
        self._heartbeats.start()
        self.activity.start()

    def _send_heartbeats(self) -> None:
        self.registry.send_heartbeats(self.settings.heartbeat_seconds)

    def _collect_garbage(self) -> None:
        self.registry.collect_garbage()
        self.rate_limits.forget_refilled()
        self.authenticator.collect_garbage()

    async def shutdown(self, http: HTTPServer | None = None) -> None:
        """Stop in the order that neither loses nor repeats an event for any client (SIGTERM, SIGINT).

        1. Stop accepting connections (``http``), and the timers.
        2. Stop consuming notify_tornado: no event comes into a client queue after
           this, and what came is acked; deliveries read but not handed out go back
           to RabbitMQ, for the next process.
        3. Stop answering: every held GET gets a heartbeat (Zulip clients poll again at
           once, and the next process answers), every websocket a 1012 close (reconnect);
           requests waiting for message_sender get its answer while the return queue is
           still consumed (``SHUTDOWN_GRACE_SECONDS`` at most), then it stops too. Then
           every HTTP connection closes: no request can touch a queue any more.
        4. Save every queue that can be saved.
        5. Publish the activity counts, close the queue client.
        """
        for timer in (self._gc, self._heartbeats):
            if timer is not None:
                timer.stop()
        self.activity.stop()
        if http is not None:
            http.stop()
        await self.queue_client.stop_consuming(self.notify_queues)
        self.stopping = True
        answers = [w for w in (listener.restart(client) for client, listener in self._held_polls()) if w is not None]
        self.sockets.close(SERVICE_RESTART, "the server is restarting; reconnect and resume")
        await self._wait_stopped_answering(answers)
        await self.queue_client.stop_consuming([self.settings.return_queue])
        self.submissions.expire_all()
        if http is not None:
            await http.close_all_connections()
        saved = self.registry.dump(self.queues_file)
        logger.info("saved %d event queue(s) to %s", saved, self.queues_file)
        self.activity.flush(at_once=True)
        self.handover.close()
        await self.queue_client.close()

    def _held_polls(self) -> list[tuple[ClientDescriptor, EventsHandler]]:
        return [(client, client.listener) for client in self.registry if isinstance(client.listener, EventsHandler)]

    async def _wait_stopped_answering(self, answers: list[asyncio.Future[None]]) -> None:
        """Wait until the answers are written, the websockets closed and the submitted requests answered."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        if answers:
            await asyncio.wait(answers, timeout=SHUTDOWN_GRACE_SECONDS)
        while (self.sockets or self.submissions) and time.monotonic() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_SECONDS)
        if self.sockets or self.submissions:
            logger.warning("stopping with %d websocket(s) not closed and %d request(s) not answered by %s",
                           len(self.sockets), len(self.submissions), MESSAGE_SENDER)

    # -- queues in and out ----------------------------------------------------------

    @property
    def notify_queues(self) -> list[str]:
        """The queues this process takes notices from: its shard's; with sharding, ``notify_tornado`` too, for
        notices that were put there whole (an older producer, ``eventbus replay_errors``) and must be routed."""
        own = self.settings.notify_queue
        return [own, NOTIFY_TORNADO] if own != NOTIFY_TORNADO else [own]

    def on_notice(self, notice: Any) -> None:
        """Invoked for each event of this shard's notify queue."""
        self.notify(notice)

    async def on_notice_to_route(self, notice: Any) -> None:
        """Invoked for each event of the plain ``notify_tornado`` when sharded."""
        await self.route(notice)

    async def route(self, notice: Any) -> int:
        """A notice that may concern other shards' users too (POSTed, or from the plain ``notify_tornado``):
        their part is published to their notify queues (before this shard's part is delivered: a failure
        then leaves nothing delivered twice when the notice comes again), ours delivered here. How many of
        this process's clients got it; ValueError for a bad notice."""
        parts = split_notice(self.sharding, Notice.from_event(notice))
        mine = parts.pop(self.shard, None)
        await asyncio.gather(*(self.queue_client.publish(self.sharding.notify_queue(shard), part.event())
                               for shard, part in parts.items()))
        return self.deliver(mine) if mine is not None else 0

    def notify(self, notice: Any) -> int:
        """A notice, from notify_tornado or POSTed: queue its event for every client that wants it, and
        notify its away recipients. How many clients got it; ContractError (a ValueError) for a bad notice."""
        return self.deliver(Notice.from_event(notice))

    def deliver(self, notice: Notice) -> int:
        """``notify`` for a notice checked already (a routed part is not checked again)."""
        event, users = notice.client_event, notice.users
        ended = ended_session(event)
        if ended is not None:  # a logout on another process: nothing for clients
            self.authenticator.forget_session(ended)
            return 0
        deactivated = deactivated_user(event)
        if deactivated is not None:
            self.forget_user(deactivated)
        delivered = self.registry.deliver(event, users)
        self.away.on_message(event, users)
        return delivered

    async def session_ended(self, key: str) -> None:
        """A session ended here: every other shard forgets it now, not when its credential cache lets it go
        (a notice to each one's notify queue, confirmed)."""
        if not self.sharding.sharded:
            return
        notice = Notice.of(session_ended_event(key), []).event()
        await asyncio.gather(*(self.queue_client.publish(self.sharding.notify_queue(shard), notice)
                               for shard in range(self.sharding.count) if shard != self.shard))

    def forget_user(self, user_id: int) -> None:
        """A deactivated user: their queues dropped (held polls answered), sockets closed, credentials forgotten."""
        # Sockets first: a socket told its queue is gone would register a new one before it is closed.
        closed = self.authenticator.forget_user(user_id)
        dropped = [client for client in self.registry if client.user_id == user_id]
        for client in dropped:
            self.registry.remove(client, "the user was deactivated")
        logger.info("user %d deactivated: %d event queue(s) dropped, %d websocket(s) closed", user_id, len(dropped),
                    closed)

    def monitoring_broker(self) -> Broker:
        """A blocking broker for reading queue depths (in an executor): the one this server consumes from."""
        return self.broker

    def restart_event(self) -> dict[str, Any]:
        """The event each restored queue gets first, as Zulip's: when this process started (whole seconds)."""
        return {"type": "restart", "server_generation": int(self.started), **self.server_settings()}

    def server_settings(self) -> dict[str, Any]:
        """This server's version, as Zulip clients ask for it."""
        return {"zulip_version": f"eventbus-{__version__}", "zulip_feature_level": ZULIP_FEATURE_LEVEL}

    def initial_state(self, user: User) -> dict[str, Any]:
        """What register always answers besides the queue: who the user is, and this server's version (the state
        of each event type the client fetches is ``start_state``'s)."""
        return {"user_id": user.id, "email": user.email, "full_name": user.full_name, **self.server_settings()}

    def statistics(self) -> dict[str, Any]:
        """A plain record of this process: its clients and connections, and what it delivered and waits for."""
        return {
            "clients": len(self.registry),
            "sockets": len(self.sockets),
            "long_polls": sum(1 for c in self.registry if isinstance(c.listener, EventsHandler)),
            "events_delivered": self.registry.events_delivered,
            "pending_requests": len(self.submissions),
            "slow_consumers_closed": self.sockets.slow_consumers_closed,
            "queue_client": self.queue_client.statistics(),
        }
