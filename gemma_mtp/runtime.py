"""The runtime: one loaded model (and its MTP assistant) shared by every caller, and the request API.

``Runtime.load`` caches by (target, assistant, backend, device, dtype, options), so two adapters or two
chains that ask for the same pair share one engine. Everything a request needs above the decoding
engine lives here and is the same on every backend (:mod:`gemma_mtp.backends`): tokenizing and chat
templating, incremental detokenizing, stop sequences, statistics, Gemma 4 response parsing, round
listeners, worker threads for async calls and cancellation. The backend only turns prompt ids into
:class:`~gemma_mtp.backends.Round` objects.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

from gemma_mtp.backends import Backend, DecodeRequest, Round, load_backend
from gemma_mtp.chat import (
    StreamingResponseParser,
    first_message_end,
    render_chat,
    tool_call_prefill,
    validate_messages,
)
from gemma_mtp.chat.grammar import answer_grammar
from gemma_mtp.chat.parsing import answer_opening
from gemma_mtp.chat.syntax import THINKING_SWITCH, THOUGHT_OPEN, TURN_OPEN
from gemma_mtp.detokenize import IncrementalDetokenizer, StopMatcher
from gemma_mtp.lifecycle import Request, SummaryListener
from gemma_mtp.loading import resolve_device, resolve_dtype, resolve_names
from gemma_mtp.media import MediaSettings, PromptMedia, media_sources, prepare_media
from gemma_mtp.modeling import DraftPosition, validate_draft_position
from gemma_mtp.params import SamplingParams
from gemma_mtp.prefix_cache import PrefixCacheUsage
from gemma_mtp.results import (
    ChatDelta,
    ChatFinishReason,
    ChatResult,
    FinishReason,
    GenerationResult,
    StreamDelta,
)
from gemma_mtp.stats import RoundListener, RoundStats
from gemma_mtp.streams import AsyncRequestStream, RequestStream

__all__ = ["Prompt", "Runtime"]

Prompt = str | Sequence[int] | Sequence[dict[str, Any]]
_T = TypeVar("_T")
_PROMPT_TAIL_TOKENS = 64
_LOOP_SETTINGS = ("draft_position", "prefix_cache_bytes")


class Runtime:
    """A Gemma 4 target + MTP assistant pair loaded on a decoding backend, and everything needed to use it."""

    _cache: ClassVar[dict[tuple[Any, ...], Runtime]] = {}
    _failed: ClassVar[dict[tuple[Any, ...], BaseException]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, backend: Backend, *, name: str | None = None):
        self._backend = backend
        self._name = name or backend.model_name
        self._load_arguments: _LoadArguments | None = None
        self._lock = threading.RLock()
        self._listeners: list[RoundListener] = []
        self.context_window: int = backend.context_window
        self.vocab_size: int = backend.vocab_size
        self.eos_token_ids: frozenset[int] = backend.eos_token_ids
        self.default_draft_length: int = backend.default_draft_length
        self.media_settings: MediaSettings = MediaSettings()
        """What media in chat messages may do (:meth:`with_media_settings` for others)."""

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        target: str,
        assistant: str | None = None,
        *,
        backend: str = "transformers",
        device: Any = None,
        dtype: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        draft_position: DraftPosition | None = None,
        media: MediaSettings | None = None,
        prefix_cache_bytes: int | None = None,
        **options: Any,
    ) -> Runtime:
        """Load a pair (or return the one this process already loaded with the same arguments).

        ``assistant=None`` follows Google's naming (``<target>-assistant``); ``"gemma-mtp-mini"`` is
        the small pair shipped inside the package. ``backend`` picks the engine:

        * ``"transformers"`` (default): our speculative loop in this process; ``options`` go to
          ``from_pretrained`` (``attn_implementation``, ``device_map``, ``revision``, ...).
        * ``"vllm"``: vLLM's engine in this process, with continuous batching of concurrent requests
          and MTP drafting; ``options`` go to vLLM's engine arguments (``tensor_parallel_size``,
          ``max_model_len``, ``gpu_memory_utilization``, ...), ``num_assistant_tokens`` sets the
          engine's draft length (``0``: no speculation).
        * ``"openai"``: a running OpenAI-compatible server (``vllm serve``) at ``base_url``.

        A load that failed is remembered for the same arguments and fails again at once, so that a
        chain calling a model with a wrong id does not retry the hub on every call;
        :meth:`clear_cache` forgets it.

        ``draft_position`` (transformers backend) overrides the drafting convention the assistant's
        config records: ``"last_accepted"`` (n - 1, as Google's runtime and vLLM draft; the default for
        checkpoints that record none) or ``"pending"`` (n, as transformers' ``generate(assistant_model=...)``
        does). Runtimes that differ only in it share the loaded weights.

        ``prefix_cache_bytes`` bounds the memory that keeps recent prompts' keys/values, so that a request
        whose prompt starts like an earlier one (an agent's next step, a chat's next turn, another conversation
        with the same system prompt and tools) processes only what is new (``None``: a quarter of the free GPU
        memory after loading on CUDA, 1 GiB on the CPU; ``0``: off; see :meth:`prefix_cache_usage`). On
        ``backend="vllm"`` vLLM's own prefix caching runs inside its KV cache, and ``0`` turns it off; a server
        decides for itself. On the transformers backend, runtimes that differ only in it share the weights.

        ``media`` sets what images and audio in chat messages may do (read local files, fetch URLs, how large
        they may be; see :class:`~gemma_mtp.media.MediaSettings` and ``docs/multimodal.md``); the defaults read
        no local file and fetch only public URLs. Runtimes that differ only in it share the loaded weights.
        """
        if prefix_cache_bytes is not None:
            options = {**options, "prefix_cache_bytes": prefix_cache_bytes}
        if media is not None:
            if not isinstance(media, MediaSettings):
                raise TypeError(f"media must be a gemma_mtp.media.MediaSettings, got {type(media).__name__}")
            base = cls.load(
                target,
                assistant,
                backend=backend,
                device=device,
                dtype=dtype,
                base_url=base_url,
                api_key=api_key,
                draft_position=draft_position,
                **options,
            )
            return base.with_media_settings(media)
        if draft_position is not None:
            validate_draft_position(draft_position, "draft_position")
            if backend != "transformers" and draft_position != "last_accepted":
                raise ValueError(
                    f"draft_position={draft_position!r} needs backend='transformers': vLLM's engine always "
                    "drafts at n - 1 ('last_accepted')."
                )
            if backend == "transformers":
                options = {**options, "draft_position": draft_position}
        if backend == "transformers":
            resolved_device = resolve_device(device)
            device_key, dtype_key = str(resolved_device), str(resolve_dtype(dtype, resolved_device))
        else:
            device_key, dtype_key = repr(device), repr(dtype)
        key = (
            *resolve_names(target, assistant),
            backend,
            device_key,
            dtype_key,
            base_url,
            api_key,
            tuple(sorted((k, repr(v)) for k, v in options.items())),
        )
        with cls._cache_lock:
            if key in cls._failed:
                raise _remembered(cls._failed[key])
            if key not in cls._cache and backend == "transformers":
                # The same weights under another drafting convention or prefix cache bound: share them.
                loaded = cls._cached_sharing_weights(key)
                if loaded is not None:
                    cls._cache[key] = cls(
                        loaded._backend.sharing_weights(  # type: ignore[attr-defined]
                            options.get("draft_position"), options.get("prefix_cache_bytes")
                        )
                    )
            if key not in cls._cache:
                try:
                    engine = load_backend(
                        backend,
                        target,
                        assistant,
                        device=device,
                        dtype=dtype,
                        base_url=base_url,
                        api_key=api_key,
                        **options,
                    )
                except (OSError, ValueError) as err:
                    cls._failed[key] = err
                    raise
                runtime = cls(engine, name=str(target))
                runtime._load_arguments = _LoadArguments(
                    str(target), assistant, backend, device, dtype, base_url, api_key, dict(options)
                )
                cls._cache[key] = runtime
            return cls._cache[key]

    @classmethod
    def _cached_sharing_weights(cls, key: tuple[Any, ...]) -> Runtime | None:
        """A cached runtime whose load arguments equal ``key``'s except ``draft_position`` and
        ``prefix_cache_bytes`` (settings of the loop, not of the weights)."""

        def without(options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
            return tuple(item for item in options if item[0] not in _LOOP_SETTINGS)

        for other_key, runtime in cls._cache.items():
            if other_key[:-1] == key[:-1] and without(other_key[-1]) == without(key[-1]):
                return runtime
        return None

    def with_draft_position(self, draft_position: DraftPosition) -> Runtime:
        """A runtime on the same loaded weights whose assistant drafts under ``draft_position``.

        Only the in-process transformers backend has a choice (vLLM drafts at n - 1).
        """
        validate_draft_position(draft_position, "draft_position")
        if draft_position == self.draft_position:
            return self
        derive = getattr(self._backend, "with_draft_position", None)
        if derive is None:
            raise ValueError(
                f"The {self.backend!r} backend drafts at n - 1 ('last_accepted') only; "
                "draft_position='pending' needs backend='transformers'."
            )
        return type(self)(derive(draft_position))

    def with_media_settings(self, media: MediaSettings) -> Runtime:
        """A runtime on the same loaded engine whose chat requests read media under ``media``'s rules."""
        if not isinstance(media, MediaSettings):
            raise TypeError(f"media must be a gemma_mtp.media.MediaSettings, got {type(media).__name__}")
        if media == self.media_settings:
            return self
        derived = type(self)(self._backend, name=self._name)
        derived.media_settings = media
        if self._load_arguments is not None:
            derived._load_arguments = replace(self._load_arguments, media=media)
        return derived

    @property
    def media_modalities(self) -> frozenset[str]:
        """What chat messages may carry besides text: ``{"image", "audio"}``, ``{"image"}`` or nothing.

        Read from the target's config (``vision_config``, ``audio_config``) and its processor files, and from
        what the backend can take.
        """
        support = getattr(self._backend, "media", None)
        return frozenset() if support is None else support.modalities

    def drop_cached_prefixes(self) -> None:
        """Forget every prompt prefix this runtime keeps for reuse (its memory is freed once no running request
        reads it; on ``backend="vllm"``, vLLM's prefix cache is reset). The runtime stays loaded:
        :meth:`clear_cache` is what forgets loaded runtimes. A server keeps its own."""
        drop = getattr(self._backend, "drop_cached_prefixes", None)
        if drop is not None:
            drop()

    def prefix_cache_usage(self) -> PrefixCacheUsage | None:
        """How much memory the prefix cache may take and takes, and how many prompts it keeps; ``None`` on
        engines that manage their own (vLLM, a server)."""
        usage = getattr(self._backend, "prefix_cache_usage", None)
        return usage() if usage is not None else None

    def fresh(self) -> Runtime:
        """A runtime on the same loaded weights that has learnt nothing yet: its draft policy's memory, its draft
        temperature calibration and its prefix cache start empty, as in a new process, so that a benchmark
        measures the policy's first rounds without loading the models again. Engines without such state return
        ``self``."""
        derive = getattr(self._backend, "fresh", None)
        if derive is None:
            return self
        fresh = type(self)(derive(), name=self._name)
        fresh.media_settings = self.media_settings
        return fresh

    @property
    def draft_position(self) -> DraftPosition:
        """Where the assistant's query sits: ``"last_accepted"`` (n - 1) or ``"pending"`` (n).

        See :data:`gemma_mtp.modeling.DraftPosition`; vLLM's engine always drafts at n - 1.
        """
        return getattr(self._backend, "draft_position", "last_accepted")

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every loaded pair (their memory is freed once nothing else refers to them) and every
        remembered failed load."""
        with cls._cache_lock:
            cls._cache.clear()
            cls._failed.clear()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its load arguments: unpickling loads the pair through :meth:`load`, so a copy in the
        same process shares this runtime, and one in another process loads (or reuses) its own."""
        if self._load_arguments is None:
            raise TypeError(
                "This Runtime was built from an already loaded backend, not by Runtime.load, so it cannot be "
                "pickled: load it with Runtime.load(...) to make it picklable."
            )
        return (_load_runtime, (self._load_arguments,))

    def close(self) -> None:
        """Shut the engine down (vLLM's engine processes, a server client) and forget this runtime.

        In-process transformers weights are freed with the last reference; closing is optional there.
        """
        with self._cache_lock:
            for key, runtime in list(self._cache.items()):
                if runtime is self:
                    del self._cache[key]
        self._backend.close()

    # -- what users may need ---------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The decoding engine's name: ``"transformers"``, ``"vllm"`` or ``"openai"``."""
        return self._backend.name

    @property
    def engine(self) -> Backend:
        """The backend object itself (for engine-specific settings such as vLLM's draft length)."""
        return self._backend

    @property
    def target(self) -> Any:
        """The target's transformers model (in-process transformers backend only)."""
        return self._models().target

    @property
    def assistant(self) -> Any:
        """The assistant's transformers model (in-process transformers backend only)."""
        return self._models().assistant

    def _models(self) -> Any:
        pair = getattr(self._backend, "pair", None)
        if pair is None:
            raise AttributeError(
                f"This runtime decodes on the {self.backend!r} backend, which holds the weights inside its "
                "engine; the transformers models are only reachable with backend='transformers'."
            )
        return pair

    @property
    def tokenizer(self) -> Any:
        return self._backend.tokenizer

    @property
    def model_name(self) -> str:
        """The target as the caller named it (hub id, packaged pair name or folder)."""
        return self._name

    @property
    def assistant_name(self) -> str:
        return self._backend.assistant_name

    @property
    def device(self) -> Any:
        return self._backend.device

    @property
    def dtype(self) -> str:
        """The weights' dtype as a name (``"float32"``, ``"bfloat16"``, ...)."""
        return self._backend.dtype

    def add_listener(self, listener: RoundListener) -> None:
        """Call ``listener(RoundStats)`` after every round of every request on this runtime."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: RoundListener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    # -- prompts ---------------------------------------------------------------------------------

    def encode(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        prefill: str = "",
    ) -> list[int]:
        """Token ids for a string, a list of ids, or chat messages (rendered with the chat template).

        Images and audio in chat messages count with their soft tokens: the ids are those the model reads.
        """
        return self._encode(prompt, tools, chat_template_kwargs, prefill)[0]

    def _encode(
        self,
        prompt: Prompt,
        tools: Sequence[dict[str, Any]] | None,
        chat_template_kwargs: dict[str, Any] | None,
        prefill: str,
    ) -> tuple[list[int], PromptMedia | None]:
        media = None
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("The prompt is empty; pass some text, token ids or chat messages.")
            bos = self.tokenizer.bos_token
            add_special = not (bos and prompt.startswith(bos))
            # verbose=False: the length is checked below, against the context window, with our own error.
            ids = self.tokenizer(prompt, add_special_tokens=add_special, verbose=False)["input_ids"]
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
            messages = validate_messages([dict(m) for m in prompt if isinstance(m, dict)])
            sources = media_sources(messages)
            if sources:
                # A checkpoint that cannot read them fails before rendering.
                self._media_support().check(sources, self.model_name)
            options = dict(chat_template_kwargs or {})
            options["tokenizer_kwargs"] = {"verbose": False, **(options.get("tokenizer_kwargs") or {})}
            ids = render_chat(self.tokenizer, messages, tools, prefill=prefill, **options)
            if sources:
                ids, media = prepare_media(
                    ids, sources, self._media_support(), self.media_settings, self.model_name
                )
        elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
            ids = list(prompt)
            if not ids:
                raise ValueError("The prompt is empty; pass some text, token ids or chat messages.")
            bad = [
                t
                for t in ids
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size
            ]
            if bad:
                raise ValueError(
                    f"Token ids must be integers in [0, {self.vocab_size}); got {bad[:5]!r}"
                    + (" and more" if len(bad) > 5 else "")
                )
        else:
            raise TypeError(
                f"prompt must be a string, a list of token ids or a list of chat messages, got {type(prompt).__name__}"
            )
        if len(ids) >= self.context_window:
            media_note = (
                f" ({media.soft_tokens} of them for {_count_media(media)}; a smaller "
                "MediaSettings.image_soft_tokens or shorter clips take fewer)"
                if media is not None
                else ""
            )
            raise ValueError(
                f"The prompt has {len(ids)} tokens{media_note}; {self.model_name!r} has a context window of "
                f"{self.context_window} tokens. Shorten the prompt."
            )
        return list(ids), media

    def _media_support(self) -> Any:
        support = getattr(self._backend, "media", None)
        if support is None:
            raise ValueError(
                f"The {self.backend!r} backend does not take images or audio; use backend='transformers' for them."
            )
        return support

    def count_prompt_tokens(self, prompt: Prompt, tools: Sequence[dict[str, Any]] | None = None) -> int:
        return len(self.encode(prompt, tools=tools))

    @functools.cached_property
    def chat_overhead_tokens(self) -> int:
        """Tokens the chat template adds around a system and a user message (turn markers, roles, the
        generation prompt): room that frameworks packing text into the context window must leave free."""
        probe = "x"
        messages = [{"role": "system", "content": probe}, {"role": "user", "content": probe}]
        text_tokens = 2 * len(self.tokenizer.encode(probe, add_special_tokens=False))
        return max(0, len(self.encode(messages)) - text_tokens)

    # -- generation ------------------------------------------------------------------------------
    #
    # Every entry point makes one Request (see gemma_mtp.lifecycle): it starts at the call, checks its
    # input there (a rejection ends it with an ``error`` summary and raises), and ends exactly once with a
    # summary sent to ``on_summary``. Streams are RequestStream / AsyncRequestStream objects whose
    # close()/aclose()/cancel() set the request's cancel flag, which the loop reads after every round.

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
        cancel: threading.Event | None = None,
    ) -> RequestStream[StreamDelta]:
        """Yield text as soon as each round's tokens are accepted.

        The prompt is encoded and checked here, so bad input raises at the call. ``close()``, ``cancel()``
        or setting ``cancel`` stops decoding after the round in progress; ``on_summary`` receives the
        request's :class:`~gemma_mtp.lifecycle.RequestSummary` once, however it ends.
        """
        request = Request(on_round, on_summary, cancel)
        return self._open_stream(request, prompt, params, use_assistant)

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Decode a whole answer; with ``use_assistant=False`` the same loop runs the target alone."""
        stream = self.stream(
            prompt,
            params,
            use_assistant=use_assistant,
            on_round=on_round,
            on_summary=on_summary,
            cancel=cancel,
        )
        return _collect(_drain(stream), stream.request.prompt_token_ids)

    async def agenerate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
    ) -> GenerationResult:
        """Like :meth:`generate`, on a worker thread (encoding included), so the event loop keeps running.

        Cancelling the awaiting task cancels the request; the task's ``CancelledError`` propagates once the
        worker has finished its round and the ``cancelled`` summary has been sent.
        """
        request = Request(on_round, on_summary)
        stream = AsyncRequestStream(
            request, lambda: self._open_stream(request, prompt, params, use_assistant)
        )
        deltas = await stream.collect()
        return _collect(deltas, request.prompt_token_ids)

    def astream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
    ) -> AsyncRequestStream[StreamDelta]:
        """Like :meth:`stream`, decoded on a worker thread; ``aclose()``, ``cancel()`` or cancelling the
        reading task stops it.

        The prompt is encoded and checked here, on the caller's thread, so bad input (an over-long prompt
        included) raises at the call, as with :meth:`stream`.
        """
        request = Request(on_round, on_summary)
        return AsyncRequestStream(request, self._open_stream(request, prompt, params, use_assistant))

    def _open_stream(
        self, request: Request, prompt: Prompt, params: SamplingParams | None, use_assistant: bool
    ) -> RequestStream[StreamDelta]:
        with request.checking_input():
            checked = self._check_request(params, use_assistant)
            prompt_ids = self.encode(prompt)
        return RequestStream(request, self._stream_ids(prompt_ids, checked, use_assistant, request))

    def _check_request(self, params: SamplingParams | None, use_assistant: bool) -> SamplingParams:
        """Check a request's parameters against this backend at the call, before any decoding starts."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if not isinstance(use_assistant, bool):
            raise TypeError(f"use_assistant must be True or False, got {use_assistant!r}.")
        self._backend.check_request(params, use_assistant)
        return params

    def _stream_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        use_assistant: bool,
        request: Request,
        media: PromptMedia | None = None,
    ) -> Generator[StreamDelta, None, None]:
        stats = request.stats
        request.prompt_token_ids = prompt_ids
        draft_policy = (
            self._backend.describe_draft_policy(params) if use_assistant else "no drafts (target alone)"
        )
        stats.start(
            request.request_id, len(prompt_ids), used_assistant=use_assistant, draft_policy=draft_policy
        )
        eos = frozenset() if params.ignore_eos else self.eos_token_ids | set(params.stop_token_ids)
        detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
        stops = StopMatcher(params.stop)
        budget = min(params.max_new_tokens, self.context_window - len(prompt_ids))

        def count(kind: str) -> None:
            if kind == "target":
                stats.target_forward_passes += 1
            else:
                stats.assistant_forward_passes += 1

        rounds = self._rounds(
            DecodeRequest(
                stats.request_id,
                prompt_ids,
                params,
                budget,
                use_assistant,
                count,
                media,
                reuse_points=self._reuse_points(prompt_ids),
            )
        )
        produced = 0
        round_started = time.perf_counter()
        try:
            for index, rnd in enumerate(rounds):
                round_duration = time.perf_counter() - round_started
                kept: list[int] = []
                text, finish, stop_seq = "", None, None
                for token in rnd.tokens:
                    kept.append(token)
                    if token in eos:
                        finish = "stop"
                        break
                    safe, stop_seq = stops.push(detok.add(token))
                    text += safe
                    if stop_seq is not None:
                        finish = "stop"
                        break
                produced += len(kept)
                if finish is None and produced >= budget:
                    finish = "length"
                    window_bound = budget < params.max_new_tokens
                    stats.length_limit = "context_window" if window_bound else "max_new_tokens"
                if finish is not None and stop_seq is None:
                    tail, stop_seq = stops.push(detok.flush())
                    text += tail + ("" if stop_seq else stops.flush())
                stats.record_round(rnd.drafted, rnd.accepted, len(kept), rnd.draft_method)
                if rnd.cached_prompt_tokens is not None:
                    stats.cached_prompt_tokens = rnd.cached_prompt_tokens
                if rnd.engine_report is not None:
                    stats.engine_report = dict(rnd.engine_report)
                    if not self._backend.round_statistics:
                        stats.adopt_engine_report(rnd.engine_report)
                self._notify(
                    RoundStats(
                        request_id=stats.request_id,
                        round_index=index,
                        drafted=rnd.drafted,
                        accepted=min(rnd.accepted, len(kept)),
                        emitted=len(kept),
                        draft_length=rnd.draft_length,
                        duration_s=round_duration,
                        draft_method=rnd.draft_method,
                        draft_temperature=rnd.draft_temperature,
                    ),
                    request.on_round,
                )
                if finish is None and request.cancelled:
                    finish = "cancelled"
                if finish is not None:
                    stats.finish()
                yield StreamDelta(text, kept, stats.snapshot(), finish, stop_seq)  # type: ignore[arg-type]
                if finish is not None:
                    return
                round_started = time.perf_counter()
        finally:
            rounds.close()

    @functools.cached_property
    def _turn_open_id(self) -> int | None:
        token = self.tokenizer.convert_tokens_to_ids(TURN_OPEN)
        return None if token is None or token == self.tokenizer.unk_token_id else int(token)

    def _reuse_points(self, prompt_ids: list[int]) -> tuple[int, ...]:
        """Where a later prompt is likely to share this one's beginning, besides its end: the end of its first
        chat message (the system prompt and tool declarations, the same in every conversation of an app)."""
        if self._turn_open_id is None:
            return ()
        end = first_message_end(prompt_ids, self._turn_open_id)
        return () if end is None else (end,)

    def _rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        """The decoding rounds of one request (the testing kit's scripted answers stand in here)."""
        return self._backend.rounds(request)

    def _notify(self, round_stats: RoundStats, on_round: RoundListener | None) -> None:
        for listener in [*self._listeners, *([on_round] if on_round else [])]:
            listener(round_stats)

    # -- chat ------------------------------------------------------------------------------------

    def _prepare_chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None,
        tools: Sequence[dict[str, Any]] | None,
        tool_choice: str | None,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> tuple[list[int], SamplingParams, _ChatPrefix, PromptMedia | None]:
        """Render and validate eagerly, so bad input raises in the caller before any decoding starts."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError(f"messages must be a list of role/content dicts, got {type(messages).__name__}")
        validate_messages(messages)
        base = params or SamplingParams()
        shown_tools = None if tool_choice == "none" else tools
        # Where the backend constrains decoding, tools and response constraints become one grammar over the
        # whole answer, a forced call included (nothing is prefilled); a thinking block before the answer stays
        # free when the prompt asks for one. Elsewhere a forced call is opened by a prefill.
        constrained = self._backend.constrained_decoding
        prefill = tool_call_prefill(tool_choice, tools)  # also checks tool_choice against the tools
        prefill = "" if constrained else prefill
        prompt_ids, media = self._encode(list(messages), shown_tools, chat_template_kwargs, prefill)
        # The parser needs Gemma 4's markers (thinking channel, tool calls) in the text, and the state the prompt
        # leaves the answer in (some generation prompts open the thinking channel); nothing the prompt itself
        # writes is ever part of the answer.
        prompt_tail = self.tokenizer.decode(prompt_ids[-_PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        grammar = base.grammar
        if grammar is None and constrained:
            switch = self.tokenizer.convert_tokens_to_ids(THINKING_SWITCH)
            thinking = switch != self.tokenizer.unk_token_id and switch in prompt_ids
            grammar = answer_grammar(
                tools,
                tool_choice,
                json_schema=base.json_schema,
                regex=base.regex,
                thinking=thinking,
                in_thought=answer_opening(prompt_tail) == THOUGHT_OPEN,
            )
        chat_params = replace(base, json_schema=None, regex=None, grammar=grammar, skip_special_tokens=False)
        return prompt_ids, chat_params, _ChatPrefix(prompt_tail, prefill), media

    def _open_chat(
        self,
        request: Request,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None,
        tools: Sequence[dict[str, Any]] | None,
        tool_choice: str | None,
        use_assistant: bool,
        chat_template_kwargs: dict[str, Any] | None,
    ) -> RequestStream[ChatDelta]:
        with request.checking_input():
            checked = self._check_request(params, use_assistant)
            prompt_ids, chat_params, prefix, media = self._prepare_chat(
                messages, checked, tools, tool_choice, chat_template_kwargs
            )
        deltas = self._stream_ids(prompt_ids, chat_params, use_assistant, request, media)
        return RequestStream(request, _parse_stream(deltas, prefix, len(prompt_ids)))

    def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        use_assistant: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
        cancel: threading.Event | None = None,
    ) -> RequestStream[ChatDelta]:
        """Render ``messages`` with the chat template; stream the answer parsed into text, thinking and tool calls.

        ``tools`` are OpenAI-style function specs, and the answer is constrained to Gemma 4's tool-call syntax:
        tool names from ``tools``, arguments that follow each tool's JSON schema (see
        :mod:`gemma_mtp.chat.grammar`). ``tool_choice`` ``None``/``"auto"`` lets the model answer in text or
        call; ``"required"``/``"any"`` forces one or more calls and a tool's name one call to it; ``"none"``
        hides the tools from the model. ``params.json_schema`` / ``params.regex`` constrain a text answer, and
        a ``params.grammar`` covers the whole answer as given. A thinking block before the answer stays free.
        """
        request = Request(on_round, on_summary, cancel)
        return self._open_chat(
            request, messages, params, tools, tool_choice, use_assistant, chat_template_kwargs
        )

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        use_assistant: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
        cancel: threading.Event | None = None,
    ) -> ChatResult:
        """Like :meth:`stream_chat`, returning the whole parsed answer."""
        stream = self.stream_chat(
            messages,
            params,
            tools=tools,
            tool_choice=tool_choice,
            use_assistant=use_assistant,
            chat_template_kwargs=chat_template_kwargs,
            on_round=on_round,
            on_summary=on_summary,
            cancel=cancel,
        )
        return _collect_chat(_drain(stream))

    def astream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        use_assistant: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
    ) -> AsyncRequestStream[ChatDelta]:
        """Like :meth:`stream_chat`, decoded on a worker thread; ``aclose()``, ``cancel()`` or cancelling
        the reading task stops it.

        The conversation is rendered and checked here, on the caller's thread (a chat template renders in
        about a millisecond), so bad input, an over-long prompt included, raises at the call.
        """
        request = Request(on_round, on_summary)
        return AsyncRequestStream(
            request,
            self._open_chat(
                request, messages, params, tools, tool_choice, use_assistant, chat_template_kwargs
            ),
        )

    async def achat(
        self,
        messages: Sequence[dict[str, Any]],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        use_assistant: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
    ) -> ChatResult:
        """Like :meth:`chat`, on a worker thread (templating included), so the event loop keeps running.

        Cancelling the awaiting task cancels the request; the task's ``CancelledError`` propagates once the
        worker has finished its round and the ``cancelled`` summary has been sent.
        """
        request = Request(on_round, on_summary)
        stream = AsyncRequestStream(
            request,
            lambda: self._open_chat(
                request, messages, params, tools, tool_choice, use_assistant, chat_template_kwargs
            ),
        )
        return _collect_chat(await stream.collect())

    def __copy__(self) -> Runtime:
        """A runtime is a shared, loaded resource: copies are the runtime itself."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Runtime:
        return self


