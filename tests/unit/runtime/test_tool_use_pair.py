"""The committed tool-use pair: complete, small, safetensors only, the kit's tokenizer, exact speculation.

What it decides (one call with the request's values, strings that end) is tested through LangChain's standard
integration suite (``tests/integration/langchain/test_lc_standard_integration.py``), which runs on it.
"""

from __future__ import annotations

import json

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import build_tokenizer, tool_use_dir

PAIR = tool_use_dir()
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_rate",
        "description": "Look up the rate of a code.",
        "parameters": {
            "properties": {"code": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["code", "days"],
            "type": "object",
        },
    },
}


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(str(PAIR / "target"), str(PAIR / "assistant"), device="cpu", dtype="float32")


def test_folders_hold_safetensors_configs_and_tokenizer_only_and_are_small() -> None:
    total = 0
    for part in ("target", "assistant"):
        folder = PAIR / part
        names = {path.name for path in folder.iterdir()}
        assert names == {
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        }
        total += (folder / "model.safetensors").stat().st_size
    assert total <= 4 * 1024 * 1024


def test_tokenizer_is_the_kits_and_the_assistant_records_its_draft_position(runtime: Runtime) -> None:
    assert runtime.tokenizer.get_vocab() == build_tokenizer().get_vocab()
    config = json.loads((PAIR / "assistant" / "config.json").read_text())
    assert config["gemma_mtp"] == {"draft_position": "last_accepted"}
    assert type(runtime.target).__name__ == "Gemma4ForCausalLM"
    assert type(runtime.assistant).__name__ == "Gemma4AssistantForCausalLM"


def test_calls_the_named_tool_once_with_closed_arguments_greedy_equal_without_the_assistant(
    runtime: Runtime,
) -> None:
    messages = [{"role": "user", "content": "Call lookup_rate with code='Vinka' and days=12."}]
    params = SamplingParams(max_new_tokens=80, temperature=0.0)
    # A pinned draft length: the default policy may decode a short request plainly on a busy machine.
    with_assistant = runtime.chat(messages, params.with_overrides(num_assistant_tokens=3), tools=[TOOL])
    alone = runtime.chat(messages, params, tools=[TOOL], use_assistant=False)
    assert with_assistant.token_ids == alone.token_ids
    (call,) = with_assistant.tool_calls
    assert call.name == "lookup_rate"
    assert set(call.arguments) == {"code", "days"}
    assert isinstance(call.arguments["code"], str) and isinstance(call.arguments["days"], int)
    assert with_assistant.finish_reason == "tool_calls"
    assert with_assistant.stats.accepted_tokens > 0
