"""Constrained decoding: masks that keep every emitted token inside a JSON schema, a regex or a grammar.

The engine is `llguidance <https://github.com/guidance-ai/llguidance>`_. A request's constraint is a plain
value in :class:`~gemma_mtp.params.SamplingParams` (``json_schema``, ``regex`` or ``grammar``); here it becomes
llguidance's Lark dialect (:func:`constraint_lark`), is compiled once per (tokenizer, constraint)
(:class:`ConstraintCompiler`), and each request gets a :class:`ConstraintGuide`: a matcher over the verified
tokens that also walks the drafts of the current round, so that

* the assistant drafts only tokens the constraint allows (its scores are masked step by step);
* row ``i`` of the target's verify pass is masked with the state after the drafts before it;
* after acceptance the state rolls back to the accepted prefix and advances by the target's own token.

End-of-generation tokens are allowed exactly when the constraint is complete. Special tokens (``<turn|>``,
``<|tool_call>``, ...) and, inside JSON strings, control characters can never be produced by a JSON schema or a
regex: llguidance's lexer matches text only, and its JSON strings follow RFC 8259.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "JSON_FORMAT",
    "ConstraintCompiler",
    "ConstraintError",
    "ConstraintGuide",
    "bound_integers",
    "check_constraint",
    "constraint_lark",
    "ending_on_tokens",
    "json_schema_lark",
    "regex_lark",
    "strict_schema",
    "truncated_output_message",
]

JSON_FORMAT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is laid out: ``json.dumps``' default separators and no other whitespace, so that an
output can neither run away in whitespace nor end in it (llguidance's ``x-guidance`` options)."""

_CACHE_SIZE = 64


class ConstraintError(ValueError):
    """A constraint that cannot be compiled (unsupported JSON schema feature, malformed regex or grammar)."""


SAFE_INTEGER = 2**53 - 1
"""The largest integer every JSON reader keeps exactly (IEEE doubles, JavaScript's ``Number.MAX_SAFE_INTEGER``)."""


