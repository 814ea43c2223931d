"""LangChain messages to runtime chat messages: roles, blocks, tool calls and results, bad input."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_gemma_mtp._messages import to_runtime_messages


def test_roles_and_plain_text() -> None:
    converted = to_runtime_messages(
        [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("bye")]
    )
    assert converted == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]


def test_consecutive_same_role_messages_stay_separate_turns() -> None:
    converted = to_runtime_messages([HumanMessage("a"), HumanMessage("b"), AIMessage("c"), AIMessage("d")])
    assert [m["role"] for m in converted] == ["user", "user", "assistant", "assistant"]


def test_text_blocks_and_plain_strings_in_lists_become_text_blocks() -> None:
    message = HumanMessage(content=[{"type": "text", "text": "one"}, "two"])
    assert to_runtime_messages([message]) == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]


def test_ai_message_tool_calls_become_function_calls_with_dict_arguments() -> None:
    ai = AIMessage(
        content=[
            {"type": "text", "text": "let me check"},
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}],
    )
    (converted,) = to_runtime_messages([ai])
    assert converted == {
        "role": "assistant",
        "content": [{"type": "text", "text": "let me check"}],
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    }


def test_tool_message_carries_its_call_id_and_name_when_set() -> None:
    without_name = ToolMessage('{"result": 3}', tool_call_id="abc")
    with_name = ToolMessage("sunny", tool_call_id="x", name="get_weather")
    assert to_runtime_messages([without_name, with_name]) == [
        {"role": "tool", "content": '{"result": 3}', "tool_call_id": "abc"},
        {"role": "tool", "content": "sunny", "tool_call_id": "x", "name": "get_weather"},
    ]


def test_reasoning_is_passed_back_from_additional_kwargs_and_from_v1_blocks() -> None:
    v0 = AIMessage("answer", additional_kwargs={"reasoning_content": "because"})
    v1 = AIMessage(content=[{"type": "reasoning", "reasoning": "since"}, {"type": "text", "text": "answer"}])
    first, second = to_runtime_messages([v0, v1])
    assert first["reasoning_content"] == "because"
    assert second == {
        "role": "assistant",
        "content": [{"type": "text", "text": "answer"}],
        "reasoning_content": "since",
    }


def test_chat_message_roles_are_mapped() -> None:
    converted = to_runtime_messages(
        [ChatMessage(role="developer", content="rules"), ChatMessage(role="ai", content="ok")]
    )
    assert converted == [{"role": "system", "content": "rules"}, {"role": "assistant", "content": "ok"}]


def test_unknown_chat_message_role_is_rejected() -> None:
    with pytest.raises(ValueError, match="critic"):
        to_runtime_messages([ChatMessage(role="critic", content="meh")])


def test_unknown_message_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="FunctionMessage"):
        to_runtime_messages([FunctionMessage(name="f", content="x")])


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ),
        ({"type": "image", "base64": "AAAA", "mime_type": "image/png"}, {"type": "image", "base64": "AAAA"}),
        (
            {"type": "image", "url": "https://example.com/cat.png"},
            {"type": "image", "url": "https://example.com/cat.png"},
        ),
        (
            {"type": "image", "source_type": "base64", "data": "AAAA", "mime_type": "image/png"},
            {"type": "image", "base64": "AAAA"},
        ),
        (
            {"type": "image", "source_type": "url", "url": "https://x/c.png"},
            {"type": "image", "url": "https://x/c.png"},
        ),
        ({"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}, {"type": "audio", "base64": "AAAA"}),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ),
    ],
)
def test_media_blocks_become_runtime_blocks(block: dict, expected: dict) -> None:
    message = HumanMessage(content=[{"type": "text", "text": "what is this?"}, block])
    (converted,) = to_runtime_messages([message])
    assert converted["content"] == [{"type": "text", "text": "what is this?"}, expected]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"type": "file", "base64": "AAAA", "mime_type": "application/pdf"}, "reads text, images and audio"),
        ({"type": "image", "file_id": "file-123"}, "provider's file id"),
        ({"type": "audio", "mime_type": "audio/wav"}, "without data"),
    ],
)
def test_unreadable_blocks_are_rejected_with_advice(block: dict, match: str) -> None:
    message = HumanMessage(content=[{"type": "text", "text": "what is this?"}, block])
    with pytest.raises(ValueError, match=match):
        to_runtime_messages([message])


def test_unknown_block_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="'hologram'"):
        to_runtime_messages([HumanMessage(content=[{"type": "hologram"}])])


def test_empty_conversation_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        to_runtime_messages([])
