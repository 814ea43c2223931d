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
    "vLLM is not installed: give it its own environment, as the README's 'Many users, several GPUs' section shows, "
    "and run these tests there"
)

# Small engines that start on a shared 2-core machine: no compilation, a short context, 256 MiB of KV cache.
ENGINE_OPTIONS: dict[str, Any] = {
    "enforce_eager": True,
    "max_model_len": 1024,
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


def load_local_runtime() -> Runtime:
    """The kit pair on the transformers backend: the reference."""
    pair = kit_pair()
    return Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def engine_options() -> dict[str, Any]:
    return dict(ENGINE_OPTIONS)


@pytest.fixture(scope="session")
def local_runtime() -> Runtime:
    return load_local_runtime()


@pytest.fixture(scope="session")
def runtimes(local_runtime: Runtime) -> Iterator[tuple[Runtime, Runtime]]:
    """The kit pair on vLLM's engine (started once for the session) and on the transformers backend."""
    vllm_rt = Runtime.load(
        local_runtime.model_name,
        local_runtime.assistant_name,
        backend="vllm",
        dtype="float32",
        **ENGINE_OPTIONS,
    )
    try:
        yield vllm_rt, local_runtime
    finally:
        vllm_rt.close()