def bound_integers(schema: Any) -> Any:
    """``schema`` with every unbounded ``integer`` limited to ``±SAFE_INTEGER``.

    Integers beyond that are not portable JSON anyway, and the bound keeps a sampled number from running on.
    """
    if isinstance(schema, list):
        return [bound_integers(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    bounded = {key: bound_integers(value) for key, value in schema.items()}
    if bounded.get("type") == "integer":
        if "minimum" not in bounded and "exclusiveMinimum" not in bounded:
            bounded["minimum"] = -SAFE_INTEGER
        if "maximum" not in bounded and "exclusiveMaximum" not in bounded:
            bounded["maximum"] = SAFE_INTEGER
    return bounded


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def strict_schema(schema: Any) -> Any:
    """``schema`` with every object closed to its declared properties (``additionalProperties: false`` where
    the schema does not say), as structured output expects: exactly the fields of the requested type."""
    if not isinstance(schema, Mapping):
        return schema
    strict = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(strict.get(key), Mapping):
            strict[key] = {name: strict_schema(sub) for name, sub in strict[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(strict.get(key), list):
            strict[key] = [strict_schema(sub) for sub in strict[key]]
    for key in _SCHEMA_VALUES:
        if key in strict:
            strict[key] = strict_schema(strict[key])
    if isinstance(strict.get("properties"), Mapping) and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    return strict


def truncated_output_message(
    what: str, limit_name: str = "max_tokens", length_limit: str | None = None
) -> str:
    """Why a constrained answer cut off by the token limit cannot be parsed, and what to do about it.

    ``length_limit`` is the request's ``SpeculationStats.length_limit``: ``"context_window"`` when the model's
    context window, not ``limit_name``, ended the answer (raising ``limit_name`` would change nothing then).
    """
    if length_limit == "context_window":
        return (
            f"The answer reached the end of the model's context window before the {what} was complete "
            "(finish_reason='length'): the prompt left fewer tokens than "
            f"{limit_name}, so there is nothing valid to parse. Shorten the prompt (less text, fewer or smaller "
            "images and audio clips), or bound the lengths in the schema (maxLength, maxItems)."
        )
    return (
        f"The answer reached {limit_name} before the {what} was complete (finish_reason='length'), so there "
        f"is nothing valid to parse. The constraint guarantees a valid {what} only when it can finish: raise "
        f"{limit_name}, or bound the lengths in the schema (maxLength, maxItems)."
    )


def json_schema_lark(schema: Mapping[str, Any]) -> str:
    """A Lark expression (``%json {...}``) for ``schema``, with :data:`JSON_FORMAT`'s whitespace rules and
    integers bounded (:func:`bound_integers`)."""
    spec = bound_integers(schema)
    spec["x-guidance"] = {**dict(spec.get("x-guidance") or {}), **JSON_FORMAT}
    return "%json " + json.dumps(spec, ensure_ascii=False)


def regex_lark(pattern: str) -> str:
    """A Lark terminal for ``pattern`` (Rust ``regex`` syntax; the whole output must match)."""
    out = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            out.append(char + next(chars, ""))
        elif char == "/":
            out.append("\\/")
        elif char in "\n\r":
            out.append("\\n" if char == "\n" else "\\r")
        else:
            out.append(char)
    return "/" + "".join(out) + "/"


def constraint_lark(
    json_schema: Mapping[str, Any] | None = None, regex: str | None = None, grammar: str | None = None
) -> str | None:
    """The constraint as a whole llguidance Lark grammar (rule ``start``), or ``None`` when there is none."""
    if json_schema is not None:
        return f"start: {json_schema_lark(json_schema)}\n"
    if regex is not None:
        return f"start: {regex_lark(regex)}\n"
    return grammar


# String literals, regex literals and comments of the Lark dialect (where a word is no rule name), or the word.
_LARK_PIECES = re.compile(r'"(?:[^"\\\n]|\\.)*"|/(?:[^/\\\n]|\\.)+/[imslux]*|//[^\n]*|\b(start)\b')
_BODY_RULE = "gemma_mtp_constrained"


def ending_on_tokens(lark: str, token_ids: Iterable[int]) -> str:
    """``lark`` that, once complete, may also end on any of ``token_ids`` (special tokens, by id).

    An engine that lets a complete grammar end only on the tokenizer's end-of-sequence token gets the same
    choice of end tokens as :class:`ConstraintGuide` (all end-of-generation tokens) this way: the grammar's
    ``start`` rule is renamed and followed by an optional end token.
    """
    ends = sorted({int(i) for i in token_ids})
    if not ends:
        return lark
    body = _LARK_PIECES.sub(lambda m: _BODY_RULE if m.group(1) else m.group(0), lark)
    alternatives = " | ".join(f"<[{i}]>" for i in ends)
    return f"{body.rstrip()}\nstart: {_BODY_RULE} gemma_mtp_end?\ngemma_mtp_end: {alternatives}\n"


def check_constraint(
    json_schema: Mapping[str, Any] | None = None, regex: str | None = None, grammar: str | None = None
) -> None:
    """Raise :class:`ConstraintError` naming the problem when the constraint cannot be compiled.

    Special tokens named in a grammar are checked later, against the model's tokenizer.
    """
    given = [
        name
        for name, value in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
        if value is not None
    ]
    if not given:
        return
    if len(given) > 1:
        raise ConstraintError(f"give at most one constraint per request, got {' and '.join(given)}")
    if json_schema is not None:
        if not isinstance(json_schema, Mapping):
            raise TypeError(f"json_schema must be a dict (a JSON schema), got {type(json_schema).__name__}")
        try:
            json.dumps(json_schema)
        except (TypeError, ValueError) as error:
            raise ConstraintError(f"json_schema is not JSON-serialisable: {error}") from error
    if regex is not None and (not isinstance(regex, str) or not regex):
        raise TypeError(f"regex must be a non-empty string, got {regex!r}")
    if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
        raise TypeError(f"grammar must be a non-empty string in llguidance's Lark dialect, got {grammar!r}")
    lark = constraint_lark(json_schema, regex, grammar)
    assert lark is not None
    _validate_without_tokenizer(lark, given[0])


@functools.lru_cache(maxsize=256)
def _validate_without_tokenizer(lark: str, what: str) -> None:
    """Requests rebuild their parameters several times (overrides, chat); each constraint is checked once."""
    _validate(lark, None, what)


def _validate(lark: str, tokenizer: Any, what: str) -> str:
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_lark(lark)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise ConstraintError(f"the {what} cannot be used as a constraint: {messages[0].strip()}")
    return grammar


class ConstraintCompiler:
    """Compiles constraints for one tokenizer and caches them (the most recent 64).

    The llguidance tokenizer is built on first use; its end-of-generation tokens are the runtime's, so a
    constrained answer may end with any of them, and only once the constraint is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(int(i) for i in eos_token_ids)
        self._ll_tokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _ll(self) -> Any:
        if self._ll_tokenizer is None:
            import llguidance.hf

            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self._tokenizer, n_vocab=self._vocab_size, eos_token=self._eos
            )
        return self._ll_tokenizer

    def matcher(self, lark: str, what: str = "grammar") -> Any:
        """A fresh matcher for ``lark`` (compiled once, then copied)."""
        from llguidance import LLMatcher

        with self._lock:
            compiled = self._compiled.get(lark)
            if compiled is None:
                tokenizer = self._ll()
                grammar = _validate(lark, tokenizer, what)
                compiled = LLMatcher(tokenizer, grammar, log_level=0)
                if compiled.is_error():
                    raise ConstraintError(
                        f"the {what} cannot be used as a constraint: {compiled.get_error()}"
                    )
                self._compiled[lark] = compiled
                if len(self._compiled) > _CACHE_SIZE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(lark)
            return compiled.deep_copy()

    def guide(self, lark: str, device: torch.device, what: str = "grammar") -> ConstraintGuide:
        """The per-request guide for ``lark``."""
        return ConstraintGuide(self.matcher(lark, what), self._vocab_size, device, self._eos)


class ConstraintGuide:
    """One request's constraint state: the verified tokens, plus the drafts being tried this round.

    The decoding loop calls :meth:`mask` / :meth:`push` while drafting (the state walks ahead over the drafts),
    :meth:`rows` for the verify masks (one per verify row, reusing what drafting computed), then
    :meth:`commit` with the accepted drafts and the target's token, which rolls the walk back to the accepted
    prefix and advances the verified state. Only :meth:`commit` makes tokens permanent.
    """

    def __init__(self, matcher: Any, vocab_size: int, device: torch.device, eos_token_ids: Iterable[int]):
        self._matcher = matcher
        self._vocab = vocab_size
        self._device = device
        # End-of-generation tokens end the request, so the matcher never consumes them (rolling one back
        # would not restore llguidance's stopped state); the mask alone decides when they are allowed.
        self._eos = frozenset(eos_token_ids)
        self._walk: list[int] = []  # tokens consumed on top of the verified state this round
        self._bits: list[np.ndarray] = []  # _bits[i]: allowed tokens after _walk[:i] (host copy)
        self._masks: list[torch.Tensor] = []  # the same on the model's device
        self.mask_computations = 0

    @property
    def finished(self) -> bool:
        """Whether the current state (walk included) admits nothing more than the end of generation."""
        return bool(self._walk and self._walk[-1] in self._eos) or bool(self._matcher.is_stopped())

    def mask(self) -> torch.Tensor:
        """Allowed next tokens (bool, ``[vocab]``, on the guide's device) in the current state."""
        return self._mask_at_depth()[1]

    def _mask_at_depth(self) -> tuple[np.ndarray, torch.Tensor]:
        depth = len(self._walk)
        if depth < len(self._masks):
            return self._bits[depth], self._masks[depth]
        self._check()
        packed = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")[: self._vocab].astype(np.bool_)
        if not bits.any():
            raise RuntimeError(
                "the constraint allows no token in this state (the grammar cannot continue with this "
                f"tokenizer): {self._matcher.get_error() or 'no continuation'}"
            )
        self.mask_computations += 1
        allowed = torch.from_numpy(bits).to(self._device)
        self._bits.append(bits)
        self._masks.append(allowed)
        return bits, allowed

    def push(self, token: int) -> bool:
        """Walk over a draft token; ``False`` (nothing consumed) when the constraint forbids it."""
        if self._walk and self._walk[-1] in self._eos:
            return False
        bits, _ = self._mask_at_depth()
        if not 0 <= token < self._vocab or not bits[token]:
            return False
        if token not in self._eos and not self._matcher.consume_token(token):
            self._check()
        self._walk.append(token)
        return True

    def rows(self, drafts: list[int]) -> tuple[int, torch.Tensor]:
        """How many of ``drafts`` the constraint allows (a prefix), and the masks of the verify rows for them.

        Row ``i`` of the returned ``[valid + 1, vocab]`` tensor allows the tokens that may follow the verified
        state and ``drafts[:i]``.
        """
        common = 0
        while common < min(len(drafts), len(self._walk)) and drafts[common] == self._walk[common]:
            common += 1
        self._unwalk(len(self._walk) - common)
        valid = common
        for token in drafts[common:]:
            if not self.push(token):
                break
            valid += 1
        self._mask_at_depth()
        return valid, torch.stack(self._masks[: valid + 1])

    def commit(self, accepted: int, tokens: list[int]) -> None:
        """Make permanent the first ``accepted`` walked drafts and the target's ``tokens[accepted:]``."""
        self._unwalk(len(self._walk) - accepted)
        for token in tokens[accepted:]:
            if token not in self._eos and not self._matcher.consume_token(token):
                self._check()
        self._walk, self._bits, self._masks = [], [], []

    def _unwalk(self, count: int) -> None:
        if count <= 0:
            return
        consumed = sum(token not in self._eos for token in self._walk[len(self._walk) - count :])
        if consumed and not self._matcher.rollback(consumed):
            self._check()
        del self._walk[len(self._walk) - count :]
        del self._bits[len(self._walk) + 1 :]
        del self._masks[len(self._walk) + 1 :]

    def _check(self) -> None:
        if self._matcher.is_error():
            raise RuntimeError(f"constraint matcher failed: {self._matcher.get_error()}")
