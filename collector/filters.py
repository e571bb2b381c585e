"""The search filter language for runs and experiments.

One language serves ``search_runs`` and ``search_experiments``. It is a superset of
MLflow's: MLflow accepts only AND, we also accept OR and parentheses (the tutorial uses
``tags.team = 'ml' OR tags.team = 'ds'``), IS [NOT] NULL and IN lists on every key.

Grammar (keywords are case-insensitive)::

    filter      := [or_expr] EOF
    or_expr     := and_expr ("OR" and_expr)*          -- AND binds tighter than OR
    and_expr    := primary ("AND" primary)*
    primary     := "(" or_expr ")" | condition
    condition   := identifier ( ("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") value
                              | ("LIKE" | "ILIKE") string
                              | ["NOT"] "IN" "(" value ("," value)* ")"
                              | "IS" ["NOT"] "NULL" )
    identifier  := prefix "." key | attribute
    prefix      := metrics | metric | params | param | parameters | parameter | tags | tag
                 | attributes | attribute | attr | run            -- MLflow's aliases
    key         := word ("." word)* | `back-ticked` | "double-quoted"
    value       := 'single-quoted' | "double-quoted" | number

Inside quotes, a doubled quote character stands for itself (``'it''s'``). In LIKE and
ILIKE patterns ``%`` matches any run of characters, ``_`` one character, and a backslash
makes the next character literal (PostgreSQL's default), so ``'100\\%'`` matches "100%".
LIKE is case-sensitive; ILIKE compares Python-lower-cased text (Unicode-aware, so
``'École' ILIKE 'é%'`` holds, where SQLite's ASCII-only folding would say no).

How LIKE reaches SQLite: a LIKE pattern is translated to an equivalent GLOB pattern
(:func:`like_to_glob`) and bound as a parameter. GLOB is built in, case-sensitive and
unaffected by ``PRAGMA case_sensitive_like``, which would instead change every LIKE on the
shared connection; a Python callback per row would be slower. ILIKE is the same GLOB over
``flightlog_lower(value)``, a one-line deterministic SQL function that must be registered
on the connection (:func:`register_sql_functions`), because SQLite's ``lower()`` folds
ASCII only.

Limits: at most :data:`MAX_CONDITIONS` conditions and :data:`MAX_NESTING` levels of
parentheses, so that no filter can exhaust recursion or SQLite's expression depth.

Types: metrics and the time attributes are numbers; params, tags and the other
attributes are strings. A number key takes ``= != < <= > >= IN NOT IN``, a string key
takes ``= != LIKE ILIKE IN NOT IN``; mixing them is an error, never a silent mismatch.

Missing values: every condition except ``IS NULL`` matches only entities that have the
key (as in MLflow, where ``metrics.loss != 1`` skips runs that never logged ``loss``).
``IS NULL`` matches entities without the key. A NaN metric is a logged value: it is
``IS NOT NULL``, and it compares as IEEE 754 says (``!=`` and ``NOT IN`` are true, every
other comparison false).

The module holds four parts that must agree: the tokenizer and parser (text to a typed
AST, or a :class:`FilterError` naming the 0-based position), ``parse_order_by``, the
SQL compiler (AST to a parameterised WHERE fragment, for SQLite or PostgreSQL: a
:class:`Dialect`), and a pure-Python
reference evaluator that the tests hold the SQL to.
"""

from __future__ import annotations

import enum
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict

from flightlog.core.exceptions import FilterError

__all__ = [
    "EXPERIMENT_ATTRIBUTES",
    "MAX_CONDITIONS",
    "MAX_NESTING",
    "POSTGRES",
    "RUN_ATTRIBUTES",
    "SQLITE",
    "And",
    "Compare",
    "Dialect",
    "Entity",
    "ExperimentRecord",
    "Expr",
    "InList",
    "IsNull",
    "Key",
    "Like",
    "Or",
    "OrderKey",
    "PostgresDialect",
    "RunRecord",
    "SqlFragment",
    "Target",
    "compile_filter",
    "evaluate_experiment",
    "evaluate_run",
    "like_matches",
    "like_to_glob",
    "parse_filter",
    "parse_order_by",
    "register_sql_functions",
]

Target = Literal["runs", "experiments"]
Scalar = str | int | float
CompareOp = Literal["=", "!=", "<", "<=", ">", ">="]


class Entity(str, enum.Enum):
    """What a key names: a metric, a param, a tag or a built-in attribute."""

    METRIC = "metric"
    PARAM = "param"
    TAG = "tag"
    ATTRIBUTE = "attribute"


