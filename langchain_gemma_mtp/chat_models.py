"""``ChatGemmaMTP``: Gemma 4 with its MTP assistant as a LangChain chat model.

The model is a thin translation layer over :class:`gemma_mtp.Runtime`: decoding, chat templating and
answer parsing happen in the runtime, which the LlamaIndex adapter shares. This module turns LangChain
messages, tools and call options into a runtime request and the runtime's results and deltas into
LangChain messages and chunks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from gemma_mtp import ChatDelta, RoundStats, Runtime, SamplingParams
from gemma_mtp.backends import check_server_options
from gemma_mtp.media.processor import checkpoint_modalities
from gemma_mtp.names import did_you_mean
from gemma_mtp.params import caller_names
from gemma_mtp.streams import AsyncGuardedStream, GuardedStream, close_with_guard
from langchain_gemma_mtp._messages import to_runtime_messages
from langchain_gemma_mtp._output import chunk_from_delta, generation_from_result, llm_output
from langchain_gemma_mtp._structured import StructuredMethod, response_format_schema, structured_output
from langchain_gemma_mtp._summary import AsyncSummaryReporter, RunEvents, current_run_events, summary_relay
from langchain_gemma_mtp._tools import ToolLike, format_tools, normalize_tool_choice

__all__ = ["ChatGemmaMTP"]

_CALL_OPTIONS = frozenset(
    {"tools", "tool_choice", "chat_template_kwargs", "use_assistant", "model", "stream", "response_format"}
)
"""Per-call keyword arguments that are not sampling parameters. ``stream`` is LangChain's own switch
between the streaming and non-streaming paths; it reaches ``_generate`` / ``_stream`` and is ignored."""

_FIELD_TO_PARAM = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "num_assistant_tokens": "num_assistant_tokens",
    "stop": "stop",
}
"""Constructor fields that are sampling parameters, and their names in :class:`SamplingParams`."""

_PARAM_TO_FIELD = {param: name for name, param in _FIELD_TO_PARAM.items() if param != name}
"""Runtime field names that LangChain users know under another name, for error messages."""


_PROFILE = ModelProfile(
    open_weights=True,
    text_inputs=True,
    image_inputs=False,
    image_url_inputs=False,
    pdf_inputs=False,
    audio_inputs=False,
    video_inputs=False,
    image_tool_message=False,
    pdf_tool_message=False,
    text_outputs=True,
    image_outputs=False,
    audio_outputs=False,
    video_outputs=False,
    reasoning_output=True,
    tool_calling=True,
    tool_choice=True,
    tool_call_streaming=True,
    structured_output=True,
    temperature=True,
)


@dataclass(frozen=True)
class _Request:
    """Everything one call sends to the runtime, checked before any model work starts."""

    runtime: Runtime
    messages: list[dict[str, Any]]
    params: SamplingParams
    options: dict[str, Any]


class _RoundLog:
    """Rounds reported by the runtime's decoding thread, collected until the next chunk takes them."""

    def __init__(self) -> None:
        self._rounds: deque[RoundStats] = deque()

    def append(self, round_: RoundStats) -> None:
        self._rounds.append(round_)

    def drain(self) -> list[RoundStats]:
        drained: list[RoundStats] = []
        while self._rounds:
            drained.append(self._rounds.popleft())
        return drained


