"""Speculation statistics: per round and per request, framework-free.

The decoding loop records every round into a :class:`SpeculationStats`; listeners receive each
:class:`RoundStats` as it happens. The adapters turn both into LangChain callbacks and LlamaIndex
events, so nothing here knows about either framework.

Counting convention: every emitted token is either an accepted draft token or a token chosen by the
target (the correction after a rejection, or the bonus token after a fully accepted draft), so
``generated_tokens == accepted_tokens + target_tokens`` always holds. When a round is cut short by
EOS, a stop sequence or the token budget, only the tokens actually emitted are counted as accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RoundListener", "RoundStats", "SpeculationStats", "SpeculationTotals"]


@dataclass(frozen=True)
class RoundStats:
    """What one draft-and-verify round did."""

    request_id: str
    round_index: int
    drafted: int
    accepted: int
    emitted: int
    draft_length: int
    duration_s: float
    draft_method: str = "none"
    """``"argmax"`` or ``"sampled"`` drafts, ``"none"`` for a round without drafts (plain decoding)."""
    draft_temperature: float | None = None
    """The temperature sampled drafts were drawn at (see :mod:`gemma_mtp.calibration`); ``None`` otherwise."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["acceptance_rate"] = self.acceptance_rate
        return out


RoundListener = Callable[[RoundStats], None]


