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
websocket upgrade headers are passed on; ``X-Forwarded-For`` and
``X-Real-IP`` are set to the client's address, replacing what the client
sent, and the shards believe them only from nginx's address
(``EVENTBUS_TRUSTED_PROXIES``). The internal endpoints are not served
through nginx.
"""

from __future__ import annotations

import math
from pathlib import Path

from eventbus import codec
from eventbus.settings import Settings
from eventbus.sharding import Sharding

#: Idle connections to each shard nginx keeps open, so that polls do not each open one.
KEEPALIVE_CONNECTIONS = 64
#: Beyond a long-poll's longest hold (heartbeat interval + 10%): a held poll is never cut by nginx.
LONG_POLL_MARGIN_SECONDS = 30
#: A websocket with no frame either way for this long is cut (the server pings every 25 s).
WEBSOCKET_READ_TIMEOUT_SECONDS = 3600
#: Connections one nginx worker holds, two per proxied client (the client's and the shard's).
WORKER_CONNECTIONS = 16384
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
    return (f"daemon off;\nworker_processes 1;\nworker_rlimit_nofile {4 * WORKER_CONNECTIONS};\n"
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} warn;\n"
            f"events {{\n    worker_connections {WORKER_CONNECTIONS};\n}}\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'};\n{temp}{http}}}\n")
