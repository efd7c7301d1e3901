"""A real SMTP server in this process (aiosmtpd), recording every email that arrives."""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from eventbus.queue.rabbitmq_node import free_port

#: Recipients at this domain are refused ("550 no such user"), as a real server refuses an unknown address.
REFUSED_DOMAIN = "@refused.example"


@dataclass(frozen=True)
class Received:
    """One email as the server received it."""

    peer: Any  # (host, port) of the client: one per SMTP connection
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        # A long subject may be folded right after "Subject:"; the folding space is not part of it.
        return str(self.message["Subject"]).strip()

    @property
    def text(self) -> str:
        """The plain text body, with the wire's CRLF line ends as newlines."""
        text = self.part("plain")
        assert text is not None, "no text/plain part"
        return text

    @property
    def html(self) -> str | None:
        return self.part("html")

    def part(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        return None if part is None else str(part.get_content()).replace("\r\n", "\n")


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<port> in a thread of its own; ``received`` lists what arrived, in order.

    ``stop()`` then ``start()`` again is a server restart on the same port: the connections clients hold are cut.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def connections(self) -> int:
        """SMTP connections that delivered at least one email."""
        with self._lock:
            return len({r.peer for r in self.received})

    def to(self, address: str) -> list[Received]:
        """The emails delivered to ``address``."""
        with self._lock:
            return [r for r in self.received if address in r.rcpt_tos]

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    # -- aiosmtpd handler hooks (called in the server's thread) ---------------------------------

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.endswith(REFUSED_DOMAIN):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.received.append(Received(session.peer, str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"
