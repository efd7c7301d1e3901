"""Producers' side of the event server: ``send_event``.

``send_event`` is the one place that decides which Tornado process gets an
event: today the one ``notify_tornado`` queue; with several processes each
owning a share of the users, this is where the routing goes. The notice's
shape, and the names of the queues, are the contract in ``eventbus.contracts``
(``Notice``, ``notify_queue_name``, ``return_queue_name``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventbus.contracts import Notice, Recipient, notify_queue_name
from eventbus.queue import Broker


def send_event(broker: Broker, event: dict[str, Any], user_ids: Iterable[Recipient]) -> None:
    """Deliver ``event`` to every client of the users through ``broker``; returns once the broker has it.

    The broker is the caller's (a processor's ``self.broker``): a process-wide one only at an entry point.
    ContractError (a ValueError) saying what is wrong with a bad event, before anything is published.
    """
    broker.publish(notify_queue_name(), Notice.of(event, user_ids).event())
