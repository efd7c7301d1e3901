"""Requests that reach a shard that does not own their queue: handed over to the shard that does.

nginx routes by what it can read: a long-poll by its ``queue_id`` argument,
a websocket by its ``queue_id`` or ``shard`` argument. What it cannot route
(a register, before anyone knows who is asking; a DELETE whose queue id is in
its body) reaches any shard, which authenticates it, finds the owner
(``Sharding.shard_for`` or the queue id's shard) and hands the request over:
the same method, path, headers and body, sent to the owner directly, whose
answer goes back as it is. The owner authenticates it again: a shard never
acts on another's word about who is asking.

A handed-over request carries ``X-Eventbus-Forwarded`` and is never handed
over again: two processes that disagree about the sharding answer
``WRONG_SHARD`` instead of passing a request around. With the shared secret
as its value, the owner does not count the request against the user's rate
limit a second time. nginx clears the header of every request it passes on.
"""

from __future__ import annotations

import logging

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPServerRequest

from eventbus.sharding import Sharding

logger = logging.getLogger(__name__)

#: Marks a request one shard handed over to another.
FORWARDED_HEADER = "X-Eventbus-Forwarded"
#: Headers of a request that belong to its connection, not to it (RFC 9110, 7.6.1), and the length, which
#: the HTTP client sets again.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "content-length", FORWARDED_HEADER.lower()})
#: What of the owner's answer goes back besides its status and body.
ANSWER_HEADERS = ("Content-Type", "Set-Cookie", "Retry-After")
#: Handed-over requests in flight at once (each a connection to the owner; a held long-poll keeps one).
MAX_HANDOVERS = 1000
#: Seconds the owner may take to answer besides a long-poll's heartbeat interval.
ANSWER_MARGIN_SECONDS = 30.0
#: How long a connection to the owner may take.
CONNECT_TIMEOUT_SECONDS = 5.0


class Unreachable(Exception):
    """The owning shard did not answer."""


class Handover:
    """Hands requests over to the shard that owns them; one per process, used from its IOLoop."""

    def __init__(self, sharding: Sharding, shard: int, secret: str | None, heartbeat_seconds: float) -> None:
        self.sharding = sharding
        self.shard = shard
        self.secret = secret
        self.request_timeout = heartbeat_seconds * 1.1 + ANSWER_MARGIN_SECONDS
        self._client: AsyncHTTPClient | None = None
        self.handed_over = 0

    def client(self) -> AsyncHTTPClient:
        """An HTTP client of this handover's own: made inside the IOLoop, on first use."""
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=MAX_HANDOVERS)
        return self._client

    async def forward(self, request: HTTPServerRequest, shard: int) -> HTTPResponse:
        """Send ``request`` to shard ``shard`` and return its answer (whatever its status); Unreachable if none."""
        owner = self.sharding.shard(shard)
        headers = {name: value for name, value in request.headers.get_all() if name.lower() not in HOP_HEADERS}
        headers[FORWARDED_HEADER] = self.secret or "1"
        forwarded = HTTPRequest(
            owner.url + request.uri, method=request.method, headers=headers,
            body=request.body if request.method in ("POST", "PUT", "PATCH", "DELETE") else None,
            allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
            connect_timeout=CONNECT_TIMEOUT_SECONDS, request_timeout=self.request_timeout)
        self.handed_over += 1
        try:
            return await self.client().fetch(forwarded, raise_error=False)
        except HTTPClientError as e:  # a timeout (599): no answer
            raise Unreachable(f"shard {shard} at {owner.address} gave no answer: {e}") from None
        except OSError as e:
            raise Unreachable(f"shard {shard} at {owner.address} cannot be reached: {e}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
