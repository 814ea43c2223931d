"""The kit pairs on a CUDA device: same exactness as on the CPU, and half precision runs."""

from __future__ import annotations

import pytest
import torch

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import VARIANTS, tiny_pair

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPT = "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today."


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_exact_on_cuda(variant: str) -> None:
    pair = tiny_pair(variant, agreeing=True)
    rt = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cuda", dtype="float32")
    ids = rt.encode(PROMPT)
    expected = rt.target.generate(
        torch.tensor([ids], device="cuda"), max_new_tokens=64, do_sample=False, eos_token_id=None
    )[0, len(ids) :].tolist()
    result = rt.generate(ids, SamplingParams(max_new_tokens=64, ignore_eos=True))
    assert result.token_ids == expected
    assert result.stats.acceptance_rate > 0.5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs(dtype: str) -> None:
    pair = tiny_pair("e2b", agreeing=True)
    rt = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cuda", dtype=dtype)
    result = rt.generate(PROMPT, SamplingParams(max_new_tokens=32, temperature=0.8, seed=1, ignore_eos=True))
    assert len(result.token_ids) == 32
