"""``gemma-mtp bench``: our loop and Hugging Face ``generate``, with and without the assistant, side by side.

All four methods decode the same prompts greedily with the same token budget and end-of-generation ids,
one after the other for each prompt in an order that rotates from prompt to prompt and run to run (so a
change in machine load hits them alike), for several runs; the report gives medians over runs, the range of
the runs' speed-ups, and says when a speed-up cannot be trusted (:mod:`gemma_mtp.benchmarking.trust`). The Hugging Face reference is ``target.generate`` alone and
``target.generate(assistant_model=assistant)``, transformers' own MTP path, at batch size 1 with the
same draft length. Its target and assistant forward passes are counted with forward hooks; its
acceptance rate is derived from them (each verify pass yields one token of the target's plus the
accepted drafts), since transformers does not report one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from gemma_mtp.benchmarking.measure import PeakMemory, elapsed_since, synchronize
from gemma_mtp.benchmarking.naming import assistant_label, model_label
from gemma_mtp.benchmarking.tables import markdown_table, plural, text_table
from gemma_mtp.benchmarking.trust import Spread, speedup_doubts
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime

__all__ = [
    "METHODS",
    "ComparisonReport",
    "MethodSummary",
    "Sample",
    "compare_methods",
    "reference_mtp_available",
]

METHODS: dict[str, str] = {
    "mtp": "gemma-mtp, with assistant",
    "target_only": "gemma-mtp, target only",
    "hf_assisted": "HF generate(assistant_model=...)",
    "hf_target": "HF generate, target only",
}
"""Method keys and their labels, in report order."""


@dataclass(frozen=True)
class Sample:
    """One method decoding one prompt once."""

    method: str
    run: int
    prompt_index: int
    new_tokens: int
    elapsed_s: float
    time_to_first_token_s: float
    target_forwards: int
    drafted: int
    accepted: int
    peak_memory_bytes: int
    token_ids: tuple[int, ...] = field(repr=False)
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class MethodSummary:
    """One method over every run: medians of per-run throughput, totals for the counts."""

    method: str
    label: str
    tokens_per_s: float
    speedup: float
    speedup_vs_hf_target: float
    acceptance_rate: float | None
    tokens_per_target_forward: float
    time_to_first_token_s: float
    peak_memory_bytes: int
    matches_target_only: bool
    speedup_range: tuple[float, float] = (0.0, 0.0)  # lowest and highest of the runs' speed-ups
    doubts: tuple[str, ...] = ()  # why its speed-up cannot be trusted (empty: it can)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def speedup_text(self) -> str:
        return Spread(self.speedup, *self.speedup_range).times()


@dataclass
class ComparisonReport:
    model: str
    assistant: str
    device: str
    dtype: str
    draft_length: int
    max_new_tokens: int
    runs: int
    prompts: int
    memory_kind: str
    summaries: list[MethodSummary]
    samples: list[Sample]

    def summary(self, method: str) -> MethodSummary:
        return next(s for s in self.summaries if s.method == method)

    def as_dict(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.__dict__.items() if k not in ("summaries", "samples")}
        return {
            **settings,
            "methods": [s.as_dict() for s in self.summaries],
            "samples": [{k: v for k, v in s.__dict__.items() if k != "token_ids"} for s in self.samples],
        }

    _HEADERS = (
        "method",
        "tokens/s",
        "vs our target-only",
        "vs HF target-only",
        "acceptance",
        "tokens/target pass",
        "TTFT ms",
        "peak MiB",
        "same tokens",
    )

    def rows(self) -> list[list[str]]:
        return [
            [
                s.label,
                f"{s.tokens_per_s:.1f}",
                s.speedup_text + (" ?" if s.doubts else ""),
                f"{s.speedup_vs_hf_target:.2f}×",
                "—" if s.acceptance_rate is None else f"{s.acceptance_rate:.2f}",
                f"{s.tokens_per_target_forward:.2f}",
                f"{s.time_to_first_token_s * 1000:.1f}",
                f"{s.peak_memory_bytes / 2**20:.0f}",
                "yes" if s.matches_target_only else "NO",
            ]
            for s in self.summaries
        ]

    def describe(self) -> str:
        return (
            f"{self.model} + {self.assistant} on {self.device} ({self.dtype}); greedy, {plural(self.prompts, 'prompt')}, "
            f"up to {self.max_new_tokens} new tokens, draft length {self.draft_length}, "
            f"medians of {plural(self.runs, 'run')} (range of the runs' speed-ups in brackets); "
            f"peak memory: {self.memory_kind}"
        )

    def notes(self) -> list[str]:
        """The doubts about the speed-ups, one line per method (marked ``?`` in the table)."""
        return [f"? {s.label}: {doubt}" for s in self.summaries for doubt in s.doubts]

    def format_text(self) -> str:
        mtp, hf = self.summary("mtp"), self.summary("hf_assisted")
        headline = (
            f"speed-up with the assistant: {mtp.speedup_text} over our target-only loop, "
            f"{mtp.tokens_per_s / hf.tokens_per_s:.2f}× over transformers' assisted generate"
        )
        if mtp.doubts:
            headline = "speed-up with the assistant: not measured, see the note"
        cached = sum(s.cached_prompt_tokens for s in self.samples)
        reuse = (
            f"prompt tokens read from the prefix cache: {cached} (it is emptied before each request of ours, "
            "as generate keeps none, so every method processes every prompt whole)"
        )
        table = text_table(self._HEADERS, self.rows())
        return "\n".join([self.describe(), "", table, *self.notes(), "", headline, reuse])

    def format_markdown(self) -> str:
        return markdown_table(self._HEADERS, self.rows())


class _FirstTokenClock(BaseStreamer):
    """Notes when ``generate`` hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        return None


