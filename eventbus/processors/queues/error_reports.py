"""Errors and slow queries, in batches: ``error_reports`` mails the administrators, ``slow_queries`` posts a summary.

Both derive the id of what they send from the batch (``stable_id``), so a
redelivered batch sends one email, posts one message. An event that breaks
its contract (``ErrorReport``, ``SlowQuery``) goes to the error store; the
rest of its batch is reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from eventbus.contracts import ERROR_REPORTS, SLOW_QUERIES, ErrorReport, SlowQuery
from eventbus.messages import MessageStore
from eventbus.processors.mailer import queue_email, stable_id
from eventbus.processors.message_send import MessageError, check_request, send
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, PermanentError

logger = logging.getLogger(__name__)

#: Lines of the first report's stack trace shown per group; the rest of a group is counted, not repeated.
STACK_LINES = 40
#: A line of a stack trace that names a frame: Python's 'File "x", line n', V8's 'at f (x:1:2)', Firefox's 'f@x:1:2'.
FRAME = re.compile(r'^(File "|at )|@\S+:\d+')
#: Slow query groups listed in one summary: with labels cut to SUMMARY_LABEL, it stays under MAX_CONTENT.
SUMMARY_GROUPS = 30
SUMMARY_LABEL = 200
SLOW_QUERY_TOPIC = "slow queries"

K = TypeVar("K", bound=Hashable)
E = TypeVar("E")


def group(events: list[E], key: Callable[[E], K]) -> list[tuple[K, list[E]]]:
    """The events grouped by ``key``, the largest group first (first seen first among equals)."""
    groups: dict[K, list[E]] = {}
    for event in events:
        groups.setdefault(key(event), []).append(event)
    return sorted(groups.items(), key=lambda item: -len(item[1]))


# -- error reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """What makes two error reports the same error."""

    type: str
    message: str
    frame: str

    @classmethod
    def of(cls, report: ErrorReport) -> Signature:
        kind = report.type
        message = _one_line(report.message or "(no message)")
        lines = [line.strip() for line in report.stacktrace.splitlines() if line.strip()]
        frames = [line for line in lines if FRAME.search(line)]
        # Python prints the innermost frame last; browsers print it first.
        innermost = (frames[-1] if kind == "server" else frames[0]) if frames else (lines[-1] if lines else "")
        return cls(kind, message[:300], innermost[:300])


def report_email(reports: list[ErrorReport]) -> tuple[str, str]:
    """Subject and text of the email about a batch of reports: one section per signature, with its count."""
    groups = group(reports, Signature.of)
    first = groups[0][0]
    subject = _one_line(f"[eventbus] {len(reports)} error report{'s' if len(reports) > 1 else ''} "
                        f"({len(groups)} kind{'s' if len(groups) > 1 else ''}): {first.type}: {first.message}")[:200]
    sections = [_section(signature, members) for signature, members in groups]
    return subject, "\n\n".join(sections) + "\n"


def _section(signature: Signature, reports: list[ErrorReport]) -> str:
    lines = [f"{len(reports)} x {signature.type} error: {signature.message}"]
    if signature.frame:
        lines.append(f"    {signature.frame}")
    for label, field in (("users", "user_email"), ("pages", "href")):
        values = list(dict.fromkeys(str(getattr(r, field)) for r in reports if getattr(r, field)))
        more = f" and {len(values) - 10} more" if values[10:] else ""
        if values:
            lines.append(f"  {label}: {', '.join(values[:10])}{more}")
    example = reports[0]
    lines += [f"  {key}: {_one_line(str(value))[:300]}" for key, value in sorted(example.extra.items())]
    stack = example.stacktrace.rstrip().splitlines()
    if stack:
        lines.append("  first report's stack trace:")
        lines += [f"    {line[:300]}" for line in stack[:STACK_LINES]]
        if stack[STACK_LINES:]:
            lines.append(f"    ... {len(stack) - STACK_LINES} more lines")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@assign_queue(ERROR_REPORTS, batch_size=100, batch_wait=5.0, tries=5, retry_delay=5.0)
class ErrorReportWorker(LoopQueueProcessingWorker):
    """Server errors and browser tracebacks, grouped by signature, one email per batch to ``admin_emails``.

    Reports are ``ErrorReport`` events; any field beyond the report's own is
    shown with its group. A signature is the type, the message and the
    innermost stack frame. With no administrators configured
    the email's text is logged at ERROR level instead: the log is then where
    error reports go, and none is dropped.
    """

    def consume_batch(self, events: list[Event]) -> None:
        parsed = self.parse(events, ErrorReport.from_event)
        if not parsed:
            return
        subject, text = report_email([report for _, report in parsed])
        admins = self.broker.settings.admin_emails
        if not admins:
            logger.error("%s (no EVENTBUS_ADMIN_EMAILS to send this to)\n%s", subject, text)
            return
        email_id = stable_id(ERROR_REPORTS, [event for event, _ in parsed])
        queue_email(self.broker, admins, subject, text, email_id=email_id)


# -- slow queries -------------------------------------------------------------------------


@assign_queue(SLOW_QUERIES, batch_size=500, batch_wait=60.0, tries=5, retry_delay=5.0)
class SlowQueryWorker(LoopQueueProcessingWorker):
    """Reports of slow requests or queries (``SlowQuery``) as one summary per batch.

    The summary goes to the stream ``slow_query_stream`` (created when
    missing) from the notification bot, through the message path, with a
    request id derived from the batch: a redelivered batch is posted once.
    """

    def before_start(self) -> None:
        settings = self.broker.settings
        self.store = MessageStore(settings.database)
        self.bot = self.store.users.ensure_user(settings.notification_bot_email, "Notification Bot")
        self.store.create_stream(settings.slow_query_stream)

    def consume_batch(self, events: list[Event]) -> None:
        parsed = self.parse(events, SlowQuery.from_event)
        if not parsed:
            return
        request = {"type": "stream", "to": self.broker.settings.slow_query_stream, "topic": SLOW_QUERY_TOPIC,
                   "content": slow_query_summary([report for _, report in parsed])}
        try:
            draft = check_request(self.store, self.bot, request)
        except MessageError as e:
            raise PermanentError(f"cannot post the slow query summary: {e}") from None
        send(self.broker, self.store, draft, stable_id(SLOW_QUERIES, [event for event, _ in parsed]))


def slow_query_summary(events: list[SlowQuery]) -> str:
    """Markdown: how many, then per query (or path) its count, slowest and average time, slowest first."""
    rows = []
    for label, reports in group(events, _query_label):
        times = [float(r.time_ms) for r in reports]
        rows.append((max(times), sum(times) / len(times), len(reports), label))
    rows.sort(key=lambda row: -row[0])
    lines = [f"{slowest:>9.0f} {average:>9.0f} {count:>6} {label}" for slowest, average, count, label
             in rows[:SUMMARY_GROUPS]]
    if rows[SUMMARY_GROUPS:]:
        lines.append(f"... and {len(rows) - SUMMARY_GROUPS} more")
    table = "\n".join([f"{'max ms':>9} {'avg ms':>9} {'count':>6} query", *lines])
    fence = "`" * max(3, _longest_run(table, "`") + 1)  # a label cannot close the code block early
    heading = f"**{len(events)} slow quer{'ies' if len(events) > 1 else 'y'}**, slowest first:"
    return f"{heading}\n\n{fence}\n{table}\n{fence}"


def _query_label(report: SlowQuery) -> str:
    label = _one_line(report.query or report.path or "(unnamed)")
    return label if len(label) <= SUMMARY_LABEL else label[:SUMMARY_LABEL - 3] + "..."


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)
