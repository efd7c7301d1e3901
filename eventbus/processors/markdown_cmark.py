"""CommonMark to safe HTML: GitHub's cmark-gfm (in C), where what a user typed is shown, never run.

cmark-gfm renders CommonMark plus fenced code blocks, autolinks, tables and
strikethrough. Zulip shows raw HTML a user types as text, so eventbus does:
cmark-gfm's safe mode would drop it instead (``use the <div> element`` lost
``<div>``, and a line starting with ``<script>`` lost the rest of the line).
Only ``http``, ``https`` and ``mailto`` links stay links and only ``http(s)``
images stay images; any other link is shown as the text that was typed.

Most messages hold neither HTML nor a bad link: they take the fast path, one
parse and one render, and cmark-gfm's safe mode then tells whether there was
raw HTML (it leaves a comment in its place). The few that do are parsed
again and their document tree rewritten (``_Rewrite``):

- inline HTML (``<b>``, ``</div>``) becomes text;
- a line that starts an HTML block (``<div>``, ``<script>``, ``<!--``) gets a
  backslash before its ``<`` in the source, which makes it Markdown text, and
  the source is parsed again: Markdown inside it (``<div>**hi**``) renders as
  it would anywhere else. A block can swallow further lines that start other
  blocks (a ``<script>`` block runs to ``</script>``), so this repeats, at
  most ``MAX_PASSES`` times; what is left then is shown as a code block;
- a link or image with another scheme becomes its Markdown text
  (``[x](javascript:...)``, ``<time:...>``).
"""

from __future__ import annotations

import functools
import html
import re
import threading
import urllib.parse
from typing import Any

import cffi
from cmarkgfm import _cmark
from cmarkgfm.cmark import Options

#: cmark-gfm's ``CMARK_OPT_FULL_INFO_STRING`` (cmarkgfm does not name it): a fence's words after the language
#: come out as ``data-meta``, so that a spoiler keeps its title.
FULL_INFO_STRING = 1 << 16
#: Safe mode is cmark-gfm's default; these add what chat needs.
OPTIONS = (Options.CMARK_OPT_VALIDATE_UTF8 | Options.CMARK_OPT_GITHUB_PRE_LANG | Options.CMARK_OPT_HARDBREAKS
           | FULL_INFO_STRING)
#: GitHub's extensions: fenced code is CommonMark's own; these add tables, autolinks and the rest.
EXTENSION_NAMES = (b"table", b"autolink", b"tagfilter", b"strikethrough", b"tasklist")
LINK_SCHEMES = frozenset({"http", "https", "mailto"})
IMAGE_SCHEMES = frozenset({"http", "https"})
#: What cmark-gfm's safe mode renders in place of raw HTML: the sign that a message needs the slow path.
OMITTED = "<!-- raw HTML omitted -->"
#: Parses of a message with HTML blocks nested in HTML blocks; 8 deep is already hostile input.
MAX_PASSES = 8
#: Marks a link or image that the fast path found with another scheme: cmark-gfm never renders a NUL.
BAD_LINK = "\x00"

#: The C functions the rewrite needs, which cmarkgfm's own declarations leave out (cmark-gfm's cmark-gfm.h).
CDEFS = """
void cmark_node_free(void *node); void free(void *ptr);
void *cmark_iter_new(void *root); void cmark_iter_free(void *iter); int cmark_iter_next(void *iter);
void *cmark_iter_get_node(void *iter);
void *cmark_node_new(int type); int cmark_node_get_type(void *node); int cmark_node_set_type(void *node, int type);
const char *cmark_node_get_literal(void *node); int cmark_node_set_literal(void *node, const char *content);
const char *cmark_node_get_url(void *node);
int cmark_node_get_start_line(void *node); int cmark_node_get_start_column(void *node);
void *cmark_node_first_child(void *node); int cmark_node_insert_before(void *node, void *sibling);
void cmark_node_unlink(void *node);
"""
#: cmark-gfm's node types and iterator events (cmark-gfm.h, 0.29).
CODE_BLOCK, HTML_BLOCK = 0x8005, 0x8006
TEXT, HTML_INLINE, LINK, IMAGE = 0xC001, 0xC005, 0xC009, 0xC00A
ITER_DONE, ITER_ENTER = 1, 2

