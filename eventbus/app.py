"""Everything the Tornado process serves besides the event API: metrics, web pages, development pages."""

from __future__ import annotations

import importlib.util
from typing import Any

from eventbus.devtools.pages import devtools_handlers
from eventbus.metrics import metrics_handlers
from eventbus.tornado_events.server import EventServer


def extra_handlers(server: EventServer) -> list[Any]:
    handlers = [*metrics_handlers(server), *devtools_handlers(server)]
    if importlib.util.find_spec("eventbus.web") is not None:
        from eventbus.web import web_handlers  # type: ignore[import-not-found,unused-ignore]

        handlers += web_handlers(server)
    return handlers
