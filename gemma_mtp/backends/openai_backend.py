"""Server mode: a running OpenAI-compatible server (``vllm serve``) decodes; everything else stays here.

Prompts are rendered by our chat template and sent as token ids to the completions endpoint, and the
answer comes back as token ids (vLLM's ``return_token_ids``), so detokenizing, stop sequences, Gemma 4
response parsing (thinking, tool calls) and statistics are the same as in process. This is how a team
shares one multi-GPU or multi-node deployment: the server batches everyone's requests.

The server streams what its engine produced since the last chunk, which may span several engine steps,
so rounds carry no acceptance figures of their own. The request's figures come from the server's
``metrics.speculative_decoding`` (vLLM started with ``--per-request-spec-decode-metrics``), which
arrives with the final usage chunk; without it a request's statistics show no drafting, and a warning
says why once per runtime. The prompt tokens the server's prefix cache served come from the same chunk's
``usage.prompt_tokens_details.cached_tokens`` (``vllm serve --enable-prompt-tokens-details``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Generator
from typing import Any

from gemma_mtp.backends.base import (
    ENGINE_HANDLED_FIELDS,
    DecodeRequest,
    Round,
    guidance_grammar,
    reject_unhandled_fields,
)
from gemma_mtp.loading import PairInfo, inspect_pair
from gemma_mtp.media.processor import MediaSupport
from gemma_mtp.params import SamplingParams

__all__ = ["OpenAIBackend", "served_dtype"]

logger = logging.getLogger("gemma_mtp")


_INSTALL_HINT = "backend='openai' needs the OpenAI client: pip install 'gemma-mtp[openai]'."


class OpenAIBackend:
    """A client of an OpenAI-compatible server that serves the target (with its MTP assistant)."""

    name = "openai"
    constrained_decoding = True
    round_statistics = False

    def __init__(self, info: PairInfo, client: Any, served_model: str, base_url: str, dtype: str | None):
        self.info = info
        self.client = client
        self.served_model = served_model
        self.base_url = base_url
        self._dtype = dtype
        self.model_name = info.target_name
        self.assistant_name = info.assistant_name
        self.tokenizer = info.tokenizer
        self.context_window = info.context_window
        self.vocab_size = info.vocab_size
        self.eos_token_ids = info.eos_token_ids
        self.default_draft_length = info.default_draft_length
        self._warned_no_metrics = False

    @classmethod
    def load(
        cls,
        target: str,
        assistant: str | None,
        *,
        device: Any = None,
        dtype: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        served_model_name: str | None = None,
        prefix_cache_bytes: int | None = None,
        **client_options: Any,
    ) -> OpenAIBackend:
        """Read the pair's tokenizer and configs here; connect to the server at ``base_url``.

        ``served_model_name`` is the name the server knows the target by (default: ``target`` as
        given, which is what ``vllm serve <target>`` uses). The assistant is the server's business: it is
        checked against the target when given, and not looked for otherwise. ``client_options`` go to ``openai.OpenAI``
        (``timeout``, ``max_retries``, ...).
        """
        try:
            import openai
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err
        if not base_url:
            raise ValueError(
                "backend='openai' needs base_url= (the server's OpenAI-compatible URL, e.g. "
                "'http://127.0.0.1:8000/v1')."
            )
        if device is not None:
            raise ValueError("device= does not apply to backend='openai': the server decides where it runs.")
        if prefix_cache_bytes is not None:
            raise ValueError(
                "prefix_cache_bytes= does not apply to backend='openai': the server keeps prompt prefixes as it "
                "was started (vllm serve caches them unless --no-enable-prefix-caching)."
            )
        info = inspect_pair(target, assistant, needs_assistant=False)  # the server drafts with its own
        client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", **client_options)
        expected = None if dtype is None else str(dtype).removeprefix("torch.")
        served = served_dtype(base_url, api_key)
        if expected is not None and served is not None and served != expected:
            logger.warning(
                "The server at %s runs the model in %s, but dtype=%r was asked for: its answers can differ from "
                "an in-process %s run (greedy ones included). Start vllm serve with --dtype %s for the same "
                "tokens.",
                base_url,
                served,
                expected,
                expected,
                expected,
            )
        return cls(info, client, served_model_name or str(target), base_url, served or expected)

    @property
    def device(self) -> str:
        return self.base_url

    @property
    def dtype(self) -> str:
        """The dtype the server says it runs, else the one the caller gave, else ``"server"``."""
        return self._dtype or "server"

    def describe_draft_policy(self, params: SamplingParams) -> str:
        return f"the server's speculative configuration ({self.base_url})"

    def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
        """Refuse what a request cannot ask of a running server."""
        reject_unhandled_fields(params, ENGINE_HANDLED_FIELDS, self.name)
        if not use_assistant:
            raise ValueError(
                "use_assistant=False cannot be asked of a running server: it drafts (or not) as it was "
                "started. Start a server without --speculative-config for target-only decoding."
            )
        for name, value in (
            ("num_assistant_tokens", params.num_assistant_tokens),
            ("adaptive_draft", params.adaptive_draft or None),
            ("sample_drafts", params.sample_drafts or None),
        ):
            if value is not None:
                raise ValueError(
                    f"{name} cannot be set per request in server mode: the server's draft length and "
                    "drafting are fixed when it starts (vllm serve --speculative-config ...). "
                    "Use backend='transformers' for per-request drafting settings."
                )

    @property
    def media(self) -> MediaSupport:
        """Server mode sends no media: the completions endpoint takes the rendered prompt's ids, not images."""
        reason = (
            "server mode (backend='openai') sends the rendered prompt's token ids to the server's completions "
            "endpoint, which carries no images or audio. Send media to the server through its chat-completions "
            "API (content parts) with an OpenAI client, or load the model with backend='transformers' or "
            "backend='vllm'"
        )
        return MediaSupport(None, {"image": reason, "audio": reason})

    def rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        params = request.params
        extra: dict[str, Any] = {
            "top_k": params.top_k if params.top_k > 0 else -1,
            "ignore_eos": params.ignore_eos,
            "stop_token_ids": list(params.stop_token_ids),
            "skip_special_tokens": False,
            "return_token_ids": True,
        }
        lark = guidance_grammar(params, self.eos_token_ids, self.tokenizer)
        if lark is not None:  # vLLM's server runs it with llguidance (its 'guidance' structured outputs)
            extra["structured_outputs"] = {"grammar": lark}
        stream = self.client.completions.create(
            model=self.served_model,
            prompt=request.prompt_ids,
            max_tokens=request.budget,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        return self._read(stream, request)

    def _read(self, stream: Any, request: DecodeRequest) -> Generator[Round, None, None]:
        held: list[int] | None = None  # the last tokens, held back until the final chunk says how it went
        try:
            for chunk in stream:
                for choice in chunk.choices:
                    tokens = getattr(choice, "token_ids", None)
                    if tokens is None:
                        raise RuntimeError(
                            "The server sent text without token ids; server mode needs vLLM's OpenAI-compatible "
                            "server (it returns token ids on request), so that detokenizing and parsing stay "
                            "exact."
                        )
                    if choice.finish_reason is not None:
                        held = (held or []) + [int(t) for t in tokens]
                    else:
                        yield Round(tokens=[int(t) for t in tokens], drafted=0, accepted=0, draft_length=0)
                if not chunk.choices and held is not None:
                    yield Round(
                        tokens=held,
                        drafted=0,
                        accepted=0,
                        draft_length=0,
                        engine_report=self._report(chunk),
                        cached_prompt_tokens=_cached_tokens(chunk),
                    )
                    held = None
            if held is not None:
                yield Round(
                    tokens=held, drafted=0, accepted=0, draft_length=0, engine_report=self._report(None)
                )
        finally:
            stream.close()

    def _report(self, usage_chunk: Any) -> dict[str, Any] | None:
        """The server's ``metrics.speculative_decoding`` from the final chunk, or ``None`` (said once)."""
        metrics = getattr(usage_chunk, "metrics", None) if usage_chunk is not None else None
        if isinstance(metrics, dict):
            spec = metrics.get("speculative_decoding")
        else:
            spec = getattr(metrics, "speculative_decoding", None)
        if spec is None and usage_chunk is not None:
            spec = (
                (getattr(usage_chunk, "model_extra", None) or {})
                .get("metrics", {})
                .get("speculative_decoding")
            )
        if spec is None:
            if not self._warned_no_metrics:
                self._warned_no_metrics = True
                logger.warning(
                    "The server at %s sent no metrics.speculative_decoding, so acceptance statistics are "
                    "unavailable; start vllm serve with --per-request-spec-decode-metrics detailed.",
                    self.base_url,
                )
            return None
        return dict(spec) if isinstance(spec, dict) else dict(spec.model_dump())

    def close(self) -> None:
        self.client.close()


def served_dtype(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> str | None:
    """The dtype a vLLM server runs its model in, as ``"bfloat16"``, ``"float32"``..., or ``None`` when the server
    does not say.

    vLLM tells it only on ``/server_info``, one of the development endpoints it serves when started with
    ``VLLM_SERVER_DEV_MODE=1``; neither ``/v1/models``, ``/version`` nor ``/metrics`` carries it.
    """
    root = base_url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(f"{root}/server_info?config_format=json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            info = json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError):  # no such endpoint (HTTP 404 is an OSError), no server, not JSON
        return None
    config = info.get("vllm_config") if isinstance(info, dict) else None
    model = config.get("model_config") if isinstance(config, dict) else None
    dtype = model.get("dtype") if isinstance(model, dict) else None
    return str(dtype).removeprefix("torch.") if dtype else None


def _cached_tokens(usage_chunk: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` of the final chunk, where the server sends it (vLLM does
    with ``--enable-prompt-tokens-details``); ``None`` otherwise."""
    usage = getattr(usage_chunk, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return None if cached is None else int(cached)
