"""The runtime: one loaded target/assistant pair shared by every caller, and the request API.

``Runtime.load`` caches by (target, assistant, device, dtype, loader options), so two adapters or two
chains that ask for the same pair share one copy of the weights. Requests are independent (each owns
its KV cache); forward passes are serialised by a lock, so concurrent callers interleave round by
round on the same weights and get the same results as if they ran alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from gemma_mtp.chat import StreamingResponseParser, render_chat, tool_call_prefill, validate_messages
from gemma_mtp.detokenize import IncrementalDetokenizer, StopMatcher
from gemma_mtp.families import family_of
from gemma_mtp.loading import LoadedPair, load_pair, resolve_device, resolve_dtype, resolve_names
from gemma_mtp.modeling import Drafter, TargetStep
from gemma_mtp.params import SamplingParams
from gemma_mtp.results import (
    ChatDelta,
    ChatFinishReason,
    ChatResult,
    FinishReason,
    GenerationResult,
    StreamDelta,
)
from gemma_mtp.speculative import Round, SpeculativeDecoder
from gemma_mtp.stats import RoundListener, RoundStats, SpeculationStats

__all__ = ["Prompt", "Runtime"]

Prompt = str | Sequence[int] | Sequence[dict[str, Any]]
_T = TypeVar("_T")
_PROMPT_TAIL_TOKENS = 64


class Runtime:
    """A loaded Gemma 4 target + MTP assistant pair and everything needed to decode with it."""

    _cache: ClassVar[dict[tuple[Any, ...], Runtime]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, pair: LoadedPair):
        self._pair = pair
        self._lock = threading.RLock()
        self._listeners: list[RoundListener] = []
        self._target_step = TargetStep(pair.target)
        self._drafter = Drafter(pair.assistant, self._target_step.embed)
        text_config = pair.target.config.get_text_config()
        self.context_window: int = int(text_config.max_position_embeddings)
        self.vocab_size: int = int(text_config.vocab_size)
        self.eos_token_ids: frozenset[int] = self._end_of_generation_ids()
        self.default_draft_length: int = self._default_draft_length()

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        target: str,
        assistant: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **loader_options: Any,
    ) -> Runtime:
        """Load a pair (or return the one this process already loaded with the same arguments).

        ``assistant=None`` follows Google's naming (``<target>-assistant``); ``"gemma-mtp-mini"`` is
        the small pair shipped inside the package. ``loader_options`` go to ``from_pretrained``
        (``attn_implementation``, ``device_map``, ``revision``, ...).
        """
        target_name, assistant_name = resolve_names(target, assistant)
        resolved_device = resolve_device(device)
        key = (
            target_name,
            assistant_name,
            str(resolved_device),
            str(resolve_dtype(dtype, resolved_device)),
            tuple(sorted((k, repr(v)) for k, v in loader_options.items())),
        )
        with cls._cache_lock:
            if key not in cls._cache:
                pair = load_pair(
                    target_name, assistant_name, device=resolved_device, dtype=dtype, **loader_options
                )
                cls._cache[key] = cls(pair)
            return cls._cache[key]

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every loaded pair (their memory is freed once nothing else refers to them)."""
        with cls._cache_lock:
            cls._cache.clear()

    # -- what users may need ---------------------------------------------------------------------

    @property
    def target(self) -> Any:
        return self._pair.target

    @property
    def assistant(self) -> Any:
        return self._pair.assistant

    @property
    def tokenizer(self) -> Any:
        return self._pair.tokenizer

    @property
    def model_name(self) -> str:
        return self._pair.target_name

    @property
    def assistant_name(self) -> str:
        return self._pair.assistant_name

    @property
    def device(self) -> torch.device:
        return self._target_step.device

    def add_listener(self, listener: RoundListener) -> None:
        """Call ``listener(RoundStats)`` after every round of every request on this runtime."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: RoundListener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def _end_of_generation_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.target.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else source)
        return frozenset(int(i) for i in ids)

    def _default_draft_length(self) -> int:
        configured = self.assistant.generation_config.to_diff_dict().get("num_assistant_tokens")
        if configured:
            return int(configured)
        text_config = self.target.config.get_text_config()
        return family_of(
            text_config.hidden_size, bool(getattr(text_config, "enable_moe_block", False))
        ).draft_length

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
        prompt_ids = self.encode(prompt)
        return self._stream_ids(prompt_ids, params or SamplingParams(), use_assistant, on_round, cancel)

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
        prompt_ids = self.encode(prompt)
        deltas = list(
            self._stream_ids(prompt_ids, params or SamplingParams(), use_assistant, on_round, cancel)
        )
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
        return _in_thread(
            lambda cancel: self.stream(
                prompt, params, use_assistant=use_assistant, on_round=on_round, cancel=cancel
            )
        )

    def _stream_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        use_assistant: bool,
        on_round: RoundListener | None,
        cancel: threading.Event | None,
    ) -> Generator[StreamDelta, None, None]:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        stats = SpeculationStats()
        stats.start(uuid.uuid4().hex, len(prompt_ids), used_assistant=use_assistant)
        eos = frozenset() if params.ignore_eos else self.eos_token_ids | set(params.stop_token_ids)
        detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
        stops = StopMatcher(params.stop)
        budget = min(params.max_new_tokens, self.context_window - len(prompt_ids))
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()

        def count(kind: str) -> None:
            if kind == "target":
                stats.target_forward_passes += 1
            else:
                stats.assistant_forward_passes += 1

        rounds = self._rounds(prompt_ids, params, budget, generator, count, use_assistant)
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

    def _rounds(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        budget: int,
        generator: torch.Generator,
        count_forward: Callable[[str], None],
        use_assistant: bool,
    ) -> Generator[Round, None, None]:
        """The decoding rounds of one request (the testing kit's scripted answers stand in here)."""
        decoder = SpeculativeDecoder(self._target_step, self._drafter if use_assistant else None, self._lock)
        draft_length = params.num_assistant_tokens or self.default_draft_length
        return decoder.run(prompt_ids, params, draft_length, budget, generator, count_forward)

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
