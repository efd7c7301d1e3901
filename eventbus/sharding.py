"""Which Tornado process (shard) owns which user, and the names that follow from it.

A shard is one ``eventbus runtornado`` process. ``EVENTBUS_TORNADO_SHARDS``
lists them, each as ``host:port``, numbered from 0 in that order; every
process that needs the rule (producers, shards, workers, ``eventbus
nginx_conf``) reads the same list through the settings. A user belongs to
shard ``user_id % len(shards)``, unless ``EVENTBUS_TORNADO_SHARD_OVERRIDES``
(``user_id=shard,...``) moves them, so that a heavy user can be given a shard
of their own.

Shard ``n`` consumes ``notify_tornado_<n>`` and ``tornado_return_<n>``, and its
queue ids are ``<n>:<uuid>``, so that nginx routes a long-poll, a DELETE or a
websocket by the queue id alone. With no list, or a list of one, there is one
shard and everything keeps the names of a single process: ``notify_tornado``,
``tornado_return`` and bare uuids.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterable, Mapping

from eventbus.contracts import NOTIFY_TORNADO, TORNADO_RETURN
from eventbus.errors import ConfigurationError

#: A shard's notify and return queues are the single process's (Zulip's names, in eventbus.contracts) with
#: ``_<n>`` added.
#: Between a queue id's shard number and its uuid (Zulip puts the port there).
QUEUE_ID_SEPARATOR = ":"


@dataclasses.dataclass(frozen=True)
class Shard:
    """One Tornado process: its number, and where it listens."""

    number: int
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, as nginx and HTTP clients take it (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclasses.dataclass(frozen=True)
class Sharding:
    """The shards and the user -> shard rule; ``Sharding()`` is one process, as without sharding."""

    shards: tuple[Shard, ...] = ()
    #: Users moved off their shard by the rule: (user id, shard number), sorted.
    overrides: tuple[tuple[int, int], ...] = ()

    @property
    def sharded(self) -> bool:
        """Whether there are several shards (one shard keeps the names of a single process)."""
        return len(self.shards) > 1

    @property
    def count(self) -> int:
        return max(1, len(self.shards))

    def shard_for(self, user_id: int) -> int:
        """The number of the shard that owns ``user_id``'s queues."""
        if not self.sharded:
            return 0
        moved = self._moved.get(user_id)
        return moved if moved is not None else user_id % len(self.shards)

    @functools.cached_property
    def _moved(self) -> dict[int, int]:
        return dict(self.overrides)

    def split(self, user_ids: Iterable[int]) -> dict[int, list[int]]:
        """The user ids by the shard owning them, in their order."""
        by_shard: dict[int, list[int]] = {}
        for user_id in user_ids:
            by_shard.setdefault(self.shard_for(user_id), []).append(user_id)
        return by_shard

    def notify_queue(self, shard: int) -> str:
        """The queue shard ``shard`` takes its notices from."""
        return f"{NOTIFY_TORNADO}_{shard}" if self.sharded else NOTIFY_TORNADO

    def return_queue(self, shard: int) -> str:
        """The queue processors answer shard ``shard``'s requests on."""
        return f"{TORNADO_RETURN}_{shard}" if self.sharded else TORNADO_RETURN

    def new_queue_id(self, shard: int) -> str:
        """A new unguessable event queue id, naming its shard."""
        bare = str(uuid.uuid4())
        return f"{shard}{QUEUE_ID_SEPARATOR}{bare}" if self.sharded else bare

    def shard_of_queue(self, queue_id: str) -> int | None:
        """The shard a queue id names; None for an id no shard made (its queue cannot exist)."""
        if not self.sharded:
            return 0
        number, separator, _ = queue_id.partition(QUEUE_ID_SEPARATOR)
        if not (separator and number.isdigit() and number.isascii() and len(number) <= 4):
            return None
        return int(number) if int(number) < len(self.shards) else None

    def shard(self, number: int) -> Shard:
        return self.shards[number]

    @classmethod
    def parse(cls, shards: str, overrides: str = "") -> Sharding:
        """From ``EVENTBUS_TORNADO_SHARDS`` and ``EVENTBUS_TORNADO_SHARD_OVERRIDES``; ConfigurationError naming
        the one that is wrong."""
        listed = tuple(_shard(number, item.strip()) for number, item in
                       enumerate(item for item in shards.split(",") if item.strip()))
        if len({shard.address for shard in listed}) != len(listed):
            raise ConfigurationError(f"EVENTBUS_TORNADO_SHARDS names a shard twice: {shards!r}")
        moved = _overrides(overrides, len(listed))
        return cls(listed, tuple(sorted(moved.items())))


def _shard(number: int, item: str) -> Shard:
    host, colon, port = item.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(f"EVENTBUS_TORNADO_SHARDS must be host:port items separated by commas, "
                                 f"not {item!r}")
    return Shard(number, host, int(port))


def _overrides(raw: str, count: int) -> Mapping[int, int]:
    moved: dict[int, int] = {}
    for item in (item.strip() for item in raw.split(",") if item.strip()):
        user, equals, shard = item.partition("=")
        if not (equals and user.strip().isdigit() and shard.strip().isdigit()):
            raise ConfigurationError(f"EVENTBUS_TORNADO_SHARD_OVERRIDES must be user_id=shard items separated by "
                                     f"commas, not {item!r}")
        if not int(shard) < count:
            raise ConfigurationError(f"EVENTBUS_TORNADO_SHARD_OVERRIDES moves user {user.strip()} to shard "
                                     f"{shard.strip()}, but EVENTBUS_TORNADO_SHARDS lists {count} shard(s)")
        moved[int(user)] = int(shard)
    return moved
