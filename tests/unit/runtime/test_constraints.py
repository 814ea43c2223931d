"""Constrained decoding: outputs valid by construction, greedy exactness and exact sampling under a mask.

Validity is checked with the parsers users use (``json.loads``, pydantic, ``re.fullmatch``), never with the
engine's own acceptance. The kit pairs write gibberish, so every token a constraint lets through is exercised.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Annotated, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.constraints import (
    ConstraintCompiler,
    ConstraintError,
    constraint_lark,
    ending_on_tokens,
    regex_lark,
)
from gemma_mtp.sampling import warp
from gemma_mtp.testing import VARIANTS, tiny_runtime


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag: bool
    score: int = Field(ge=-50, le=50)


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=150)
    kind: Literal["cat", "dog", "fox"]
    tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=3)
    inner: Inner


PERSON_SCHEMA = Person.model_json_schema()
FLAT_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["C", "F"]},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "ok"],
    "additionalProperties": False,
}
REGEXES = [r"[a-z]{3}-[0-9]{2,4}", r"(yes|no|maybe), because [a-z ]{1,20}\.", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"]
PROMPT = "Hello there"


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return tiny_runtime("agreeing", "dense")


@pytest.mark.parametrize("schema", [PERSON_SCHEMA, FLAT_SCHEMA], ids=["nested", "flat"])
def test_sampled_json_parses_and_validates(rt: Runtime, schema: dict) -> None:
    params = SamplingParams(json_schema=schema, temperature=1.0, max_new_tokens=200, num_assistant_tokens=3)
    for seed in range(20):
        result = rt.generate(PROMPT, params.with_overrides(seed=seed))
        assert result.finish_reason == "stop", (seed, result.text)
        value = json.loads(result.text)
        if schema is PERSON_SCHEMA:
            Person.model_validate(value)
        else:
            assert set(value) == {"city", "days", "unit", "ok"}
            assert 1 <= value["days"] <= 14 and value["unit"] in ("C", "F") and isinstance(value["ok"], bool)
        assert "\n" not in result.text  # whitespace is bounded: json.dumps' separators only
        assert all(ch >= " " for ch in result.text)


@pytest.mark.parametrize("pattern", REGEXES)
def test_sampled_regex_fullmatches(rt: Runtime, pattern: str) -> None:
    params = SamplingParams(regex=pattern, temperature=1.0, max_new_tokens=60)
    for seed in range(20):
        result = rt.generate(PROMPT, params.with_overrides(seed=seed))
        assert result.finish_reason == "stop", (seed, result.text)
        assert re.fullmatch(pattern, result.text), (seed, result.text)


@pytest.mark.parametrize("kind", ["agreeing", "random"])
@pytest.mark.parametrize(
    "constraint",
    [
        {"json_schema": PERSON_SCHEMA},
        {"regex": REGEXES[1]},
        {"grammar": 'start: "ab" NUM ("," NUM)*\nNUM: /[0-9]{1,3}/\n'},
    ],
    ids=["json", "regex", "grammar"],
)
def test_greedy_with_and_without_assistant_identical(kind: str, constraint: dict) -> None:
    rt = tiny_runtime(kind, "dense")
    base = SamplingParams(max_new_tokens=96, **constraint)
    alone = rt.generate(PROMPT, base, use_assistant=False)
    for k in (1, 3, 6):
        spec = rt.generate(PROMPT, base.with_overrides(num_assistant_tokens=k))
        assert spec.token_ids == alone.token_ids, k
        assert spec.finish_reason == alone.finish_reason
    assert alone.stats.drafted_tokens == 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sample_drafts", [False, True], ids=["argmax", "sampled"])
def test_every_family_and_draft_method_stays_valid_and_exact(variant: str, sample_drafts: bool) -> None:
    """Centroid-masked assistant heads (e2b) included: a mask that forbids every candidate falls back to the
    full head. Greedy equality with the target alone; sampled outputs (both draft methods) validate."""
    rt = tiny_runtime("agreeing", variant)
    greedy = SamplingParams(json_schema=FLAT_SCHEMA, max_new_tokens=80, num_assistant_tokens=4)
    assert rt.generate(PROMPT, greedy).token_ids == rt.generate(PROMPT, greedy, use_assistant=False).token_ids
    sampled = greedy.with_overrides(temperature=1.0, sample_drafts=sample_drafts)
    for seed in range(4):
        result = rt.generate(PROMPT, sampled.with_overrides(seed=seed))
        assert result.finish_reason == "stop", result.text
        assert set(json.loads(result.text)) == {"city", "days", "unit", "ok"}


def test_drafts_are_constrained_and_accepted(rt: Runtime) -> None:
    """The agreeing assistant keeps a high acceptance under a constraint: its drafts are masked too."""
    free = rt.generate(PROMPT, SamplingParams(max_new_tokens=64, num_assistant_tokens=4, ignore_eos=True))
    constrained = rt.generate(
        PROMPT, SamplingParams(json_schema=PERSON_SCHEMA, max_new_tokens=64, num_assistant_tokens=4)
    )
    assert constrained.stats.drafted_tokens > 0
    assert constrained.stats.acceptance_rate > 0.5 * free.stats.acceptance_rate, (
        constrained.stats.as_dict(),
        free.stats.as_dict(),
    )


def test_constraint_that_cannot_complete_ends_with_length(rt: Runtime) -> None:
    result = rt.generate(PROMPT, SamplingParams(regex=r"[a-z]{50}", max_new_tokens=5))
    assert result.finish_reason == "length"
    assert re.fullmatch(r"[a-z]*", result.text)


def test_end_of_generation_only_when_complete(rt: Runtime) -> None:
    """A constraint that needs many tokens is not cut short by EOS, and ends right after it completes."""
    for seed in range(5):
        result = rt.generate(
            PROMPT, SamplingParams(regex=r"[a-z ]{30,40}", temperature=1.0, seed=seed, max_new_tokens=60)
        )
        assert result.finish_reason == "stop"
        assert 30 <= len(result.text) <= 40
        assert result.token_ids[-1] in rt.eos_token_ids


def test_special_tokens_and_control_characters_never_inside_json_strings(rt: Runtime) -> None:
    schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 40}},
        "required": ["text"],
        "additionalProperties": False,
    }
    for seed in range(10):
        params = SamplingParams(
            json_schema=schema, temperature=2.0, seed=seed, max_new_tokens=80, skip_special_tokens=False
        )
        result = rt.generate(PROMPT, params)
        body = result.token_ids[:-1] if result.token_ids[-1] in rt.eos_token_ids else result.token_ids
        specials = set(rt.tokenizer.all_special_ids)
        assert not specials & set(body), result.text
        json.loads(rt.tokenizer.decode(body))


def test_stats_callbacks_and_streaming_unchanged(rt: Runtime) -> None:
    seen = []
    params = SamplingParams(json_schema=FLAT_SCHEMA, max_new_tokens=80)
    deltas = list(rt.stream(PROMPT, params, on_round=seen.append))
    whole = rt.generate(PROMPT, params)
    assert "".join(d.text for d in deltas) == whole.text
    assert len(seen) == len(deltas) == deltas[-1].stats.target_forward_passes  # greedy: same text, any drafts
    assert sum(r.drafted for r in seen) == deltas[-1].stats.drafted_tokens
    json.loads(whole.text)


# -- validation at build time -------------------------------------------------------------------------


def test_at_most_one_constraint() -> None:
    with pytest.raises(ConstraintError, match="at most one"):
        SamplingParams(json_schema={"type": "string"}, regex="a+")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json_schema": {"type": "strng"}}, "strng"),
        ({"json_schema": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
        ({"json_schema": {"type": "string", "format": "no-such-format"}}, "no-such-format"),
        ({"regex": "a(b"}, "unclosed group"),
        ({"grammar": 'start: "a" missing\n'}, "missing"),
    ],
)
def test_bad_constraints_fail_when_built_naming_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ConstraintError, match=re.escape(message)):
        SamplingParams(**kwargs)


def test_bad_constraint_types() -> None:
    with pytest.raises(TypeError, match="json_schema must be a dict"):
        SamplingParams(json_schema="{}")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="regex must be a non-empty string"):
        SamplingParams(regex="")
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(regex="a+", ignore_eos=True)


def test_unknown_special_token_in_grammar_fails_at_the_request_and_runtime_stays_usable(rt: Runtime) -> None:
    params = SamplingParams(grammar='start: <|no_such_token|> "a"\n', max_new_tokens=4)
    with pytest.raises(ConstraintError, match="no_such_token"):
        rt.generate(PROMPT, params)
    assert rt.generate(PROMPT, SamplingParams(regex="ab", max_new_tokens=4)).text == "ab"


def test_regex_with_slashes_and_line_breaks() -> None:
    assert regex_lark("a/b\n") == "/a\\/b\\n/"
    assert regex_lark(r"a\/b") == r"/a\/b/"
    assert constraint_lark(regex="x") == "start: /x/\n"


def test_compiled_constraints_are_cached(rt: Runtime) -> None:
    lark = constraint_lark(json_schema=FLAT_SCHEMA)
    assert lark is not None
    first = rt._backend.constraints.matcher(lark)
    assert lark in rt._backend.constraints._compiled
    second = rt._backend.constraints.matcher(lark)
    assert first is not second  # each request gets its own copy of the compiled matcher


# -- exact sampling under a constraint ------------------------------------------------------------------

STAT_PARAMS = dict(temperature=4.0, top_k=4, max_new_tokens=3, num_assistant_tokens=1)
STAT_REGEX = r"[a-z]+( [a-z]+)*"
SAMPLES = 1500
LOOP_TV_BOUND = 0.085  # as for the unconstrained loop: 16 cells, 1500 draws


def _allowed(rt: Runtime, lark: str, prefix: list[int]) -> torch.Tensor:
    matcher = rt._backend.constraints.matcher(lark)
    assert matcher.consume_tokens(prefix) if prefix else True
    guide_bits = torch.zeros(rt.vocab_size, dtype=torch.bool)
    import numpy as np

    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    guide_bits[:] = torch.from_numpy(bits[: rt.vocab_size].astype(bool))
    return guide_bits


def exact_masked_joint(rt: Runtime, params: SamplingParams) -> dict[tuple[int, int], float]:
    lark = constraint_lark(regex=STAT_REGEX)
    assert lark is not None
    ids = rt.encode(PROMPT)
    joint = {}
    with torch.no_grad():
        logits = rt.target(torch.tensor([ids])).logits[0, -1:]
        first = warp(logits.masked_fill(~_allowed(rt, lark, []), float("-inf")), params)[0]
        for t1 in first.nonzero().flatten().tolist():
            logits = rt.target(torch.tensor([[*ids, t1]])).logits[0, -1:]
            second = warp(logits.masked_fill(~_allowed(rt, lark, [t1]), float("-inf")), params)[0]
            for t2 in second.nonzero().flatten().tolist():
                joint[(t1, t2)] = first[t1].item() * second[t2].item()
    return joint


def total_variation(counts: Counter, probs: dict, n: int) -> float:
    keys = set(counts) | set(probs)
    return 0.5 * sum(abs(counts.get(k, 0) / n - probs.get(k, 0.0)) for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("sample_drafts", [False, True], ids=["argmax-drafts", "sampled-drafts"])
def test_constrained_sampling_follows_the_masked_distribution(rt: Runtime, sample_drafts: bool) -> None:
    params = SamplingParams(regex=STAT_REGEX, sample_drafts=sample_drafts, **STAT_PARAMS)
    exact = exact_masked_joint(rt, params)
    assert len(exact) > 4
    ids = rt.encode(PROMPT)
    counts: Counter = Counter()
    for seed in range(SAMPLES):
        counts[tuple(rt.generate(ids, params.with_overrides(seed=seed)).token_ids[:2])] += 1
    assert set(counts) <= set(exact)  # nothing outside the mask, ever
    tv = total_variation(counts, exact, SAMPLES)
    assert tv < LOOP_TV_BOUND, tv


def test_a_grammar_ending_on_tokens_keeps_its_language_and_adds_the_end_tokens(rt: Runtime) -> None:
    grammar = 'start: "(" start ")" | "x" NUM // start\nNUM: /[0-9]/\n'
    extended = ending_on_tokens(grammar, [6, 11])
    assert extended == (  # rule references renamed; strings and comments untouched
        'gemma_mtp_constrained: "(" gemma_mtp_constrained ")" | "x" NUM // start\nNUM: /[0-9]/\n'
        "start: gemma_mtp_constrained gemma_mtp_end?\ngemma_mtp_end: <[6]> | <[11]>\n"
    )
    # A matcher that ends only on <eos> (id 1), as vLLM's does, now also ends on ids 6 and 11, once complete.
    matcher = ConstraintCompiler(rt.tokenizer, rt.vocab_size, [1]).matcher(extended)
    text_ids = rt.tokenizer.encode("(x1)", add_special_tokens=False)
    assert not matcher.validate_tokens([6])  # incomplete: no end token
    assert matcher.consume_tokens(text_ids)
    assert matcher.validate_tokens([6]) == 1 and matcher.validate_tokens([11]) == 1
    assert ending_on_tokens(grammar, []) == grammar
