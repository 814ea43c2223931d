"""Decoding engines behind :class:`gemma_mtp.Runtime`: each turns a request's prompt ids into rounds.

``transformers`` (the default) runs our speculative loop in process; ``vllm`` runs vLLM's engine in
process (continuous batching, tensor parallelism, its MTP drafting); ``openai`` talks to a running
OpenAI-compatible server such as ``vllm serve``. Only the chosen backend's dependencies are imported.
"""

from __future__ import annotations

from typing import Any

from gemma_mtp.backends.base import Backend, DecodeRequest, ForwardCounter, Round

__all__ = [
    "BACKENDS",
    "Backend",
    "DecodeRequest",
    "ForwardCounter",
    "Round",
    "check_server_options",
    "load_backend",
]

BACKENDS = ("transformers", "vllm", "openai")


def load_backend(
    name: str,
    target: str,
    assistant: str | None,
    *,
    device: Any,
    dtype: Any,
    base_url: str | None,
    api_key: str | None,
    **options: Any,
) -> Backend:
    """Load ``target`` (+ ``assistant``) on the named backend; ``options`` go to that engine."""
    if name == "transformers":
        check_server_options(name, base_url, api_key)
        from gemma_mtp.backends.transformers_backend import TransformersBackend

        return TransformersBackend.load(target, assistant, device=device, dtype=dtype, **options)
    if name == "vllm":
        check_server_options(name, base_url, api_key)
        from gemma_mtp.backends.vllm_backend import VLLMBackend

        return VLLMBackend.load(target, assistant, device=device, dtype=dtype, **options)
    if name == "openai":
        from gemma_mtp.backends.openai_backend import OpenAIBackend

        return OpenAIBackend.load(
            target, assistant, device=device, dtype=dtype, base_url=base_url, api_key=api_key, **options
        )
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}.")


def check_server_options(name: str, base_url: str | None, api_key: str | None) -> None:
    """Refuse ``base_url``/``api_key`` for a backend that runs the model in this process (the adapters call it at
    construction, so that the mistake shows before the first call loads anything)."""
    if name == "openai":
        return
    given = [k for k, v in (("base_url", base_url), ("api_key", api_key)) if v is not None]
    if given:
        raise ValueError(
            f"{' and '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to backend='openai' "
            "(a running server); "
            f"backend={name!r} runs the model in this process."
        )