@contextmanager
def _counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def _assistant_draft_length(assistant: PreTrainedModel, draft_length: int) -> Iterator[None]:
    """transformers' MTP path reads the draft length from the assistant's generation config."""
    config = assistant.generation_config
    saved = config.num_assistant_tokens
    config.num_assistant_tokens = draft_length
    try:
        yield
    finally:
        config.num_assistant_tokens = saved


_Measured = tuple[list[int], float, float, int, int, int]
"""New tokens, seconds, seconds to the first token, target passes, drafted, accepted."""


class _Runner:
    """Decodes one prompt with one method and measures it."""

    def __init__(self, runtime: Runtime, max_new_tokens: int, draft_length: int):
        self.rt = runtime
        self.device = runtime.device
        self.params = SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=draft_length)
        self.draft_length = draft_length
        self.memory_kind = ""
        self.cached_prompt_tokens = 0
        eos = sorted(runtime.eos_token_ids)
        pad = runtime.tokenizer.pad_token_id
        self.hf_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos[0] if pad is None else pad,
        )

    def __call__(self, method: str, ids: list[int], run: int, index: int) -> Sample:
        measure = self._ours if method in ("mtp", "target_only") else self._hf
        self.cached_prompt_tokens = 0
        with PeakMemory(self.device) as memory:
            tokens, elapsed, ttft, target_passes, drafted, accepted = measure(ids, method)
        self.memory_kind = memory.kind
        return Sample(
            method=method,
            run=run,
            prompt_index=index,
            new_tokens=len(tokens),
            elapsed_s=elapsed,
            time_to_first_token_s=ttft,
            target_forwards=target_passes,
            drafted=drafted,
            accepted=accepted,
            peak_memory_bytes=memory.peak_bytes,
            token_ids=tuple(tokens),
            cached_prompt_tokens=self.cached_prompt_tokens,
        )

    def _ours(self, ids: list[int], method: str) -> _Measured:
        self.rt.drop_cached_prefixes()  # every run processes the whole prompt, as generate does
        synchronize(self.device)
        start = time.perf_counter()
        result = self.rt.generate(ids, self.params, use_assistant=method == "mtp")
        elapsed = elapsed_since(start, self.device)
        stats = result.stats
        self.cached_prompt_tokens = stats.cached_prompt_tokens
        ttft = stats.time_to_first_token_s if stats.time_to_first_token_s is not None else elapsed
        return result.token_ids, elapsed, ttft, stats.rounds, stats.drafted_tokens, stats.accepted_tokens

    @torch.inference_mode()
    def _hf(self, ids: list[int], method: str) -> _Measured:
        input_ids = torch.tensor([ids], device=self.device)
        clock = _FirstTokenClock()
        kwargs: dict[str, Any] = {
            "attention_mask": torch.ones_like(input_ids),
            "generation_config": self.hf_config,
            "streamer": clock,
        }
        assisted = method == "hf_assisted"
        if assisted:
            _require_reference_mtp_generator()
            kwargs["assistant_model"] = self.rt.assistant
        with (
            _counting_calls(self.rt.target) as target_calls,
            _counting_calls(self.rt.assistant) as draft_calls,
            _assistant_draft_length(self.rt.assistant, self.draft_length),
        ):
            synchronize(self.device)
            start = time.perf_counter()
            out = self.rt.target.generate(input_ids, **kwargs)
            elapsed = elapsed_since(start, self.device)
        tokens = out[0, len(ids) :].tolist()
        ttft = (clock.first_token_at - start) if clock.first_token_at is not None else elapsed
        drafted = draft_calls[0] if assisted else 0
        # Each pass yields one token of the target's; the others were accepted drafts.
        accepted = max(0, len(tokens) - target_calls[0]) if assisted else 0
        return tokens, elapsed, ttft, target_calls[0], drafted, accepted