ANCHOR = re.compile(r'<a href="(?P<href>[^"]*)"(?P<attrs>[^>]*)>(?P<body>.*?)</a>', re.DOTALL)
IMAGE_TAG = re.compile(r'<img src="(?P<src>[^"]*)" alt="(?P<alt>[^"]*)"(?P<attrs>[^>]*)/?>')


class CommonMark:
    """cmark-gfm through its C API: extensions looked up once, and everything it allocates freed.

    cmarkgfm's own helper looks the extensions up on every call and never
    frees the document or the HTML it returns (about 2.4 KB a message, for
    the life of a worker). Its cffi declarations leave out the functions
    that free them and those that walk and change a document: a second cffi
    declaration finds them in the same library.

    A parser is made once per thread (cmark-gfm parsers are not shared
    between threads): ``cmark_parser_finish`` resets it for the next
    document and keeps its extensions, which spares a message the seven
    calls that make, equip and free one, a sixth of rendering a chat line.
    """

    def __init__(self) -> None:
        self.lib, self.ffi = _cmark.lib, _cmark.ffi
        self.lib.cmark_gfm_core_extensions_ensure_registered()
        self.extensions = [self.lib.cmark_find_syntax_extension(name) for name in EXTENSION_NAMES]
        self.native_ffi = cffi.FFI()
        self.native_ffi.cdef(CDEFS)
        self.native: Any = self.native_ffi.dlopen(_cmark.__file__)  # already loaded: the same library
        self.local = threading.local()

    def _parser(self) -> Any:
        """This thread's parser, freed when the thread's storage goes."""
        parser = self.lib.cmark_parser_new(OPTIONS)
        for extension in self.extensions:
            self.lib.cmark_parser_attach_syntax_extension(parser, extension)
        self.local.parser = self.ffi.gc(parser, self.lib.cmark_parser_free)
        return self.local.parser

    def to_html(self, text: str) -> str:
        """Safe HTML for ``text``: raw HTML and bad links shown as the text typed."""
        data = text.encode("utf-8", "surrogatepass")
        output = self._render(data)
        if OMITTED not in output:
            output = safe_links(output)
            if BAD_LINK not in output:
                return output
        # The rewrite leaves no bad link; were one left all the same, its text would stay.
        return safe_links(self._rewritten(data)).replace(BAD_LINK, "")

    def _render(self, data: bytes, rewrite: _Rewrite | None = None) -> str:
        """Parse and render; ``rewrite`` changes the document in between."""
        lib, native = self.lib, self.native
        parser = getattr(self.local, "parser", None) or self._parser()
        lib.cmark_parser_feed(parser, data, len(data))
        root = lib.cmark_parser_finish(parser)  # and the parser is ready for the next document
        try:
            if rewrite is not None and not rewrite.apply(root):
                return ""
            raw = lib.cmark_render_html(root, OPTIONS, lib.cmark_parser_get_syntax_extensions(parser))
            try:
                return self.ffi.string(raw).decode("utf-8", "replace")
            finally:
                native.free(raw)
        finally:
            native.cmark_node_free(root)

    def _rewritten(self, data: bytes) -> str:
        """The slow path: HTML blocks escaped in the source, then inline HTML and bad links made text."""
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # lines as cmark counts them
        for _ in range(MAX_PASSES - 1):
            rewrite = _Rewrite(self.native, self.native_ffi, blocks_as_code=False)
            output = self._render(data, rewrite)
            if not rewrite.block_starts:
                return output
            escaped = _escape_block_starts(data, rewrite.block_starts)
            if escaped == data:
                break
            data = escaped
        # Too deep, or a block cmark placed where no "<" starts it: what is left is shown as code.
        return self._render(data, _Rewrite(self.native, self.native_ffi, blocks_as_code=True))


