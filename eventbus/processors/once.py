"""An event's effect (an email sent, a notification pushed) had at most once, by whichever worker wins its key.

``have_once`` claims the key in the database (``eventbus.claims``), has the
effect, and marks the key done; an effect that raises releases the claim, so
that the retry has it. An event whose key another worker is busy with comes
back to its queue after a whole lease, by when that worker's claim lapsed if
it died before the effect; an event whose effect was had is logged and
dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from eventbus.claims import Busy, Claimed, Claims
from eventbus.queue import Broker

logger = logging.getLogger(__name__)

T = TypeVar("T")


def have_once(broker: Broker, queue: str, event: dict[str, Any], claims: Claims, key: Sequence[Any], what: str,
              effect: Callable[[], T]) -> T | None:
    """``effect()`` for ``event`` if this worker wins ``key`` (its result), else None; ``what`` names the effect
    in the log ("email 3f2a", "push of message 7 to user 3")."""
    claim = claims.claim(*key)
    if isinstance(claim, Busy):
        logger.info("%s: another worker has it in hand (its claim holds %.0f s more); looking again in %g s", what,
                    claim.until - time.time(), claims.lease)
        broker.publish_later(queue, [event], claims.lease)
        return None
    if not isinstance(claim, Claimed):
        logger.info("%s: done before; not again", what)
        return None
    try:
        result = effect()
    except BaseException:
        claims.release(*key)  # not had: the retry (or a replay from the error store) has it
        raise
    claims.finish(*key)
    return result
