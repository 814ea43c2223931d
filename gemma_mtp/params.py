"""Sampling parameters for one request, validated when they are built.

Validation happens here, once, so that a bad value fails before any model work starts and the loaded
models stay usable for the next request.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from numbers import Integral, Real
from typing import Any

from gemma_mtp.constraints import check_constraint
from gemma_mtp.names import did_you_mean

__all__ = ["SamplingParams", "caller_names"]


def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _check_real(name: str, value: Any, *, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value}.")
    too_low = number <= low if low_open else number < low
    if too_low or number > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}.")


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request.

    ``temperature=0`` means greedy decoding, whose output is token-for-token identical to the target
    model decoding alone. With ``temperature > 0`` the output follows the target's distribution after
    temperature, ``top_k`` and ``top_p`` are applied to the target's logits.

    Draft settings: each one left at ``None`` is decided per round by the runtime's draft policy
    (:mod:`gemma_mtp.policy`), which drafts the number of tokens (0 included: plain decoding) and the
    draft method with the most expected tokens per second, from the acceptance seen so far and the
    round costs measured on this runtime. Setting one pins that part of the decision:

    * ``num_assistant_tokens`` pins the draft length (between 1 and ``max_assistant_tokens``).
    * ``adaptive_draft=False`` pins the draft length to ``num_assistant_tokens``, or when that is unset
      to the assistant's ``generation_config.num_assistant_tokens`` (else a per-family default, see
      :mod:`gemma_mtp.families`). ``adaptive_draft=True`` grows the draft by two after a fully
      accepted round and shrinks it by one after a rejection, between 1 and ``max_assistant_tokens``,
      starting from that same length.
    * ``sample_drafts=True`` (sampling only) makes the assistant sample its drafts from its own warped
      distribution; ``False`` drafts its argmax. Unset: argmax drafts when greedy or seeded, else
      sampled drafts unless argmax drafts are measured to do better. The acceptance rule follows how
      drafts were made, so the output distribution is the target's either way.

    ``seed`` makes a sampled answer reproducible. With argmax drafts (the default for seeded requests)
    the answer depends on the seed alone: it is the answer the target alone gives with that seed, whatever
    the draft lengths. With ``sample_drafts=True`` it also depends on the draft lengths, so pin
    ``num_assistant_tokens`` too for a reproducible answer.

    ``json_schema``, ``regex`` and ``grammar`` constrain the output (at most one per request): a JSON schema
    (a dict), a regular expression the whole output must match (Rust ``regex`` syntax), or a grammar in
    llguidance's Lark dialect (see ``docs/constrained-decoding.md``). They are checked here, so an unsupported
    schema feature or a malformed regex fails before any decoding. Drafts and the target's choices are both
    masked; greedy output stays identical to the target decoding alone under the same constraint.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_assistant_tokens: int | None = None
    adaptive_draft: bool | None = None
    max_assistant_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    sample_drafts: bool | None = None
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    regex: str | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_real("temperature", self.temperature, low=0.0, high=100.0)
        _check_real("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_int("top_k", self.top_k, minimum=0)
        _check_int("seed", self.seed, minimum=0, allow_none=True)
        _check_int("num_assistant_tokens", self.num_assistant_tokens, minimum=1, allow_none=True)
        _check_int("max_assistant_tokens", self.max_assistant_tokens, minimum=1)
        if self.num_assistant_tokens is not None and self.num_assistant_tokens > self.max_assistant_tokens:
            raise ValueError(
                f"num_assistant_tokens ({self.num_assistant_tokens}) exceeds max_assistant_tokens "
                f"({self.max_assistant_tokens}); raise max_assistant_tokens or draft fewer tokens."
            )
        object.__setattr__(self, "stop", _as_str_tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", _as_int_tuple(self.stop_token_ids))
        for flag in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")
        for flag in ("adaptive_draft", "sample_drafts"):
            if getattr(self, flag) is not None and not isinstance(getattr(self, flag), bool):
                raise TypeError(
                    f"{flag} must be True, False or None (the draft policy decides), got {getattr(self, flag)!r}."
                )
        if self.sample_drafts and self.temperature == 0.0:
            raise ValueError(
                "sample_drafts=True needs temperature > 0: greedy decoding drafts the assistant's argmax. "
                "Leave sample_drafts unset to let the draft policy choose per temperature."
            )
        if isinstance(self.json_schema, Mapping):
            object.__setattr__(self, "json_schema", copy.deepcopy(dict(self.json_schema)))
        check_constraint(self.json_schema, self.regex, self.grammar)
        if self.constrained and self.ignore_eos:
            raise ValueError(
                "ignore_eos=True cannot be combined with a constraint: a constrained answer ends when the "
                "constraint is complete."
            )

    @property
    def constrained(self) -> bool:
        """Whether this request carries a constraint (``json_schema``, ``regex`` or ``grammar``)."""
        return self.json_schema is not None or self.regex is not None or self.grammar is not None

    @property
    def greedy(self) -> bool:
        """Whether this request decodes by argmax (temperature 0)."""
        return self.temperature == 0.0

    def with_overrides(self, **overrides: Any) -> SamplingParams:
        """A copy with the given fields replaced (``None`` values are ignored), validated again."""
        known = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(known) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"Unknown sampling parameter(s): {', '.join(sorted(unknown))}."
                f"{did_you_mean(unknown, self.__dataclass_fields__)} "
                f"Known: {', '.join(sorted(self.__dataclass_fields__))}."
            )
        return replace(self, **known)


def _as_str_tuple(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Iterable):
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r}.")
    items = tuple(stop)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"every stop sequence must be a string, got {item!r}.")
        if item == "":
            raise ValueError("stop sequences must not be empty strings.")
    return items


def _as_int_tuple(ids: Any) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, Integral):
        ids = (ids,)
    items = tuple(ids)
    for item in items:
        _check_int("stop_token_ids entry", item, minimum=0)
    return tuple(int(i) for i in items)


@contextmanager
def caller_names(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise sampling-parameter errors with the names the caller used for the fields.

    An adapter whose framework calls ``max_new_tokens`` ``max_tokens`` builds its parameters inside
    ``with caller_names({"max_new_tokens": "max_tokens"}):`` so that ``max_tokens=0`` is reported as
    ``max_tokens must be >= 1``, the name the user wrote.
    """
    try:
        yield
    except (TypeError, ValueError) as err:
        message = str(err)
        renamed = message
        for field, name in names.items():
            renamed = re.sub(rf"\b{re.escape(field)}\b", name, renamed)
        if renamed == message:
            raise
        raise type(err)(renamed) from err
