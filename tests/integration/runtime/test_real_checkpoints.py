"""The runtime on a real Gemma 4 checkpoint and its published MTP assistant.

Set ``GEMMA_MTP_TEST_MODEL`` (e.g. ``google/gemma-4-E2B-it``; the assistant is ``<model>-assistant``), and
optionally ``GEMMA_MTP_TEST_DEVICE`` (default ``cuda``) and ``GEMMA_MTP_TEST_DTYPE`` (default ``float32``, where greedy
decoding is exact; in half precision a batched verification pass may flip a near-tie, which ``gemma-mtp verify``
tells apart from a real divergence). Without them these tests skip.
"""

from __future__ import annotations

import os

import pytest
import torch

from gemma_mtp import Runtime, SamplingParams

MODEL = os.environ.get("GEMMA_MTP_TEST_MODEL")
DEVICE = os.environ.get("GEMMA_MTP_TEST_DEVICE", "cuda")
DTYPE = os.environ.get("GEMMA_MTP_TEST_DTYPE", "float32")

pytestmark = [
    pytest.mark.hub,
    pytest.mark.skipif(not MODEL, reason="set GEMMA_MTP_TEST_MODEL to a Gemma 4 checkpoint to run"),
]

PROMPTS = [
    [{"role": "user", "content": "Explain in three sentences why the sky is blue."}],
    [{"role": "user", "content": "Write a Python function that reverses a linked list."}],
    [{"role": "user", "content": "List five capitals of European countries."}],
]


@pytest.fixture(scope="module")
def rt() -> Runtime:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("GEMMA_MTP_TEST_DEVICE is cuda but no CUDA device is available")
    return Runtime.load(MODEL, device=DEVICE, dtype=DTYPE)


@pytest.mark.parametrize("messages", PROMPTS)
def test_greedy_output_equals_target_alone(rt: Runtime, messages) -> None:
    ids = rt.encode(messages)
    params = SamplingParams(max_new_tokens=128)
    spec = rt.generate(ids, params)
    expected = rt.target.generate(
        torch.tensor([ids], device=rt.device),
        max_new_tokens=128,
        do_sample=False,
        eos_token_id=sorted(rt.eos_token_ids),
    )[0, len(ids) :].tolist()
    assert spec.token_ids == expected
    assert spec.stats.acceptance_rate > 0.3
    assert spec.stats.tokens_per_target_forward > 1.3


def test_sampling_and_streaming(rt: Runtime) -> None:
    params = SamplingParams(max_new_tokens=64, temperature=1.0, top_p=0.95, top_k=64, seed=0)
    deltas = list(rt.stream(PROMPTS[0], params))
    assert "".join(d.text for d in deltas).strip()
    assert deltas[-1].stats.drafted_tokens > 0


def test_chat_answers(rt: Runtime) -> None:
    result = rt.chat(PROMPTS[2], SamplingParams(max_new_tokens=96))
    assert result.content and not result.tool_calls
