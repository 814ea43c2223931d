"""Runtime results and deltas to LangChain messages, generations and chunks.

LangChain adds streamed chunks together, and its merge rules shape what each chunk may carry: equal
keys in ``response_metadata`` / ``generation_info`` are summed when they are integers, concatenated when
they are strings and rejected when they are unequal floats, while lists are appended. So a stream
carries the per-round figures as a list (``speculation_rounds``, appended into the full round log) on
the chunks where rounds happened, and everything that describes the whole request (usage, model name,
finish reason, the speculation summary) on the last chunk only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk

from gemma_mtp import ChatDelta, ChatResult, RoundStats, SpeculationStats, ToolCall
from gemma_mtp.chat import MalformedToolCallError

__all__ = [
    "ROUNDS_KEY",
    "SUMMARY_KEY",
    "chunk_from_delta",
    "generation_from_result",
    "llm_output",
]

SUMMARY_KEY = "speculation"
"""``response_metadata`` / ``generation_info`` / ``llm_output`` key of the request's statistics."""

ROUNDS_KEY = "speculation_rounds"
"""``generation_info`` key of the rounds that ran since the previous chunk (a list of dicts)."""


def generation_from_result(result: ChatResult, model_name: str) -> ChatGeneration:
    """One finished request as a generation whose message has tool calls, reasoning and usage."""
    message = AIMessage(
        content=result.content,
        additional_kwargs=_reasoning_kwargs(result.reasoning),
        tool_calls=[_lc_tool_call(call) for call in result.tool_calls],
        invalid_tool_calls=[_lc_invalid_tool_call(error) for error in result.malformed_tool_calls],
        usage_metadata=_usage(result.prompt_tokens, result.stats),
    )
    return ChatGeneration(
        message=message,
        generation_info=_request_info(result.finish_reason, model_name, result.stats),
    )


def llm_output(result: ChatResult, model_name: str) -> dict[str, Any]:
    """What a non-streaming call reports beside its generation (LangChain's ``llm_output``)."""
    return {"model_name": model_name, SUMMARY_KEY: result.stats.as_dict()}


def chunk_from_delta(
    delta: ChatDelta,
    *,
    model_name: str,
    first_tool_index: int,
    rounds: Sequence[RoundStats],
) -> ChatGenerationChunk:
    """One streamed delta as a chunk.

    ``first_tool_index`` is the number of tool calls streamed before this delta, so that every call
    keeps its own ``index`` when LangChain merges ``tool_call_chunks``. ``rounds`` are the speculation
    rounds that completed since the previous chunk.
    """
    last = delta.finish_reason is not None
    message = AIMessageChunk(
        content=delta.content,
        additional_kwargs=_reasoning_kwargs(delta.reasoning),
        tool_call_chunks=[
            _lc_tool_call_chunk(call, first_tool_index + offset)
            for offset, call in enumerate(delta.tool_calls)
        ],
        invalid_tool_calls=[_lc_invalid_tool_call(error) for error in delta.malformed_tool_calls],
        usage_metadata=_usage(delta.prompt_tokens, delta.stats) if last else None,
        chunk_position="last" if last else None,
    )
    info: dict[str, Any] = {}
    if rounds:
        info[ROUNDS_KEY] = [round_.as_dict() for round_ in rounds]
    if last:
        info.update(_request_info(delta.finish_reason, model_name, delta.stats))
    return ChatGenerationChunk(message=message, generation_info=info or None)


def _request_info(finish_reason: str | None, model_name: str, stats: SpeculationStats) -> dict[str, Any]:
    return {"finish_reason": finish_reason, "model_name": model_name, SUMMARY_KEY: stats.as_dict()}


def _usage(prompt_tokens: int, stats: SpeculationStats) -> UsageMetadata:
    """Token counts; ``input_token_details["cache_read"]`` are the prompt tokens the engine did not process
    again (its prefix cache), where LangChain's own providers report cached prompt tokens."""
    output_tokens = stats.generated_tokens
    return UsageMetadata(
        input_tokens=prompt_tokens,
        output_tokens=output_tokens,
        total_tokens=prompt_tokens + output_tokens,
        input_token_details=InputTokenDetails(cache_read=stats.cached_prompt_tokens),
    )


def _reasoning_kwargs(reasoning: str | None) -> dict[str, Any]:
    """Gemma 4's thinking channel, where langchain-core reads it into a ``reasoning`` content block."""
    return {"reasoning_content": reasoning} if reasoning else {}


def _lc_tool_call(call: ToolCall) -> Any:
    return tool_call(name=call.name, args=dict(call.arguments), id=call.id)


def _lc_invalid_tool_call(error: MalformedToolCallError) -> Any:
    """A call the model wrote but that cannot be read: LangChain's place for it (its text stays in content)."""
    return invalid_tool_call(name=None, args=error.text, id=None, error=error.reason)


def _lc_tool_call_chunk(call: ToolCall, index: int) -> Any:
    return tool_call_chunk(
        name=call.name,
        args=json.dumps(call.arguments, ensure_ascii=False),
        id=call.id,
        index=index,
    )
