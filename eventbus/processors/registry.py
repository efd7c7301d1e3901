"""The registry of queue processors: ``@assign_queue`` and ``get_worker``.

A processor is a worker class decorated with ``@assign_queue("name", ...)``
in any module of ``eventbus.processors.queues``, or of a module named in the
``processor_modules`` setting (``EVENTBUS_PROCESSOR_MODULES``, for an
application's own processors). ``load_processors()`` imports them all, so a
new queue needs only its decorated class.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.contracts import check_queue_name
from eventbus.errors import ConfigurationError
from eventbus.settings import get_settings

if TYPE_CHECKING:
    from eventbus.processors.worker import Worker
    from eventbus.queue import Broker

W = TypeVar("W", bound="type[Worker]")


@dataclass(frozen=True)
class QueueOptions:
    """Per-queue options, given as keyword arguments to ``@assign_queue``."""

    #: False keeps the processor registered but out of ``--all`` and supervisor_conf.
    enabled: bool = True
    #: Tries an event gets before it goes to the error store.
    tries: int = 3
    #: Seconds before the first retry; each further retry waits twice as long.
    retry_delay: float = 1.0
    #: Seconds an event may take (times the batch size for a batch); None: no limit.
    timeout: float | None = 30.0
    #: Largest batch (LoopQueueProcessingWorker).
    batch_size: int = 100
    #: Seconds a batch may wait to fill (LoopQueueProcessingWorker).
    batch_wait: float = 1.0
    #: Backlog seconds (depth x average consume time) at which check_queue warns, and is critical.
    backlog_warning: float = 30.0
    backlog_critical: float = 60.0
    #: Worker processes supervisor runs for this queue.
    workers: int = 1

    def __post_init__(self) -> None:
        positive = {"tries": self.tries, "batch_size": self.batch_size, "workers": self.workers}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a whole number of at least 1, not {value!r}")
        numbers = {"retry_delay": self.retry_delay, "batch_wait": self.batch_wait,
                   "backlog_warning": self.backlog_warning, "backlog_critical": self.backlog_critical}
        if self.timeout is not None:
            numbers["timeout"] = self.timeout
        for name, number in numbers.items():
            if not isinstance(number, int | float) or not math.isfinite(number) or number < 0:
                raise ConfigurationError(f"{name} must be a number of seconds, not {number!r}")

    def replace(self, where: str, **changes: Any) -> QueueOptions:
        """These options with some changed; ConfigurationError, saying ``where``, for a name that is no option."""
        unknown = set(changes) - OPTION_NAMES
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTION_NAMES))}"
            )
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(QueueOptions))

_registry: dict[str, type[Worker]] = {}


def assign_queue(queue_name: str, **options: Any) -> Callable[[W], W]:
    """Register the decorated worker class as the processor of ``queue_name``.

    A queue registered twice, or an option that does not exist, is an error
    when the module is imported.
    """
    check_queue_name(queue_name)
    queue_options = QueueOptions().replace(f"@assign_queue({queue_name!r})", **options)

    def register(cls: W) -> W:
        from eventbus.processors.worker import Worker

        if not (isinstance(cls, type) and issubclass(cls, Worker)):
            raise ConfigurationError(f"@assign_queue({queue_name!r}) must decorate a worker class")
        existing = _registry.get(queue_name)
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise ConfigurationError(
                f"queue {queue_name!r} is already assigned to {_qualname(existing)}; cannot assign {_qualname(cls)}"
            )
        cls.queue_name = queue_name
        cls.options = queue_options
        _registry[queue_name] = cls
        return cls

    return register


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_processors(modules: Iterable[str] | None = None) -> None:
    """Import every processor module: the shipped ones and ``modules`` (default: the process's
    ``processor_modules`` setting, as the registry is the process's too)."""
    from eventbus.processors import queues

    for module in pkgutil.iter_modules(queues.__path__, queues.__name__ + "."):
        importlib.import_module(module.name)
    for name in get_settings().processor_modules if modules is None else modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigurationError(f"EVENTBUS_PROCESSOR_MODULES names {name!r}, which cannot be imported: {e}") from e


def registered_queues(enabled_only: bool = True) -> list[str]:
    """Names of the registered queues, sorted (by default only the enabled ones)."""
    load_processors()
    return sorted(name for name, cls in _registry.items() if cls.options.enabled or not enabled_only)


def get_worker_class(queue_name: str) -> type[Worker]:
    load_processors()
    try:
        return _registry[queue_name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise ConfigurationError(f"no processor for queue {queue_name!r} (registered: {known})") from None


def get_worker(queue_name: str, broker: Broker, *, worker_num: int = 0, **options: Any) -> Worker:
    """A new worker for ``queue_name`` on ``broker``; keyword arguments override its queue's options for this
    worker only (``retry_delay=0.01``), the registered class keeps them."""
    cls = get_worker_class(queue_name)
    return cls(broker, worker_num, options=cls.options.replace(f"worker for {queue_name!r}", **options))
