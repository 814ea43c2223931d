"""The packaged mini pair: it loads by name offline, speaks its domain, and speculation stays exact.

The prompts come from The Tempest, the play both models were never trained on.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing.tokenizer import GEMMA4_SPECIAL_TOKENS

MINI = Path(str(resources.files("gemma_mtp").joinpath("models", "mini")))
PROMPTS: tuple[str | list[dict[str, str]], ...] = (
    "PROSPERO:\nNow I arise:\n",
    "MIRANDA:\nIf by your art, my dearest father, you have\n",
    "GONZALO:\nHere is everything advantageous to life.\n",
    [{"role": "user", "content": "Tell me about the sea."}],
    [{"role": "user", "content": "Speak as Ariel in The Tempest."}],
)
GREEDY = SamplingParams(max_new_tokens=48, temperature=0.0)


@pytest.fixture(scope="module")
def mini() -> Runtime:
    return Runtime.load("gemma-mtp-mini", device="cpu")


def test_packaged_folders_are_complete_and_small() -> None:
    total = 0
    for part in ("target", "assistant"):
        folder = MINI / part
        for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
            assert (folder / name).is_file(), f"{folder / name} is missing"
        total += (folder / "model.safetensors").stat().st_size
    assert total <= 40 * 1024 * 1024


def test_loads_real_gemma4_classes_by_name(mini: Runtime) -> None:
    assert type(mini.target).__name__ == "Gemma4ForCausalLM"
    assert type(mini.assistant).__name__ == "Gemma4AssistantForCausalLM"
    layer_types = set(mini.target.config.layer_types)
    assert layer_types == {"sliding_attention", "full_attention"}
    assert mini.target.config.final_logit_softcapping is not None
    assert mini.assistant.config.backbone_hidden_size == mini.target.config.hidden_size


def test_tokenizer_carries_gemma4_special_tokens(mini: Runtime) -> None:
    for token_id, token in enumerate(GEMMA4_SPECIAL_TOKENS):
        assert mini.tokenizer.convert_tokens_to_ids(token) == token_id
    eos = mini.target.generation_config.eos_token_id
    assert set(mini.tokenizer.convert_tokens_to_ids(["<eos>", "<turn|>", "<|tool_response>"])) <= set(eos)


def test_assistant_config_records_a_draft_length() -> None:
    config = json.loads((MINI / "assistant" / "generation_config.json").read_text())
    assert config["num_assistant_tokens"] >= 1


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: p if isinstance(p, str) else p[0]["content"])
def test_greedy_with_assistant_equals_target_alone(mini: Runtime, prompt) -> None:
    alone = mini.generate(prompt, GREEDY, use_assistant=False)
    assisted = mini.generate(prompt, GREEDY, use_assistant=True)
    assert assisted.token_ids == alone.token_ids
    assert assisted.text == alone.text


def test_acceptance_on_held_out_prompts(mini: Runtime) -> None:
    drafted = accepted = generated = forwards = 0
    for prompt in PROMPTS:
        stats = mini.generate(prompt, GREEDY).stats
        drafted += stats.drafted_tokens
        accepted += stats.accepted_tokens
        generated += stats.generated_tokens
        forwards += stats.target_forward_passes
    assert accepted / drafted >= 0.5
    assert generated / forwards >= 2.0


def test_speaks_its_domain(mini: Runtime) -> None:
    text = mini.generate("KING HENRY V:\n", SamplingParams(max_new_tokens=40)).text
    words = text.lower().split()
    assert len(words) >= 10
    common = set(
        ["the", "and", "my", "i", "of", "to", "a", "you", "that", "is", "in", "me", "your", "not", "thou"]
    )
    assert sum(word.strip(",.;:!?'") in common for word in words) >= 3
