"""Runtime answers (whole or streamed) as LlamaIndex ``ChatResponse``s.

Statistics go on the response (``raw`` and ``additional_kwargs``), never on the ``ChatMessage``: agents and
chat engines keep the message in memory and send it back to the model with the next turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

from gemma_mtp import ChatDelta, ChatResult, SpeculationStats, ToolCall

__all__ = ["StreamAccumulator", "assistant_message", "chat_response", "request_stats"]


def assistant_message(content: str, reasoning: str | None, tool_calls: Sequence[ToolCall]) -> ChatMessage:
    """The assistant's answer as blocks: thinking, text, then one ``ToolCallBlock`` per call.

    The calls are also listed, OpenAI-style, in ``additional_kwargs["tool_calls"]``, which parts of
    llama-index-core still read instead of the blocks (streaming structured output, chat engines).
    """
    blocks: list[Any] = []
    if reasoning:
        blocks.append(ThinkingBlock(content=reasoning))
    if content or not tool_calls:
        blocks.append(TextBlock(text=content))
    blocks.extend(
        ToolCallBlock(tool_call_id=call.id, tool_name=call.name, tool_kwargs=dict(call.arguments))
        for call in tool_calls
    )
    extra = {"tool_calls": [call.to_dict() for call in tool_calls]} if tool_calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def request_stats(
    model_name: str, stats: SpeculationStats, finish_reason: str | None, prompt_tokens: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` (with OpenAI-style ``usage``, which LlamaIndex's token counting reads) and the response's
    ``additional_kwargs``, both carrying the speculation statistics of the request so far."""
    speculation = stats.as_dict()
    completion_tokens = stats.generated_tokens
    raw = {
        "model": model_name,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            # OpenAI's name for prompt tokens read from a prefix cache.
            "prompt_tokens_details": {"cached_tokens": stats.cached_prompt_tokens},
        },
        "speculation": speculation,
    }
    return raw, {"finish_reason": finish_reason, "speculation": speculation}


def chat_response(model_name: str, result: ChatResult) -> ChatResponse:
    """A whole runtime answer as a ``ChatResponse``."""
    raw, extra = request_stats(model_name, result.stats, result.finish_reason, result.prompt_tokens)
    raw["raw_text"] = result.raw_text
    return ChatResponse(
        message=assistant_message(result.content, result.reasoning, result.tool_calls),
        raw=raw,
        additional_kwargs=extra,
    )


class StreamAccumulator:
    """Builds the cumulative ``ChatResponse`` LlamaIndex expects for each streamed delta.

    Each response's message holds everything so far (so that ``get_tool_calls_from_response`` works on any
    chunk), ``delta`` holds the new text, and ``additional_kwargs["thinking_delta"]`` the new thinking text,
    which is where ``FunctionAgent`` looks for it.
    """

    def __init__(self, model_name: str) -> None:
        self._model_name = model_name
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: list[ToolCall] = []

    def add(self, delta: ChatDelta) -> ChatResponse | None:
        """The response for ``delta``, or ``None`` when it brings nothing new and does not end the stream."""
        if not (delta.content or delta.reasoning or delta.tool_calls or delta.finish_reason):
            return None
        self._content.append(delta.content)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        self._tool_calls.extend(delta.tool_calls)
        raw, extra = request_stats(self._model_name, delta.stats, delta.finish_reason, delta.prompt_tokens)
        if delta.reasoning:
            extra["thinking_delta"] = delta.reasoning
        return ChatResponse(
            message=assistant_message(
                "".join(self._content), "".join(self._reasoning) or None, self._tool_calls
            ),
            delta=delta.content,
            raw=raw,
            additional_kwargs=extra,
        )