@dataclass
class SpeculationStats:
    """Running totals for one request; copies handed out are snapshots."""

    request_id: str = ""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    """Prompt tokens not processed again: the engine kept their keys/values from an earlier request."""
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_tokens: int = 0
    rounds: int = 0
    target_forward_passes: int = 0
    assistant_forward_passes: int = 0
    elapsed_s: float = 0.0
    time_to_first_token_s: float | None = None
    accepted_at_position: list[int] = field(default_factory=list)
    drafted_at_position: list[int] = field(default_factory=list)
    used_assistant: bool = True
    engine_report: dict[str, Any] | None = None
    """The engine's own figures for the request where it reports them (vLLM's per-request
    speculative-decoding metrics, a server's ``metrics.speculative_decoding``); ``None`` otherwise."""
    draft_policy: str = ""
    rounds_by_draft_method: dict[str, int] = field(default_factory=dict)
    length_limit: str | None = None
    """What ended an answer cut off by length: ``"max_new_tokens"``, or ``"context_window"`` when the prompt left
    fewer tokens than ``max_new_tokens`` and the answer filled the window; ``None`` for other endings."""
    _start: float = field(default_factory=time.perf_counter, repr=False, compare=False)

    @property
    def generated_tokens(self) -> int:
        return self.accepted_tokens + self.target_tokens

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted over the whole request (0.0 when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_accepted_per_round(self) -> float:
        return self.accepted_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """Generated tokens per target forward pass (the prefill, which yields the first token, included).

        Exactly 1.0 for plain decoding; the speed-up speculative decoding can give is bounded by it.
        """
        return self.generated_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        """Probability that draft position i was accepted, given that it was drafted."""
        return [
            a / d if d else 0.0
            for a, d in zip(self.accepted_at_position, self.drafted_at_position, strict=False)
        ]

    # -- recording (used by the decoding loop) ---------------------------------------------------

    def start(
        self, request_id: str, prompt_tokens: int, used_assistant: bool, draft_policy: str = ""
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.used_assistant = used_assistant
        self.draft_policy = draft_policy
        self._start = time.perf_counter()

    def record_round(self, drafted: int, accepted: int, emitted: int, draft_method: str = "none") -> None:
        """Add one verify round: ``accepted`` drafts passed verification, ``emitted`` tokens were kept."""
        kept_accepted = min(accepted, emitted)
        self.rounds += 1
        self.rounds_by_draft_method[draft_method] = self.rounds_by_draft_method.get(draft_method, 0) + 1
        self.drafted_tokens += drafted
        self.accepted_tokens += kept_accepted
        self.target_tokens += emitted - kept_accepted
        while len(self.drafted_at_position) < drafted:
            self.drafted_at_position.append(0)
            self.accepted_at_position.append(0)
        for i in range(drafted):
            self.drafted_at_position[i] += 1
        for i in range(kept_accepted):
            self.accepted_at_position[i] += 1
        if self.time_to_first_token_s is None and emitted > 0:
            self.time_to_first_token_s = time.perf_counter() - self._start
        self.elapsed_s = time.perf_counter() - self._start

    def adopt_engine_report(self, report: Mapping[str, Any]) -> None:
        """Take drafting figures from the engine's per-request report (vLLM's spec-decode metrics).

        Used where rounds cannot be observed one engine step at a time (server mode). The emitted tokens
        stay as counted; accepted drafts are capped by them, as for observed rounds.
        """
        generated = self.generated_tokens
        self.rounds = int(report["num_spec_steps"]) + 1  # the prefill step drafts nothing
        self.target_forward_passes = self.rounds
        self.drafted_tokens = int(report["num_draft_tokens"])
        self.accepted_tokens = min(int(report["num_accepted_draft_tokens"]), generated)
        self.target_tokens = generated - self.accepted_tokens
        drafted_steps = list(report.get("per_step_drafted") or [])
        accepted_steps = list(report.get("per_step_accepted") or [])
        drafting = sum(d > 0 for d in drafted_steps) if drafted_steps else self.rounds - 1
        self.rounds_by_draft_method = {"none": self.rounds - drafting}
        if drafting:
            self.rounds_by_draft_method["argmax"] = drafting  # the server's MTP proposer drafts by argmax
        if drafted_steps:
            depth = max(drafted_steps)
            self.drafted_at_position = [sum(d > i for d in drafted_steps) for i in range(depth)]
            self.accepted_at_position = [sum(a > i for a in accepted_steps) for i in range(depth)]

    def finish(self) -> None:
        self.elapsed_s = time.perf_counter() - self._start

    def snapshot(self) -> SpeculationStats:
        copy = SpeculationStats(**{k: v for k, v in self.__dict__.items() if not k.startswith("_")})
        copy.accepted_at_position = list(self.accepted_at_position)
        copy.drafted_at_position = list(self.drafted_at_position)
        copy.engine_report = dict(self.engine_report) if self.engine_report is not None else None
        copy.rounds_by_draft_method = dict(self.rounds_by_draft_method)
        copy._start = self._start
        return copy

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, ready for logs, callbacks and JSON."""
        return {
            "request_id": self.request_id,
            "used_assistant": self.used_assistant,
            "draft_policy": self.draft_policy,
            "rounds_by_draft_method": dict(self.rounds_by_draft_method),
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "target_tokens": self.target_tokens,
            "acceptance_rate": self.acceptance_rate,
            "rounds": self.rounds,
            "mean_accepted_per_round": self.mean_accepted_per_round,
            "target_forward_passes": self.target_forward_passes,
            "assistant_forward_passes": self.assistant_forward_passes,
            "tokens_per_target_forward": self.tokens_per_target_forward,
            "tokens_per_second": self.tokens_per_second,
            "time_to_first_token_s": self.time_to_first_token_s,
            "elapsed_s": self.elapsed_s,
            "acceptance_by_position": self.acceptance_by_position,
            "engine_report": self.engine_report,
            "length_limit": self.length_limit,
        }


@dataclass(frozen=True)
class SpeculationTotals:
    """Speculation figures added up over several requests (or rounds), for callbacks and reports.

    Built from the plain dictionaries the adapters carry through their frameworks
    (:meth:`SpeculationStats.as_dict`, :meth:`RoundStats.as_dict`) and added with ``+``.
    """

    requests: int = 0
    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def of_request(cls, stats: dict[str, Any]) -> SpeculationTotals:
        """One whole request, from :meth:`SpeculationStats.as_dict`."""
        return cls(
            requests=1,
            rounds=int(stats["rounds"]),
            drafted_tokens=int(stats["drafted_tokens"]),
            accepted_tokens=int(stats["accepted_tokens"]),
            generated_tokens=int(stats["generated_tokens"]),
            prompt_tokens=int(stats["prompt_tokens"]),
            cached_prompt_tokens=int(stats.get("cached_prompt_tokens", 0)),
            elapsed_s=float(stats["elapsed_s"]),
        )

    @classmethod
    def of_round(cls, round_stats: dict[str, Any]) -> SpeculationTotals:
        """One round, from :meth:`RoundStats.as_dict` (counts no request)."""
        return cls(
            rounds=1,
            drafted_tokens=int(round_stats["drafted"]),
            accepted_tokens=int(round_stats["accepted"]),
            generated_tokens=int(round_stats["emitted"]),
            elapsed_s=float(round_stats["duration_s"]),
        )

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0.0 when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_accepted_per_round(self) -> float:
        return self.accepted_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        """Tokens emitted per target forward pass: the speed-up over plain decoding, before overheads."""
        return self.generated_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over the summed request times (per-request throughput, not wall-clock)."""
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __add__(self, other: SpeculationTotals) -> SpeculationTotals:
        return SpeculationTotals(
            requests=self.requests + other.requests,
            rounds=self.rounds + other.rounds,
            drafted_tokens=self.drafted_tokens + other.drafted_tokens,
            accepted_tokens=self.accepted_tokens + other.accepted_tokens,
            generated_tokens=self.generated_tokens + other.generated_tokens,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            elapsed_s=self.elapsed_s + other.elapsed_s,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, derived rates included."""
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_per_round": self.mean_accepted_per_round,
            "tokens_per_round": self.tokens_per_round,
            "tokens_per_second": self.tokens_per_second,
        }
