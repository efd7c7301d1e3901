"""``email_mirror``: an email sent to a stream's address becomes a message on that stream.

The event is a ``MirrorMail`` (``{"raw": "<base64>", "rcpt_to": "<token>@<domain>"}``):

- ``raw`` is the email exactly as received, base64-encoded: mail may carry
  8-bit bytes in charsets other than UTF-8, which a JSON string cannot hold
  losslessly.
- ``rcpt_to`` is the envelope recipient (the mirror server queues one event
  per recipient). Without it, the first address at the gateway domain in
  Delivered-To, To or Cc is used.

The recipient's local part is the stream's token: ``<token>@<EVENTBUS_EMAIL_GATEWAY_DOMAIN>``
(``eventbus create_stream`` prints the address). The message is posted on
that stream through ``message_send``:

- sender: the user whose email is in From, if there is an active one; else the
  mirror bot (``EVENTBUS_MIRROR_BOT_EMAIL``, "Email Gateway"), with the From
  line at the top of the content. From is not authenticated: the token is the
  secret, as with Zulip's stream addresses.
- topic: the Subject without its Re:/Fwd: prefixes, at most 60 characters;
  "(no topic)" when there is none.
- content: the text/plain body, else the text/html body converted to text
  (``html_to_text``); attachments are left out; cut at the message size limit.
- request id: ``email_mirror:<stream id>:<Message-ID>`` (or a hash of the raw
  email), so an email delivered twice is posted once.

Mail that can never become a message (not base64, no From, no stream address,
an unknown token, no text body) raises PermanentError with the reason: it goes
to the error store.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import hashlib
import logging
import re
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

from eventbus.contracts import EMAIL_MIRROR, MirrorMail
from eventbus.messages import MessageStore, Stream
from eventbus.processors.message_send import MAX_CONTENT, MAX_TOPIC, MessageError, check_request, send
from eventbus.processors.queues.push import short_text
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, PermanentError, QueueProcessingWorker
from eventbus.users import User

logger = logging.getLogger(__name__)

MIRROR_BOT_NAME = "Email Gateway"
NO_TOPIC = "(no topic)"
TRUNCATED = "\n\n[message truncated]"
#: Reply and forward prefixes, stacked or not: a reply lands in the topic of the email it answers.
SUBJECT_PREFIXES = re.compile(r"^(\s*(re|aw|fwd?)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
#: Headers that may name the stream address when the event has no envelope recipient, in this order.
ADDRESS_HEADERS = ("Delivered-To", "To", "Cc")
#: What the stdlib email package raises on mail it cannot make sense of; some of its parser bugs surface
#: as IndexError or AttributeError rather than as its own errors.
MAIL_ERRORS = (email.errors.MessageError, ValueError, LookupError, IndexError, AttributeError, TypeError)


class Mail:
    """A parsed email, read the way the mirror needs it; PermanentError for what it cannot read."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        try:
            self.message = BytesParser(EmailMessage, policy=email.policy.default).parsebytes(raw)
        except MAIL_ERRORS as e:
            raise PermanentError(f"unparseable email: {e}") from None

    def header(self, name: str) -> str:
        """The header's decoded value, "" if absent."""
        try:
            value = self.message.get(name)
            return "" if value is None else str(value).strip()
        except MAIL_ERRORS as e:
            raise PermanentError(f"unparseable {name} header: {e}") from None

    def addresses(self, names: tuple[str, ...]) -> list[str]:
        """Every address in these headers, in order."""
        try:
            values = [str(v) for name in names for v in self.message.get_all(name, [])]
        except MAIL_ERRORS as e:
            raise PermanentError(f"unparseable address header: {e}") from None
        return [address for _, address in getaddresses(values) if address]

    def sender(self) -> tuple[str, str]:
        """The From header as written, and its address."""
        from_header = self.header("From")
        address = parseaddr(from_header)[1]
        if not address:
            raise PermanentError(f"no sender address in the From header ({from_header!r})")
        return from_header, address

    def topic(self) -> str:
        return short_text(SUBJECT_PREFIXES.sub("", self.header("Subject")), MAX_TOPIC) or NO_TOPIC

    def text(self) -> str:
        """The text/plain body, else the text/html one as text; PermanentError when neither has any."""
        try:
            for kind in ("plain", "html"):
                part = self.message.get_body(preferencelist=(kind,))
                if part is None:
                    continue
                text = _decoded(part)
                text = (html_to_text(text) if kind == "html" else text).strip()
                if text:
                    return text
        except MAIL_ERRORS as e:
            raise PermanentError(f"unparseable email body: {e}") from None
        raise PermanentError("the email has no text: no text/plain or text/html body with content")

    def request_id(self, stream: Stream) -> str:
        """The same for every delivery of this email to this stream."""
        message_id = self.header("Message-ID") or "sha256-" + hashlib.sha256(self.raw).hexdigest()
        return f"email_mirror:{stream.id}:{message_id}"