# Attribute name -> whether it is numeric. Order is the order error messages list them.
RUN_ATTRIBUTES: dict[str, bool] = {
    "run_id": False,
    "run_name": False,
    "status": False,
    "user_id": False,
    "start_time": True,
    "end_time": True,
    "artifact_uri": False,
    "lifecycle_stage": False,
}
EXPERIMENT_ATTRIBUTES: dict[str, bool] = {
    "name": False,
    "experiment_id": False,  # a string, as MLflow's API spells experiment ids
    "creation_time": True,
    "last_update_time": True,
    "lifecycle_stage": False,
}
# MLflow's spellings that name the same run attributes.
_RUN_ATTRIBUTE_ALIASES = {
    "created": "start_time",
    "Created": "start_time",
    "run name": "run_name",
    "Run name": "run_name",
    "Run Name": "run_name",
}
_PREFIXES: dict[str, Entity] = {
    "metrics": Entity.METRIC,
    "metric": Entity.METRIC,
    "params": Entity.PARAM,
    "param": Entity.PARAM,
    "parameters": Entity.PARAM,
    "parameter": Entity.PARAM,
    "tags": Entity.TAG,
    "tag": Entity.TAG,
    "attributes": Entity.ATTRIBUTE,
    "attribute": Entity.ATTRIBUTE,
    "attr": Entity.ATTRIBUTE,
    "run": Entity.ATTRIBUTE,
}
#: SQLite's SQLITE_MAX_LIKE_PATTERN_LENGTH: longer GLOB patterns fail as "too complex".
MAX_LIKE_PATTERN_BYTES = 50_000
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "ASC", "DESC"})
_COMPARE_OPS: dict[str, CompareOp] = {
    "=": "=",
    "!=": "!=",
    "<>": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
}
# Bounds that keep a hostile or generated filter from exhausting the parser's recursion or
# SQLite's expression depth (1000 by default; a chain of ORs nests one level per term).
MAX_NESTING = 50
MAX_CONDITIONS = 250
# Longer IN lists are bound as one JSON array: SQLite caps bound parameters per statement.
_INLINE_IN_VALUES = 50
_OPERATOR_HELP = "use one of = != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL"


# ---------------------------------------------------------------------------------------
# AST
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A resolved identifier: which entity, which key, and whether its values are numbers.

    ``name`` is the key as stored (``accuracy`` for ``metrics.accuracy``), or the
    canonical attribute name (``start_time`` for ``attributes.created``).
    """

    entity: Entity
    name: str
    numeric: bool
    position: int = field(default=0, compare=False)
    source: str = field(default="", compare=False)  # the identifier as the user wrote it

    def __str__(self) -> str:
        return self.source or self.name


@dataclass(frozen=True)
class Compare:
    """``key <op> value``; ``<>`` is normalised to ``!=``."""

    key: Key
    op: CompareOp
    value: Scalar


@dataclass(frozen=True)
class Like:
    """``key LIKE pattern`` (case-sensitive) or ``key ILIKE pattern``."""

    key: Key
    pattern: str
    case_sensitive: bool


@dataclass(frozen=True)
class InList:
    """``key IN (v, ...)`` or, negated, ``key NOT IN (v, ...)``."""

    key: Key
    values: tuple[Scalar, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    """``key IS NULL`` (the entity lacks the key) or ``key IS NOT NULL``."""

    key: Key
    negated: bool


@dataclass(frozen=True)
class And:
    """All operands hold (two or more)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    """At least one operand holds (two or more)."""

    operands: tuple[Expr, ...]


Condition = Compare | Like | InList | IsNull
Expr = Compare | Like | InList | IsNull | And | Or


class OrderKey(NamedTuple):
    """One order_by key: ``(entity, key, ascending)``."""

    entity: Entity
    key: str
    ascending: bool


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    IDENT = "identifier"
    KEYWORD = "keyword"
    STRING = "string"
    NUMBER = "number"
    OP = "operator"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    EOF = "end of filter"


@dataclass(frozen=True)
class _Part:
    text: str
    quoted: bool


@dataclass(frozen=True)
class _Token:
    kind: _Kind
    text: str  # keyword upper-cased, string unquoted, operator as written
    start: int
    end: int
    parts: tuple[_Part, ...] = ()  # IDENT only: the dot-separated segments
    quote: str = ""  # STRING only: the quote character


_DIGITS = frozenset("0123456789")
_OP_CHARS = frozenset("=!<>")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")


def _is_word_char(ch: str) -> bool:
    # Unicode letters and digits: MLflow accepts keys such as metrics.准确率 (its key
    # pattern is \w-based), and the tutorial's users write Chinese.
    return ch == "_" or ch.isalnum()


