"""At most one effect per key (an email sent, a push notification pushed), across every process on every machine.

A worker that means to have an effect first claims its key: one statement,
``INSERT ... ON CONFLICT DO UPDATE ... WHERE <the claim there has lapsed>
RETURNING``, in a write transaction. The row it returns says that this worker
won; of workers racing on a key, the database's unique constraint lets
exactly one win. The winner has the effect, then ``finish``es the claim (the
key is done for good), or ``release``s it when the effect failed (a retry may
claim it again).

A claim holds for ``CLAIM_LEASE_SECONDS``. A worker that dies between claim
and finish leaves it behind; once it lapses, the redelivered event's worker
takes it over and has the effect. So a crash costs a delay, never the effect
(recording the key only after the effect would instead repeat it after a
crash, and recording it first without a lease would lose it). The one case of
two effects is a worker slower than the lease between its claim and its
finish: the lease is far longer than the processing time limit of an event.

A worker that finds a live claim of another (``Busy``) must not drop its
event: the other worker may yet die. It has the event come back after a
whole lease (``publish_later``: one delay, so one delay queue per queue); by
then the key is done, or its claim lapsed and it is claimable.

A table of claims has its key as primary key, ``sent_at`` (when the claim was
made, then when it was finished) and ``claimed_until`` (NULL once finished).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Table, and_, delete, select, update

from eventbus.database import Database, Store

#: How long a claim holds before another worker may take it over (``EVENTBUS_CLAIM_LEASE_SECONDS``): twice the
#: 30 s a worker may spend on one event (the processing time limit; SMTP and the push gateway time out after 10 s),
#: so that only a dead worker's claim lapses, and short enough that the effect a crash interrupted comes a minute
#: late, not much later.
CLAIM_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Claimed:
    """This worker won the key: have the effect, then ``finish`` (or ``release`` if it failed)."""


@dataclass(frozen=True)
class Done:
    """The effect was had already."""


@dataclass(frozen=True)
class Busy:
    """Another worker holds a live claim on the key, until ``until`` (Unix time)."""

    until: float


Outcome = Claimed | Done | Busy


class Claims(Store):
    """The claims of one table (``TABLE``), keyed by its primary key's columns in order; safe from any thread and
    process."""

    TABLE: ClassVar[Table]

    def __init__(self, database: Database | Path | str, lease: float = CLAIM_LEASE_SECONDS) -> None:
        super().__init__(database)
        self.lease = lease

    def claim(self, *key: Any, lease: float | None = None) -> Outcome:
        """Claim ``key`` for ``lease`` seconds (this store's): ``Claimed`` if this call won it (new, or a lapsed
        claim taken over), ``Done`` if its effect was had, ``Busy`` if another worker holds it."""
        table, now = self.TABLE, time.time()
        lease = self.lease if lease is None else lease
        insert = self.database.insert(table).values(**self._key(key), sent_at=now, claimed_until=now + lease)
        upsert = insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={"sent_at": insert.excluded.sent_at, "claimed_until": insert.excluded.claimed_until},
            # NULL (finished) is never below anything: a finished key is never claimed again.
            where=table.c.claimed_until < insert.excluded.sent_at,
        ).returning(table.c.sent_at)
        with self._db(write=True) as db:
            if db.execute(upsert).first() is not None:
                return Claimed()
            until = db.scalar(select(table.c.claimed_until).where(self._is(key)))
        return Done() if until is None else Busy(until)

    def finish(self, *key: Any) -> None:
        """The effect of a claimed key was had: the key is done."""
        self.database.change(update(self.TABLE).where(self._is(key)).values(sent_at=time.time(), claimed_until=None))

    def release(self, *key: Any) -> None:
        """The effect of a claimed key failed: let the next try claim it at once."""
        self.database.change(delete(self.TABLE).where(self._is(key), self.TABLE.c.claimed_until.is_not(None)))

    def is_done(self, *key: Any) -> bool:
        with self._db() as db:
            return db.execute(select(self.TABLE.c.sent_at).where(
                self._is(key), self.TABLE.c.claimed_until.is_(None))).first() is not None

    def forget_before(self, when: float) -> int:
        """Forget the keys done before ``when`` (and claims made before it); how many there were."""
        return self.database.change(delete(self.TABLE).where(self.TABLE.c.sent_at < when))

    def _key(self, key: tuple[Any, ...]) -> dict[str, Any]:
        columns = self.TABLE.primary_key.columns
        if len(key) != len(columns):
            raise TypeError(f"a key of {self.TABLE.name} has {len(columns)} part(s), not {len(key)}")
        return {column.name: value for column, value in zip(columns, key, strict=True)}

    def _is(self, key: tuple[Any, ...]) -> ColumnElement[bool]:
        return and_(*(self.TABLE.c[name] == value for name, value in self._key(key).items()))
