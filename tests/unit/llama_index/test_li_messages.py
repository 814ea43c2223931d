"""Mapping LlamaIndex messages to the runtime's message dicts, and runtime answers back to ChatResponses."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import (
    CacheControl,
    CachePoint,
    ChatMessage,
    ChatResponse,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.tools import FunctionTool

from gemma_mtp import ChatResult, SpeculationStats, ToolCall
from llama_index_gemma_mtp.messages import to_openai_tools, to_runtime_messages, tool_selections
from llama_index_gemma_mtp.responses import chat_response


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_roles_and_text_blocks_map_to_hf_messages() -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="first"), TextBlock(text="second")]),
        ChatMessage(role=MessageRole.ASSISTANT, content="ok"),
        ChatMessage(role=MessageRole.MODEL, content="also the model"),
    ]
    assert to_runtime_messages(messages, None) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first\nsecond"},
        {"role": "assistant", "content": "ok"},
        {"role": "assistant", "content": "also the model"},
    ]


def test_cache_points_are_ignored() -> None:
    cache = CachePoint(cache_control=CacheControl(type="ephemeral"))
    message = ChatMessage(role="user", blocks=[TextBlock(text="hi"), cache])
    assert to_runtime_messages([message], None) == [{"role": "user", "content": "hi"}]


def test_system_prompt_is_prepended_once() -> None:
    user = ChatMessage(role="user", content="hi")
    assert to_runtime_messages([user], "Be brief.")[0] == {"role": "system", "content": "Be brief."}
    already = [ChatMessage(role="system", content="Be brief."), user]
    assert [m["role"] for m in to_runtime_messages(already, "Be brief.")] == ["system", "user"]
    other = [ChatMessage(role="system", content="Answer in French."), user]
    merged = to_runtime_messages(other, "Be brief.")
    assert merged[0] == {"role": "system", "content": "Be brief.\n\nAnswer in French."}
    assert len(merged) == 2


def test_tool_calls_thinking_and_results_map_to_hf_messages() -> None:
    messages = [
        ChatMessage(role="user", content="2 + 3?"),
        ChatMessage(
            role="assistant",
            blocks=[
                ThinkingBlock(content="I should add."),
                ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs={"a": 2, "b": 3}),
            ],
        ),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    converted = to_runtime_messages(messages, None)
    assert converted[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "id": "call_1", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
        ],
        "reasoning_content": "I should add.",
    }
    assert converted[2] == {"role": "tool", "content": "5", "tool_call_id": "call_1"}


def test_converted_tool_conversation_renders_with_the_real_template(runtime) -> None:
    messages = [
        ChatMessage(role="user", content="2 + 3?"),
        ChatMessage(
            role="assistant",
            blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs='{"a": 2, "b": 3}')],
        ),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    tools = to_openai_tools([FunctionTool.from_defaults(fn=add)])
    prompt = runtime.tokenizer.decode(runtime.encode(to_runtime_messages(messages, None), tools=tools))
    assert "<|tool>declaration:add{" in prompt
    assert "<|tool_call>call:add{a:2,b:3}<tool_call|>" in prompt
    assert '<|tool_response>response:add{value:<|"|>5<|"|>}<tool_response|>' in prompt


def test_unreadable_blocks_are_rejected_with_the_message_index() -> None:
    document = DocumentBlock(data=b"%PDF-1.4", document_mimetype="application/pdf")
    with pytest.raises(
        ValueError,
        match=r"messages\[1\] \(user\) contains a DocumentBlock; GemmaMTP takes text .*ImageBlock and AudioBlock",
    ):
        to_runtime_messages(
            [ChatMessage(role="user", content="a"), ChatMessage(role="user", blocks=[document])], None
        )


def test_image_blocks_become_bytes_in_block_order() -> None:
    image = ImageBlock(image=b"\x89PNG-bytes")
    (converted,) = to_runtime_messages(
        [ChatMessage(role="user", blocks=[TextBlock(text="a"), image, TextBlock(text="b")])], None
    )
    assert converted["content"] == [
        {"type": "text", "text": "a"},
        {"type": "image", "image": b"\x89PNG-bytes"},
        {"type": "text", "text": "b"},
    ]


def test_tool_calls_outside_assistant_messages_are_rejected() -> None:
    block = ToolCallBlock(tool_name="add", tool_kwargs={})
    with pytest.raises(ValueError, match=r"messages\[0\] \(user\) has a ToolCallBlock"):
        to_runtime_messages([ChatMessage(role="user", blocks=[block])], None)


@pytest.mark.parametrize("bad", ["hello", ChatMessage(role="user", content="hi"), 42])
def test_messages_must_be_a_sequence_of_chat_messages(bad: object) -> None:
    with pytest.raises(TypeError, match="messages must be a sequence of ChatMessage"):
        to_runtime_messages(bad, None)  # type: ignore[arg-type]


def test_each_message_must_be_a_chat_message() -> None:
    with pytest.raises(TypeError, match=r"messages\[0\] must be a ChatMessage, got dict"):
        to_runtime_messages([{"role": "user", "content": "hi"}], None)  # type: ignore[list-item]


def test_empty_conversation_is_rejected() -> None:
    with pytest.raises(ValueError, match="messages is empty"):
        to_runtime_messages([], "system prompt alone is not a conversation")


def test_tools_convert_from_llama_index_tools_and_pass_dicts_through() -> None:
    spec = {"type": "function", "function": {"name": "noop", "description": "Nothing.", "parameters": {}}}
    converted = to_openai_tools([FunctionTool.from_defaults(fn=add), spec])
    assert converted[0]["function"]["name"] == "add"
    assert converted[0]["function"]["parameters"]["required"] == ["a", "b"]
    assert converted[1] is spec
    assert to_openai_tools([]) is None
    with pytest.raises(
        TypeError, match=r"tools\[0\] must be a LlamaIndex tool or an OpenAI-format dict"
    ) as caught:
        to_openai_tools([add])
    assert "FunctionTool.from_defaults(fn=add)" in str(caught.value)
    with pytest.raises(TypeError, match=r"got int\.$"):
        to_openai_tools([3])


def _result(
    content: str = "", tool_calls: list[ToolCall] | None = None, reasoning: str | None = None
) -> ChatResult:
    stats = SpeculationStats(request_id="r1", prompt_tokens=7)
    stats.record_round(drafted=3, accepted=2, emitted=3)
    return ChatResult(
        content=content,
        reasoning=reasoning,
        tool_calls=tool_calls or [],
        finish_reason="tool_calls" if tool_calls else "stop",
        stats=stats,
        raw_text="raw",
        token_ids=[1, 2, 3],
        prompt_tokens=7,
    )


def test_chat_response_carries_blocks_and_statistics_off_the_message() -> None:
    call = ToolCall(id="call_9", name="add", arguments={"a": 1, "b": 2})
    response = chat_response("kit", _result("Let me add.", [call], reasoning="Adding is right."))
    blocks = response.message.blocks
    assert [type(b) for b in blocks] == [ThinkingBlock, TextBlock, ToolCallBlock]
    assert response.message.content == "Let me add."
    assert response.message.additional_kwargs == {"tool_calls": [call.to_dict()]}
    assert response.raw["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert response.raw["speculation"]["accepted_tokens"] == 2
    assert response.additional_kwargs["speculation"]["drafted_tokens"] == 3
    assert response.additional_kwargs["finish_reason"] == "tool_calls"


def test_tool_only_answer_has_no_empty_text_block_and_plain_answer_keeps_one() -> None:
    call = ToolCall(id="c", name="add", arguments={})
    assert not any(isinstance(b, TextBlock) for b in chat_response("kit", _result("", [call])).message.blocks)
    assert chat_response("kit", _result("")).message.content == ""


def test_tool_selections_read_tool_call_blocks() -> None:
    call = ToolCall(id="call_9", name="add", arguments={"a": 1, "b": 2})
    selections = tool_selections(chat_response("kit", _result("", [call])))
    assert [(s.tool_id, s.tool_name, s.tool_kwargs) for s in selections] == [
        ("call_9", "add", {"a": 1, "b": 2})
    ]


def test_tool_selections_read_json_string_arguments_even_when_cut_off() -> None:
    whole = ChatMessage(
        role="assistant", blocks=[ToolCallBlock(tool_name="add", tool_kwargs='{"a": 1, "b": 2}')]
    )
    partial = ChatMessage(
        role="assistant", blocks=[ToolCallBlock(tool_name="add", tool_kwargs='{"a": 1, "b": 2')]
    )
    assert tool_selections(ChatResponse(message=whole))[0].tool_kwargs == {"a": 1, "b": 2}
    assert tool_selections(ChatResponse(message=partial))[0].tool_kwargs == {"a": 1, "b": 2}
    assert tool_selections(ChatResponse(message=partial))[0].tool_id == "add"
