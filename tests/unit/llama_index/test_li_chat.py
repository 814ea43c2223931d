"""GemmaMTP's synchronous chat, completion and streaming on the kit pair; construction and bad input."""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any

import pytest
import torch
from llama_index.core.llms import ChatMessage

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import tiny_pair
from llama_index_gemma_mtp import GemmaMTP

QUESTION = [ChatMessage(role="user", content="What is the weather in Paris today?")]


@pytest.fixture
def sent(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the adapter hands to the runtime's chat layer (the real methods still run; a call the runtime
    makes to itself, as ``chat`` does to ``stream_chat``, is not recorded twice)."""
    calls: list[dict[str, Any]] = []
    inside = threading.local()
    for name in ("chat", "stream_chat"):
        real = getattr(runtime, name)

        def spy(messages: Any, params: Any = None, _real: Any = real, **options: Any) -> Any:
            if getattr(inside, "active", False):
                return _real(messages, params, **options)
            calls.append({"messages": messages, "params": params, **options})
            inside.active = True
            try:
                return _real(messages, params, **options)
            finally:
                inside.active = False

        monkeypatch.setattr(runtime, name, spy)
    return calls


def test_chat_is_the_runtime_chat_answer(llm: GemmaMTP, runtime: Runtime) -> None:
    expected = runtime.chat(
        [{"role": "user", "content": QUESTION[0].content}], SamplingParams(max_new_tokens=24)
    )
    response = llm.chat(QUESTION)
    assert response.message.role == "assistant"
    assert response.message.content == expected.content
    assert response.raw["raw_text"] == expected.raw_text
    assert response.raw["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert response.raw["usage"]["completion_tokens"] == len(expected.token_ids)


def test_stream_deltas_concatenate_to_the_chat_text(llm: GemmaMTP) -> None:
    whole = llm.chat(QUESTION)
    chunks = list(llm.stream_chat(QUESTION))
    assert len(chunks) > 1
    assert "".join(c.delta or "" for c in chunks) == whole.message.content
    assert chunks[-1].message.content == whole.message.content
    assert [c.additional_kwargs["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].additional_kwargs["finish_reason"] == whole.additional_kwargs["finish_reason"]
    assert chunks[-1].raw["usage"] == whole.raw["usage"]
    generated = [c.raw["usage"]["completion_tokens"] for c in chunks]
    assert generated == sorted(generated)


def test_complete_and_stream_complete_match_chat(llm: GemmaMTP) -> None:
    whole = llm.chat(QUESTION)
    completion = llm.complete(QUESTION[0].content)
    assert completion.text == whole.message.content
    assert (
        completion.additional_kwargs["speculation"]["generated_tokens"]
        == whole.raw["usage"]["completion_tokens"]
    )
    streamed = list(llm.stream_complete(QUESTION[0].content))
    assert "".join(c.delta or "" for c in streamed) == whole.message.content
    assert streamed[-1].text == whole.message.content


def test_chat_goes_through_the_chat_template_with_the_system_prompt(
    runtime: Runtime, sent: list[dict[str, Any]]
) -> None:
    llm = GemmaMTP(runtime=runtime, max_new_tokens=4, system_prompt="Answer in one word.")
    llm.chat(QUESTION)
    llm.complete("Hi")
    list(llm.stream_chat(QUESTION))
    list(llm.stream_complete("Hi"))
    for call in sent:
        assert call["messages"][0] == {"role": "system", "content": "Answer in one word."}
        assert call["messages"][1]["role"] == "user"
    assert len(sent) == 4


def test_per_call_parameters_override_the_defaults(llm: GemmaMTP, sent: list[dict[str, Any]]) -> None:
    response = llm.chat(QUESTION, max_new_tokens=5, temperature=0.7, top_k=20, seed=3, num_assistant_tokens=2)
    params = sent[-1]["params"]
    assert (params.max_new_tokens, params.temperature, params.top_k, params.seed) == (5, 0.7, 20, 3)
    assert params.num_assistant_tokens == 2
    assert response.raw["usage"]["completion_tokens"] <= 5
    llm.chat(QUESTION)
    assert sent[-1]["params"].max_new_tokens == 24
    assert sent[-1]["params"].temperature == 0.0


def test_greedy_answer_is_the_same_without_the_assistant(llm: GemmaMTP) -> None:
    # A pinned draft length: the default policy may rightly decode plainly where drafting does not pay.
    fast = llm.chat(QUESTION, max_new_tokens=40, num_assistant_tokens=3)
    plain = llm.chat(QUESTION, max_new_tokens=40, use_assistant=False)
    assert fast.message.content == plain.message.content
    assert plain.raw["speculation"]["drafted_tokens"] == 0
    assert plain.raw["speculation"]["used_assistant"] is False
    assert fast.raw["speculation"]["accepted_tokens"] > 0


def test_max_new_tokens_ends_the_answer_with_length(llm: GemmaMTP) -> None:
    response = llm.chat(QUESTION, max_new_tokens=3)
    assert response.raw["usage"]["completion_tokens"] == 3
    assert response.additional_kwargs["finish_reason"] == "length"


def test_stop_sequence_ends_the_answer_before_it(llm: GemmaMTP) -> None:
    text = llm.complete("Hello, how are you?").text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = llm.complete("Hello, how are you?", stop=[stop]).text
    assert stop not in cut
    assert text.startswith(cut)
    assert len(cut) < len(text)


def test_model_loads_lazily_from_the_shared_cache(runtime: Runtime) -> None:
    pair = tiny_pair("dense", agreeing=True)
    llm = GemmaMTP(
        model=str(pair.target_dir), assistant=str(pair.assistant_dir), device="cpu", dtype=torch.float32
    )
    assert llm._runtime is None
    assert llm.dtype == "float32"
    assert llm.runtime is runtime


def test_a_given_runtime_is_described_in_the_settings(llm: GemmaMTP, runtime: Runtime) -> None:
    settings = llm.to_dict()
    assert (settings["model"], settings["assistant"]) == (runtime.model_name, runtime.assistant_name)
    assert (settings["device"], settings["dtype"]) == ("cpu", "float32")
    assert GemmaMTP.from_dict(settings).runtime is runtime


def test_metadata_reports_the_model(llm: GemmaMTP, runtime: Runtime) -> None:
    meta = llm.metadata
    # The window less the chat template's own tokens, which LlamaIndex's prompt packing does not count.
    assert meta.context_window == runtime.context_window - runtime.chat_overhead_tokens
    assert 0 < runtime.chat_overhead_tokens < 64
    assert meta.num_output == 24
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == runtime.model_name
    assert llm.model == runtime.model_name
    assert GemmaMTP.class_name() == "GemmaMTP"


def test_copies_share_the_loaded_pair(llm: GemmaMTP, runtime: Runtime) -> None:
    for copied in (copy.deepcopy(llm), llm.model_copy(deep=True), llm.model_copy()):
        assert copied.runtime is runtime
        assert (
            copied.chat(QUESTION, max_new_tokens=4).message.content
            == llm.chat(QUESTION, max_new_tokens=4).message.content
        )
    restored = pickle.loads(pickle.dumps(llm))
    assert restored._runtime is None
    assert restored.runtime is runtime
    pair = tiny_pair("dense", agreeing=True)
    unloaded = GemmaMTP(
        model=str(pair.target_dir), assistant=str(pair.assistant_dir), device="cpu", dtype="float32"
    )
    assert copy.deepcopy(unloaded)._runtime is None


def test_stop_accepts_a_single_string(runtime: Runtime) -> None:
    assert GemmaMTP(runtime=runtime, stop="\n\n").stop == ["\n\n"]


def test_construction_needs_a_model_or_a_runtime() -> None:
    with pytest.raises(ValueError, match="Pass model="):
        GemmaMTP()


def test_runtime_excludes_loading_options(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="device, dtype only apply when GemmaMTP loads the model itself"):
        GemmaMTP(runtime=runtime, device="cuda", dtype="bfloat16")
    with pytest.raises(ValueError, match="device only applies when GemmaMTP loads the model itself"):
        GemmaMTP(runtime=runtime, device="cuda")


def test_unknown_constructor_arguments_are_rejected_with_the_near_miss(runtime: Runtime) -> None:
    """They were ignored: a misspelt temperature decoded greedily, an unknown max_tokens to 256 tokens."""
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*max_tokens, temprature") as caught:
        GemmaMTP(model="google/gemma-4-E2B-it", temprature=0.9, max_tokens=5)
    assert "Did you mean 'max_new_tokens' for 'max_tokens', 'temperature' for 'temprature'?" in str(
        caught.value
    )
    with pytest.raises(TypeError, match="Did you mean 'temperature'"):
        GemmaMTP(runtime=runtime, temprature=0.9)
    restored = GemmaMTP.from_dict(GemmaMTP(runtime=runtime, temperature=0.5).to_dict())
    assert restored.temperature == 0.5, "serialized settings still load"
    with pytest.raises(TypeError, match=r"runtime must be a gemma_mtp\.Runtime"):
        GemmaMTP(runtime="google/gemma-4-E2B-it")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("temperature", -1.0, ValueError, r"temperature must be in \[0.0, 100.0\]"),
        ("top_p", 0.0, ValueError, r"top_p must be in \(0.0, 1.0\]"),
        ("max_new_tokens", 0, ValueError, "max_new_tokens must be >= 1"),
        ("num_assistant_tokens", 0, ValueError, "num_assistant_tokens must be >= 1"),
    ],
)
def test_invalid_sampling_values_fail_at_construction(
    runtime: Runtime, field: str, value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        GemmaMTP(runtime=runtime, **{field: value})


def test_bad_call_arguments_get_clear_errors_and_leave_the_llm_usable(llm: GemmaMTP) -> None:
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument.*max_tokens. Did you mean 'max_new_tokens'"
    ):
        llm.chat(QUESTION, max_tokens=5)
    with pytest.raises(ValueError, match="temperature must be in"):
        llm.chat(QUESTION, temperature=-2)
    with pytest.raises(ValueError, match="tool_choice='required' needs at least one tool"):
        llm.chat(QUESTION, tool_choice="required")
    with pytest.raises(TypeError, match="prompt must be a string"):
        llm.complete(QUESTION)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        llm.stream_chat(QUESTION, bogus=1)
    with pytest.raises(ValueError, match="tool_choice='required' needs at least one tool"):
        llm.stream_chat(QUESTION, tool_choice="required")
    assert llm.chat(QUESTION).message.content


def test_an_error_during_generation_reaches_the_stream_consumer(llm: GemmaMTP, runtime: Runtime) -> None:
    def failing_listener(round_stats: Any) -> None:
        raise RuntimeError("listener exploded")

    runtime.add_listener(failing_listener)
    try:
        stream = llm.stream_chat(QUESTION)
        with pytest.raises(RuntimeError, match="listener exploded"):
            list(stream)
    finally:
        runtime.remove_listener(failing_listener)
    assert llm.chat(QUESTION).message.content


def test_backend_and_engine_options_reach_runtime_load(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # whether or not vLLM is installed
    llm = GemmaMTP(model="gemma-mtp-mini", backend="vllm", loader_options={"max_model_len": 512})
    with pytest.raises(ImportError, match="backend='vllm' needs vLLM"):
        _ = llm.runtime
    with pytest.raises(ValueError, match="backend"):
        GemmaMTP(runtime=runtime, backend="vllm")
    assert GemmaMTP(runtime=runtime).backend == "transformers"


def test_an_empty_prompt_is_refused_at_the_call(llm: GemmaMTP) -> None:
    with pytest.raises(ValueError, match="The conversation is empty"):
        llm.complete("")
    with pytest.raises(ValueError, match="The conversation is empty"):
        llm.chat([ChatMessage(role="user", content="")])
    assert llm.complete("Hi").text is not None


def test_server_arguments_without_server_mode_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="api_key only applies to backend='openai'"):
        GemmaMTP(model="google/gemma-4-E2B-it", api_key="k")
    GemmaMTP(model="google/gemma-4-E2B-it", backend="openai", base_url="http://h:8000/v1", api_key="k")