def _read_quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """Read a quoted run starting at ``text[start] == quote``; a doubled quote is literal."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise FilterError(f"Unclosed {what}: the {quote} here is never closed", start, text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            tokens.append(_Token(_Kind.LPAREN, ch, i, i + 1))
            i += 1
        elif ch == ")":
            tokens.append(_Token(_Kind.RPAREN, ch, i, i + 1))
            i += 1
        elif ch == ",":
            tokens.append(_Token(_Kind.COMMA, ch, i, i + 1))
            i += 1
        elif ch in ("'", '"'):
            value, end = _read_quoted(text, i, ch, "string")
            tokens.append(_Token(_Kind.STRING, value, i, end, quote=ch))
            i = end
        elif ch in _OP_CHARS:
            j = i
            while j < n and text[j] in _OP_CHARS:
                j += 1
            op = text[i:j]
            if op not in _COMPARE_OPS:
                raise FilterError(f"Unknown operator '{op}'; {_OPERATOR_HELP}", i, text)
            tokens.append(_Token(_Kind.OP, op, i, j))
            i = j
        elif ch in _DIGITS or (ch in "+-." and _NUMBER_RE.match(text, i)):
            m = _NUMBER_RE.match(text, i)
            if m is None:  # a digit always starts a number; kept for the type checker
                raise FilterError(f"Unexpected character {ch!r}", i, text)
            end = m.end()
            if end < n and (_is_word_char(text[end]) or text[end] == "."):
                while end < n and (_is_word_char(text[end]) or text[end] == "."):
                    end += 1
                raise FilterError(f"Invalid number {text[i:end]!r}", i, text)
            tokens.append(_Token(_Kind.NUMBER, m.group(), i, end))
            i = end
        elif _is_word_char(ch) or ch == "`":
            tokens.append(_read_identifier(text, i))
            i = tokens[-1].end
        elif tokens and tokens[-1].kind is _Kind.IDENT:
            raise FilterError(f"Unknown operator {ch!r}; {_OPERATOR_HELP}", i, text)
        else:
            raise FilterError(f"Unexpected character {ch!r}", i, text)
    tokens.append(_Token(_Kind.EOF, "", n, n))
    return tokens


def _read_identifier(text: str, start: int) -> _Token:
    """Read ``seg(.seg)*`` with no spaces; a segment is a word or a quoted run."""
    parts: list[_Part] = []
    i = start
    n = len(text)
    while True:
        ch = text[i] if i < n else ""
        if ch == "`" or (ch == '"' and parts):
            value, i = _read_quoted(text, i, ch, "quoted key")
            parts.append(_Part(value, True))
        elif ch and _is_word_char(ch):
            j = i
            while j < n and _is_word_char(text[j]):
                j += 1
            parts.append(_Part(text[i:j], False))
            i = j
        else:
            raise FilterError(
                "Expected a key after '.'; quote keys with spaces or symbols: tags.`my key`",
                i,
                text,
            )
        if i < n and text[i] == ".":
            i += 1
            continue
        break
    if i < n and not (text[i].isspace() or text[i] in "()=!<>,'\""):
        raise FilterError(
            f"Unexpected character {text[i]!r} in a key; quote keys that contain it "
            "with backticks, e.g. metrics.`val-loss`",
            i,
            text,
        )
    if len(parts) == 1 and not parts[0].quoted and parts[0].text.upper() in _KEYWORDS:
        return _Token(_Kind.KEYWORD, parts[0].text.upper(), start, i)
    return _Token(_Kind.IDENT, text[start:i], start, i, parts=tuple(parts))


def _describe(tok: _Token, text: str) -> str:
    if tok.kind is _Kind.EOF:
        return "the end of the filter"
    return repr(text[tok.start : tok.end])


# ---------------------------------------------------------------------------------------
# Identifier resolution (shared by filters and order_by)
# ---------------------------------------------------------------------------------------


def _attributes(target: Target) -> dict[str, bool]:
    return RUN_ATTRIBUTES if target == "runs" else EXPERIMENT_ATTRIBUTES


def _resolve_attribute(name: str, tok: _Token, text: str, target: Target) -> Key:
    attrs = _attributes(target)
    canonical = _RUN_ATTRIBUTE_ALIASES.get(name, name) if target == "runs" else name
    if canonical not in attrs:
        what = "Runs" if target == "runs" else "Experiments"
        listed = ", ".join(attrs)
        if target == "runs":
            hint = (
                f"; a metric, param or tag needs a prefix: metrics.{name}, "
                f"params.{name} or tags.{name}"
            )
        else:
            hint = f"; a tag needs a prefix: tags.{name}"
        raise FilterError(
            f"Unknown attribute '{name}'. {what} have the attributes {listed}{hint}",
            tok.start,
            text,
        )
    return Key(Entity.ATTRIBUTE, canonical, attrs[canonical], tok.start, text[tok.start : tok.end])


def _resolve_identifier(tok: _Token, text: str, target: Target) -> Key:
    """Turn an IDENT token (or a double-quoted attribute name) into a typed Key."""
    if tok.kind is _Kind.STRING:
        if tok.quote == '"':
            return _resolve_attribute(tok.text, tok, text, target)
        raise FilterError(
            "Expected a key such as metrics.accuracy, found a string; "
            "string values go on the right of the operator",
            tok.start,
            text,
        )
    parts = tok.parts
    if len(parts) == 1:
        part = parts[0]
        if not part.quoted and part.text.lower() in _PREFIXES:
            raise FilterError(
                f"'{part.text}' needs a key after it, e.g. {part.text}.my_key", tok.start, text
            )
        return _resolve_attribute(part.text, tok, text, target)
    head = parts[0]
    entity = _PREFIXES.get(head.text.lower())
    if entity is None:
        valid = "metrics, params, tags or attributes" if target == "runs" else "tags or attributes"
        raise FilterError(
            f"Unknown prefix '{head.text}'; use {valid} (e.g. "
            f"{'metrics.accuracy' if target == 'runs' else 'tags.project'})",
            tok.start,
            text,
        )
    rest = parts[1:]
    if len(rest) > 1 and any(p.quoted for p in rest):
        raise FilterError(
            "Quote the whole key after the prefix, e.g. tags.`my.key`", tok.start, text
        )
    name = ".".join(p.text for p in rest)
    source = text[tok.start : tok.end]
    if entity is Entity.ATTRIBUTE:
        return _resolve_attribute(name, tok, text, target)
    if target == "experiments" and entity is not Entity.TAG:
        raise FilterError(
            f"Experiments have no {entity.value}s; filter on "
            f"{', '.join(EXPERIMENT_ATTRIBUTES)} or tags.<key>",
            tok.start,
            text,
        )
    return Key(entity, name, entity is Entity.METRIC, tok.start, source)


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, target: Target) -> None:
        self.text = text
        self.target = target
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0
        self.conditions = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind is not _Kind.EOF:
            self.pos += 1
        return tok

    def is_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind is _Kind.KEYWORD and tok.text == word

    def error(self, message: str, tok: _Token) -> FilterError:
        return FilterError(message, tok.start, self.text)

    def parse(self) -> Expr | None:
        if self.peek().kind is _Kind.EOF:
            return None
        expr = self.parse_or()
        tok = self.peek()
        if tok.kind is _Kind.RPAREN:
            raise self.error("Unexpected ')' with no matching '('", tok)
        if tok.kind is not _Kind.EOF:
            raise self.error(
                f"Unexpected {_describe(tok, self.text)} after a complete condition; "
                "join conditions with AND or OR",
                tok,
            )
        return expr

    def parse_or(self) -> Expr:
        operands = [self.parse_and()]
        while self.is_keyword("OR"):
            self.advance()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self) -> Expr:
        operands = [self.parse_primary()]
        while self.is_keyword("AND"):
            self.advance()
            operands.append(self.parse_primary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def parse_primary(self) -> Expr:
        tok = self.peek()
        if tok.kind is _Kind.LPAREN:
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(f"Too deeply nested: more than {MAX_NESTING} levels of '('", tok)
            self.advance()
            expr = self.parse_or()
            self.depth -= 1
            close = self.peek()
            if close.kind is not _Kind.RPAREN:
                if close.kind is _Kind.EOF:
                    raise self.error("Unclosed '(': no ')' matches it", tok)
                raise self.error(
                    f"Expected AND, OR or ')' but found {_describe(close, self.text)}", close
                )
            self.advance()
            return expr
        if tok.kind is _Kind.IDENT or (tok.kind is _Kind.STRING and tok.quote == '"'):
            self.advance()
            return self.parse_condition(_resolve_identifier(tok, self.text, self.target))
        if tok.kind is _Kind.STRING:
            _resolve_identifier(tok, self.text, self.target)  # raises the explanation
        previous = self.tokens[self.pos - 1] if self.pos else None
        after = f" after {previous.text}" if previous and previous.kind is _Kind.KEYWORD else ""
        raise self.error(
            f"Expected a condition such as metrics.accuracy > 0.9{after}, "
            f"found {_describe(tok, self.text)}",
            tok,
        )

    def parse_condition(self, key: Key) -> Condition:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(
                f"Too many conditions: a filter holds at most {MAX_CONDITIONS}; "
                "use IN (...) to test one key against many values",
                key.position,
                self.text,
            )
        tok = self.advance()
        if tok.kind is _Kind.OP:
            op = _COMPARE_OPS[tok.text]
            if not key.numeric and op in ("<", "<=", ">", ">="):
                raise self.error(
                    f"'{tok.text}' compares numbers, but {key} is a string; "
                    "use = != LIKE ILIKE IN or NOT IN",
                    tok,
                )
            return Compare(key, op, self.parse_value(key, tok))
        if tok.kind is _Kind.KEYWORD and tok.text in ("LIKE", "ILIKE"):
            if key.numeric:
                raise self.error(
                    f"{tok.text} matches strings, but {key} is a number; "
                    "use = != < <= > >= IN or NOT IN",
                    tok,
                )
            value_tok = self.peek()
            pattern = self.parse_value(key, tok)
            assert isinstance(pattern, str)  # parse_value type-checks against the key
            _check_like_pattern(pattern, value_tok, self.text)
            return Like(key, pattern, case_sensitive=tok.text == "LIKE")
        if tok.kind is _Kind.KEYWORD and tok.text == "IS":
            negated = False
            if self.is_keyword("NOT"):
                self.advance()
                negated = True
            if not self.is_keyword("NULL"):
                expected = "NULL" if negated else "NULL or NOT NULL"
                raise self.error(
                    f"Expected {expected} after IS, found {_describe(self.peek(), self.text)}",
                    self.peek(),
                )
            self.advance()
            return IsNull(key, negated)
        if tok.kind is _Kind.KEYWORD and tok.text == "NOT":
            if not self.is_keyword("IN"):
                nxt = self.peek()
                if nxt.kind in (_Kind.KEYWORD, _Kind.IDENT):
                    raise FilterError(
                        f"Unknown operator 'NOT {nxt.text}'; {_OPERATOR_HELP}", tok.start, self.text
                    )
                raise self.error(f"Expected IN after NOT, found {_describe(nxt, self.text)}", nxt)
            self.advance()
            return InList(key, self.parse_tuple(key), negated=True)
        if tok.kind is _Kind.KEYWORD and tok.text == "IN":
            return InList(key, self.parse_tuple(key), negated=False)
        if tok.kind in (_Kind.KEYWORD, _Kind.IDENT):
            raise self.error(f"Unknown operator '{tok.text}'; {_OPERATOR_HELP}", tok)
        raise self.error(
            f"Expected an operator after {key}, found {_describe(tok, self.text)}; "
            f"{_OPERATOR_HELP}",
            tok,
        )

    def parse_tuple(self, key: Key) -> tuple[Scalar, ...]:
        open_tok = self.advance()
        if open_tok.kind is not _Kind.LPAREN:
            raise self.error(
                f"Expected '(' after IN, found {_describe(open_tok, self.text)}; "
                "write a list like ('a', 'b')",
                open_tok,
            )
        if self.peek().kind is _Kind.RPAREN:
            raise self.error("IN needs at least one value", self.peek())
        values = [self.parse_value(key, open_tok)]
        while self.peek().kind is _Kind.COMMA:
            comma = self.advance()
            values.append(self.parse_value(key, comma))
        close = self.peek()
        if close.kind is not _Kind.RPAREN:
            if close.kind is _Kind.EOF:
                raise self.error("Unclosed '(' of an IN list: no ')' matches it", open_tok)
            raise self.error(f"Expected ',' or ')' but found {_describe(close, self.text)}", close)
        self.advance()
        return tuple(values)

    def parse_value(self, key: Key, after: _Token) -> Scalar:
        tok = self.advance()
        if tok.kind is _Kind.STRING:
            if key.numeric:
                raise self.error(
                    f"{key} is a number; compare it with a number, not the string "
                    f"{self.text[tok.start : tok.end]}",
                    tok,
                )
            return tok.text
        if tok.kind is _Kind.NUMBER:
            if not key.numeric:
                raise self.error(
                    f"{key} is a string; quote the value: {key} = '{tok.text}'",
                    tok,
                )
            if not _INT_RE.fullmatch(tok.text):
                return float(tok.text)
            # SQLite integers are int64 (and Python's int() stops at 4,300 digits).
            if len(tok.text) > 20 or not -(2**63) <= int(tok.text) < 2**63:
                raise self.error(
                    f"The number {tok.text[:40]}{'...' if len(tok.text) > 40 else ''} is "
                    "outside the 64-bit integer range; write it as a float (e.g. 1e30)",
                    tok,
                )
            return int(tok.text)
        found = f"Expected a value after '{after.text}', found {_describe(tok, self.text)}"
        if tok.kind is _Kind.IDENT:
            if key.numeric:
                raise self.error(f"{found}; compare {key} with a number", tok)
            raise self.error(f"{found}; strings need quotes, e.g. '{tok.text}'", tok)
        if tok.kind is _Kind.KEYWORD and tok.text == "NULL":
            raise self.error(f"{found}; test for a missing value with {key} IS NULL", tok)
        raise self.error(found, tok)


def _check_like_pattern(pattern: str, tok: _Token, text: str) -> None:
    # SQLite refuses GLOB patterns over SQLITE_MAX_LIKE_PATTERN_LENGTH bytes at match time.
    if len(like_to_glob(pattern).encode("utf-8", "surrogatepass")) > MAX_LIKE_PATTERN_BYTES:
        raise FilterError(
            f"A LIKE pattern may be at most {MAX_LIKE_PATTERN_BYTES} bytes "
            f"({len(pattern)} characters given)",
            tok.start,
            text,
        )
    # A trailing escape has nothing to escape; PostgreSQL rejects it too.
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 == len(pattern):
                raise FilterError(
                    "A LIKE pattern cannot end with a lone backslash; write \\\\ for a backslash",
                    tok.start,
                    text,
                )
            i += 2
        else:
            i += 1


def parse_filter(filter_string: str | None, target: Target = "runs") -> Expr | None:
    """Parse and type-check a search filter.

    :param filter_string: e.g. ``"metrics.accuracy > 0.9 AND params.model = 'rf'"``.
        ``None``, empty or blank means "everything" and returns ``None``.
    :param target: ``"runs"`` or ``"experiments"``: which attributes and prefixes exist.
    :return: the typed AST.
    :raises FilterError: naming the 0-based character position of the problem.
    """
    if filter_string is None or not filter_string.strip():
        return None
    return _Parser(filter_string, target).parse()


#: The most order_by clauses one search takes.
MAX_ORDER_BY = 32


def parse_order_by(order_by: Sequence[str] | None, target: Target = "runs") -> list[OrderKey]:
    """Parse ``order_by`` clauses such as ``"metrics.accuracy DESC"`` or ``"params.lr"``.

    Each clause is an identifier (the filter language's, backtick or double-quoted keys
    included) followed by an optional ``ASC`` (the default) or ``DESC``.

    :return: ``(entity, key, ascending)`` per clause. With no clauses: runs get
        ``start_time DESC``; experiments ``creation_time DESC, experiment_id ASC``
        (MLflow's defaults). Tie-breakers are the search's job, not added here.
    :raises FilterError: for a malformed clause, an unknown key, a key given twice, or more
        than :data:`MAX_ORDER_BY` clauses (each becomes a join in SQL, and SQLite joins
        at most 64 tables).
    """
    if order_by is not None and not isinstance(order_by, str) and len(order_by) > MAX_ORDER_BY:
        raise FilterError(
            f"Too many order_by clauses ({len(order_by)}); at most {MAX_ORDER_BY} are allowed"
        )
    if not order_by:
        if target == "runs":
            return [OrderKey(Entity.ATTRIBUTE, "start_time", False)]
        return [
            OrderKey(Entity.ATTRIBUTE, "creation_time", False),
            OrderKey(Entity.ATTRIBUTE, "experiment_id", True),
        ]
    keys: list[OrderKey] = []
    seen: set[tuple[Entity, str]] = set()
    for clause in order_by:
        if not isinstance(clause, str):
            raise FilterError(f"order_by entries must be strings, got {clause!r}")
        tokens = _tokenize(clause)
        first = tokens[0]
        if first.kind is _Kind.EOF:
            raise FilterError("Empty order_by clause; expected e.g. 'metrics.accuracy DESC'")
        if first.kind is not _Kind.IDENT and not (
            first.kind is _Kind.STRING and first.quote == '"'
        ):
            raise FilterError(
                f"Expected a key to order by such as metrics.accuracy, found "
                f"{_describe(first, clause)}",
                first.start,
                clause,
            )
        key = _resolve_identifier(first, clause, target)
        ascending = True
        nxt = tokens[1]
        if nxt.kind is _Kind.KEYWORD and nxt.text in ("ASC", "DESC"):
            ascending = nxt.text == "ASC"
            nxt = tokens[2]
        if nxt.kind is not _Kind.EOF:
            raise FilterError(
                f"Expected ASC or DESC after the key, found {_describe(nxt, clause)}",
                nxt.start,
                clause,
            )
        if (key.entity, key.name) in seen:
            raise FilterError(f"order_by names {key} more than once", first.start, clause)
        seen.add((key.entity, key.name))
        keys.append(OrderKey(key.entity, key.name, ascending))
    return keys


# ---------------------------------------------------------------------------------------
# LIKE patterns
# ---------------------------------------------------------------------------------------


def _like_tokens(pattern: str) -> list[tuple[str, bool]]:
    """Split a LIKE pattern into (char, is_wildcard) pairs, resolving backslash escapes."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append((pattern[i + 1], False))
            i += 2
            continue
        out.append((ch, ch in "%_"))
        i += 1
    return out


def like_to_glob(pattern: str) -> str:
    """Translate a LIKE pattern to an SQLite GLOB pattern with the same meaning.

    GLOB is case-sensitive and built in, so LIKE needs no pragma (``case_sensitive_like``
    would change every LIKE on the connection) and no Python callback per row.
    """
    out: list[str] = []
    for ch, wildcard in _like_tokens(pattern):
        if wildcard:
            out.append("*" if ch == "%" else "?")
        elif ch in "*?[":
            out.append(f"[{ch}]")  # GLOB metacharacters stand for themselves in a class
        else:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for ch, wildcard in _like_tokens(pattern):
        if wildcard:
            parts.append(".*" if ch == "%" else ".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def like_matches(value: str, pattern: str, case_sensitive: bool) -> bool:
    """Reference LIKE/ILIKE: does ``value`` match ``pattern`` (``%``, ``_``, ``\\`` escape)?

    ILIKE lower-cases both sides with ``str.lower`` (Unicode-aware, unlike SQLite's
    ASCII-only ``lower()``); the SQL side does the same through ``flightlog_lower``.
    """
    if not case_sensitive:
        value, pattern = value.lower(), pattern.lower()
    return _like_regex(pattern).fullmatch(value) is not None


# ---------------------------------------------------------------------------------------
# SQL compiler (SQLite and PostgreSQL)
# ---------------------------------------------------------------------------------------

SqlValue = str | int | float | None | list[int]


class SqlFragment(NamedTuple):
    """A piece of SQL with ``?`` placeholders and the values bound to them, in order."""

    sql: str
    params: list[SqlValue]


class Dialect:
    """What differs between the SQL engines search compiles to; SQLite's by default.

    Compiled SQL always uses ``?`` placeholders and never contains literal text from the
    user (every key and value is bound), so :meth:`execute` can adapt placeholders.
    """

    name = "sqlite"
    #: A WHERE term that is always true.
    true = "1"
    #: Null-safe equality (NULL equals NULL), for keyset page boundaries.
    null_safe_eq = "IS"

    def like(self, column: str, pattern: str, case_sensitive: bool, params: list[SqlValue]) -> str:
        """A LIKE (or ILIKE) of ``column`` against the language's ``pattern``."""
        if case_sensitive:
            params.append(like_to_glob(pattern))
            return f"{column} GLOB ?"
        params.append(like_to_glob(pattern.lower()))
        return f"flightlog_lower({column}) GLOB ?"

    def in_list(self, values: Sequence[SqlValue], params: list[SqlValue]) -> str:
        """The parenthesised right side of ``IN`` for a list of values."""
        if len(values) > _INLINE_IN_VALUES:
            # One JSON parameter keeps long lists under SQLite's bound-parameter limit.
            params.append(json.dumps(list(values)))
            return "(SELECT value FROM json_each(?))"
        params.extend(values)
        return "(" + ", ".join("?" * len(values)) + ")"

    def in_ids(self, column: str, ids: list[int], params: list[SqlValue]) -> str:
        """``column`` is one of the integer ``ids``."""
        return f"{column} IN {self.in_list(ids, params)}"

    def execute(self, conn: Any, sql: str, params: Sequence[SqlValue]) -> list[tuple[Any, ...]]:
        """Run a compiled query and return its rows as tuples."""
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


class PostgresDialect(Dialect):
    """PostgreSQL: native LIKE, ``= ANY`` arrays, ``%s`` placeholders.

    ILIKE lower-cases through ICU's root collation, which folds all of Unicode as
    Python's ``str.lower`` does (PostgreSQL's own ``lower`` under the C locale folds
    ASCII only); the pattern is lower-cased in Python.
    """

    name = "postgresql"
    true = "TRUE"
    null_safe_eq = "IS NOT DISTINCT FROM"

    def like(self, column: str, pattern: str, case_sensitive: bool, params: list[SqlValue]) -> str:
        # The language's LIKE is PostgreSQL's: % _ and a backslash escape.
        if case_sensitive:
            params.append(pattern)
            return f"{column} LIKE ?"
        params.append(pattern.lower())
        return f'lower({column} COLLATE "und-x-icu") LIKE ?'

    def in_list(self, values: Sequence[SqlValue], params: list[SqlValue]) -> str:
        params.extend(values)
        return "(" + ", ".join("?" * len(values)) + ")"

    def in_ids(self, column: str, ids: list[int], params: list[SqlValue]) -> str:
        params.append(list(ids))
        return f"{column} = ANY(?)"

    def execute(self, conn: Any, sql: str, params: Sequence[SqlValue]) -> list[tuple[Any, ...]]:
        assert "%" not in sql, "compiled SQL holds no literal text"
        return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), params).fetchall()]


