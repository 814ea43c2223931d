"""Our lean drafter proposes exactly what transformers' code proposes from the same inputs.

At position n (``draft_position="pending"``) the reference is transformers' MTP candidate generator: after
prefill both see the same state (no rejected draft yet), so the drafts must be identical, for the dense
head and for the centroid-masked head (which we evaluate without the per-step ``.item()``). At n - 1 (the
default, as Google's runtime and vLLM draft) it is the assistant's own forward, fed the last prompt
position, the full-attention keys/values of the whole prompt and the last W sliding ones.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.candidate_generator import SinglePositionMultiTokenCandidateGenerator

from gemma_mtp.benchmarking.compare import reference_mtp_available
from gemma_mtp.modeling import Drafter, TargetStep
from gemma_mtp.testing import KINDS, VARIANTS, tiny_runtime

pytestmark = pytest.mark.skipif(
    not reference_mtp_available(),
    reason="transformers' reference MTP generator in 5.19 and before has another interface (and fails in generate)",
)

PROMPTS = ["Hello", "The quick brown fox jumps over the lazy dog, then asks about Paris."]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "long"])
def test_first_round_drafts_match_reference(
    variant: str, kind: str, prompt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = tiny_runtime(kind, variant)
    target, assistant = rt.target, rt.assistant
    ids = torch.tensor([rt.encode(prompt)])
    k = 5
    with torch.no_grad():
        outputs = target(ids, output_hidden_states=True, return_shared_kv_states=True, use_cache=True)
    first = outputs.logits[0, -1].argmax().view(1, 1)
    with_first = torch.cat([ids, first], dim=1)

    monkeypatch.setattr(assistant.generation_config, "num_assistant_tokens", k)
    reference = SinglePositionMultiTokenCandidateGenerator(
        assistant, target.get_input_embeddings(), GenerationConfig(max_length=10_000)
    )
    candidates, _ = reference.get_candidates(
        with_first,
        model_kwargs={"attention_mask": torch.ones_like(with_first)},
        model_outputs=outputs,
        is_first_iteration=False,
        n_last_matches=0,
    )
    expected = candidates[0, with_first.shape[1] :].tolist()

    step = TargetStep(target)
    cache = step.new_cache()
    out = step(ids, cache, start=0, keep_last=1)
    draft = Drafter(assistant, step.embed, "pending").draft(first, out.hidden, out.shared_kv, ids.shape[1], k)
    assert draft.tokens.tolist() == expected


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "long"])
def test_first_round_drafts_at_n_minus_1_match_the_assistant_forward(
    variant: str, kind: str, prompt: str
) -> None:
    rt = tiny_runtime(kind, variant)
    target, assistant = rt.target, rt.assistant
    ids = torch.tensor([rt.encode(prompt)])
    n, k = ids.shape[1], 5
    window = assistant.config.get_text_config().sliding_window
    with torch.no_grad():
        outputs = target(ids, output_hidden_states=True, return_shared_kv_states=True, use_cache=True)
        token = outputs.logits[0, -1].argmax().view(1, 1)
        first = token
        hidden = outputs.hidden_states[-1][:, -1:]
        kv = {
            name: (keys[:, :, -window:], values[:, :, -window:])
            if name == "sliding_attention"
            else (keys, values)
            for name, (keys, values) in outputs.shared_kv_states.items()
        }
        expected = []
        for _ in range(k):
            out = assistant(
                inputs_embeds=torch.cat([target.get_input_embeddings()(token), hidden], dim=-1),
                position_ids=torch.tensor([[n - 1]]),
                shared_kv_states=kv,
            )
            token = out.logits[:, -1:].argmax(dim=-1)
            hidden = out.last_hidden_state
            expected.append(int(token))

    step = TargetStep(target)
    out = step(ids, step.new_cache(), start=0, keep_last=1)
    drafter = Drafter(assistant, step.embed, "last_accepted")
    assert drafter.draft(first, out.hidden, out.shared_kv, n, k).tokens.tolist() == expected
