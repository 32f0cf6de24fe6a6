"""The search query language, parsed into a backend-neutral tree (never passed on raw).

Syntax (documented in the README, "Search"):

- ``lease agreement`` — every word must occur in the segment (implicit AND);
- ``"exact phrase"`` — the words in this order, next to each other;
- ``record*`` — a prefix (``record``, ``recorder``, ``records``, …); ``"the lea"*`` a phrase
  whose last word is a prefix;
- ``AND``, ``OR``, ``NOT`` (upper case; lower-case ``and``/``or``/``not`` are plain words) and
  parentheses: ``(lease OR rent) NOT car``. ``NOT`` is binary: ``a NOT b`` = a without b.
  Precedence, tightest first: ``NOT``, ``AND`` (also implicit), ``OR``.

Words are matched after English stemming ("recordings" finds "recording"), case folding and
accent removal ("cafe" finds "café"); that happens in the index's tokenizer, which the
backends configure alike. A word of punctuation only (``!!!``, ``--``) is ignored. A query
with no word left (empty, only operators or punctuation), an operator without its operands,
unbalanced parentheses or a query over ``MAX_QUERY_CHARS``/``MAX_TERMS`` is
``invalid_request`` naming ``q`` with a sentence saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tapedeck.errors import TapedeckError, invalid

MAX_QUERY_CHARS = 500
MAX_TERMS = 32
_LEXEME = re.compile(r'\s*(?:(\()|(\))|"([^"]*)("?)(\*?)|([^\s()"]+))')
_OPERATORS = ("AND", "OR", "NOT")


@dataclass(frozen=True)
class Term:
    """One word, or a phrase (``phrase``: several words in order); ``prefix``: the last
    word is a prefix."""

    text: str
    phrase: bool = False
    prefix: bool = False


@dataclass(frozen=True)
class And:
    """Every part matches."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Any part matches."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """``keep`` matches and ``drop`` does not."""

    keep: Node
    drop: Node


Node = Term | And | Or | Not


def has_word(text: str) -> bool:
    """Whether ``text`` holds something a tokenizer indexes (a letter or a digit)."""
    return any(ch.isalnum() for ch in text)


def parse(q: str) -> Node:
    """The tree of query ``q`` (see the module docstring), or ``invalid_request``."""
    if len(q) > MAX_QUERY_CHARS:
        raise _bad(f"The query is longer than {MAX_QUERY_CHARS} characters.")
    tokens = _lex(_CONTROL.sub(" ", q))  # FTS5 strings end at NUL: control chars are spaces
    terms = [t for t in tokens if isinstance(t, Term)]
    if not terms:
        raise _bad("The query has no words to search for (only operators, punctuation or "
                   "nothing).")
    if len(terms) > MAX_TERMS:
        raise _bad(f"The query has more than {MAX_TERMS} words and phrases.")
    parser = _Parser(tokens)
    node = parser.or_expr()
    if not parser.done():
        raise _bad(f"Unexpected {parser.describe()} in the query.")
    return node


# -- lexing --------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Token = Term | str  # a Term, or one of "(", ")", "AND", "OR", "NOT"


def _lex(q: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(q):
        m = _LEXEME.match(q, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        opening, closing, quoted, _end_quote, star, bare = m.groups()
        if opening or closing:
            tokens.append(opening or closing)
        elif quoted is not None:  # an unterminated quote runs to the end of the query
            words = quoted.split()
            if has_word(quoted):
                tokens.append(Term(" ".join(words), phrase=len(words) > 1, prefix=bool(star)))
        elif bare in _OPERATORS:
            tokens.append(bare)
        else:
            word = bare.rstrip("*")
            if has_word(word):
                tokens.append(Term(word, prefix=word != bare))
    return tokens


# -- parsing (recursive descent) ------------------------------------------------------------

class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._i = 0

    def done(self) -> bool:
        return self._i >= len(self._tokens)

    def describe(self) -> str:
        tok = self._tokens[self._i]
        return f'"{tok}"' if isinstance(tok, str) else "word"

    def _peek(self) -> Token | None:
        return None if self.done() else self._tokens[self._i]

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self._peek() == "OR":
            self._i += 1
            parts.append(self.and_expr("OR"))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self, after: str | None = None) -> Node:
        parts = [self.not_expr(after)]
        while (tok := self._peek()) is not None and tok not in ("OR", ")"):
            if tok == "AND":
                self._i += 1
                parts.append(self.not_expr("AND"))
            else:
                parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self, after: str | None = None) -> Node:
        node = self.unary(after)
        while self._peek() == "NOT":
            self._i += 1
            node = Not(node, self.unary("NOT"))
        return node

    def unary(self, after: str | None) -> Node:
        tok = self._peek()
        if isinstance(tok, Term):
            self._i += 1
            return tok
        if tok == "(":
            self._i += 1
            if self._peek() == ")":
                raise _bad("Empty parentheses in the query.")
            node = self.or_expr()
            if self._peek() != ")":
                raise _bad("A parenthesis is not closed in the query.")
            self._i += 1
            return node
        if tok == ")":
            raise _bad("A closing parenthesis has no opening one in the query.")
        if tok in _OPERATORS and after is None:
            raise _bad(f"{tok} needs a word or phrase before it (for example: lease {tok} "
                       "car).")
        if tok in _OPERATORS:
            raise _bad(f"{after} must be followed by a word or phrase, not {tok}.")
        where = f"after {after}" if after else "here"
        raise _bad(f"A word or phrase is missing {where} in the query.")


def _bad(message: str) -> TapedeckError:
    return invalid("q", message)
