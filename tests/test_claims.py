"""At most one effect per key (``eventbus.claims``): emails sent and pushes made, on SQLite and PostgreSQL, with
workers racing from several processes as from several machines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from eventbus.claims import Busy, Claimed, Claims, Done
from eventbus.processors.queues.email import SentEmails
from eventbus.processors.queues.push import SentNotifications
from tests.racing import RACERS, race

#: Each store of claims, with a key of its table.
STORES: dict[str, tuple[type[Claims], tuple[object, ...]]] = {
    "sent emails": (SentEmails, ("invite:3f2a",)),
    "sent pushes": (SentNotifications, (7, 42)),
}
#: Another key of each.
OTHER_KEYS: dict[type[Claims], tuple[object, ...]] = {SentEmails: ("signup:77b0",), SentNotifications: (7, 43)}


@pytest.fixture(params=STORES)
def store_and_key(request: pytest.FixtureRequest) -> tuple[type[Claims], tuple[object, ...]]:
    return STORES[request.param]


def claim_then_have_the_effect(store: type[Claims], database: Path | str, key: tuple[object, ...], effects: Path,
                               lease: float) -> Callable[[], str]:
    """A worker (in a process of its own): it claims ``key`` and, if it won, has the effect (a line appended to
    ``effects``) and finishes the claim; what its claim found."""
    claims = store(database)

    def go() -> str:
        outcome = claims.claim(*key, lease=lease)
        if isinstance(outcome, Claimed):
            with open(effects, "a") as f:
                f.write(f"{os.getpid()}\n")
            claims.finish(*key)
        return type(outcome).__name__

    return go


@pytest.mark.parametrize("before", ["nothing", "a claim that lapsed"])
def test_of_workers_racing_on_a_key_exactly_one_has_the_effect(
        database: Path | str, store_and_key: tuple[type[Claims], tuple[object, ...]], tmp_path: Path,
        before: str) -> None:
    store, key = store_and_key
    if before == "a claim that lapsed":  # a worker claimed the key, then died
        assert store(database).claim(*key, lease=0.0) == Claimed()
    effects = tmp_path / "effects"
    outcomes = race(claim_then_have_the_effect, store, database, key, effects, 60.0)
    # One won; each of the others found its claim (Busy) or its effect had (Done).
    assert sorted(outcomes).count("Claimed") == 1 and len(outcomes) == RACERS
    assert set(outcomes) <= {"Claimed", "Busy", "Done"}
    assert len(effects.read_text().splitlines()) == 1
    assert store(database).claim(*key) == Done()


def test_a_claim_is_busy_until_finished_or_released_or_lapsed(
        database: Path | str, store_and_key: tuple[type[Claims], tuple[object, ...]]) -> None:
    store, key = store_and_key
    claims = store(database)
    assert claims.claim(*key, lease=60.0) == Claimed()
    busy = claims.claim(*key)
    assert isinstance(busy, Busy) and 55 < busy.until - time.time() <= 60
    # A failed effect releases the claim: the retry claims it at once.
    claims.release(*key)
    assert claims.claim(*key, lease=0.0) == Claimed()
    # A claim whose worker died lapses: another takes it over.
    assert claims.claim(*key) == Claimed()
    assert not claims.is_done(*key)
    claims.finish(*key)
    assert claims.is_done(*key) and claims.claim(*key) == Done()
    claims.release(*key)  # a release after the effect was had changes nothing
    assert claims.claim(*key) == Done()


def test_keys_done_long_ago_are_forgotten(database: Path | str,
                                          store_and_key: tuple[type[Claims], tuple[object, ...]]) -> None:
    store, key = store_and_key
    claims = store(database)
    old_key = OTHER_KEYS[store]
    for each in (key, old_key):
        claims.claim(*each)
        claims.finish(*each)
    with claims.database.transaction(write=True) as db:
        db.execute(update(claims.TABLE).where(claims._is(old_key)).values(sent_at=time.time() - 40 * 86400))
    assert claims.forget_before(time.time() - 30 * 86400) == 1
    assert (claims.is_done(*key), claims.is_done(*old_key)) == (True, False)
