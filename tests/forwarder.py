"""A TCP forwarder between a client and RabbitMQ that a test can cut.

``cut()`` drops every connection through it (as a network failure would);
``refuse()`` stops listening (the broker looks down: connections are
refused); ``blackhole()`` accepts connections and never answers (a host that
hangs); ``restore()`` forwards again.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class Forwarder:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "forward"
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._closed = False
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="forwarder", daemon=True)
        self._thread.start()

    def url(self, query: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F" + (f"?{query}" if query else "")

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _serve(self) -> None:
        while not self._closed:
            sel = selectors.DefaultSelector()
            with self._lock:
                if self._listener is not None:
                    sel.register(self._listener, selectors.EVENT_READ, None)
                for pair in self._pairs:
                    for s in pair:
                        if s is not None and s.fileno() >= 0:
                            sel.register(s, selectors.EVENT_READ, pair)
            for key, _ in sel.select(timeout=0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)  # type: ignore[arg-type]
            sel.close()

    def _accept(self) -> None:
        with self._lock:
            if self._listener is None:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = None
            if self.mode == "forward":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    return
            self._pairs.append((client, upstream))

    def _pump(self, source: socket.socket, pair: tuple[socket.socket, socket.socket | None]) -> None:
        client, upstream = pair
        other = upstream if source is client else client
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if data and other is not None:
            try:
                other.sendall(data)
                return
            except OSError:
                pass
        elif data:
            return  # blackhole: swallow
        self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket | None]) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for s in pair:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        """Drop every connection going through, as a failing network would."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    def refuse(self) -> None:
        """Cut every connection and refuse new ones: the broker looks down."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None  # type: ignore[assignment]
        self.cut()

    def blackhole(self) -> None:
        """Cut every connection; accept new ones and never answer: a host that hangs."""
        self.mode = "blackhole"
        self._ensure_listening()
        self.cut()

    def restore(self) -> None:
        """Forward again."""
        self.mode = "forward"
        self._ensure_listening()

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listener = self._listen(self.port)

    def close(self) -> None:
        self._closed = True
        self.refuse()
        self._thread.join(timeout=5)
