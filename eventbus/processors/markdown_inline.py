"""Zulip's inline syntax, resolved in the HTML cmark-gfm rendered: mentions, stream links, emoji, global times.

cmark-gfm renders ``@**Full Name**`` as ``@<strong>Full Name</strong>``, so
mentions are found in the HTML, where code never has a ``<strong>`` (its text
is never bold). The markup is Zulip's (its ``api_docs/message-formatting.md``):

- ``@**Name**``: ``<span class="user-mention" data-user-id="7">@Name</span>``;
  ``@**Name|7**`` picks the user with that id when names repeat;
- silent ``@_**Name**``: class ``user-mention silent``, no ``@``, no flag;
- wildcards: ``@**all**``, ``@**everyone**``, ``@**channel**``, ``@**stream**``
  (class ``user-mention channel-wildcard-mention``, ``data-user-id="*"``) and
  ``@**topic**`` (class ``topic-mention``); silent ones too;
- a mention of no one stays the text that was typed;
- ``#**stream**``: a link to the stream, when it exists.

Emoji ``:name:`` and ``<time:...>`` are found in the HTML's text, outside
code and tags. Emoji names and code points come from the ``emoji`` package
(Unicode's CLDR names and the usual aliases, such as ``:+1:``); the span is
Zulip's, holding the character itself so that any page shows it.
"""

from __future__ import annotations

import datetime
import functools
import html
import re
import urllib.parse
from collections.abc import Callable
from typing import NamedTuple

import emoji

#: Finds a user by full name (id, full name) or a stream by name (id, name); None if there is none.
Lookup = Callable[[str], tuple[int, str] | None]

#: Stands for the ``_`` of a silent mention while cmark-gfm parses: two ``@_**`` in a line would otherwise pair
#: their underscores into emphasis. A private-use character: sources that hold it are left as they are.
SILENT = "\ue000"
#: ``@**Name**``, ``@_**Name**`` (after ``mark_silent``) and ``#**stream**`` as cmark renders them.
MENTION = re.compile(r"(?P<sigil>[@#])(?P<silent>\ue000)?<strong>(?P<name>[^<]+)</strong>")
#: Zulip's wildcards (API feature level 224 on): everyone in the channel, or everyone in the topic.
STREAM_WILDCARDS = frozenset({"all", "everyone", "stream", "channel"})
TOPIC_WILDCARD = "topic"
WILDCARDS = STREAM_WILDCARDS | {TOPIC_WILDCARD}

#: Outside code and tags: no ``</code>`` and no tag's ``>`` ahead before the next ``<`` (text has ``&gt;``).
_IN_TEXT = r"(?![^<]*(?:>|</code>))"
#: ``:name:`` and ``<time:...>`` (as cmark renders its text) in text; apart, each starts with a literal, which
#: ``re`` finds fastest.
EMOJI_NAME = re.compile(rf":(?P<name>[\w+-]+):{_IN_TEXT}")
TIME = re.compile(rf"&lt;time:(?P<time>[^<]*?)&gt;{_IN_TEXT}")
#: Whether a source may hold an emoji: the inline pass runs only then (or for ``<time:``).
EMOJI_LIKE = re.compile(r":[\w+-]+:")


class Mentions(NamedTuple):
    user_ids: frozenset[int] = frozenset()
    stream_wildcard: bool = False
    topic_wildcard: bool = False


NO_MENTIONS = Mentions()


def mark_silent(source: str) -> str:
    """``source`` with silent mentions' ``_`` hidden from cmark-gfm; ``unmark_silent`` puts it back."""
    if "@_**" not in source or SILENT in source:
        return source
    return source.replace("@_**", f"@{SILENT}**")


def unmark_silent(output: str) -> str:
    return output.replace(SILENT, "_") if SILENT in output else output


def resolve_mentions(output: str, find_user: Lookup, find_stream: Lookup) -> tuple[str, Mentions]:
    """Rendered HTML with mentions and stream links resolved; who and what it mentions."""
    users: set[int] = set()
    wildcards: set[str] = set()

    def resolve(match: re.Match[str]) -> str:
        sigil, silent, typed = match.group("sigil", "silent", "name")
        name = html.unescape(typed)
        if sigil == "#":
            return _stream_link(match, find_stream(name))
        if name in WILDCARDS:
            if not silent:
                wildcards.add(name)
            return _wildcard_mention(name, silent is not None)
        user = find_user(name) if "|" not in name else _find_by_id(find_user, name)
        if user is None:  # as typed
            return f"@_**{typed}**" if silent else f"@**{typed}**"
        if not silent:
            users.add(user[0])
        return _user_mention(user, silent is not None)

    output = MENTION.sub(resolve, output)
    if not wildcards:
        return output, Mentions(frozenset(users))
    return output, Mentions(frozenset(users), bool(wildcards & STREAM_WILDCARDS), TOPIC_WILDCARD in wildcards)