SQLITE = Dialect()
POSTGRES = PostgresDialect()


def register_sql_functions(conn: sqlite3.Connection) -> None:
    """Register the SQL functions compiled filters call (``flightlog_lower`` for ILIKE).

    Must run on every connection that executes a fragment from :func:`compile_filter`;
    the search functions do it themselves. Registering again is harmless and cheap.
    SQLite's own ``lower()`` folds ASCII only, so ``'É' ILIKE 'é'`` would be false.
    """
    conn.create_function("flightlog_lower", 1, _sql_lower, deterministic=True)


def _sql_lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


# Run attributes and the SQL columns behind them (search orders by the same columns).
RUN_COLUMNS = {
    "run_id": "r.run_uuid",
    "run_name": "r.run_name",
    "status": "r.status",
    "user_id": "r.user_id",
    "start_time": "r.start_time",
    "end_time": "r.end_time",
    "artifact_uri": "r.artifact_uri",
    "lifecycle_stage": "r.lifecycle_stage",
}
_EXPERIMENT_COLUMNS = {
    "name": "e.name",
    # experiment_id is an INTEGER column but a string in the language (MLflow's ids are
    # strings), so compare its text form; '01' then does not equal 1, as in MLflow.
    "experiment_id": "CAST(e.experiment_id AS TEXT)",
    "creation_time": "e.creation_time",
    "last_update_time": "e.last_update_time",
    "lifecycle_stage": "e.lifecycle_stage",
}
ENTITY_TABLES = {Entity.METRIC: "latest_metrics", Entity.PARAM: "params", Entity.TAG: "tags"}


