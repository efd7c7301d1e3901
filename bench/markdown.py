"""Markdown (issue 5): messages/s eventbus's renderer turns into safe HTML, against Python-Markdown.

Every case renders the same corpus: ``MESSAGES`` chat messages made up from
a fixed seed (``corpus``) as people type them: mostly short lines, some
bold and italic, links bare and named, code spans, fenced code blocks,
lists, quotes, ``@**Full Name**`` mentions of ``USERS`` users (a few of
nobody, a few silent), ``@**all**``, ``:emoji:``, a ``<time:...>``, a
``/me``, a spoiler, a raw ``<div>`` shown as text (issue 14's syntax, so
that the figure has all of it on) and ``#**stream**`` links to ``STREAMS``
streams. Mentions are
resolved in every case that resolves them by ``dict.get`` on dicts of the
users and the streams, except where a case says otherwise.

- The baseline is what Zulip renders with: Python-Markdown,
  ``markdown.markdown(text, extensions=["fenced_code"])``, then mentions
  resolved as eventbus resolves them: the same regular expression
  (``eventbus.processors.markdown.MENTION``) over the HTML, the same
  markup for a mention and a stream link. Python-Markdown's output is not
  made safe (raw HTML passes), which spares it work eventbus does, and it
  leaves Zulip's other syntax (emoji, times, spoilers) as text.
- Python-Markdown with one ``Markdown`` instance, ``reset()`` before each
  message: building the instance and its extensions is then not paid per
  message (Zulip keeps its engine this way).
- eventbus: ``render(content, find_user, find_stream)``; target
  ``TARGET`` times the baseline.
- eventbus with the lookups ``message_send`` gives it: each mention found
  in SQLite (a connection per lookup), as the ``message_sender`` worker
  renders.
- cmark-gfm alone (``github_flavored_markdown_to_html`` with eventbus's
  options): the floor, to show what eventbus adds on top (the safety pass
  and mentions).

A run renders the corpus a number of times (``Case.passes``) so that it
takes about half a second on a fast case and on a slow one alike. It is
timed in CPU seconds of this thread (``time.thread_time``), not wall time:
rendering is all CPU in one thread, and on a shared machine the wall time
also counts the slices other processes took, which moved the ratios by half
from one run to the next. (The SQLite case only reads, so it waits on no
disk.)
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import cmarkgfm
import markdown

from bench import register
from bench.harness import BenchError, Context, Result, Trial, measure
from eventbus.messages import MessageStore
from eventbus.processors import message_send
from eventbus.processors.markdown import OPTIONS, Lookup, render, resolve_mentions

#: A few hundred messages: enough variety that no one kind of message decides the figure.
MESSAGES = 300
QUICK_MESSAGES = 40
USERS = 100
STREAMS = 20
#: The corpus is the same from run to run and machine to machine.
SEED = 5
#: Issue 5's target: eventbus renders at least 20 times as many messages a second as Python-Markdown.
TARGET = 20.0

FIRST_NAMES = ("Iago", "Othello", "Desdemona", "Cordelia", "Hamlet", "Ophelia", "Prospero", "Miranda", "Viola",
               "Portia")
LAST_NAMES = ("Smith", "Nguyen", "García", "Okafor", "Kowalski", "Tanaka", "Müller", "Dubois", "Rossi", "Ahmed")
STREAM_NAMES = ("general", "engineering", "design", "sales", "support", "random", "announce", "ops", "backend",
                "frontend", "mobile", "infra", "qa", "docs", "hiring", "social", "data", "security", "release",
                "devel help")

SHORT = ("ok", "thanks!", "sounds good", "lgtm 👍", "on it", "I'll take a look after lunch.",
         "Can someone review my PR?", "brb", "Deploy is done.", "Who's around for a quick call?",
         "+1", "Fixed in main, thanks for the report.", "Is the build red for anyone else?",
         "Meeting moved to 3pm.", "Sorry, I missed that. What was the decision?", "haha", "nice!",
         "Let's discuss tomorrow.", "Back online.", "The staging server is slow again.")
CODE = (
    "```python\ndef retry(fn, tries=3):\n    for i in range(tries):\n        try:\n            return fn()\n"
    "        except IOError:\n            time.sleep(2 ** i)\n    raise\n```",
    "```\nTraceback (most recent call last):\n  File \"worker.py\", line 42, in consume\n"
    "    self.process(event)\nKeyError: 'user_id'\n```",
    "```bash\n$ git fetch origin\n$ git rebase -i origin/main\n$ ./tools/test-backend --coverage\n```",
    "```js\nconst socket = new WebSocket(url);\nsocket.onmessage = (e) => render(JSON.parse(e.data));\n```",
    "```sql\nSELECT id, subject FROM messages WHERE stream_id = 3 ORDER BY id DESC LIMIT 50;\n```",
)


#: Zulip's rarer syntax, one of them in one part of 13: a spoiler, a global time, ``/me``, raw HTML shown as text.
RARE: tuple[Callable[[random.Random, str, int], str], ...] = (
    lambda rng, user, n: f"```spoiler the answer\nIt was **{user}** all along.\n```",
    lambda rng, user, n: f"Standup moves to <time:2025-0{n % 9 + 1}-1{n % 10}T15:00:00+02:00>",
    lambda rng, user, n: f"/me {rng.choice(SHORT).lower()}",
    lambda rng, user, n: f"Wrap it in a <div> and {rng.choice(SHORT).lower()}",
)


def users(count: int = USERS) -> dict[str, tuple[int, str]]:
    """``count`` users by full name, as ``find_user`` answers: name -> (id, name)."""
    names = [f"{first} {last}" for last in LAST_NAMES for first in FIRST_NAMES][:count]
    return {name: (i + 1, name) for i, name in enumerate(names)}


def streams(count: int = STREAMS) -> dict[str, tuple[int, str]]:
    """``count`` streams by name: name -> (id, name)."""
    return {name: (i + 1, name) for i, name in enumerate(STREAM_NAMES[:count])}


def corpus(count: int, user_names: list[str], stream_names: list[str], seed: int = SEED) -> list[str]:
    """``count`` chat messages mentioning these users and streams, the same for the same arguments."""
    rng = random.Random(seed)
    return [_message(rng, user_names, stream_names) for _ in range(count)]


def _message(rng: random.Random, user_names: list[str], stream_names: list[str]) -> str:
    """One message: mostly a short line; else one to three parts of the kinds chat has."""
    if rng.random() < 0.45:
        return rng.choice(SHORT)
    parts = [_part(rng, user_names, stream_names) for _ in range(rng.choice((1, 1, 2, 3)))]
    return "\n\n".join(parts)


def _part(rng: random.Random, user_names: list[str], stream_names: list[str]) -> str:
    user = rng.choice(user_names) if rng.random() < 0.9 else "Nobody Here"  # some mentions are of no one
    other = rng.choice(user_names)
    stream = rng.choice(stream_names)
    n = rng.randrange(100, 30_000)
    kinds = (
        lambda: f"@**{user}** can you take a look at this?",
        lambda: f"Thanks @**{user}**! I moved the discussion to #**{stream}**.",
        lambda: f"This is **really** important: please *don't* merge before the release of v{n % 9}.{n % 13}.",
        lambda: f"See https://github.com/zulip/zulip/pull/{n} for details.",
        lambda: f"I wrote it up in [the design doc](https://docs.example.com/d/{n}), comments welcome.",
        lambda: f"Try `git rebase -i HEAD~{n % 9 + 2}` and then `git push --force-with-lease`.",
        lambda: f"Here's what I get when `worker.py` starts:\n\n{rng.choice(CODE)}",
        lambda: f"Agenda for today:\n- status of #**{stream}**\n- **on-call** handover to @**{other}**\n- retro",
        lambda: "Steps:\n1. open the settings\n2. click *Notifications*\n3. turn off `email digest`",
        lambda: f"> {rng.choice(SHORT)}\n\nAgreed with @**{user}** on that.",
        lambda: f"_{rng.choice(SHORT)}_ (~~typo~~ fixed) cc @**{user}** @**{other}**",
        lambda: rng.choice(SHORT),
        lambda: f"Release {n % 9}.{n % 13} is out :tada: thanks @**all** and @_**{other}**! :+1:",
        lambda: rng.choice(RARE)(rng, user, n),
    )
    return rng.choice(kinds)()


#: Renders one message, mentions resolved with the case's lookups; returns the ids of the users mentioned.
Renderer = Callable[[str], set[int] | frozenset[int]]


@dataclass(frozen=True)
class Lookups:
    find_user: Lookup
    find_stream: Lookup


def python_markdown(lookups: Lookups) -> Renderer:
    def render_one(text: str) -> frozenset[int]:
        output = markdown.markdown(text, extensions=["fenced_code"])
        return resolve_mentions(output, lookups.find_user, lookups.find_stream)[1].user_ids

    return render_one


def python_markdown_reused(lookups: Lookups) -> Renderer:
    engine = markdown.Markdown(extensions=["fenced_code"])

    def render_one(text: str) -> frozenset[int]:
        output = engine.reset().convert(text)
        return resolve_mentions(output, lookups.find_user, lookups.find_stream)[1].user_ids

    return render_one


def eventbus(lookups: Lookups) -> Renderer:
    return lambda text: render(text, lookups.find_user, lookups.find_stream).mentioned_user_ids


def cmark_alone(_lookups: Lookups) -> Renderer:
    def render_one(text: str) -> frozenset[int]:
        cmarkgfm.github_flavored_markdown_to_html(text, OPTIONS)
        return frozenset()

    return render_one


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Lookups], Renderer]
    #: Renders of the corpus per run: about half a second of CPU each, fast case or slow.
    passes: int
    #: Its mentions are looked up in SQLite, as the message_sender worker does.
    sqlite: bool = False
    resolves: bool = True
    baseline: bool = False
    target: float | None = None


CASES = (
    Case("Python-Markdown markdown.markdown, fenced_code", python_markdown, passes=2, baseline=True),
    Case("Python-Markdown, one Markdown instance reset", python_markdown_reused, passes=4),
    Case("eventbus render, mentions from dicts", eventbus, passes=40, target=TARGET),
    Case("eventbus render, mentions from SQLite", eventbus, passes=4, sqlite=True),
    Case("cmark-gfm alone (no safety pass, no mentions)", cmark_alone, passes=60, resolves=False),
)


@register("markdown", "messages/s eventbus renders with mentions, against Python-Markdown (issue 5)")
def markdown_rate(context: Context) -> list[Result]:
    people, rooms = users(), streams()
    messages = corpus(context.size(MESSAGES, QUICK_MESSAGES), list(people), list(rooms))
    in_memory = Lookups(people.get, rooms.get)
    in_sqlite = _sqlite_lookups(MessageStore(context.work_dir / "markdown.sqlite3"), people, rooms)
    mentions = _mentions(messages, eventbus(in_memory))
    trials = []
    for case in CASES:
        renderer = case.make(in_sqlite if case.sqlite else in_memory)
        if case.resolves and _mentions(messages, renderer) != mentions:
            raise BenchError(f"{case.name}: resolves other mentions than eventbus's render")
        trials.append(Trial(_runner(renderer, messages, _passes(context, case))))
    samples = measure(trials, repeats=context.repeats)
    return [Result("markdown", case.name, len(messages) * _passes(context, case), seconds, baseline=case.baseline,
                   target=case.target) for case, seconds in zip(CASES, samples, strict=True)]


def _passes(context: Context, case: Case) -> int:
    return 1 if context.quick else case.passes


def _runner(renderer: Renderer, messages: list[str], passes: int) -> Callable[[], float]:
    """A run that times itself in CPU seconds of this thread."""

    def run() -> float:
        start = time.thread_time()
        for _ in range(passes):
            for text in messages:
                renderer(text)
        return time.thread_time() - start

    return run


def _mentions(messages: list[str], renderer: Renderer) -> list[frozenset[int]]:
    """Who each message mentions, as ``renderer`` resolves it: every case must agree with eventbus."""
    found = [frozenset(renderer(text)) for text in messages]
    if not any(found):
        raise BenchError("the corpus resolves no mention: the benchmark would not time mentions")
    return found


def _sqlite_lookups(store: MessageStore, people: dict[str, tuple[int, str]],
                    rooms: dict[str, tuple[int, str]]) -> Lookups:
    """``message_send``'s own lookups on a store holding these users and streams (ids as the store gives them)."""
    if not store.users.all():
        for name in people:
            store.users.create_user(f"{name.lower().replace(' ', '.')}@example.com", name)
        for name in rooms:
            store.create_stream(name)
    return Lookups(functools.partial(message_send._find_user, store),
                   functools.partial(message_send._find_stream, store))