def _summarise(
    samples: list[Sample], runs: int, reference: dict[int, tuple[int, ...]]
) -> list[MethodSummary]:
    def run_rates(method: str) -> list[float]:
        rates = []
        for run in range(runs):
            mine = [s for s in samples if s.method == method and s.run == run]
            rates.append(sum(s.new_tokens for s in mine) / sum(s.elapsed_s for s in mine))
        return rates

    per_run = {method: run_rates(method) for method in METHODS}
    rates = {method: statistics.median(values) for method, values in per_run.items()}
    summaries = []
    for method, label in METHODS.items():
        mine = [s for s in samples if s.method == method]
        drafted = sum(s.drafted for s in mine)
        speedups = Spread.of([a / b for a, b in zip(per_run[method], per_run["target_only"], strict=True)])
        per_pass = sum(s.new_tokens for s in mine) / sum(s.target_forwards for s in mine)
        summaries.append(
            MethodSummary(
                method=method,
                label=label,
                tokens_per_s=rates[method],
                speedup=speedups.median,
                speedup_vs_hf_target=rates[method] / rates["hf_target"],
                acceptance_rate=sum(s.accepted for s in mine) / drafted if drafted else None,
                tokens_per_target_forward=per_pass,
                time_to_first_token_s=statistics.median(s.time_to_first_token_s for s in mine),
                peak_memory_bytes=max(s.peak_memory_bytes for s in mine),
                matches_target_only=all(s.token_ids == reference[s.prompt_index] for s in mine),
                speedup_range=(speedups.low, speedups.high),
                doubts=tuple(speedup_doubts(speedups.median, per_pass)) if method != "target_only" else (),
            )
        )
    return summaries


def reference_mtp_available() -> bool:
    """Whether transformers' own MTP path (``generate(assistant_model=...)``) works: it fails inside
    releases with the older candidate-generator interface (5.19 and before), inside transformers."""
    import inspect

    from transformers.generation.candidate_generator import SinglePositionMultiTokenCandidateGenerator

    return (
        "input_ids" not in inspect.signature(SinglePositionMultiTokenCandidateGenerator.__init__).parameters
    )


def _require_reference_mtp_generator() -> None:
    import transformers

    if not reference_mtp_available():
        raise RuntimeError(
            f"The {METHODS['hf_assisted']!r} method needs a transformers release newer than 5.19 (installed: "
            f"{transformers.__version__}, whose MTP candidate generator fails inside generate). Upgrade "
            "transformers in an environment without vLLM to compare against it."
        )


def compare_methods(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    runs: int = 3,
    draft_length: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ComparisonReport:
    """Measure the four methods on ``prompts`` (greedy) and summarise them.

    One untimed warm-up pass of every method comes first. ``progress`` is told what is running.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}.")
    if not prompts:
        raise ValueError("Pass at least one prompt.")
    draft_length = draft_length or runtime.default_draft_length
    runner = _Runner(runtime, max_new_tokens, draft_length)
    encoded = [runtime.encode(p) for p in prompts]
    for method in METHODS:
        if progress:
            progress(f"warm-up: {METHODS[method]}")
        runner(method, encoded[0], -1, 0)
    samples: list[Sample] = []
    methods = list(METHODS)
    for run in range(runs):
        for index, ids in enumerate(encoded):
            if progress:
                progress(f"run {run + 1}/{runs}, prompt {index + 1}/{len(encoded)}")
            shift = (run + index) % len(methods)
            samples += [runner(method, ids, run, index) for method in methods[shift:] + methods[:shift]]
    reference = {s.prompt_index: s.token_ids for s in samples if s.method == "target_only" and s.run == 0}
    return ComparisonReport(
        model=model_label(runtime.model_name),
        assistant=assistant_label(runtime.assistant_name),
        device=str(runtime.device),
        dtype=str(runtime.target.dtype).removeprefix("torch."),
        draft_length=draft_length,
        max_new_tokens=max_new_tokens,
        runs=runs,
        prompts=len(encoded),
        memory_kind=runner.memory_kind,
        summaries=_summarise(samples, runs, reference),
        samples=samples,
    )
