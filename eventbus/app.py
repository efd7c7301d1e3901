"""Everything the Tornado process serves besides the event API: metrics, web pages, development pages."""

from __future__ import annotations

from typing import Any

from eventbus.devtools.pages import devtools_handlers
from eventbus.metrics import metrics_handlers
from eventbus.tornado_events.server import EventServer
from eventbus.web import web_handlers


def extra_handlers(server: EventServer) -> list[Any]:
    return [*metrics_handlers(server), *devtools_handlers(server), *web_handlers(server)]
