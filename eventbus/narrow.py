"""Narrows of the messages history (GET /api/v1/messages): terms as Zulip clients send them, and search.

A narrow is a list of terms that must all hold. Clients send each term as
``{"operator": ..., "operand": ..., "negated": ...}`` or in the legacy shape
``[operator, operand]``; ``parse_narrow`` checks both and canonicalizes
Zulip's aliases (``stream`` is ``channel``, ``pm-with`` is ``dm``, ``subject``
is ``topic``, ``is:private`` is ``is:dm``). The store turns terms into SQL
(``eventbus.messages``). An operator or operand Zulip would refuse is a
``NarrowError``, answered as Zulip does: ``BAD_NARROW``, "Invalid narrow
operator: <desc>", with ``desc``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eventbus.validation import excerpt

#: Operators after canonicalization; ``near`` only tells a client where to look, it filters nothing.
OPERATORS = frozenset({"channel", "topic", "sender", "dm", "is", "search", "id", "near"})
#: Zulip's older names of operators and ``is`` operands.
ALIASES = {"stream": "channel", "pm-with": "dm", "subject": "topic"}
IS_ALIASES = {"private": "dm"}
IS_OPERANDS = frozenset({"dm", "mentioned", "starred", "unread", "alerted"})
#: Bounds on what one request may ask: far beyond a real search, small enough to keep every query cheap.
MAX_TERMS = 20
MAX_OPERAND_CHARS = 1000
MAX_DM_USERS = 100
#: A search word as the full-text index splits text (FTS5's unicode61 tokenizer: letters and digits).
WORD = re.compile(r"\w+")


class NarrowError(ValueError):
    """A term Zulip would refuse; ``desc`` says which, as Zulip's ``BAD_NARROW`` error carries it."""

    def __init__(self, desc: str) -> None:
        super().__init__(f"Invalid narrow operator: {desc}")
        self.desc = desc


@dataclass(frozen=True)
class NarrowTerm:
    operator: str
    operand: str | int | tuple[int, ...]
    negated: bool = False


def parse_narrow(value: Any) -> tuple[NarrowTerm, ...]:
    """The terms of a decoded ``narrow`` argument; ValueError (with the reason) for a malformed one,
    NarrowError for an operator or ``is`` operand Zulip does not know."""
    if not isinstance(value, list):
        raise ValueError("must be a list of terms")
    if len(value) > MAX_TERMS:
        raise ValueError(f"at most {MAX_TERMS} terms")
    return tuple(_term(raw) for raw in value)


def _term(raw: Any) -> NarrowTerm:
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw):
        operator, operand, negated = raw[0], raw[1], False
    elif isinstance(raw, dict) and {"operator", "operand"} <= raw.keys() <= {"operator", "operand", "negated"}:
        operator, operand, negated = raw["operator"], raw["operand"], raw.get("negated", False)
        if not isinstance(operator, str) or not isinstance(negated, bool):
            raise ValueError("a term's 'operator' must be a string and its 'negated' true or false")
    else:
        raise ValueError("each term must be {\"operator\", \"operand\", \"negated\"} or [operator, operand]")
    operand = _operand(operand)
    operator = ALIASES.get(operator, operator)
    if operator not in OPERATORS:
        raise NarrowError(f"unknown operator {excerpt(operator)}")
    if operator == "is":
        operand = IS_ALIASES.get(str(operand), operand)
        if operand not in IS_OPERANDS:
            raise NarrowError(f"unknown 'is' operand {excerpt(operand)}")
    return NarrowTerm(operator, operand, negated)


def _operand(operand: Any) -> str | int | tuple[int, ...]:
    if isinstance(operand, str):
        if len(operand) > MAX_OPERAND_CHARS:
            raise ValueError(f"an operand has at most {MAX_OPERAND_CHARS} characters")
        if "\x00" in operand:  # no name, topic or text holds one (PostgreSQL cannot even compare it)
            raise ValueError("an operand must not hold a NUL character")
        return operand
    if isinstance(operand, int) and not isinstance(operand, bool):
        return operand
    if isinstance(operand, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in operand):
        if len(operand) > MAX_DM_USERS:
            raise ValueError(f"a list operand has at most {MAX_DM_USERS} ids")
        return tuple(operand)
    raise ValueError("an operand must be a string, an integer or a list of integers")


# -- search ----------------------------------------------------------------------


def search_words(operand: str) -> list[str]:
    """The words of a ``search`` operand, as the full-text index knows them."""
    return WORD.findall(operand.lower())


def fts_query(words: Iterable[str]) -> str:
    """An FTS5 query matching messages holding every word: each quoted, so that nothing a user types is read
    as FTS5 syntax (``\\w`` words hold no quote to escape)."""
    return " ".join(f'"{word}"' for word in words)


def tsquery(words: Iterable[str]) -> str:
    """A PostgreSQL ``to_tsquery`` query matching messages holding every word, as ``fts_query`` does on SQLite:
    each word quoted as a lexeme, ANDed; PostgreSQL stems each (and drops stop words) as it did the text."""
    return " & ".join(f"'{word}'" for word in words)


#: What highlighting leaves alone in rendered HTML: tags and character references.
_MARKUP = re.compile(r"(<[^>]*>|&#?\w+;)")


def highlight(markup: str, words: Iterable[str]) -> str:
    """``markup`` (HTML) with every word starting with one of ``words`` wrapped in
    ``<span class="highlight">``, as Zulip marks search matches; tags and entities are left alone."""
    words = sorted(set(words), key=len, reverse=True)
    if not words:
        return markup
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)
    parts = _MARKUP.split(markup)
    for i in range(0, len(parts), 2):  # even parts are text, odd ones the markup between
        parts[i] = pattern.sub(lambda m: f'<span class="highlight">{m.group(0)}</span>', parts[i])
    return "".join(parts)


def highlight_text(text: str, words: Iterable[str]) -> str:
    """Plain ``text`` (a topic) escaped for HTML, with its matches highlighted."""
    return highlight(html.escape(text, quote=False), words)
