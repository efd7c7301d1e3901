"""The nginx configuration in front of the Tornado shards, written by ``eventbus nginx_conf``.

What nginx routes, and by what (``eventbus.sharding`` names the shards):

- ``GET``/``DELETE /api/v1/events`` and ``/json/events``: by the shard of the
  ``queue_id`` argument (``<shard>:<uuid>``);
- ``/json/events/websocket``: by its ``queue_id`` argument (a resumed queue),
  else its ``shard`` argument (the shard that said ``WRONG_SHARD``);
- everything else (register, a DELETE whose queue id is in its body, sending,
  pages): any shard, which hands a request for another shard's queue over to
  it (``tornado_events.handover``).

Long-polls may be held a heartbeat interval and more, websockets for hours,
so their read timeouts are set to match; events are never buffered; the
connections to the shards are kept alive, as many as a worker may hold, so
that answering a held poll never closes its connection (the shard would
spend more on the closes and the new connections of the next polls than on
the answers, benchmarked in docs/benchmarks.md); the
websocket upgrade headers are passed on; ``X-Forwarded-For`` and
``X-Real-IP`` are set to the client's address, replacing what the client
sent, and the shards believe them only from nginx's address
(``EVENTBUS_TRUSTED_PROXIES``). The internal endpoints are not served
through nginx.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path

from eventbus import codec
from eventbus.settings import Settings
from eventbus.sharding import Sharding

#: Beyond a long-poll's longest hold (heartbeat interval + 10%): a held poll is never cut by nginx.
LONG_POLL_MARGIN_SECONDS = 30
#: A websocket with no frame either way for this long is cut (the server pings every 25 s).
WEBSOCKET_READ_TIMEOUT_SECONDS = 3600
#: Connections one nginx worker holds, two per proxied client (the client's and the shard's): with a worker per
#: core (``worker_processes auto``), two cores hold 32,768, 16,384 clients, each worker within an open files limit
#: of 20,000.
WORKER_CONNECTIONS = 16384
#: Idle connections to each shard a worker keeps open: as many as it can have, since every connection to a shard
#: may be a held poll's, and one not kept when its poll is answered costs the shard a close and the next poll a
#: new connection (with 64, the shards spent half as much CPU again on a round of 2,000 long-polls: docs/benchmarks.md).
KEEPALIVE_CONNECTIONS = WORKER_CONNECTIONS // 2
#: Files a standalone worker asks for (its sockets, logs, listening socket), where the user's limit allows.
WORKER_FILES = 2 * WORKER_CONNECTIONS
#: The answer nginx gives itself when a shard does not answer (Zulip clients retry a 5xx).
UNAVAILABLE = {"result": "error", "code": "SHARD_UNAVAILABLE", "msg": "The event server is not answering; retry"}
#: The answer to the internal endpoints, which only shards and local producers use, directly.
FORBIDDEN = {"result": "error", "code": "UNAUTHORIZED", "msg": "Internal endpoint: not served through the proxy"}


def upstream(shard: int | None) -> str:
    """The name of a shard's upstream block (None: any shard)."""
    return "eventbus_any" if shard is None else f"eventbus_shard_{shard}"


def upstreams(sharding: Sharding, single: str) -> list[str]:
    """An upstream per shard and one of all shards; ``single`` is the address of an unsharded server."""
    addresses = [shard.address for shard in sharding.shards] or [single]
    blocks = [(upstream(n), [address]) for n, address in enumerate(addresses)] + [(upstream(None), addresses)]
    return [f"upstream {name} {{\n" + "".join(f"    server {a};\n" for a in servers)
            + f"    keepalive {KEEPALIVE_CONNECTIONS};\n}}\n" for name, servers in blocks]


def routing_maps(sharding: Sharding) -> str:
    """``$eventbus_upstream``: the shard of the ``queue_id`` argument, else of the ``shard`` argument, else any."""
    count = sharding.count
    # A queue id's ':' comes percent-encoded from most HTTP clients.
    queue = "".join(f'    "~^{n}(:|%3[Aa])" {n};\n' for n in range(count))
    route = "".join(f'    "~^{n}/" {upstream(n)};\n    "/{n}" {upstream(n)};\n' for n in range(count))
    return (f'map $arg_queue_id $eventbus_queue_shard {{\n    default "";\n{queue}}}\n'
            f'map "$eventbus_queue_shard/$arg_shard" $eventbus_upstream {{\n    default {upstream(None)};\n'
            f"{route}}}\n")