def _find_by_id(find_user: Lookup, name: str) -> tuple[int, str] | None:
    """``Name|id``, Zulip's form for names that repeat: the user of that name, if it has that id."""
    named, _, user_id = name.rpartition("|")
    user = find_user(named)
    return user if user is not None and str(user[0]) == user_id else None


@functools.lru_cache(maxsize=4096)  # chat mentions the same people over and over
def _user_mention(user: tuple[int, str], silent: bool) -> str:
    if silent:
        return f'<span class="user-mention silent" data-user-id="{user[0]}">{html.escape(user[1])}</span>'
    return f'<span class="user-mention" data-user-id="{user[0]}">@{html.escape(user[1])}</span>'


def _wildcard_mention(name: str, silent: bool) -> str:
    if name == TOPIC_WILDCARD:
        return f'<span class="topic-mention{" silent" if silent else ""}">{"" if silent else "@"}{name}</span>'
    return (f'<span class="user-mention channel-wildcard-mention{" silent" if silent else ""}" data-user-id="*">'
            f'{"" if silent else "@"}{name}</span>')


def _stream_link(match: re.Match[str], stream: tuple[int, str] | None) -> str:
    return match[0] if stream is None else _stream_markup(stream)


@functools.lru_cache(maxsize=1024)
def _stream_markup(stream: tuple[int, str]) -> str:
    slug = urllib.parse.quote(f"{stream[0]}-{stream[1]}")
    return f'<a class="stream" data-stream-id="{stream[0]}" href="/#narrow/stream/{slug}">#{html.escape(stream[1])}</a>'


def may_have_inline(source: str) -> bool:
    """Whether ``source`` may hold an emoji or a global time (cheap: most messages hold neither)."""
    return ":" in source and ("<time:" in source or EMOJI_LIKE.search(source) is not None)


def emoji_and_times(output: str) -> str:
    """Rendered HTML with ``:name:`` emoji and ``<time:...>`` resolved in its text."""
    if "&lt;time:" in output:
        output = TIME.sub(_time, output)
    return EMOJI_NAME.sub(_emoji, output)


def _time(match: re.Match[str]) -> str:
    return global_time(html.unescape(match["time"]))


def _emoji(match: re.Match[str]) -> str:
    return EMOJI.get(match["name"], match[0])


def global_time(text: str) -> str:
    """Zulip's ``<time:...>``: a moment every reader sees in their own time zone; unix seconds or ISO 8601."""
    moment = parse_time(text.strip())
    if moment is None:
        return f'<span class="timestamp-error">Invalid time format: {html.escape(text, quote=False)}</span>'
    stamp = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'<time datetime="{stamp}">{html.escape(text, quote=False)}</time>'


def parse_time(text: str) -> datetime.datetime | None:
    """The moment ``text`` names (UTC unless it says otherwise), or None."""
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return datetime.datetime.fromtimestamp(float(text), datetime.UTC)
        moment = datetime.datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _emoji_characters() -> dict[str, str]:
    """Emoji name -> its character (fully qualified), for every name and alias of the standard set.

    A CLDR name wins over an alias where both name an emoji (``:cat:`` is the
    cat, ``:cat_face:`` its face), as in Zulip.
    """
    fully_qualified = emoji.STATUS["fully_qualified"]
    found = [(character, data) for character, data in emoji.EMOJI_DATA.items() if data["status"] == fully_qualified]
    table: dict[str, str] = {}
    for names in ((lambda d: [d["en"]]), (lambda d: d.get("alias", []))):
        for character, data in found:
            for name in names(data):
                table.setdefault(name.strip(":").lower(), character)
    return table


def emoji_code(character: str) -> str:
    """Zulip's ``emoji_code`` of a unicode emoji: its code points in hex, dash-separated, no variation selectors."""
    return "-".join(f"{ord(c):04x}" for c in character if c != "\ufe0f")


def _emoji_span(name: str, character: str) -> str:
    """Zulip's span of an emoji: its class names the code, and it holds the character."""
    title = html.escape(name.replace("_", " "))
    return (f'<span aria-label="{title}" class="emoji emoji-{emoji_code(character)}" role="img" title="{title}">'
            f"{character}</span>")


#: Emoji name -> character, and name -> its markup.
EMOJI_CHARACTERS = _emoji_characters()
EMOJI = {name: _emoji_span(name, character) for name, character in EMOJI_CHARACTERS.items()}
