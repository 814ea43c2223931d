"""``GemmaMTP``: Gemma 4 with its MTP assistant as a LlamaIndex function-calling LLM.

A thin layer over :class:`gemma_mtp.Runtime`: the runtime renders the chat template, decodes speculatively,
parses thinking and tool calls, and never blocks the event loop in its async methods. This class maps
LlamaIndex's types onto it and reports the speculation statistics as instrumentation events.

Every public method fires one set of LlamaIndex LLM events: the decorated methods call the undecorated
``_chat`` family, and completion is derived from those rather than from the decorated ``chat``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr, field_validator
from llama_index.core.constants import DEFAULT_NUM_OUTPUTS
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.function_program import FunctionCallingProgram, get_function_tool
from llama_index.core.prompts import PromptTemplate
from llama_index.core.types import PydanticProgramMode

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends import check_server_options
from gemma_mtp.constraints import truncated_output_message
from gemma_mtp.names import did_you_mean
from gemma_mtp.streams import AsyncGuardedStream, GuardedStream
from llama_index_gemma_mtp.events import RequestReporter
from llama_index_gemma_mtp.messages import to_openai_tools, to_runtime_messages, tool_selections
from llama_index_gemma_mtp.responses import StreamAccumulator, chat_response

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["GemmaMTP"]

_RUNTIME_OPTIONS = frozenset({"tools", "tool_choice", "chat_template_kwargs", "use_assistant"})
_SAMPLING_OPTIONS = frozenset(SamplingParams.__dataclass_fields__) - {"extra"}


@dataclass(frozen=True)
class _Request:
    """One call's conversation, sampling parameters and runtime options, validated before any model work."""

    messages: list[dict[str, Any]]
    params: SamplingParams
    options: dict[str, Any]