class ChatGemmaMTP(BaseChatModel):
    """Gemma 4 chat model decoded speculatively with its Multi-Token-Prediction assistant.

    Greedy output (``temperature=0``, the default) is token-for-token what the target model alone would
    write; sampled output follows the target's distribution exactly. The assistant only makes it faster.

    Setup:
        ``pip install "gemma-mtp[langchain]"``. Weights load on first use from the Hugging Face cache or a
        local folder, through the runtime's per-process cache: constructing the model is cheap, and two
        models (or a LangChain and a LlamaIndex model) naming the same pair share one copy of the weights.

    Instantiate:
        .. code-block:: python

            from langchain_gemma_mtp import ChatGemmaMTP

            llm = ChatGemmaMTP(model="google/gemma-4-E4B-it", max_tokens=512)  # assistant: ...-assistant
            llm = ChatGemmaMTP(runtime=my_runtime)                              # an already loaded pair

    Invoke and stream:
        .. code-block:: python

            msg = llm.invoke([("system", "Be brief."), ("human", "What is MTP?")])
            msg.response_metadata["speculation"]["acceptance_rate"]
            for chunk in llm.stream("Tell me about Gemma."):
                print(chunk.content, end="")

    Tool calling:
        .. code-block:: python

            agent_llm = llm.bind_tools([get_weather], tool_choice="auto")
            agent_llm.invoke("Weather in Paris?").tool_calls

    Structured output:
        .. code-block:: python

            llm.with_structured_output(Person).invoke("Ada Lovelace, 36")

    Acceptance statistics:
        Every response carries the request's speculation summary in ``response_metadata["speculation"]``;
        streamed chunks carry the rounds they contain in ``response_metadata["speculation_rounds"]``.
        :class:`~langchain_gemma_mtp.SpeculationCallbackHandler` aggregates both across calls.
    """

    model: str | None = None
    """Target checkpoint: a Hugging Face hub id or a local folder. Required unless ``runtime`` is given."""

    assistant: str | None = None
    """MTP assistant checkpoint; ``None`` resolves Google's naming (``<model>-assistant``)."""

    device: str | None = None
    """Device to load the pair on (``"cuda"``, ``"cpu"``, ...); ``None`` lets the runtime choose."""

    dtype: str | None = None
    """Weight dtype (``"bfloat16"``, ``"float32"``, ...); ``None`` lets the runtime choose."""

    backend: str = "transformers"
    """Decoding engine: ``"transformers"`` (in process), ``"vllm"`` (vLLM's engine in process, batching
    concurrent calls) or ``"openai"`` (a running OpenAI-compatible server such as ``vllm serve``)."""

    base_url: str | None = None
    """The server's URL for ``backend="openai"`` (e.g. ``"http://127.0.0.1:8000/v1"``)."""

    api_key: SecretStr | None = None
    """The server's API key for ``backend="openai"``, when it asks for one."""

    loader_options: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``Runtime.load``: ``from_pretrained`` options (transformers), engine
    arguments (vllm: ``tensor_parallel_size``, ``max_model_len``, ...), client options (openai)."""

    max_tokens: int | None = None
    """Most new tokens per answer; ``None`` takes the runtime's default."""

    temperature: float | None = None
    """Sampling temperature; ``0`` (the runtime's default) decodes greedily."""

    top_p: float | None = None
    """Nucleus sampling mass, in (0, 1]."""

    top_k: int | None = None
    """Sample from the k most likely tokens only; ``0`` disables the cut."""

    num_assistant_tokens: int | None = None
    """Pins the tokens the assistant drafts per round; ``None`` lets the runtime's draft policy decide each round."""

    seed: int | None = None
    """Seed for sampled decoding, for reproducible sampled answers."""

    stop: list[str] | None = None
    """Stop sequences: generation ends before the first one, which is not included in the answer."""

    use_assistant: bool = True
    """``False`` decodes with the target alone (same answers, slower): the baseline for comparisons."""

    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables for the tokenizer's chat template, e.g. ``{"enable_thinking": True}`` on Gemma 4."""

    streaming: bool = False
    """Whether ``invoke`` streams internally, so that callbacks receive every chunk."""

    runtime: Runtime | None = Field(default=None, exclude=True)
    """An already loaded :class:`gemma_mtp.Runtime` to use instead of loading ``model``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    _loaded: Runtime | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, values: Any) -> Any:
        """An unknown argument is refused (``extra="forbid"``), with the setting it is a near miss of."""
        if isinstance(values, dict):
            fields = cls.model_fields
            known = set(fields) | {f.alias for f in fields.values() if f.alias}
            unknown = {str(key) for key in values} - known
            if unknown:
                raise ValueError(
                    f"ChatGemmaMTP got unknown argument(s): {', '.join(sorted(unknown))}."
                    f"{did_you_mean(unknown, fields)} Settings: {', '.join(sorted(fields))}."
                )
        return values

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        """Fail at construction, before any weights load, on a missing model or a bad sampling value."""
        if self.runtime is None and not self.model:
            raise ValueError(
                "ChatGemmaMTP needs model= (a hub id such as 'google/gemma-4-E4B-it' or a local folder) "
                "or runtime= (a loaded gemma_mtp.Runtime)."
            )
        if self.runtime is not None:
            ignored = [
                name
                for name in ("assistant", "device", "dtype", "base_url", "api_key")
                if getattr(self, name) is not None
            ]
            if self.loader_options:
                ignored.append("loader_options")
            if self.backend != "transformers":
                ignored.append("backend")
            if ignored:
                one = len(ignored) == 1
                raise ValueError(
                    f"{', '.join(ignored)} only {'applies' if one else 'apply'} when ChatGemmaMTP loads the pair "
                    f"itself; with runtime= the pair is already loaded. Pass {'it' if one else 'them'} to "
                    "Runtime.load instead."
                )
        check_server_options(self.backend, self.base_url, None if self.api_key is None else "set")
        self._base_params()
        return self

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """Copies share the loaded pair: weights are a per-process resource, never duplicated."""
        memo = {} if memo is None else memo
        for runtime in (self.runtime, self._loaded):
            if runtime is not None:
                memo[id(runtime)] = runtime
        return super().__deepcopy__(memo)

    # -- identity ---------------------------------------------------------------------------------

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What this integration can do, for LangChain code that picks strategies from the profile.

        Reading it loads no weights. ``structured_output`` is ``True``: a ``response_format`` (OpenAI's
        ``json_schema`` / ``json_object`` shapes, or a schema) constrains the answer natively, in the runtime.
        The media keys (``image_inputs``, ``image_url_inputs``, ``image_tool_message``, ``audio_inputs``) are
        true when the checkpoint reads images or audio: the loaded runtime says so, else the checkpoint's config
        and processor files where they are on this machine (a hub id not downloaded yet reads as text only until
        the model is loaded: nothing is fetched for the profile).
        """
        profile = _PROFILE.copy()
        loaded = self.runtime or getattr(self, "_loaded", None)
        modalities: frozenset[str] | None = None
        if loaded is not None:
            modalities = loaded.media_modalities
        elif self.backend == "transformers":
            modalities = checkpoint_modalities(str(self.model), **self.loader_options)
        modalities = modalities or frozenset()
        image = "image" in modalities
        profile["image_inputs"] = profile["image_url_inputs"] = profile["image_tool_message"] = image
        profile["audio_inputs"] = "audio" in modalities
        return profile

    @property
    def _llm_type(self) -> str:
        return "gemma-mtp"

    @property
    def model_name(self) -> str:
        """The target's name as reported in ``response_metadata`` and traces (no weights are loaded)."""
        if self.model:
            return self.model
        assert self.runtime is not None  # the validator guarantees model or runtime
        return self.runtime.model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "assistant": self.assistant,
            "device": self.device,
            "dtype": self.dtype,
            "backend": self.backend if self.runtime is None else self.runtime.backend,
            "use_assistant": self.use_assistant,
            **{name: getattr(self, name) for name in _FIELD_TO_PARAM},
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "gemma_mtp"
        if "ls_model_name" not in params:
            params["ls_model_name"] = self.model_name
        if "ls_stop" not in params and self.stop:
            params["ls_stop"] = list(self.stop)
        return params

    # -- loading and request preparation ---------------------------------------------------------------

    def _runtime_for(self, model: str | None) -> Runtime:
        """The runtime serving this call: a per-call ``model`` override, the given one, or the lazy load."""
        if model is not None and model != self.model_name:
            return self._load(model, None)
        if self.runtime is not None:
            return self.runtime
        if self._loaded is None:
            # Runtime.load is thread-safe and cached: racing first calls get the same runtime back.
            self._loaded = self._load(self.model_name, self.assistant)
        return self._loaded

    def _load(self, model: str, assistant: str | None) -> Runtime:
        return Runtime.load(
            model,
            assistant,
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value() if self.api_key is not None else None,
            **self.loader_options,
        )

    def _runtime_is_ready(self, model: str | None) -> bool:
        """Whether ``_runtime_for(model)`` returns without loading weights (safe on an event loop)."""
        if model is not None and model != self.model_name:
            return False
        return self.runtime is not None or self._loaded is not None

    def _base_params(self) -> SamplingParams:
        values = {param: getattr(self, name) for name, param in _FIELD_TO_PARAM.items()}
        with caller_names(_PARAM_TO_FIELD):
            return SamplingParams(**{k: v for k, v in values.items() if v is not None})

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Request:
        """Check and translate one call, then find its runtime: bad input fails before any weights load."""
        translated, params, options = self._translate(messages, stop, kwargs)
        return _Request(self._runtime_for(kwargs.get("model")), translated, params, options)

    async def _aprepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Request:
        """``_prepare`` without loading weights on the event loop's thread."""
        translated, params, options = self._translate(messages, stop, kwargs)
        model = kwargs.get("model")
        if self._runtime_is_ready(model):
            runtime = self._runtime_for(model)
        else:
            runtime = await run_in_executor(None, self._runtime_for, model)
        return _Request(runtime, translated, params, options)

    def _translate(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], SamplingParams, dict[str, Any]]:
        """Runtime messages, sampling parameters and chat options for one call."""
        sampling = {k: v for k, v in kwargs.items() if k not in _CALL_OPTIONS}
        known = set(SamplingParams.__dataclass_fields__) | set(_FIELD_TO_PARAM)
        unknown = sorted(set(sampling) - known)
        if unknown:
            raise TypeError(
                f"ChatGemmaMTP got unknown call option(s) {unknown}.{did_you_mean(unknown, known | _CALL_OPTIONS)} "
                f"Call options: {sorted(_CALL_OPTIONS - {'stream'})}; sampling parameters: {sorted(known)}."
            )
        # Errors name the parameter as the caller wrote it: the field's name, unless this call used the
        # runtime's own name for it.
        renamed = {param: name for param, name in _PARAM_TO_FIELD.items() if param not in sampling}
        if "max_tokens" in sampling:
            sampling["max_new_tokens"] = sampling.pop("max_tokens")
        if kwargs.get("response_format") is not None:
            sampling["json_schema"] = response_format_schema(kwargs["response_format"])
        with caller_names(renamed):
            params = self._base_params().with_overrides(stop=stop, **sampling)
        tools = format_tools(kwargs.get("tools") or [])
        template_kwargs = {**(self.chat_template_kwargs or {}), **(kwargs.get("chat_template_kwargs") or {})}
        options = {
            "tools": tools or None,
            "tool_choice": normalize_tool_choice(kwargs.get("tool_choice"), tools),
            "use_assistant": kwargs.get("use_assistant", self.use_assistant),
            "chat_template_kwargs": template_kwargs or None,
        }
        return to_runtime_messages(messages), params, options

    # -- generation ---------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        relay = summary_relay(run_manager, self._call_model_name(kwargs))
        with relay.covering_rejections():
            request = self._prepare(messages, stop, kwargs)
        result = request.runtime.chat(
            request.messages, request.params, on_summary=relay.receive, **request.options
        )
        name = request.runtime.model_name
        return ChatResult(
            generations=[generation_from_result(result, name)], llm_output=llm_output(result, name)
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reporter = AsyncSummaryReporter(run_manager, self._call_model_name(kwargs))
        try:
            with reporter.relay.covering_rejections():
                request = await self._aprepare(messages, stop, kwargs)
            result = await request.runtime.achat(
                request.messages, request.params, on_summary=reporter.relay.receive, **request.options
            )
        finally:
            await reporter.aclose()
        name = request.runtime.model_name
        return ChatResult(
            generations=[generation_from_result(result, name)], llm_output=llm_output(result, name)
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        relay = summary_relay(run_manager, self._call_model_name(kwargs))
        with relay.covering_rejections():
            request = self._prepare(messages, stop, kwargs)
        rounds = _RoundLog()
        deltas = request.runtime.stream_chat(
            request.messages,
            request.params,
            on_round=rounds.append,
            on_summary=relay.receive,
            **request.options,
        )
        chunker = _Chunker(request.runtime.model_name, rounds)
        try:
            for delta in deltas:
                chunk = chunker.chunk(delta)
                if chunk is not None:
                    yield chunk
        finally:
            deltas.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        reporter = AsyncSummaryReporter(run_manager, self._call_model_name(kwargs))
        try:
            with reporter.relay.covering_rejections():
                request = await self._aprepare(messages, stop, kwargs)
            rounds = _RoundLog()
            deltas = request.runtime.astream_chat(
                request.messages,
                request.params,
                on_round=rounds.append,
                on_summary=reporter.relay.receive,
                **request.options,
            )
            # A stream left early is closed by the guard of ``astream``, never here: it reports on closing.
            close_with_guard(reporter)
            chunker = _Chunker(request.runtime.model_name, rounds)
            try:
                async for delta in deltas:
                    chunk = chunker.chunk(delta)
                    if chunk is not None:
                        yield chunk
            finally:
                await deltas.aclose()
        finally:
            await reporter.aclose()

    def _call_model_name(self, kwargs: dict[str, Any]) -> str:
        """The name a call reports: its per-call ``model`` override, or the model's."""
        model = kwargs.get("model")
        return model if isinstance(model, str) and model else self.model_name

    # LangChain's stream wrappers do not close the ``_stream`` generator they iterate when they are closed,
    # so the public streams come inside a guard: closing it cancels the runtime request explicitly. LangChain
    # does not hand ``_stream`` / ``_astream`` the run's manager either: the run's id is chosen here, and its
    # handlers configured as LangChain configures them, so that the request's summary reaches that run.

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """LangChain's ``stream``; ``close()`` on the returned iterator stops decoding after the round in progress."""
        parent = super().stream
        config, events = self._planned_run(config)
        return GuardedStream(
            lambda: parent(input, config, stop=stop, **kwargs), within=lambda: current_run_events(events)
        )

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """LangChain's ``astream``; ``aclose()`` on the returned iterator stops decoding after the round in
        progress."""
        parent = super().astream
        config, events = self._planned_run(config)
        return AsyncGuardedStream(
            lambda: parent(input, config, stop=stop, **kwargs), within=lambda: current_run_events(events)
        )

    def _planned_run(self, config: RunnableConfig | None) -> tuple[RunnableConfig, RunEvents]:
        """The config of a stream call with its run id fixed, and where that run's events go."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid4()
        config["run_id"] = run_id
        callbacks = CallbackManager.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )
        return config, RunEvents(callbacks, run_id)

    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """LangChain's call of ``_generate`` or, when streaming callbacks are attached, ``_stream`` (to which
        it does not pass ``run_manager``): both report the request's summary to ``run_manager``'s run."""
        with current_run_events(RunEvents.of(run_manager)):
            return super()._generate_with_cache(messages, stop, run_manager, **kwargs)

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """The async twin of :meth:`_generate_with_cache`."""
        with current_run_events(RunEvents.of(run_manager)):
            return await super()._agenerate_with_cache(messages, stop, run_manager, **kwargs)

    # -- tools and structured output ----------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Declare tools to the model through its chat template.

        Args:
            tools: LangChain tools, pydantic classes, functions, TypedDicts or OpenAI-format tool dicts.
            tool_choice: ``"auto"``/``None`` (the model decides), ``"none"``, ``"any"``/``"required"``/
                ``True`` (some tool must be called) or a tool name (that tool must be called).
            strict: Passed to ``convert_to_openai_tool`` for the declared schemas.
            kwargs: Further call options bound with the tools.
        """
        formatted = format_tools(tools, strict=strict)
        normalize_tool_choice(tool_choice, formatted)
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredMethod = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable that answers with an instance of ``schema`` (a dict for dict or TypedDict schemas).

        Args:
            schema: A pydantic class, a TypedDict, a JSON schema or an OpenAI tool dict.
            method: ``"function_calling"`` declares the schema as a tool and forces a call to it;
                ``"json_schema"`` constrains the answer text to the schema; ``"json_mode"`` constrains it to
                JSON (the schema's shape when one is given). All three are valid by construction, unless the
                answer reaches ``max_tokens`` first, which raises an ``OutputParserException`` saying so.
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of raising on a parse error.
            strict: Passed to ``convert_to_openai_tool`` for the declared schema.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported argument(s): {sorted(kwargs)}.")
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict)

    # -- token counting -----------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (loads the pair on first use)."""
        return list(self._runtime_for(None).tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens_from_messages(
        self,
        messages: list[BaseMessage],
        tools: Sequence[ToolLike] | None = None,
    ) -> int:
        """Prompt tokens of a conversation as the chat template renders it, tool declarations included."""
        formatted = format_tools(tools) if tools else None
        return self._runtime_for(None).count_prompt_tokens(to_runtime_messages(messages), tools=formatted)


class _Chunker:
    """Turns one stream's deltas into chunks, numbering tool calls across the whole stream."""

    def __init__(self, model_name: str, rounds: _RoundLog) -> None:
        self._model_name = model_name
        self._rounds = rounds
        self._tool_calls = 0

    def chunk(self, delta: ChatDelta) -> ChatGenerationChunk | None:
        """The chunk for ``delta``, or ``None`` when it carries neither text, calls, rounds nor the end."""
        rounds = self._rounds.drain()
        empty = not (delta.content or delta.reasoning or delta.tool_calls)
        if empty and not rounds and delta.finish_reason is None:
            return None
        chunk = chunk_from_delta(
            delta, model_name=self._model_name, first_tool_index=self._tool_calls, rounds=rounds
        )
        self._tool_calls += len(delta.tool_calls)
        return chunk
