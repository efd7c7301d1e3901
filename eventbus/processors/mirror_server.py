"""``eventbus email_mirror_server``: receives mail over SMTP and queues it to ``email_mirror``.

An aiosmtpd server on this process's asyncio loop. Recipients outside the
gateway domain (``EVENTBUS_EMAIL_GATEWAY_DOMAIN``) are refused at RCPT (550);
whether a stream has the token is for the processor to say, as this server
may run where the database is not. Each accepted email becomes one
``email_mirror`` event (``MirrorMail``) per recipient, and the client gets
250 only once RabbitMQ confirmed them all; if it cannot have them, 451, so
the sending server keeps the mail and tries again later (the processor
deduplicates an email that arrives twice).

Publishing blocks, so it runs on a thread of its own, off the SMTP loop.
SIGTERM or SIGINT stops accepting connections, lets the emails being queued
finish, and returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from aiosmtpd.smtp import SMTP, Envelope, Session

from eventbus.contracts import EMAIL_MIRROR, MirrorMail
from eventbus.queue import Broker

logger = logging.getLogger(__name__)

#: Larger mail is refused at DATA (552). Base64 makes an event a third larger than its email, and RabbitMQ
#: caps message size (16 MiB by default since 4.0).
MAX_MAIL_BYTES = 10 * 1024 * 1024


class MirrorHandler:
    """aiosmtpd hooks: accept stream addresses, queue each email, answer 250 once the broker has it.

    ``handle_RCPT`` and ``handle_DATA`` are invoked by aiosmtpd on the loop.
    """

    def __init__(self, broker: Broker, executor: ThreadPoolExecutor) -> None:
        self.broker = broker
        self.domain = broker.settings.email_gateway_domain.lower()
        self.executor = executor
        self.queueing = 0  # emails whose publish is under way
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower() != self.domain:
            return f"550 5.1.1 <{address}>: not a stream address (those end in @{self.domain})"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""  # the bytes as received (decode_data is off)
        events = [MirrorMail(raw, recipient).event() for recipient in envelope.rcpt_tos]
        self.queueing += 1
        self.idle.clear()
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, partial(self.broker.publish_many, EMAIL_MIRROR, events))
        except Exception as e:
            logger.warning("could not queue an email from %s to %s: %s", envelope.mail_from,
                           ", ".join(envelope.rcpt_tos), e)
            return "451 4.3.0 Could not queue the message; try again later"
        finally:
            self.queueing -= 1
            if not self.queueing:
                self.idle.set()
        logger.info("queued an email from %s to %s (%d bytes)", envelope.mail_from, ", ".join(envelope.rcpt_tos),
                    len(raw))
        return "250 2.0.0 OK: queued"


def serve(host: str, port: int, broker: Broker) -> int:
    """Run the SMTP receiver, queueing mail through ``broker``, until SIGTERM or SIGINT; the exit code."""
    if broker.settings.broker == "memory":
        logger.warning("EVENTBUS_BROKER=memory: mail is queued in this process, where no email_mirror worker runs")
    # One thread: one broker connection; mail comes slowly next to the milliseconds a publish takes.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="email-mirror-publish")
    try:
        return asyncio.run(_serve(host, port, MirrorHandler(broker, executor)))
    finally:
        executor.submit(broker.close)  # the connection belongs to the publishing thread
        executor.shutdown(wait=True)


async def _serve(host: str, port: int, handler: MirrorHandler) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    factory = partial(_smtp, handler, handler.domain)
    try:
        server = await loop.create_server(factory, host, port)
    except OSError as e:
        logger.error("cannot listen on %s:%d: %s", host, port, e)
        return 1
    logger.info("email mirror: listening on smtp://%s:%d for *@%s", host, port, handler.domain)
    await stopping.wait()
    logger.info("email mirror: stopping; finishing the emails being queued")
    server.close()
    await server.wait_closed()
    # Those being queued get their answer (a publish gives up after EVENTBUS_PUBLISH_TIMEOUT); clients that
    # got none keep their mail and send it again.
    await handler.idle.wait()
    return 0


def _smtp(handler: MirrorHandler, hostname: str) -> SMTP:
    """One SMTP session (a protocol instance per connection); invoked by the loop on each new connection."""
    return SMTP(handler, data_size_limit=MAX_MAIL_BYTES, enable_SMTPUTF8=True, hostname=hostname)
