"""An SMTP server that accepts every email and keeps it in ``<var>/dev/emails.jsonl``."""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from eventbus.devtools import append, dev_dir


class SinkHandler:
    """Invoked by aiosmtpd for each message: keeps it, answers 250."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        append(self.path, {
            "time": time.time(), "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
            "subject": str(message.get("Subject", "")), "body": body.get_content() if body is not None else "",
        })
        return "250 OK: kept by the development SMTP sink"


def start(var_dir: Path | str, port: int, host: str = "127.0.0.1") -> Controller:
    """Start the sink in a thread of its own; ``stop()`` the returned controller to end it."""
    controller = Controller(SinkHandler(dev_dir(var_dir) / "emails.jsonl"), hostname=host, port=port)
    controller.start()
    return controller