class _Rewrite:
    """One walk over a parsed document: HTML made text, bad links made their Markdown, HTML blocks found."""

    def __init__(self, native: Any, ffi: cffi.FFI, blocks_as_code: bool) -> None:
        self.native, self.ffi = native, ffi
        self.blocks_as_code = blocks_as_code
        #: (line, byte column), both from 1, of each HTML block.
        self.block_starts: list[tuple[int, int]] = []

    def apply(self, root: Any) -> bool:
        """Rewrite the document; False when it has HTML blocks to escape in the source first."""
        native = self.native
        bad_links = []
        iterator = native.cmark_iter_new(root)
        try:
            while (event := native.cmark_iter_next(iterator)) != ITER_DONE:
                if event != ITER_ENTER:
                    continue
                node = native.cmark_iter_get_node(iterator)
                kind = native.cmark_node_get_type(node)
                if kind == HTML_INLINE:
                    self._retype(node, TEXT)
                elif kind == HTML_BLOCK:
                    self.block_starts.append((native.cmark_node_get_start_line(node),
                                              native.cmark_node_get_start_column(node)))
                    if self.blocks_as_code:
                        self._retype(node, CODE_BLOCK)
                elif kind in (LINK, IMAGE) and scheme(self._url(node)) not in (
                        LINK_SCHEMES if kind == LINK else IMAGE_SCHEMES):
                    bad_links.append((node, kind))
        finally:
            native.cmark_iter_free(iterator)
        if self.block_starts and not self.blocks_as_code:
            return False
        for node, kind in bad_links:  # after the walk: a link holds children, changed only once left
            self._as_text(node, kind)
        return True

    def _retype(self, node: Any, kind: int) -> None:
        literal = self.native.cmark_node_get_literal(node)
        text = self.ffi.string(literal) if literal != self.ffi.NULL else b""
        self.native.cmark_node_set_type(node, kind)  # frees the literal: copied above
        self.native.cmark_node_set_literal(node, text)

    def _url(self, node: Any) -> str:
        url = self.native.cmark_node_get_url(node)
        return self.ffi.string(url).decode("utf-8", "replace") if url != self.ffi.NULL else ""

    def _as_text(self, node: Any, kind: int) -> None:
        """A link as typed: ``[text](url)``, ``![alt](url)``, or ``<url>`` for an autolink."""
        native, url = self.native, self._url(node)
        child = native.cmark_node_first_child(node)
        autolink = (kind == LINK and child != self.ffi.NULL and native.cmark_node_get_type(child) == TEXT
                    and self.ffi.string(native.cmark_node_get_literal(child)).decode("utf-8", "replace") == url)
        if autolink:
            native.cmark_node_insert_before(node, self._text(f"<{url}>"))
        else:
            native.cmark_node_insert_before(node, self._text("![" if kind == IMAGE else "["))
            while (child := native.cmark_node_first_child(node)) != self.ffi.NULL:
                native.cmark_node_insert_before(node, child)
            native.cmark_node_insert_before(node, self._text(f"]({url})"))
        native.cmark_node_unlink(node)
        native.cmark_node_free(node)

    def _text(self, text: str) -> Any:
        node = self.native.cmark_node_new(TEXT)
        self.native.cmark_node_set_literal(node, text.encode("utf-8", "surrogatepass"))
        return node


def _escape_block_starts(data: bytes, starts: list[tuple[int, int]]) -> bytes:
    """``data`` with a backslash before the ``<`` that starts each HTML block: Markdown text from then on."""
    lines = data.split(b"\n")
    for line, column in starts:
        text = lines[line - 1]
        at = column - 1
        while text[at:at + 1] in (b" ", b"\t"):  # cmark's column may point at indentation it left in the block
            at += 1
        if text[at:at + 1] == b"<":
            lines[line - 1] = text[:at] + b"\\" + text[at:]
    return b"\n".join(lines)


def safe_links(output: str) -> str:
    """Rendered HTML whose links open apart; a link or image with another scheme is left as its text,
    after ``BAD_LINK``."""
    if "<a " in output:
        output = ANCHOR.sub(_safe_anchor, output)
    if "<img " in output:
        output = IMAGE_TAG.sub(_safe_image, output)
    return output


def _safe_anchor(match: re.Match[str]) -> str:
    if scheme(match["href"]) not in LINK_SCHEMES:
        if match["body"] == match["href"] and not match["attrs"]:  # an autolink (<time:...>): as typed
            return f"&lt;{match['body']}&gt;"
        return BAD_LINK + match["body"]
    return f'<a href="{match["href"]}"{match["attrs"]} target="_blank" rel="noopener noreferrer">{match["body"]}</a>'


def _safe_image(match: re.Match[str]) -> str:
    if scheme(match["src"]) not in IMAGE_SCHEMES:
        return BAD_LINK + match["alt"]
    return match[0]


@functools.lru_cache(maxsize=4096)  # chat repeats its links; urlsplit is the slow part of the safety pass
def scheme(url: str) -> str:
    """The scheme of a URL as a browser reads it (HTML entities decoded, spaces around it ignored)."""
    return urllib.parse.urlsplit(html.unescape(url).strip()).scheme.lower()
