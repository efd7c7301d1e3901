"""History (issue 14): milliseconds to fetch 100 messages of a topic from a store of 1,000,000, against the same
fetch by primary key alone.

The store is filled once per run of the benchmark, in bulk (one transaction,
``executemany``, through the store's own schema, so that its triggers keep
the full-text index in step): ``MESSAGES`` stream messages from a handful of
senders, spread over ``STREAMS`` streams of ``TOPICS`` topics each, all of
them received by one reader, a tenth of them unread. Then each case times
``FETCHES`` calls of ``MessageStore.history`` for the reader, as GET
/api/v1/messages makes it (the message objects built, flags decoded), each at
another topic or anchor, and reports the median of those calls in
milliseconds:

- the baseline: the reader's 100 newest messages, no narrow: a range of the
  primary key of ``user_messages``, the cheapest fetch there is;
- 100 newest of a topic (``channel`` and ``topic`` narrow), and 100 of a topic
  before an anchor deep in its history;
- for comparison, without target: 100 unread (``is:unread``), and a full-text
  ``search`` of a word in one message of 10,000 and of a word in all the others.

Target: the topic narrow in single-digit milliseconds (median under 10 ms).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import register
from bench.harness import Context, Figure, in_rounds
from eventbus import codec
from eventbus.messages import HistoryQuery, MessageStore
from eventbus.narrow import NarrowTerm

logger = logging.getLogger(__name__)

MESSAGES = 1_000_000
QUICK_MESSAGES = 20_000
STREAMS = 20
TOPICS = 50
SENDERS = 5
#: Fetches timed per run, each at another topic or anchor.
FETCHES = 200
QUICK_FETCHES = 20
#: Messages per fetch, as a client asks for a screen of history.
PAGE = 100
#: One message in this many holds the word the search case looks for.
RARE_EVERY = 10_000
RARE_WORD = "quokka"
#: The word every other message holds.
COMMON_WORD = "castle"
#: A topic narrow must be served in single-digit milliseconds.
TARGET_MS = 10.0

BASELINE = "100 newest, no narrow (primary key range)"


@register("history", "ms to fetch 100 messages of a topic from 1,000,000, against no narrow (issue 14)")
def history(context: Context) -> list[Figure]:
    count = context.size(MESSAGES, QUICK_MESSAGES)
    fetches = context.size(FETCHES, QUICK_FETCHES)
    store, reader, first_id = _filled(context.work_dir / "history.sqlite3", count)
    rng = random.Random(14)
    topics = [(s, t) for s in range(STREAMS) for t in range(TOPICS)]

    def topic(pair: tuple[int, int]) -> tuple[NarrowTerm, ...]:
        return NarrowTerm("channel", f"stream-{pair[0]}"), NarrowTerm("topic", f"topic {pair[1]}")

    cases: list[tuple[str, Callable[[], HistoryQuery], float | None]] = [
        (BASELINE, lambda: HistoryQuery(num_before=PAGE), None),
        ("100 newest of a topic (channel + topic)", lambda: HistoryQuery(topic(rng.choice(topics)), num_before=PAGE),
         TARGET_MS),
        ("100 of a topic before an anchor half-way back", lambda: HistoryQuery(
            topic(rng.choice(topics)), anchor=first_id + count // 2, num_before=PAGE), TARGET_MS),
        ("100 newest unread (is:unread)", lambda: HistoryQuery((NarrowTerm("is", "unread"),), num_before=PAGE), None),
        (f"search for a word in 1 message of {RARE_EVERY:,}", lambda: HistoryQuery(
            (NarrowTerm("search", RARE_WORD),), num_before=PAGE), None),
        ("search for a word in nearly every message", lambda: HistoryQuery(
            (NarrowTerm("search", COMMON_WORD),), num_before=PAGE), None),
    ]
    for name, query, _ in cases:
        asked = query()
        found = len(store.history(reader, asked)["messages"])
        logger.info("  %s: %d messages a fetch; plan: %s", name, found, "; ".join(store.explain(reader, asked.narrow)))
    runs = [_timed(store, reader, query, fetches) for _, query, _ in cases]
    samples = in_rounds(runs, repeats=context.repeats)
    over = f"from {count:,}"
    return [Figure("history", f"{name}, {over}", fetches, values, "ms", baseline=name == BASELINE,
                   versus=f"{BASELINE}, {over}", limit=limit)
            for (name, _, limit), values in zip(cases, samples, strict=True)]


def _timed(store: MessageStore, reader: int, query: Callable[[], HistoryQuery], fetches: int) -> Callable[[], float]:
    """A run: the median milliseconds of ``fetches`` history calls, each with a query of its own."""

    def run() -> float:
        times = []
        for _ in range(fetches):
            asked = query()
            start = time.perf_counter()
            store.history(reader, asked)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    return run


def _filled(path: Path, count: int) -> tuple[MessageStore, int, int]:
    """A store of ``count`` messages, all received by one reader: the store, the reader's id, the first id."""
    store = MessageStore(path)
    reader = store.users.create_user("reader@example.com", "Reader").id
    senders = [store.users.create_user(f"sender{n}@example.com", f"Sender {n}").id for n in range(SENDERS)]
    streams = [store.create_stream(f"stream-{n}", [reader, *senders]) for n in range(STREAMS)]
    started = time.monotonic()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous = OFF")  # a bulk load: a crash would only spoil this benchmark's file
        db.executemany("INSERT INTO recipients (key) VALUES (?)", [(f"stream:{s.id}",) for s in streams])
        recipients = dict(db.execute("SELECT key, id FROM recipients"))
        first_id = (db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]) + 1
        rows = _messages(count, first_id, senders, [(s.id, s.name, recipients[f"stream:{s.id}"]) for s in streams])
        db.executemany(
            "INSERT INTO messages (id, sender_id, type, stream_id, display_recipient, subject, content,"
            " rendered_content, timestamp, delivered, recipient_id, client) VALUES (?, ?, 'stream', ?, ?, ?, ?, ?,"
            " ?, 1, ?, 'bench')", rows)
        read, unread = codec.encode(["read"]).decode(), "[]"
        db.executemany("INSERT INTO user_messages (user_id, message_id, flags) VALUES (?, ?, ?)",
                       ((reader, i, unread if i % 10 == 0 else read) for i in range(first_id, first_id + count)))
    logger.info("  filled a store of %d messages in %.1f s", count, time.monotonic() - started)
    return store, reader, first_id


def _messages(count: int, first_id: int, senders: list[int],
              streams: list[tuple[int, str, int]]) -> Iterator[tuple[object, ...]]:
    rng = random.Random(5)
    now = time.time() - count
    for n in range(count):
        stream_id, name, recipient_id = streams[n % STREAMS]
        word = RARE_WORD if n % RARE_EVERY == 0 else COMMON_WORD
        content = f"message {n} about the {word}"
        yield (first_id + n, rng.choice(senders), stream_id, codec.encode(name).decode(),
               f"topic {rng.randrange(TOPICS)}", content, f"<p>{content}</p>", now + n, recipient_id)