def proxy_headers(websocket: bool = False) -> list[str]:
    """The proxy directives of a location (nginx inherits none of them into a location that sets any)."""
    lines = [
        "proxy_http_version 1.1;",
        "proxy_set_header Host $http_host;",  # the shards compare a websocket's Origin with it
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $remote_addr;",  # the client's own header is not passed on
        "proxy_set_header X-Forwarded-Proto $scheme;",
        'proxy_set_header X-Eventbus-Forwarded "";',  # only a shard handing a request over sets it
        "proxy_buffering off;",
        "proxy_request_buffering off;",
    ]
    if websocket:
        lines += ["proxy_set_header Upgrade $http_upgrade;", 'proxy_set_header Connection "upgrade";']
    else:
        lines.append('proxy_set_header Connection "";')  # keeps the connection to the shard alive
    return lines


def location(match: str, target: str, *extra: str, websocket: bool = False) -> str:
    body = [f"proxy_pass http://{target};", *proxy_headers(websocket), *extra]
    return f"    location {match} {{\n" + "".join(f"        {line}\n" for line in body) + "    }\n"


def json_return(status: int, answer: dict[str, str]) -> list[str]:
    return ["default_type application/json;", f"return {status} '{codec.encode(answer).decode()}';"]


def server_block(settings: Settings, listen: str, server_name: str) -> str:
    """The ``server`` block: routing as in the module docstring."""
    long_poll = math.ceil(settings.heartbeat_seconds * 1.1) + LONG_POLL_MARGIN_SECONDS
    events = location("~ ^/(api/v1|json)/events$", "$eventbus_upstream", f"proxy_read_timeout {long_poll}s;")
    websocket = location("= /json/events/websocket", "$eventbus_upstream",
                         f"proxy_read_timeout {WEBSOCKET_READ_TIMEOUT_SECONDS}s;", websocket=True)
    internal = "    location /api/internal/ {\n" + "".join(
        f"        {line}\n" for line in json_return(403, FORBIDDEN)) + "    }\n"
    unavailable = "    location @eventbus_unavailable {\n" + "".join(
        f"        {line}\n" for line in json_return(502, UNAVAILABLE)) + "    }\n"
    return (
        "server {\n"
        f"    listen {listen};\n"
        f"    server_name {server_name};\n"
        f"    client_max_body_size {settings.max_body_bytes};\n"
        "    error_page 502 504 = @eventbus_unavailable;\n"
        f"{events}{websocket}{internal}{unavailable}"
        f"{location('/', upstream(None))}"
        "}\n"
    )


def http_conf(settings: Settings, listen: str, server_name: str = "_") -> str:
    """What goes in nginx's ``http`` block (a file in ``/etc/nginx/conf.d``): upstreams, maps, the server."""
    single = f"127.0.0.1:{settings.port}"
    return ("# eventbus: written by `eventbus nginx_conf` for the sharding in EVENTBUS_TORNADO_SHARDS.\n"
            + "".join(upstreams(settings.sharding, single)) + routing_maps(settings.sharding)
            + server_block(settings, listen, server_name))


def standalone_conf(settings: Settings, listen: str, prefix: Path) -> str:
    """A whole nginx configuration that keeps every file under ``prefix`` and runs in the foreground
    (``nginx -p PREFIX -c nginx.conf``): for development and tests, never as root's nginx."""
    temp = "".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    http = "".join(f"    {line}\n" if line else "\n" for line in http_conf(settings, listen).splitlines())
    # A worker per core; the log written a block at a time rather than a write per request.
    return (f"daemon off;\nworker_processes auto;\nworker_rlimit_nofile {worker_files()};\n"
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} warn;\n"
            f"events {{\n    worker_connections {WORKER_CONNECTIONS};\n}}\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'} combined buffer=64k flush=1s;\n{temp}{http}}}\n")


def worker_files() -> int:
    """``WORKER_FILES``, or less where this user may not open as many: nginx run by a user (not root) cannot raise
    its limit beyond the hard one, and says so in an alert at every start if asked to."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return WORKER_FILES if hard == resource.RLIM_INFINITY else min(WORKER_FILES, hard)