def _value_condition(
    cond: Condition, column: str, params: list[SqlValue], is_metric: bool, dialect: Dialect
) -> str:
    """The condition on one value column; NULL (missing) never matches."""
    if isinstance(cond, Compare):
        params.append(cond.value)
        if is_metric and cond.op == "!=":
            # NaN is stored as value NULL, is_nan 1; IEEE says NaN != x.
            return f"(x.is_nan = 1 OR {column} != ?)"
        return f"{column} {cond.op} ?"
    if isinstance(cond, Like):
        return dialect.like(column, cond.pattern, cond.case_sensitive, params)
    if isinstance(cond, InList):
        marks = dialect.in_list(cond.values, params)
        if cond.negated:
            if is_metric:
                return f"(x.is_nan = 1 OR {column} NOT IN {marks})"
            return f"{column} NOT IN {marks}"
        return f"{column} IN {marks}"
    raise AssertionError(f"not a value condition: {cond!r}")


def _compile_condition(
    cond: Condition, target: Target, params: list[SqlValue], dialect: Dialect
) -> str:
    key = cond.key
    if key.entity is Entity.ATTRIBUTE:
        columns = RUN_COLUMNS if target == "runs" else _EXPERIMENT_COLUMNS
        column = columns[key.name]
        if isinstance(cond, IsNull):
            return f"{column} IS {'NOT ' if cond.negated else ''}NULL"
        return _value_condition(cond, column, params, False, dialect)
    # A keyed value lives in a side table. Selecting the matching ids lets SQLite walk
    # the (key, value) index instead of probing every run (see search_indexes.sql).
    if target == "runs":
        table, id_column, outer = ENTITY_TABLES[key.entity], "run_uuid", "r.run_uuid"
    else:
        table, id_column, outer = "experiment_tags", "experiment_id", "e.experiment_id"
    params.append(key.name)
    if isinstance(cond, IsNull):
        membership = "IN" if cond.negated else "NOT IN"
        return f"{outer} {membership} (SELECT x.{id_column} FROM {table} x WHERE x.key = ?)"
    where = _value_condition(cond, "x.value", params, key.entity is Entity.METRIC, dialect)
    return f"{outer} IN (SELECT x.{id_column} FROM {table} x WHERE x.key = ? AND {where})"


