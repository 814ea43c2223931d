"""The lean target step computes what the model's own forward computes.

:class:`~gemma_mtp.modeling.TargetStep` asks the decoder for its last hidden state only and applies the head
(with Gemma's final logit soft-capping) to the positions the loop reads. Greedy decoding cannot see a change
to those logits that keeps their argmax (soft-capping is monotonic), but sampling draws from them, so they are
compared with the Hugging Face forward of the whole sequence, for a prefill and for a verify chunk on top of
the cache, on every family.
"""

from __future__ import annotations

import pytest
import torch

from gemma_mtp.modeling import TargetStep
from gemma_mtp.testing import VARIANTS, tiny_runtime

PROMPT = "The quick brown fox jumps over the lazy dog, then asks about Paris."


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_hidden_state_equal_the_models_own_forward(variant: str) -> None:
    rt = tiny_runtime("random", variant)
    target = rt.target
    assert target.config.get_text_config().final_logit_softcapping is not None  # the kit's, as Gemma 4's
    ids = torch.tensor([rt.encode(PROMPT)])
    prompt, chunk = ids[:, :-4], ids[:, -4:]
    with torch.no_grad():
        full = target(ids, output_hidden_states=True)
    step = TargetStep(target)
    cache = step.new_cache()
    prefill = step(prompt, cache, start=0, keep_last=2)
    verify = step(chunk, cache, start=prompt.shape[1], keep_last=3)
    n = ids.shape[1]
    torch.testing.assert_close(prefill.logits, full.logits[0, n - 6 : n - 4].float())
    torch.testing.assert_close(verify.logits, full.logits[0, n - 3 :].float())
    torch.testing.assert_close(verify.hidden, full.hidden_states[-1][:, n - 3 :])