def _decoded(part: MIMEPart) -> str:
    """A text part's content; a charset Python does not know is read as UTF-8, with replacements."""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


class _TextExtractor(HTMLParser):
    """The text of an HTML document: blocks on lines of their own, link targets in parentheses, no script or style."""

    HIDDEN = frozenset({"script", "style", "template", "title"})
    BLOCKS = frozenset({"address", "article", "blockquote", "div", "dl", "dt", "dd", "footer", "form", "h1", "h2",
                        "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "tr",
                        "ul"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.preformatted = 0
        self.links: list[tuple[str, int]] = []  # href, len(parts) when the link opened

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self._newline()
        elif tag in self.BLOCKS:
            self._newline()
            self.preformatted += tag == "pre"
            if tag == "li":
                self.parts.append("- ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS and tag != "li":  # list items follow each other without blank lines
            self.preformatted = max(0, self.preformatted - (tag == "pre"))
            self._newline()
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.parts[start:]).strip()
            if href.startswith(("http://", "https://", "mailto:")) and href.removeprefix("mailto:") != label:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if not self.preformatted:  # HTML's whitespace rule: any run is one space, none at the start of a line
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith(("\n", " ")):
                data = data.lstrip(" ")
        self.parts.append(data)

    def _newline(self) -> None:
        if self.parts and not self.preformatted:
            self.parts[-1] = self.parts[-1].rstrip(" ")
        self.parts.append("\n")

    def text(self) -> str:
        return re.sub(r"\n{3,}", "\n\n", "".join(self.parts)).strip()


def html_to_text(html: str) -> str:
    """The readable text of an HTML email; the contents of script, style, template and title are dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


@assign_queue(EMAIL_MIRROR, tries=5, retry_delay=1.0)
class EmailMirrorWorker(QueueProcessingWorker):
    """Posts emails sent to stream addresses on their streams; see the module docstring."""

    def before_start(self) -> None:
        settings = self.broker.settings
        self.store = MessageStore(settings.database)
        self.domain = settings.email_gateway_domain.lower()
        self.bot_email = settings.mirror_bot_email

    def consume(self, event: Event) -> None:
        received = MirrorMail.from_event(event)
        mail = Mail(received.raw)
        stream = self._stream(mail, received.rcpt_to)
        sender, content = self._sender_and_content(mail)
        if len(content) > MAX_CONTENT:
            content = content[: MAX_CONTENT - len(TRUNCATED)] + TRUNCATED
        request = {"type": "stream", "to": stream.name, "topic": mail.topic(), "content": content}
        try:
            message = send(self.broker, self.store, check_request(self.store, sender, request), mail.request_id(stream))
        except MessageError as e:
            raise PermanentError(str(e)) from None
        logger.info("email from %s posted as message %d on stream %s", sender.email, message.id, stream.name)

    def _stream(self, mail: Mail, rcpt_to: str | None) -> Stream:
        """The stream whose address the email was sent to."""
        candidates = [rcpt_to] if rcpt_to else mail.addresses(ADDRESS_HEADERS)
        for address in candidates:
            token, _, domain = address.strip().strip("<>").rpartition("@")
            if domain.lower() == self.domain:
                stream = self.store.stream_by_token(token.lower())
                if stream is None:
                    raise PermanentError(f"no stream has the address {address}")
                return stream
        where = f"envelope recipient {rcpt_to}" if rcpt_to else f"To: {mail.header('To') or '(none)'}"
        raise PermanentError(f"the email is not addressed to a stream: no address at {self.domain} ({where})")

    def _sender_and_content(self, mail: Mail) -> tuple[User, str]:
        """Who posts the email, and the content: the From line on top when the mirror bot posts it."""
        from_header, address = mail.sender()
        text = mail.text()
        user = self.store.users.get_by_email(address)
        if user is not None and user.is_active:
            return user, text
        bot = self.store.users.ensure_user(self.bot_email, MIRROR_BOT_NAME)
        return bot, f"From: {from_header}\n\n{text}"
