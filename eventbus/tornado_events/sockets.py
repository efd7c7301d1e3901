"""The open websockets of one event process: what logout, deactivation and shutdown close.

Each ``EventSocket`` adds itself when it opens and removes itself when it
closes; the others only look and close. The registry also counts the sockets
closed for reading too slowly (a statistic of the process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from eventbus.users import User


class Socket(Protocol):
    """What the registry needs of a websocket."""

    socket_id: str
    session_key: str
    user: User

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class OpenSockets:
    """The open websockets, by id. Use from the IOLoop only."""

    def __init__(self) -> None:
        self._sockets: dict[str, Socket] = {}
        #: Sockets closed because their client did not read fast enough.
        self.slow_consumers_closed = 0

    def add(self, socket: Socket) -> None:
        self._sockets[socket.socket_id] = socket

    def remove(self, socket: Socket) -> None:
        self._sockets.pop(socket.socket_id, None)

    def __len__(self) -> int:
        return len(self._sockets)

    def __iter__(self) -> Iterator[Socket]:
        return iter(list(self._sockets.values()))

    def close(self, code: int, reason: str, which: Callable[[Socket], bool] = lambda _socket: True) -> int:
        """Close every open socket ``which`` selects (all by default) with ``code``; how many."""
        chosen = [socket for socket in self if which(socket)]
        for socket in chosen:
            socket.close(code, reason)
        return len(chosen)