@dataclass(frozen=True)
class _ChatPrefix:
    prompt_tail: str  # the end of the rendered prompt (prefill included): its state counts, never its text
    prefill: str  # text forced into the answer (a tool-call opener, on backends without constraints)


def _parse_stream(
    deltas: Generator[StreamDelta, None, None], prefix: _ChatPrefix, prompt_tokens: int
) -> Generator[ChatDelta, None, None]:
    """Turn raw text deltas into content, thinking and tool-call deltas."""
    parser = StreamingResponseParser(prefix=prefix.prompt_tail)
    saw_tool_call = False
    raw_prefix = prefix.prefill
    try:
        for delta in deltas:
            events = parser.feed(delta.text)
            content, reasoning, calls = events.content, events.reasoning, list(events.tool_calls)
            malformed = list(events.malformed_tool_calls)
            finish: ChatFinishReason | None = delta.finish_reason
            if finish is not None:
                tail = parser.finish()
                content += tail.content
                reasoning += tail.reasoning
                calls += tail.tool_calls
                malformed += tail.malformed_tool_calls
            saw_tool_call = saw_tool_call or bool(calls)
            if finish == "stop" and saw_tool_call:
                finish = "tool_calls"
            yield ChatDelta(
                content=content,
                reasoning=reasoning,
                tool_calls=calls,
                stats=delta.stats,
                prompt_tokens=prompt_tokens,
                finish_reason=finish,
                raw_text=raw_prefix + delta.text,
                token_ids=delta.token_ids,
                malformed_tool_calls=malformed,
            )
            raw_prefix = ""
    finally:
        deltas.close()


