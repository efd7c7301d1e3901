"""Markdown rendering of messages, as Zulip users expect it: CommonMark made safe, with Zulip's syntax.

``render`` turns a message's Markdown into the HTML every reader gets:

- CommonMark and GitHub's extensions through cmark-gfm, in C; raw HTML a
  user types is shown as text, and nothing typed can run script
  (``markdown_cmark``);
- Zulip's blocks: ```` ```quote ```` (a quote) and ```` ```spoiler title ````
  (a title, and content shown on demand); code blocks in Zulip's
  ``codehilite`` markup, with their language;
- Zulip's inline syntax: mentions (user, silent, wildcard), stream links,
  ``:emoji:`` and ``<time:...>`` (``markdown_inline``);
- ``/me`` messages, flagged as Zulip flags them.

Most messages take the fast path: one parse and render in C, then only the
passes whose syntax the message holds (each guarded by a substring check),
which keeps rendering at least 20 times as fast as Python-Markdown
(``bench/markdown.py``).
"""

from __future__ import annotations

import html
import re
from typing import NamedTuple

from eventbus.messages import is_me_message
from eventbus.processors.markdown_cmark import OPTIONS, CommonMark
from eventbus.processors.markdown_inline import (
    MENTION,
    NO_MENTIONS,
    Lookup,
    Mentions,
    emoji_and_times,
    mark_silent,
    may_have_inline,
    resolve_mentions,
    unmark_silent,
)

__all__ = ["MENTION", "OPTIONS", "Lookup", "Rendered", "mentioned_names", "render", "resolve_mentions"]

#: A ```` ```quote ```` or ```` ```spoiler title ```` block as cmark-gfm renders any fenced code.
FENCED = re.compile(r'<pre lang="(?P<kind>quote|spoiler)"(?: data-meta="(?P<title>[^"]*)")?><code>(?P<body>.*?)'
                    r"</code></pre>", re.DOTALL)
#: A user mention as typed, ``@**Name**``, ``@_**Name**`` or ``@**Name|id**``: what ``mentioned_names`` looks for.
TYPED_MENTION = re.compile(r"@_?\*\*(?P<name>[^*\n|]+)(?:\|\d+)?\*\*")
#: A code block's opening as cmark-gfm renders it, language and the rest of its info string included.
CODE_BLOCK = re.compile(r'<pre(?: lang="(?P<lang>[^"]*)"(?: data-meta="[^"]*")?)?><code>')


class Rendered(NamedTuple):
    html: str
    mentioned_user_ids: frozenset[int] = frozenset()
    #: ``@**all**`` and the like: every recipient gets ``stream_wildcard_mentioned``.
    mentions_stream_wildcard: bool = False
    #: ``@**topic**``: the topic's participants get ``topic_wildcard_mentioned``.
    mentions_topic_wildcard: bool = False
    #: A ``/me`` message (Zulip's ``is_me_message``): one line starting ``/me ``.
    is_me_message: bool = False


def _no_one(_name: str) -> None:
    return None


_commonmark = CommonMark()


def render(content: str, find_user: Lookup = _no_one, find_stream: Lookup = _no_one) -> Rendered:
    """Render a message's Markdown to safe HTML, resolving mentions, stream links, emoji and times."""
    source = mark_silent(content)
    output = _blocks(source)
    if "<pre" in output:
        output = CODE_BLOCK.sub(_codehilite, output).replace("</code></pre>", "</code></pre></div>")
    mentions: Mentions = NO_MENTIONS
    if "<strong>" in output:
        output, mentions = resolve_mentions(output, find_user, find_stream)
    if may_have_inline(content):
        output = emoji_and_times(output)
    if source is not content:
        output = unmark_silent(output)
    output = output.strip()
    return Rendered(output, mentions.user_ids, mentions.stream_wildcard, mentions.topic_wildcard,
                    is_me_message(content) and output.startswith("<p>/me ") and output.endswith("</p>"))


def mentioned_names(content: str) -> set[str]:
    """The names ``content`` seems to mention, read from its Markdown without rendering it: for reading those
    users ahead (``render`` resolves the mentions themselves, and may find fewer, in code, or others)."""
    return {match["name"] for match in TYPED_MENTION.finditer(content)} if "**" in content else set()


def _blocks(source: str) -> str:
    """Safe HTML of ``source`` with quote and spoiler blocks, whose content is Markdown, rendered too."""
    output = _commonmark.to_html(source)
    if "<pre" in output and ('<pre lang="quote"' in output or '<pre lang="spoiler"' in output):
        output = FENCED.sub(_fenced, output)
    return output


def _fenced(match: re.Match[str]) -> str:
    body = _blocks(html.unescape(match["body"])).strip()
    if match["kind"] == "quote":
        return f"<blockquote>\n{body}\n</blockquote>"
    title = _blocks(html.unescape(match["title"] or "")).strip()
    return (f'<div class="spoiler-block"><div class="spoiler-header">\n{title + chr(10) if title else ""}</div>'
            f'<div class="spoiler-content" aria-hidden="true">\n{body}\n</div></div>')


def _codehilite(match: re.Match[str]) -> str:
    """Zulip's markup for a code block (no highlighting: the language is kept for the page)."""
    lang = match["lang"]
    language = f' data-code-language="{lang}"' if lang else ""
    return f'<div class="codehilite"{language}><pre><span></span><code>'
