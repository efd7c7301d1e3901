"""Producers' side of the event server: ``send_event``, and checking what arrives on the notify queues.

``send_event`` is the one place that decides which Tornado process gets an
event: it groups the recipients by the shard that owns them
(``eventbus.sharding``, from the broker's settings) and publishes one notice
per shard, to that shard's notify queue, confirms pipelined. Without
sharding that is one notice on ``notify_tornado``. A shard given a notice
with recipients of other shards (POSTed to its notify endpoint, or put on
the plain ``notify_tornado`` queue, which every shard also consumes) routes
it on the same way (``split_notice``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eventbus.accounts import deactivated_user
from eventbus.contracts import Notice, Recipient, recipient
from eventbus.queue import Broker
from eventbus.sharding import Sharding


def send_event(broker: Broker, event: dict[str, Any], user_ids: Iterable[Recipient]) -> None:
    """Deliver ``event`` to every client of the users through ``broker``; returns once the broker has it.

    The broker is the caller's (a processor's ``self.broker``): a process-wide one only at an entry point.
    ContractError (a ValueError) saying what is wrong with a bad event, before anything is published.
    An event for 10,000 users on 4 shards is 4 publishes, confirmed in one round trip.
    """
    send_events(broker, [(event, user_ids)])


def send_events(broker: Broker, events: Sequence[tuple[dict[str, Any], Iterable[Recipient]]]) -> None:
    """``send_event`` for several events, in order, with pipelined confirms: one round trip for the lot.

    Every notice is checked before any is published: a bad one raises ContractError and none goes out.
    """
    sharding = broker.settings.sharding
    notices = [Notice.of(event, user_ids) for event, user_ids in events]
    routed = [(sharding.notify_queue(shard), part.event())
              for notice in notices for shard, part in split_notice(sharding, notice).items()]
    if routed:
        broker.publish_routed(routed)


def split_notice(sharding: Sharding, notice: Notice) -> dict[int, Notice]:
    """The part of ``notice`` for each shard that owns some of its users, in their order.

    Without sharding: the notice, as given. A deactivation goes to every shard: a shard that does not own the
    user may still trust their credentials for a while, or hold a websocket they submit messages through.
    """
    if not sharding.sharded:
        return {0: notice}
    by_shard: dict[int, list[Recipient]] = {}
    for user in notice.users:
        by_shard.setdefault(sharding.shard_for(recipient(user)[0]), []).append(user)
    if deactivated_user(notice.client_event) is not None:
        for shard in range(sharding.count):
            by_shard.setdefault(shard, [])
    return {shard: Notice(notice.client_event, tuple(mine)) for shard, mine in sorted(by_shard.items())}