def compile_filter(
    expr: Expr | None, target: Target = "runs", dialect: Dialect = SQLITE
) -> SqlFragment:
    """Compile a parsed filter to a WHERE fragment over ``runs r`` or ``experiments e``.

    Every key and value is a bound parameter; only fixed SQL text is emitted. The
    fragment calls ``flightlog_lower`` for ILIKE: see :func:`register_sql_functions`.
    ``None`` compiles to the dialect's TRUE (everything).
    """
    params: list[SqlValue] = []

    def walk(node: Expr) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(walk(o) for o in node.operands) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(walk(o) for o in node.operands) + ")"
        return _compile_condition(node, target, params, dialect)

    if expr is None:
        return SqlFragment(dialect.true, [])
    return SqlFragment(walk(expr), params)


# ---------------------------------------------------------------------------------------
# Reference evaluator
# ---------------------------------------------------------------------------------------


class RunRecord(TypedDict):
    """A run as the reference evaluator sees it.

    ``end_time`` is ``None`` while the run has not ended; ``metrics`` holds each key's
    latest value (``float('nan')`` for NaN); a key absent from a mapping is missing.
    """

    run_id: str
    run_name: str
    status: str
    user_id: str
    start_time: int
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


class ExperimentRecord(TypedDict):
    """An experiment as the reference evaluator sees it (``experiment_id`` as a string)."""

    experiment_id: str
    name: str
    creation_time: int
    last_update_time: int
    lifecycle_stage: str
    tags: dict[str, str]


