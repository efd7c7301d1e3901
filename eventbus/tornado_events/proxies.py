"""Client addresses from a proxy in front (nginx): believed only when the proxy itself says so.

Tornado's ``xheaders`` takes ``X-Forwarded-For`` and ``X-Real-IP`` from any
peer, so anyone connecting to a shard directly could claim to be anyone, the
loopback included. ``ProxiedHTTPServer`` reads them only from a peer listed
in ``EVENTBUS_TRUSTED_PROXIES``; any other peer is its own address. With no
proxy listed the headers are never read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer


class ProxiedHTTPServer(HTTPServer):
    """An HTTPServer applying ``xheaders`` to the requests of trusted proxies only."""

    def initialize(self, request_callback: Any, *args: Any, trusted_proxies: Iterable[str] = (),
                   **kwargs: Any) -> None:
        self.trusted_proxies = frozenset(ipaddress.ip_address(proxy) for proxy in trusted_proxies)
        kwargs["xheaders"] = bool(self.trusted_proxies)
        super().initialize(request_callback, *args, **kwargs)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Invoked by Tornado for each request: the headers are applied only if its peer is a trusted proxy."""
        if self.xheaders and not self.trusts(getattr(request_conn, "context", None)):
            return self.request_callback.start_request(server_conn, request_conn)  # type: ignore[union-attr]
        return super().start_request(server_conn, request_conn)

    def trusts(self, context: Any) -> bool:
        address = getattr(context, "address", None)
        if not isinstance(address, tuple) or not address:
            return False  # a unix socket's peer has no address to trust
        try:
            return ipaddress.ip_address(address[0]) in self.trusted_proxies
        except ValueError:
            return False
