"""Constrained vs unconstrained decoding, side by side, and the per-round cost of masking.

Same prompts, same pair, one run: each prompt is answered freely and under a JSON schema, with the assistant
(the default draft policy, and fixed draft lengths) and by the target alone (greedy). Reports tokens/s, acceptance and tokens per target pass for each, the share
of the time spent computing and applying grammar masks, and whether greedy output with the assistant equals
the target alone's under the constraint. Writes (or replaces) the "Constrained decoding" section of
``docs/benchmarks.md``::

    python benchmarks/constrained.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.benchmarking.naming import assistant_label, model_label
from gemma_mtp.benchmarking.publish import section_markers, write_page_section
from gemma_mtp.benchmarking.tables import markdown_table
from gemma_mtp.cli import CLIError, common_options, load_runtime, read_prompts
from gemma_mtp.constraints import ConstraintGuide

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTION = "constrained-decoding"
BEGIN, END = section_markers(SECTION)
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 160},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "topics": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "topics"],
    "additionalProperties": False,
}


POLICY = "default policy"
"""The row label of requests without draft settings (the adaptive draft policy decides)."""


class MaskClock:
    """Wall time spent inside the constraint guide (mask computation, walking drafts, rollback)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._saved: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> MaskClock:
        for name in ("mask", "push", "rows", "commit"):
            original = getattr(ConstraintGuide, name)
            self._saved[name] = original
            setattr(ConstraintGuide, name, self._timed(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(ConstraintGuide, name, original)

    def _timed(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


Config = tuple[str, SamplingParams, bool]


def measure(
    rt: Runtime, prompts: Sequence[Any], configs: Sequence[Config], runs: int
) -> dict[str, dict[str, Any]]:
    """Every configuration once per run, interleaved, so that a shared machine's load falls on all alike."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    masks: dict[str, float] = dict.fromkeys(times, 0.0)
    first: dict[str, list[Any]] = {name: [] for name in times}
    for _ in range(runs):
        for name, params, use_assistant in configs:
            with MaskClock() as clock:
                start = time.perf_counter()
                results = [rt.chat(prompt, params, use_assistant=use_assistant) for prompt in prompts]
                times[name].append(time.perf_counter() - start)
            masks[name] += clock.seconds
            first[name] = first[name] or results
    rows = {}
    for name, results in first.items():
        tokens = sum(len(r.token_ids) for r in results)
        drafted = sum(r.stats.drafted_tokens for r in results)
        rows[name] = {
            "tokens_per_s": tokens / statistics.median(times[name]),
            "acceptance": sum(r.stats.accepted_tokens for r in results) / drafted if drafted else None,
            "tokens_per_pass": tokens / sum(r.stats.target_forward_passes for r in results),
            "mask_share": masks[name] / sum(times[name]),
            "outputs": [r.token_ids for r in results],
        }
    return rows


def section(
    rt: Runtime, rows: dict[str, dict[str, Any]], prompts: int, max_new_tokens: int, runs: int
) -> str:
    table = []
    for name, row in rows.items():
        alone = rows[name.split(",")[0] + ", target only"]  # same request, same greedy tokens
        acceptance = "—" if row["acceptance"] is None else f"{row['acceptance']:.2f}"
        table.append(
            [
                name,
                f"{row['tokens_per_s']:.1f}",
                f"{row['tokens_per_s'] / alone['tokens_per_s']:.2f}×",
                acceptance,
                f"{row['tokens_per_pass']:.2f}",
                f"{100 * row['mask_share']:.1f}%",
                "yes" if row["outputs"] == alone["outputs"] else "NO",
            ]
        )
    headers = [
        "request",
        "tokens/s",
        "vs target only",
        "acceptance",
        "tokens/target pass",
        "in masks",
        "same tokens",
    ]
    free, schema = rows[f"free, {POLICY}"], rows[f"JSON schema, {POLICY}"]
    masks = [row["mask_share"] for name, row in rows.items() if name.startswith("JSON")]
    return "\n".join(
        [
            BEGIN,
            "## Constrained decoding",
            "",
            f"{model_label(rt.model_name)} + {assistant_label(rt.assistant_name)} on {rt.device}; greedy chat, "
            f"{prompts} prompts, up to {max_new_tokens} new tokens; each prompt answered freely and under a JSON "
            "schema (a string, a bounded integer, an array of strings), with the default draft policy, with fixed "
            f"draft lengths and by the target alone; medians of {runs} interleaved runs, so that the load of a shared "
            "machine falls on every configuration alike. Generated by `benchmarks/constrained.py`.",
            "",
            markdown_table(headers, table),
            "",
            "*vs target only* compares with the target alone on the same request (greedy, so the same tokens: "
            "*same tokens*). Free and constrained answers differ in content and length, so compare their "
            "ratios, not their tokens/s. *in masks* is the share of the wall time spent computing grammar masks, "
            "walking the drafts and rolling back "
            f"({100 * min(masks):.1f}–{100 * max(masks):.1f}% under the schema here). A grammar mask removes "
            "tokens that both models would choose, so the same pair accepts less under a schema "
            f"({_acceptance(schema)} with the default policy, against {_acceptance(free)} in free text). The "
            "policy learns constrained requests' acceptance apart from free text's, so it chooses their draft "
            "length from what they accept rather than from what free text accepted.",
            END,
        ]
    )


def _acceptance(row: dict[str, Any]) -> str:
    return "no drafts" if row["acceptance"] is None else f"acceptance {row['acceptance']:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(96)],
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=7,
        help="timed runs per configuration (default: 7; with 3, two settings within 1%% of each other came out about "
        "9%% apart on a 2-core machine)",
    )
    parser.add_argument(
        "--num-assistant-tokens", type=int, help="the longer fixed draft length (default: the pair's)"
    )
    parser.add_argument("--output", type=Path, default=DOCS / "benchmarks.md", help="the page to update")
    args = parser.parse_args(argv)
    if args.raw:
        print("error: this benchmark answers chat turns; run it without --raw", file=sys.stderr)
        return 2
    try:
        # Without --raw every prompt is a chat turn.
        prompts = [cast(Sequence[dict[str, Any]], prompt) for prompt in read_prompts(args)]
        rt = load_runtime(args)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    k = args.num_assistant_tokens or rt.default_draft_length
    free = SamplingParams(max_new_tokens=args.max_new_tokens)
    constrained = free.with_overrides(json_schema=SCHEMA)
    for params in (free, constrained):  # compile the grammar, warm up and time rounds outside the timed runs
        rt.chat(prompts[0], params)
    configs = [
        (f"free, {POLICY}", free, True),
        (f"free, draft length {k}", free.with_overrides(num_assistant_tokens=k), True),
        ("free, target only", free, False),
        (f"JSON schema, {POLICY}", constrained, True),
        (f"JSON schema, draft length {k}", constrained.with_overrides(num_assistant_tokens=k), True),
        ("JSON schema, draft length 2", constrained.with_overrides(num_assistant_tokens=2), True),
        ("JSON schema, target only", constrained, False),
    ]
    print(f"measuring {len(configs)} configurations x {args.runs} runs", file=sys.stderr, flush=True)
    rows = measure(rt, prompts, configs, args.runs)
    text = section(rt, rows, len(prompts), args.max_new_tokens, args.runs)
    print(text)
    write_page_section(args.output, SECTION, text)
    print(f"updated {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
