"""/devtools/emails and /devtools/pushes: what the SMTP sink and the push gateway stand-in kept.

Development mode only. ``?format=json`` gives the records as JSON.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop

from eventbus.devtools import dev_dir, read
from eventbus.tornado_events.auth import Auth
from eventbus.tornado_events.handlers import BaseHandler, handler_args
from eventbus.tornado_events.server import EventServer

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}}
header{{background:#1d2330;color:#fff;padding:12px 20px}}main{{max-width:900px;margin:auto;padding:16px}}
article{{background:#fff;border-radius:8px;padding:12px 16px;margin:0 0 12px;box-shadow:0 1px 2px #0002}}
h2{{font-size:16px;margin:0 0 4px}}.meta{{color:#667;font-size:13px}}pre{{white-space:pre-wrap;margin:8px 0 0}}
a{{color:#9cf}}</style></head><body><header><b>{title}</b> &middot; <a href="/">chat</a> &middot;
<a href="/devtools/queues">queues</a> &middot; <a href="/devtools/emails">emails</a> &middot;
<a href="/devtools/pushes">pushes</a></header><main>{body}</main></body></html>"""


class RecordsHandler(BaseHandler):
    """Shows the records of one JSON lines file of <var>/dev/."""

    def initialize(self, var_dir: Path, kind: str, **base: Any) -> None:
        super().initialize(**base)
        self.var_dir = var_dir
        self.kind = kind

    async def get(self) -> None:
        path = dev_dir(self.var_dir) / f"{self.kind}.jsonl"
        records = await IOLoop.current().run_in_executor(None, read, path)
        if self.get_argument("format", "") == "json":
            self.success(**{self.kind: records})
            return
        articles = "".join(self._article(r) for r in records) or f"<p>No {self.kind} yet.</p>"
        self.finish(PAGE.format(title=f"Development {self.kind}", body=articles))

    def _article(self, record: dict[str, Any]) -> str:
        if self.kind == "emails":
            title = html.escape(str(record.get("subject", "")))
            meta = html.escape(f"from {record.get('from')} to {', '.join(record.get('to', []))}")
            text = html.escape(str(record.get("body", "")))
        else:
            payload = record.get("payload") or {}
            title = html.escape(str(payload.get("title") or payload.get("sender_full_name") or "push"))
            meta = html.escape(f"to user {payload.get('user_id')} ({payload.get('trigger', '')})")
            text = html.escape(str(payload))
        return f"<article><h2>{title}</h2><div class='meta'>{meta}</div><pre>{text}</pre></article>"


def devtools_handlers(server: EventServer) -> list[Any]:
    """The development pages, in development mode only."""
    if not server.settings.development:
        return []
    return [(r"/devtools/" + kind, RecordsHandler, handler_args(server, Auth.NONE, var_dir=server.settings.var_dir,
                                                                kind=kind)) for kind in ("emails", "pushes")]
