"""Django integration: publish events only once the database transaction that made them commits.

Publishing inside a transaction that later rolls back announces rows that
never existed, and publishing before the commit lets a fast consumer read
rows that do not exist yet (Zulip met both). These functions defer the
publish with ``transaction.on_commit``; outside a transaction they publish
at once. Bad input raises at the call, not at commit time.

Settings come from Django's settings: ``EVENTBUS = {"AMQP_URL": ..., "VAR_DIR":
..., ...}`` holds the same names as the ``EVENTBUS_*`` variables, without the
prefix; environment variables fill what it leaves out. Add
``"eventbus.django.EventbusConfig"`` to ``INSTALLED_APPS`` to apply them at start-up.

If RabbitMQ cannot take an event after the commit, the event goes to the
error store (``eventbus replay_errors QUEUE`` sends it later): the
transaction is committed, so raising would help nobody, and nothing is lost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.db import transaction

from eventbus import codec
from eventbus.contracts import NOTIFY_TORNADO, Notice, Recipient
from eventbus.errors import BrokerError
from eventbus.queue import check_queue_name, get_broker, queue_json_publish
from eventbus.settings import Settings, set_settings
from eventbus.tornado_events import send_event

logger = logging.getLogger(__name__)


def queue_event_on_commit(queue_name: str, event: Any, using: str | None = None) -> None:
    """``queue_json_publish(queue_name, event)`` once the current transaction commits."""
    check_queue_name(queue_name)
    codec.encode(event)  # an event that is not JSON fails here, inside the view, not after the commit
    transaction.on_commit(lambda: _publish(queue_name, event, lambda: queue_json_publish(queue_name, event)),
                          using=using)


def send_event_on_commit(event: dict[str, Any], user_ids: Iterable[Recipient], using: str | None = None) -> None:
    """``send_event(event, user_ids)`` through the process's broker once the current transaction commits."""
    notice = Notice.of(event, user_ids)  # a bad event fails here, inside the view, not after the commit
    # A notice that cannot be published is kept for notify_tornado, which every shard consumes and routes.
    transaction.on_commit(lambda: _publish(NOTIFY_TORNADO, notice.event(),
                                           lambda: send_event(get_broker(), notice.client_event, notice.users)),
                          using=using)


def _publish(queue_name: str, event: Any, publish: Any) -> None:
    try:
        publish()
    except BrokerError as e:
        logger.error("event for %s not published after commit (%s); kept in the error store", queue_name, e)
        get_broker().error_store.record(queue_name, event, error=f"publish after commit failed: {e}", tries=1)


def settings_from_django() -> Settings:
    """eventbus's settings from Django's ``EVENTBUS`` setting, then the environment."""
    configured: dict[str, Any] = getattr(django_settings, "EVENTBUS", {})
    environ = dict(os.environ)
    environ.update({f"EVENTBUS_{name.upper()}": str(value) for name, value in configured.items()})
    return Settings.from_env(environ)


class EventbusConfig(AppConfig):
    """Applies the ``EVENTBUS`` Django setting when Django starts."""

    name = "eventbus.django"
    label = "eventbus"
    verbose_name = "eventbus"

    def ready(self) -> None:
        set_settings(settings_from_django())