_PY_OPS: dict[str, Callable[[Scalar, Scalar], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
}


def _evaluate(expr: Expr | None, lookup: Callable[[Key], Scalar | None]) -> bool:
    if expr is None:
        return True
    if isinstance(expr, And):
        return all(_evaluate(o, lookup) for o in expr.operands)
    if isinstance(expr, Or):
        return any(_evaluate(o, lookup) for o in expr.operands)
    value = lookup(expr.key)
    if isinstance(expr, IsNull):
        return (value is not None) if expr.negated else (value is None)
    if value is None:
        return False
    if isinstance(expr, Compare):
        # Python's float comparisons follow IEEE 754 for NaN, which is the rule we promise.
        return _PY_OPS[expr.op](value, expr.value)
    if isinstance(expr, InList):
        found = any(value == v for v in expr.values)
        return not found if expr.negated else found
    assert isinstance(value, str)
    return like_matches(value, expr.pattern, expr.case_sensitive)


def evaluate_run(expr: Expr | None, run: RunRecord) -> bool:
    """Reference semantics: does ``run`` match the parsed filter ``expr``?

    Pure Python and deliberately simple, so the SQL search can be checked against it.
    """

    def lookup(key: Key) -> Scalar | None:
        if key.entity is Entity.METRIC:
            return run["metrics"].get(key.name)
        if key.entity is Entity.PARAM:
            return run["params"].get(key.name)
        if key.entity is Entity.TAG:
            return run["tags"].get(key.name)
        value: Scalar | None = run[key.name]  # type: ignore[literal-required]
        return value

    return _evaluate(expr, lookup)


def evaluate_experiment(expr: Expr | None, exp: ExperimentRecord) -> bool:
    """Reference semantics: does experiment ``exp`` match the parsed filter ``expr``?"""

    def lookup(key: Key) -> Scalar | None:
        if key.entity is Entity.TAG:
            return exp["tags"].get(key.name)
        value: Scalar | None = exp[key.name]  # type: ignore[literal-required]
        return value

    return _evaluate(expr, lookup)