def _collect(deltas: list[StreamDelta], prompt_ids: list[int]) -> GenerationResult:
    if not deltas:
        raise RuntimeError("generation produced no output")
    last = deltas[-1]
    finish: FinishReason = last.finish_reason or "cancelled"
    return GenerationResult(
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        finish_reason=finish,
        stats=last.stats,
        prompt_token_ids=prompt_ids,
        stop_sequence=last.stop_sequence,
    )


def _collect_chat(deltas: list[ChatDelta]) -> ChatResult:
    if not deltas:
        raise RuntimeError("generation produced no output")
    last = deltas[-1]
    reasoning = "".join(d.reasoning for d in deltas)
    return ChatResult(
        content="".join(d.content for d in deltas),
        reasoning=reasoning or None,
        tool_calls=[c for d in deltas for c in d.tool_calls],
        finish_reason=last.finish_reason or "cancelled",
        stats=last.stats,
        raw_text="".join(d.raw_text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        prompt_tokens=last.prompt_tokens,
        malformed_tool_calls=[m for d in deltas for m in d.malformed_tool_calls],
    )


def _drain(stream: RequestStream[_T]) -> list[_T]:
    """Every item of a stream; closing it on the way out ends the request even on Ctrl-C."""
    try:
        return list(stream)
    finally:
        stream.close()


@dataclass(frozen=True)
class _LoadArguments:
    target: str
    assistant: str | None
    backend: str
    device: Any
    dtype: Any
    base_url: str | None
    api_key: str | None
    options: dict[str, Any]
    media: MediaSettings | None = None


def _load_runtime(arguments: _LoadArguments) -> Runtime:
    return Runtime.load(
        arguments.target,
        arguments.assistant,
        backend=arguments.backend,
        device=arguments.device,
        dtype=arguments.dtype,
        base_url=arguments.base_url,
        api_key=arguments.api_key,
        media=arguments.media,
        **arguments.options,
    )


def _count_media(media: PromptMedia) -> str:
    """``"2 images and 1 audio clip"``."""
    parts = []
    for kind, noun in (("image", "image"), ("audio", "audio clip")):
        n = sum(1 for item in media.items if item.kind == kind)
        if n:
            parts.append(f"{n} {noun}{'s' if n != 1 else ''}")
    return " and ".join(parts)


def _remembered(error: BaseException) -> BaseException:
    """A fresh exception repeating a remembered load failure (raising the stored one would grow its traceback)."""
    note = (
        " (This load failed earlier in this process and is not retried; call Runtime.clear_cache() to retry.)"
    )
    try:
        again = type(error)(f"{error}{note}")
    except Exception:
        again = RuntimeError(f"{type(error).__name__}: {error}{note}")
    again.__cause__ = error
    return again
