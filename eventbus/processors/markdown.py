"""Markdown rendering of messages: CommonMark (GitHub's cmark-gfm, in C), made safe, with mentions.

cmark-gfm renders CommonMark plus fenced code blocks, autolinks, tables and
strikethrough. It runs in its safe mode: raw HTML in the source is dropped,
and ``javascript:``-like link targets are emptied. On top of that, only
``http``, ``https`` and ``mailto`` links stay links (anything else becomes its
text) and only ``http(s)`` images stay images, so nothing a sender types can
run script in a reader's browser.

Zulip's syntax is added by rewriting the HTML, which leaves code alone (its
text is never bold): ``@**Full Name**`` becomes a mention of that user and
``#**stream**`` a link to the stream, when they exist.
"""

from __future__ import annotations

import functools
import html
import re
import urllib.parse
from collections.abc import Callable
from typing import NamedTuple

import cffi
from cmarkgfm import _cmark
from cmarkgfm.cmark import Options

#: Safe mode is cmark-gfm's default; these add what chat needs.
OPTIONS = Options.CMARK_OPT_VALIDATE_UTF8 | Options.CMARK_OPT_GITHUB_PRE_LANG | Options.CMARK_OPT_HARDBREAKS
#: GitHub's extensions: fenced code is CommonMark's own; these add tables, autolinks and the rest.
EXTENSION_NAMES = (b"table", b"autolink", b"tagfilter", b"strikethrough", b"tasklist")
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
IMAGE_SCHEMES = frozenset({"http", "https"})

ANCHOR = re.compile(r'<a href="(?P<href>[^"]*)"(?P<attrs>[^>]*)>(?P<body>.*?)</a>', re.DOTALL)
IMAGE = re.compile(r'<img src="(?P<src>[^"]*)" alt="(?P<alt>[^"]*)"(?P<attrs>[^>]*)/?>')
#: ``@**Name**`` and ``#**stream**`` as cmark renders them.
MENTION = re.compile(r"(?P<sigil>[@#])<strong>(?P<name>[^<]+)</strong>")


class Rendered(NamedTuple):
    html: str
    mentioned_user_ids: frozenset[int] = frozenset()


#: Finds a user by full name (id, full name) or a stream by name (id, name); None if there is none.
Lookup = Callable[[str], tuple[int, str] | None]


def _no_one(_name: str) -> None:
    return None


class _CommonMark:
    """cmark-gfm through its C API: extensions looked up once, and everything it allocates freed.

    cmarkgfm's own helper looks the extensions up on every call and never
    frees the document or the HTML it returns (about 2.4 KB a message, for
    the life of a worker). Its cffi declarations leave out the two functions
    that free them: a second cffi declaration finds them in the same library.
    """

    def __init__(self) -> None:
        self.lib, self.ffi = _cmark.lib, _cmark.ffi
        self.lib.cmark_gfm_core_extensions_ensure_registered()
        self.extensions = [self.lib.cmark_find_syntax_extension(name) for name in EXTENSION_NAMES]
        frees = cffi.FFI()
        frees.cdef("void cmark_node_free(void *node); void free(void *ptr);")
        self.native = frees.dlopen(_cmark.__file__)  # already loaded: the same library

    def to_html(self, text: str) -> str:
        lib, native = self.lib, self.native
        data = text.encode("utf-8", "surrogatepass")
        parser = lib.cmark_parser_new(OPTIONS)
        try:
            for extension in self.extensions:
                lib.cmark_parser_attach_syntax_extension(parser, extension)
            lib.cmark_parser_feed(parser, data, len(data))
            root = lib.cmark_parser_finish(parser)
            try:
                raw = lib.cmark_render_html(root, OPTIONS, lib.cmark_parser_get_syntax_extensions(parser))
                try:
                    return self.ffi.string(raw).decode("utf-8", "replace")
                finally:
                    native.free(raw)
            finally:
                native.cmark_node_free(root)
        finally:
            lib.cmark_parser_free(parser)


_commonmark = _CommonMark()


def render(content: str, find_user: Lookup = _no_one, find_stream: Lookup = _no_one) -> Rendered:
    """Render a message's Markdown to safe HTML, resolving mentions and stream links."""
    output = _commonmark.to_html(content)
    if "<a " in output:
        output = ANCHOR.sub(_safe_anchor, output)
    if "<img " in output:
        output = IMAGE.sub(_safe_image, output)
    mentioned: frozenset[int] = frozenset()
    if "<strong>" in output:
        output, mentioned = resolve_mentions(output, find_user, find_stream)
    return Rendered(output.strip(), mentioned)


def resolve_mentions(output: str, find_user: Lookup, find_stream: Lookup) -> tuple[str, frozenset[int]]:
    """Rendered HTML with ``@**Name**`` and ``#**stream**`` resolved; the ids of the users mentioned."""
    mentioned: set[int] = set()

    def resolve(match: re.Match[str]) -> str:
        name = html.unescape(match["name"])
        if match["sigil"] == "@":
            user = find_user(name)
            if user is None:
                return match[0]
            mentioned.add(user[0])
            return f'<span class="user-mention" data-user-id="{user[0]}">@{html.escape(user[1])}</span>'
        stream = find_stream(name)
        if stream is None:
            return match[0]
        slug = urllib.parse.quote(f"{stream[0]}-{stream[1]}")
        return (f'<a class="stream" data-stream-id="{stream[0]}" href="/#narrow/stream/{slug}">'
                f"#{html.escape(stream[1])}</a>")

    return MENTION.sub(resolve, output), frozenset(mentioned)


@functools.lru_cache(maxsize=4096)  # chat repeats its links; urlsplit is the slow part of the safety pass
def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(html.unescape(url).strip()).scheme.lower()


def _safe_anchor(match: re.Match[str]) -> str:
    if _scheme(match["href"]) not in LINK_SCHEMES:
        return match["body"]
    return f'<a href="{match["href"]}"{match["attrs"]} target="_blank" rel="noopener noreferrer">{match["body"]}</a>'


def _safe_image(match: re.Match[str]) -> str:
    if _scheme(match["src"]) not in IMAGE_SCHEMES:
        return match["alt"]
    return match[0]
