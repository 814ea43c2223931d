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


def recording_argmax(seen: list[torch.Tensor]):
    """A ``sample_with`` that records each step's scores and puts all probability on their argmax, so that
    the drafter drafts what argmax drafting does while the scores behind each draft can be compared."""

    def sample_with(scores: torch.Tensor) -> torch.Tensor:
        seen.append(scores[0].detach().clone())
        return torch.nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(scores.dtype)

    return sample_with


def assert_same_scores(ours: list[torch.Tensor], reference: list[torch.Tensor], assistant) -> None:
    """Every draft step's scores equal the reference's: equal tokens alone would hide an input that moves
    the scores without moving their argmax (a key/value entry too many, a missing mask). The centroid-masked
    head scores only its selected candidates, so there the tokens are what is compared."""
    if getattr(assistant, "masked_embedding", None) is not None:
        return
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs.to(mine.dtype), rtol=1e-4, atol=1e-4)


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
    candidates, reference_logits = reference.get_candidates(
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
    drafter = Drafter(assistant, step.embed, "pending")
    assert drafter.draft(first, out.hidden, out.shared_kv, ids.shape[1], k).tokens.tolist() == expected
    seen: list[torch.Tensor] = []
    recorded = drafter.draft(
        first, out.hidden, out.shared_kv, ids.shape[1], k, sample_with=recording_argmax(seen)
    )
    assert recorded.tokens.tolist() == expected
    assert_same_scores(seen, list(reference_logits[0]), assistant)


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
        expected, expected_scores = [], []
        for _ in range(k):
            out = assistant(
                inputs_embeds=torch.cat([target.get_input_embeddings()(token), hidden], dim=-1),
                position_ids=torch.tensor([[n - 1]]),
                shared_kv_states=kv,
            )
            token = out.logits[:, -1:].argmax(dim=-1)
            hidden = out.last_hidden_state
            expected.append(int(token))
            expected_scores.append(out.logits[0, -1])

    step = TargetStep(target)
    out = step(ids, step.new_cache(), start=0, keep_last=1)
    drafter = Drafter(assistant, step.embed, "last_accepted")
    assert drafter.draft(first, out.hidden, out.shared_kv, n, k).tokens.tolist() == expected
    seen: list[torch.Tensor] = []
    recorded = drafter.draft(first, out.hidden, out.shared_kv, n, k, sample_with=recording_argmax(seen))
    assert recorded.tokens.tolist() == expected
    assert_same_scores(seen, expected_scores, assistant)


def test_the_centroid_head_under_a_constraint() -> None:
    """The centroid-masked head scores only its selected candidates. A constraint forbids some of them (those
    go to -inf, the rest keep their scores), and when it forbids all of them, the full head scores the step
    so that the draft is still an allowed token."""
    rt = tiny_runtime("agreeing", "e2b")
    drafter = Drafter(rt.assistant, rt.target.get_input_embeddings())
    hidden = torch.randn(1, rt.assistant.config.get_text_config().hidden_size)
    with torch.no_grad():
        scores, candidates = drafter._head(hidden)
        assert candidates is not None
        allowed = torch.ones(drafter.vocab_size, dtype=torch.bool)
        same, kept = drafter._constrain(scores, candidates, hidden, allowed)
        assert kept is candidates and torch.equal(same, scores)

        allowed[candidates[0, ::2]] = False
        masked, kept = drafter._constrain(scores, candidates, hidden, allowed)
        assert kept is candidates
        assert torch.isneginf(masked[0, ::2]).all() and torch.equal(masked[0, 1::2], scores[0, 1::2])

        outside = next(t for t in range(drafter.vocab_size) if t not in set(candidates[0].tolist()))
        allowed = torch.zeros(drafter.vocab_size, dtype=torch.bool)
        allowed[outside] = True
        full, kept = drafter._constrain(scores, candidates, hidden, allowed)
        assert kept is None and full.shape == (1, drafter.vocab_size)
        assert torch.isfinite(full[0]).nonzero().flatten().tolist() == [outside]


def test_an_unknown_draft_position_names_the_argument() -> None:
    rt = tiny_runtime("agreeing", "dense")
    with pytest.raises(ValueError, match=r"^draft_position must be one of 'last_accepted', 'pending'"):
        Drafter(rt.assistant, rt.target.get_input_embeddings(), "n-1")  # type: ignore[arg-type]


def test_a_draft_of_no_tokens_is_empty() -> None:
    rt = tiny_runtime("agreeing", "dense")
    step = TargetStep(rt.target)
    ids = torch.tensor([rt.encode("Hello")])
    out = step(ids, step.new_cache(), start=0, keep_last=1)
    draft = Drafter(rt.assistant, step.embed).draft(ids[:, -1:], out.hidden, out.shared_kv, ids.shape[1], 0)
    assert draft.tokens.tolist() == [] and draft.tokens.dtype == torch.long and draft.probs is None
