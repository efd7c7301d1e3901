"""Benchmarks of eventbus against what it stands on, run as ``python -m bench``.

A benchmark is one module of this package that registers itself::

    from bench import register
    from bench.harness import Context, Result

    @register("consume", "events/s a worker takes from a queue")
    def consume(context: Context) -> list[Result]:
        ...

``python -m bench`` imports every module of the package, runs the benchmarks
named on its command line (all by default) and prints one table of their
results; ``bench.harness`` holds what they share (the RabbitMQ node, timing,
the table).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import Context, Outcome

#: What a benchmark is: given the run's context, the results of its cases (rates, or figures such as latencies).
Run = Callable[["Context"], Sequence["Outcome"]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    run: Run


_registry: dict[str, Benchmark] = {}


def register(name: str, description: str) -> Callable[[Run], Run]:
    """A decorator that makes ``run`` the benchmark ``name`` of ``python -m bench``."""

    def decorate(run: Run) -> Run:
        known = _registry.get(name)
        if known is not None and known.run is not run:
            raise ValueError(f"two benchmarks are named {name!r}")
        _registry[name] = Benchmark(name, description, run)
        return run

    return decorate


def discover() -> dict[str, Benchmark]:
    """Every benchmark, by name, once each module of this package has been imported."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_registry.items()))
