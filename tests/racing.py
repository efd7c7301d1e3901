"""Races between processes, as between workers on several machines: each with its own database connections."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

#: How many processes race: enough that losers both before and after the winner's commit are likely.
RACERS = 4
#: Seconds a race may take, spawning its processes included.
RACE_SECONDS = 60.0


def race(prepare: Callable[..., Callable[[], Any]], *args: Any, racers: int = RACERS) -> list[Any]:
    """In ``racers`` new processes, ``prepare(*args)`` (open the stores), then all at the same moment the function
    it returned; what each returned.

    ``prepare`` must be importable (a module's top level). Spawned, not forked: no connection of this
    process is shared with them.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(racers)
    results = context.Queue()
    processes = [context.Process(target=_racer, args=(barrier, results, prepare, args)) for _ in range(racers)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=RACE_SECONDS) for _ in processes]
    finally:
        for process in processes:
            process.join(RACE_SECONDS)
            if process.is_alive():
                process.kill()
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise failures[0]
    return outcomes


def _racer(barrier: Any, results: Any, prepare: Callable[..., Callable[[], Any]], args: tuple[Any, ...]) -> None:
    try:
        go = prepare(*args)
        barrier.wait(RACE_SECONDS)
        results.put(go())
    except Exception as error:
        results.put(error)
