"""The runtime: one loaded model (and its MTP assistant) shared by every caller, and the request API.

``Runtime.load`` caches by (target, assistant, backend, device, dtype, options), so two adapters or two
chains that ask for the same pair share one engine. Everything a request needs above the decoding
engine lives here and is the same on every backend (:mod:`gemma_mtp.backends`): tokenizing and chat
templating, incremental detokenizing, stop sequences, statistics, Gemma 4 response parsing, round
listeners, worker threads for async calls and cancellation. The backend only turns prompt ids into
:class:`~gemma_mtp.backends.Round` objects.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from gemma_mtp.backends import Backend, DecodeRequest, Round, load_backend
from gemma_mtp.chat import StreamingResponseParser, render_chat, tool_call_prefill, validate_messages
from gemma_mtp.detokenize import IncrementalDetokenizer, StopMatcher
from gemma_mtp.loading import resolve_device, resolve_dtype, resolve_names
from gemma_mtp.params import SamplingParams
from gemma_mtp.results import (
    ChatDelta,
    ChatFinishReason,
    ChatResult,
    FinishReason,
    GenerationResult,
    StreamDelta,
)
from gemma_mtp.stats import RoundListener, RoundStats, SpeculationStats

__all__ = ["Prompt", "Runtime"]

Prompt = str | Sequence[int] | Sequence[dict[str, Any]]
_T = TypeVar("_T")
_PROMPT_TAIL_TOKENS = 64


class Runtime:
    """A Gemma 4 target + MTP assistant pair loaded on a decoding backend, and everything needed to use it."""

    _cache: ClassVar[dict[tuple[Any, ...], Runtime]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, backend: Backend):
        self._backend = backend
        self._lock = threading.RLock()
        self._listeners: list[RoundListener] = []
        self.context_window: int = backend.context_window
        self.vocab_size: int = backend.vocab_size
        self.eos_token_ids: frozenset[int] = backend.eos_token_ids
        self.default_draft_length: int = backend.default_draft_length

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
        """
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
            if key not in cls._cache:
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
                cls._cache[key] = cls(engine)
            return cls._cache[key]

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every loaded pair (their memory is freed once nothing else refers to them)."""
        with cls._cache_lock:
            cls._cache.clear()

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
        return self._backend.model_name

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
        """Token ids for a string, a list of ids, or chat messages (rendered with the chat template)."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("The prompt is empty; pass some text, token ids or chat messages.")
            bos = self.tokenizer.bos_token
            add_special = not (bos and prompt.startswith(bos))
            ids = self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = render_chat(
                self.tokenizer,
                [dict(m) for m in prompt if isinstance(m, dict)],
                tools,
                prefill=prefill,
                **(chat_template_kwargs or {}),
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
            raise ValueError(
                f"The prompt has {len(ids)} tokens; {self.model_name!r} has a context window of "
                f"{self.context_window} tokens. Shorten the prompt."
            )
        return list(ids)

    def count_prompt_tokens(self, prompt: Prompt, tools: Sequence[dict[str, Any]] | None = None) -> int:
        return len(self.encode(prompt, tools=tools))

    # -- generation ------------------------------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[StreamDelta, None, None]:
        """Yield text as soon as each round's tokens are accepted; closing the iterator cancels."""
        params = self._check_request(params, use_assistant)
        prompt_ids = self.encode(prompt)
        return self._stream_ids(prompt_ids, params, use_assistant, on_round, cancel)

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Decode a whole answer; with ``use_assistant=False`` the same loop runs the target alone."""
        params = self._check_request(params, use_assistant)
        prompt_ids = self.encode(prompt)
        deltas = list(self._stream_ids(prompt_ids, params, use_assistant, on_round, cancel))
        return _collect(deltas, prompt_ids)

    async def agenerate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
    ) -> GenerationResult:
        """Like :meth:`generate`, on a worker thread (templating included), so the event loop keeps running.

        Cancelling the awaiting task stops generation before its next round.
        """
        _check_prompt(prompt)
        self._check_request(params, use_assistant)
        return await _cancellable_thread(
            lambda cancel: self.generate(
                prompt, params, use_assistant=use_assistant, on_round=on_round, cancel=cancel
            )
        )

    def astream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        use_assistant: bool = True,
        on_round: RoundListener | None = None,
    ) -> AsyncGenerator[StreamDelta, None]:
        """Like :meth:`stream`, on a worker thread; ``aclose()``, ``break`` or cancellation stops it.

        Chat messages are checked here, so bad input raises at the call; tokenizing and templating wait
        for the worker thread.
        """
        _check_prompt(prompt)
        self._check_request(params, use_assistant)
        return _in_thread(
            lambda cancel: self.stream(
                prompt, params, use_assistant=use_assistant, on_round=on_round, cancel=cancel
            )
        )

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
        on_round: RoundListener | None,
        cancel: threading.Event | None,
    ) -> Generator[StreamDelta, None, None]:
        stats = SpeculationStats()
        stats.start(uuid.uuid4().hex, len(prompt_ids), used_assistant=use_assistant)
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
            DecodeRequest(stats.request_id, prompt_ids, params, budget, use_assistant, count)
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
                if finish is not None and stop_seq is None:
                    tail, stop_seq = stops.push(detok.flush())
                    text += tail + ("" if stop_seq else stops.flush())
                stats.record_round(rnd.drafted, rnd.accepted, len(kept))
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
                    ),
                    on_round,
                )
                if finish is None and cancel is not None and cancel.is_set():
                    finish = "cancelled"
                if finish is not None:
                    stats.finish()
                yield StreamDelta(text, kept, stats.snapshot(), finish, stop_seq)  # type: ignore[arg-type]
                if finish is not None:
                    return
                round_started = time.perf_counter()
        finally:
            rounds.close()

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
    ) -> tuple[list[int], SamplingParams, _ChatPrefix]:
        """Render and validate eagerly, so bad input raises in the caller before any decoding starts."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError(f"messages must be a list of role/content dicts, got {type(messages).__name__}")
        prefill = tool_call_prefill(tool_choice, tools)
        shown_tools = None if tool_choice == "none" else tools
        prompt_ids = self.encode(
            list(messages), tools=shown_tools, chat_template_kwargs=chat_template_kwargs, prefill=prefill
        )
        # The parser needs Gemma 4's markers (thinking channel, tool calls) in the text, and the end of the
        # prompt: some templates open the thinking channel in the generation prompt, and the prefill opens
        # a tool call. The parser reads only what follows the prompt's last model-turn anchor.
        chat_params = (params or SamplingParams()).with_overrides(skip_special_tokens=False)
        prompt_tail = self.tokenizer.decode(prompt_ids[-_PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        return prompt_ids, chat_params, _ChatPrefix(prompt_tail, prefill)

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
        cancel: threading.Event | None = None,
    ) -> Generator[ChatDelta, None, None]:
        """Render ``messages`` with the chat template; stream the answer parsed into text, thinking and tool calls.

        ``tools`` are OpenAI-style function specs. ``tool_choice="required"`` or a tool's name forces a
        call by prefilling Gemma 4's tool-call opener; ``"none"`` hides the tools from the model.
        """
        params = self._check_request(params, use_assistant)
        prompt_ids, chat_params, prefill = self._prepare_chat(
            messages, params, tools, tool_choice, chat_template_kwargs
        )
        deltas = self._stream_ids(prompt_ids, chat_params, use_assistant, on_round, cancel)
        return _parse_stream(deltas, prefill, len(prompt_ids))

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
        cancel: threading.Event | None = None,
    ) -> ChatResult:
        """Like :meth:`stream_chat`, returning the whole parsed answer."""
        deltas = self.stream_chat(
            messages,
            params,
            tools=tools,
            tool_choice=tool_choice,
            use_assistant=use_assistant,
            chat_template_kwargs=chat_template_kwargs,
            on_round=on_round,
            cancel=cancel,
        )
        return _collect_chat(list(deltas))

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
    ) -> AsyncGenerator[ChatDelta, None]:
        """Like :meth:`stream_chat`, on a worker thread (templating included); ``aclose()``, ``break`` or
        cancellation stops it.

        Messages, tools and ``tool_choice`` are checked here, so bad input raises at the call; rendering
        the chat template waits for the worker thread.
        """
        _check_chat_input(messages, tools, tool_choice)
        self._check_request(params, use_assistant)
        return _in_thread(
            lambda cancel: self.stream_chat(
                messages,
                params,
                tools=tools,
                tool_choice=tool_choice,
                use_assistant=use_assistant,
                chat_template_kwargs=chat_template_kwargs,
                on_round=on_round,
                cancel=cancel,
            )
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
    ) -> ChatResult:
        """Like :meth:`chat`, on a worker thread, so the event loop keeps running."""
        _check_chat_input(messages, tools, tool_choice)
        self._check_request(params, use_assistant)
        return await _cancellable_thread(
            lambda cancel: self.chat(
                messages,
                params,
                tools=tools,
                tool_choice=tool_choice,
                use_assistant=use_assistant,
                chat_template_kwargs=chat_template_kwargs,
                on_round=on_round,
                cancel=cancel,
            )
        )

    def __copy__(self) -> Runtime:
        """A runtime is a shared, loaded resource: copies are the runtime itself."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Runtime:
        return self


@dataclass(frozen=True)
class _ChatPrefix:
    prompt_tail: str  # the end of the rendered prompt, prefill included, as text with special tokens
    prefill: str  # text forced into the answer (a tool-call opener); part of the raw answer


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


def _check_chat_input(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None, tool_choice: str | None
) -> None:
    """The cheap checks of a chat request (no templating), for async calls to raise at the call site."""
    validate_messages(messages)
    tool_call_prefill(tool_choice, tools)


def _check_prompt(prompt: Prompt) -> None:
    if (
        not isinstance(prompt, str)
        and isinstance(prompt, Sequence)
        and prompt
        and isinstance(prompt[0], dict)
    ):
        validate_messages(prompt)  # type: ignore[arg-type]
    elif not isinstance(prompt, (str, Sequence)):
        raise TypeError(
            f"prompt must be a string, a list of token ids or a list of chat messages, got {type(prompt).__name__}"
        )


async def _cancellable_thread(call: Callable[[threading.Event], _T]) -> _T:
    """Run a blocking call on a worker thread; cancelling the awaiting task sets its cancel event."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(call, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise


async def _in_thread(make: Callable[[threading.Event], Iterator[_T]]) -> AsyncGenerator[_T, None]:
    """Run a blocking iterator on its own thread and hand its items to the event loop.

    The thread owns the iterator from start to end; leaving the ``async for`` early (break, ``aclose``,
    task cancellation) sets the cancel event, which the decoding loop checks between rounds.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(kind: str, item: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

    def produce() -> None:
        try:
            iterator = make(cancel)
            try:
                for item in iterator:
                    put("item", item)
                    if cancel.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # handed to the awaiting side, which re-raises it
            put("error", err)
        else:
            put("done", None)

    threading.Thread(target=produce, name="gemma-mtp-request", daemon=True).start()
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        cancel.set()
