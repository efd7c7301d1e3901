"""``eventbus email_mirror_server``: receives mail over SMTP and queues it to ``email_mirror``."""

from __future__ import annotations


def serve(host: str, port: int) -> int:
    """Run the SMTP receiver until SIGTERM or SIGINT; the exit code."""
    raise NotImplementedError("the email mirror server is being written")