class GemmaMTP(FunctionCallingLLM):
    """Gemma 4 with speculative decoding by its Multi-Token-Prediction assistant, as a LlamaIndex LLM.

    Greedy output (``temperature=0``, the default) is token for token what the target model alone would
    produce; sampled output follows the target's distribution. The assistant only makes it faster.

    Examples:
        ```python
        from llama_index.core import Settings
        from llama_index_gemma_mtp import GemmaMTP

        llm = GemmaMTP(model="google/gemma-4-E2B-it", device="cuda", dtype="bfloat16")
        Settings.llm = llm
        Settings.tokenizer = llm.tokenizer  # pack prompts with Gemma's tokenizer, not a GPT one
        print(llm.complete("Why is the sky blue?"))
        ```

    Pass ``runtime=`` to share an already loaded :class:`gemma_mtp.Runtime` (for instance with the LangChain
    adapter); otherwise the pair is loaded on first use through ``Runtime.load``, whose per-process cache
    means two ``GemmaMTP`` instances with the same settings share one copy of the weights.
    """

    model: str = Field(description="Target checkpoint: a Hugging Face hub id or a local folder.")
    assistant: str | None = Field(
        default=None, description="MTP assistant checkpoint; defaults to the target id + '-assistant'."
    )
    device: str | None = Field(default=None, description="Device to load the pair on, e.g. 'cuda' or 'cpu'.")
    dtype: str | None = Field(
        default=None, description="Weights dtype, e.g. 'bfloat16'; the runtime picks if unset."
    )
    backend: str = Field(
        default="transformers",
        description="Decoding engine: 'transformers' (in process), 'vllm' (vLLM's engine in process, batching "
        "concurrent calls) or 'openai' (a running OpenAI-compatible server such as `vllm serve`).",
    )
    base_url: str | None = Field(
        default=None, description="The server's URL for backend='openai', e.g. 'http://127.0.0.1:8000/v1'."
    )
    api_key: str | None = Field(
        default=None, exclude=True, description="The server's API key for backend='openai', if it needs one."
    )
    loader_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments for Runtime.load: from_pretrained options (transformers), "
        "engine arguments (vllm: tensor_parallel_size, max_model_len, ...), client options (openai).",
    )
    max_new_tokens: int = Field(
        default=DEFAULT_NUM_OUTPUTS, description="Most tokens to generate per request."
    )
    temperature: float = Field(default=0.0, description="0 decodes greedily (exactly the target's output).")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass (1.0 disables it).")
    top_k: int = Field(default=0, description="Sample among the k most likely tokens (0 disables it).")
    num_assistant_tokens: int | None = Field(
        default=None,
        description="Pins the tokens drafted per round; unset, the runtime's draft policy decides each round.",
    )
    seed: int | None = Field(default=None, description="Seed for reproducible sampling.")
    stop: list[str] = Field(default_factory=list, description="Stop sequences (not included in the output).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra chat template variables, e.g. {'enable_thinking': True}."
    )

    _runtime: Runtime | None = PrivateAttr(default=None)

    def __init__(self, model: str | None = None, *, runtime: Runtime | None = None, **kwargs: Any) -> None:
        fields = type(self).model_fields
        unknown = set(kwargs) - set(fields) - {f.alias for f in fields.values() if f.alias}
        if unknown:  # LlamaIndex's models ignore unknown fields; a mistyped setting must not pass unnoticed
            raise TypeError(
                f"GemmaMTP got unexpected keyword argument(s): {', '.join(sorted(unknown))}."
                f"{did_you_mean(unknown, fields)} Settings: {', '.join(sorted(fields))}."
            )
        if runtime is not None:
            if not isinstance(runtime, Runtime):
                raise TypeError(f"runtime must be a gemma_mtp.Runtime, got {type(runtime).__name__}.")
            clashing = sorted(
                k
                for k in ("assistant", "device", "dtype", "loader_options", "base_url", "api_key")
                if kwargs.get(k)
            )
            if kwargs.get("backend", "transformers") != "transformers":
                clashing.append("backend")
            if clashing:
                one = len(clashing) == 1
                raise ValueError(
                    f"{', '.join(clashing)} only {'applies' if one else 'apply'} when GemmaMTP loads the model "
                    f"itself, not with runtime=: load the Runtime with {'it' if one else 'them'} instead."
                )
            # Describe the pair in the fields too, so that a serialized or unpickled copy loads the same one.
            model = model or runtime.model_name
            kwargs.update(
                assistant=runtime.assistant_name,
                device=str(runtime.device) if runtime.backend != "openai" else None,
                dtype=runtime.dtype,
                backend=runtime.backend,
            )
        elif not model:
            raise ValueError("Pass model= (a hub id or local folder of a Gemma 4 checkpoint) or runtime=.")
        super().__init__(model=model, **kwargs)
        check_server_options(self.backend, self.base_url, self.api_key)
        self._runtime = runtime
        self._sampling_params()

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_as_name(cls, value: Any) -> Any:
        """Accept ``torch.bfloat16`` as well as ``"bfloat16"``."""
        text = str(value) if value is not None and not isinstance(value, str) else value
        return text.removeprefix("torch.") if text is not None else None

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> GemmaMTP:
        """Copies share the loaded pair: the weights are a per-process resource, never duplicated."""
        memo = {} if memo is None else memo
        if self._runtime is not None:
            memo[id(self._runtime)] = self._runtime
        return super().__deepcopy__(memo)

    @classmethod
    def class_name(cls) -> str:
        return "GemmaMTP"

    @property
    def runtime(self) -> Runtime:
        """The loaded target + assistant pair (loaded on first use)."""
        if self._runtime is None:
            self._runtime = Runtime.load(
                self.model,
                self.assistant,
                backend=self.backend,
                device=self.device,
                dtype=self.dtype,
                base_url=self.base_url,
                api_key=self.api_key,
                **self.loader_options,
            )
        return self._runtime

    @property
    def tokenizer(self) -> Callable[[str], list[int]]:
        """This model's tokenizer as LlamaIndex expects one (text in, token ids out, no special tokens).

        LlamaIndex packs prompts (``PromptHelper``, text splitters, token counting) with ``Settings.tokenizer``,
        a process-wide setting that defaults to a GPT tokenizer and that an LLM cannot set for itself. Gemma's
        tokenizer counts differently, so set it once, or a long query can overflow the context window::

            Settings.tokenizer = llm.tokenizer
        """
        return partial(self.runtime.tokenizer.encode, add_special_tokens=False)

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` is the model's window less what the chat template adds around a system and a
        user message, so that LlamaIndex's prompt packing, which counts only the text, leaves room for it."""
        runtime = self.runtime
        return LLMMetadata(
            context_window=runtime.context_window - runtime.chat_overhead_tokens,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model,
        )

    # -- request preparation ------------------------------------------------------------------------------

    def _sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop),
            seed=self.seed,
            num_assistant_tokens=self.num_assistant_tokens,
        )

    def _request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Request:
        unknown = set(kwargs) - _RUNTIME_OPTIONS - _SAMPLING_OPTIONS
        if unknown:
            accepted = _RUNTIME_OPTIONS | _SAMPLING_OPTIONS
            raise TypeError(
                f"GemmaMTP got unexpected keyword argument(s): {', '.join(sorted(unknown))}."
                f"{did_you_mean(unknown, accepted)} Accepted: {', '.join(sorted(accepted))}."
            )
        options = {k: v for k, v in kwargs.items() if k in _RUNTIME_OPTIONS}
        sampling = {k: v for k, v in kwargs.items() if k in _SAMPLING_OPTIONS}
        if "tools" in options:
            options["tools"] = to_openai_tools(options["tools"])
        template_kwargs = {**self.chat_template_kwargs, **(options.get("chat_template_kwargs") or {})}
        options["chat_template_kwargs"] = template_kwargs or None
        return _Request(
            messages=to_runtime_messages(messages, self.system_prompt),
            params=self._sampling_params().with_overrides(**sampling),
            options=options,
        )

    # -- chat ---------------------------------------------------------------------------------------------
    #
    # LlamaIndex's callback decorator wraps a stream in its own generator, which does not close the stream
    # it wraps when it is closed. The public streaming methods therefore return a guard around the decorated
    # call: closing the guard cancels the runtime request explicitly, then closes LlamaIndex's generator.

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer; ``close()`` on the returned stream stops decoding after the round in progress."""
        return GuardedStream(lambda: self._traced_stream_chat(messages, **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Stream the answer; ``aclose()`` on the returned stream stops decoding after the round in progress."""
        return await AsyncGuardedStream.open(lambda: self._traced_astream_chat(messages, **kwargs))

    @llm_chat_callback()
    def _traced_stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def _traced_astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return await self._astream_chat(messages, **kwargs)

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        reporter = RequestReporter(self.model, active_span_id.get())
        with reporter.reporting_rejections():
            request = self._request(messages, kwargs)
            result = self.runtime.chat(
                request.messages,
                request.params,
                on_round=reporter.on_round,
                on_summary=reporter.on_summary,
                **request.options,
            )
        return chat_response(self.model, result)

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        reporter = RequestReporter(self.model, active_span_id.get())
        with reporter.reporting_rejections():
            request = self._request(messages, kwargs)
            result = await self.runtime.achat(
                request.messages,
                request.params,
                on_round=reporter.on_round,
                on_summary=reporter.on_summary,
                **request.options,
            )
        return chat_response(self.model, result)

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        reporter = RequestReporter(self.model, active_span_id.get())
        with reporter.reporting_rejections():
            request = self._request(messages, kwargs)
            # The runtime renders and checks the request here, so bad input raises at the call.
            deltas = self.runtime.stream_chat(
                request.messages,
                request.params,
                on_round=reporter.on_round,
                on_summary=reporter.on_summary,
                **request.options,
            )
        return deltas.map(StreamAccumulator(self.model).add)

    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        reporter = RequestReporter(self.model, active_span_id.get())
        with reporter.reporting_rejections():
            request = self._request(messages, kwargs)
            deltas = self.runtime.astream_chat(
                request.messages,
                request.params,
                on_round=reporter.on_round,
                on_summary=reporter.on_summary,
                **request.options,
            )
        return deltas.map(StreamAccumulator(self.model).add)

    # -- completion (derived from the undecorated chat methods) ---------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self._chat)(_checked_prompt(prompt), **kwargs)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream the completion; ``close()`` on the returned stream stops decoding after the round in progress."""
        return GuardedStream(lambda: self._traced_stream_complete(prompt, formatted, **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self._achat)(_checked_prompt(prompt), **kwargs)

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Stream the completion; ``aclose()`` on the returned stream stops decoding after the round in progress."""
        return await AsyncGuardedStream.open(
            lambda: self._traced_astream_complete(prompt, formatted, **kwargs)
        )

    @llm_completion_callback()
    def _traced_stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self._stream_chat)(_checked_prompt(prompt), **kwargs)

    @llm_completion_callback()
    async def _traced_astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self._astream_chat)(
            _checked_prompt(prompt), **kwargs
        )

    # -- function calling -----------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Chat arguments for a tool-calling turn; ``tool_required`` forces a call unless ``tool_choice``
        names the tool (or mode) already."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg)
                if isinstance(user_msg, str)
                else user_msg
            )
        specs = to_openai_tools(tools)
        if tool_choice is None and tool_required and specs:
            # One tool and one call wanted (structured prediction): force that tool, so the grammar allows
            # exactly one call to it.
            single = len(specs) == 1 and not allow_parallel_tool_calls
            tool_choice = specs[0]["function"]["name"] if single else "required"
        chat_kwargs: dict[str, Any] = {"messages": messages, "tools": specs, **kwargs}
        if tool_choice is not None:
            chat_kwargs["tool_choice"] = tool_choice
        return chat_kwargs

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls were allowed."""
        message = response.message
        calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
        if not allow_parallel_tool_calls and len(calls) > 1:
            message.blocks = [b for b in message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]]
            message.additional_kwargs["tool_calls"] = message.additional_kwargs["tool_calls"][:1]
        return response

    def _structured_stream_call(
        self,
        output_cls: type[BaseModel],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        if self.pydantic_program_mode not in (PydanticProgramMode.DEFAULT, PydanticProgramMode.FUNCTION):
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        program = _named_tool_program(self, output_cls, prompt)
        return program.stream_call(llm_kwargs=llm_kwargs, **prompt_args)

    async def _structured_astream_call(
        self,
        output_cls: type[BaseModel],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        if self.pydantic_program_mode not in (PydanticProgramMode.DEFAULT, PydanticProgramMode.FUNCTION):
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        program = _named_tool_program(self, output_cls, prompt)
        return await program.astream_call(llm_kwargs=llm_kwargs, **prompt_args)

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls in ``response``; streamed responses hold every call completed so far."""
        selections = tool_selections(response)
        if (
            not selections
            and error_on_no_tool_call
            and response.raw
            and response.raw.get("finish_reason") == "length"
        ):
            limit = (response.raw.get("speculation") or {}).get("length_limit")
            raise ValueError(truncated_output_message("tool call", "max_new_tokens", limit))
        if not selections and error_on_no_tool_call:
            raise ValueError(
                "Expected at least one tool call in the model's response, got none. "
                f"Response text: {response.message.content!r}"
            )
        return selections


def _named_tool_program(llm: GemmaMTP, output_cls: type[BaseModel], prompt: PromptTemplate) -> Any:
    """The function-calling program of ``output_cls`` with its tool forced by name, so that streamed structured
    prediction is constrained like the non-streamed one (llama-index-core streams with ``tool_choice=None``)."""
    tool = get_function_tool(output_cls)
    return FunctionCallingProgram.from_defaults(
        output_cls=output_cls, prompt=prompt, llm=llm, tool_choice=tool.metadata.name
    )


def _checked_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}; use chat() for messages.")
    return prompt
