"""Request bodies over the limit are refused with a 413 before any of their bytes are read.

Tornado itself stops at ``max_body_size`` with a bare ``400 Bad Request``
and no body, and only once it starts reading the body. ``BodyLimit`` wraps the
application: a request whose ``Content-Length`` announces more than the limit
is answered ``413`` in JSON, as every error of this server is, and its
connection is closed after the answer (the unread body would otherwise be read
as the next request). A chunked body has no length to check in advance: it is
cut by Tornado's ``max_body_size`` (the bare 400, then the connection closes).
"""

from __future__ import annotations

import logging
from asyncio import Future
from collections.abc import Awaitable

from tornado import httputil
from tornado.iostream import StreamClosedError

from eventbus import codec
from eventbus.validation import excerpt

logger = logging.getLogger(__name__)


def too_large_answer(max_body_bytes: int) -> bytes:
    """The whole HTTP answer to a request whose body is over ``max_body_bytes``."""
    body = codec.encode({"result": "error", "code": "REQUEST_TOO_LARGE",
                         "msg": f"Request body too large: at most {max_body_bytes} bytes"})
    return (b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class BodyLimit(httputil.HTTPServerConnectionDelegate):
    """The application behind a check of each request's announced body size; give it to the HTTPServer."""

    def __init__(self, app: httputil.HTTPServerConnectionDelegate, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Invoked by the HTTPServer for each request on a connection."""
        return _CheckedRequest(self.app.start_request(server_conn, request_conn), request_conn, self.max_body_bytes)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _CheckedRequest(httputil.HTTPMessageDelegate):
    """One request: passed on to the application unless its Content-Length is over the limit."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection,
                 max_body_bytes: int) -> None:
        self.delegate = delegate
        self.connection = connection
        self.max_body_bytes = max_body_bytes

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        length = headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > self.max_body_bytes:
            assert isinstance(start_line, httputil.RequestStartLine)
            logger.warning("refused %s %s: a body of %s bytes, over the limit of %d", start_line.method,
                           excerpt(start_line.path), excerpt(length), self.max_body_bytes)
            self._refuse()
            return None
        return self.delegate.headers_received(start_line, headers)

    def _refuse(self) -> None:
        # Detached, the connection reads no more of this request: the answer is written and the stream closed.
        stream = self.connection.detach()  # type: ignore[attr-defined]
        try:
            written = stream.write(too_large_answer(self.max_body_bytes))
        except StreamClosedError:
            return

        def close(future: Future[None]) -> None:
            if not future.cancelled():
                future.exception()  # a client gone meanwhile is no error of ours: retrieved, not logged
            stream.close()

        written.add_done_callback(close)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
