"""The kit's Gemma 4 chat template, message checks, rendering to token ids and tool-call prefills."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pytest

from gemma_mtp.chat import (
    END_OF_TURN_MARKERS,
    TOOL_CALL_CLOSE,
    format_tool_arguments,
    parse_response,
    render_chat,
    render_chat_text,
    tool_call_prefill,
    validate_messages,
    validate_tools,
)
from gemma_mtp.testing.tokenizer import build_tokenizer

D = '<|"|>'

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "nullable": True},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}},
                    "required": ["lat"],
                },
            },
            "required": ["city"],
        },
    },
}
WEATHER_DECLARATION = (
    f"<|tool>declaration:get_weather{{description:{D}Current weather for a city{D},parameters:{{properties:{{"
    f"city:{{description:{D}City name{D},type:{D}STRING{D}}},"
    f"days:{{nullable:true,type:{D}INTEGER{D}}},"
    f"tags:{{items:{{type:{D}STRING{D}}},type:{D}ARRAY{D}}},"
    f"unit:{{enum:[{D}celsius{D},{D}fahrenheit{D}],type:{D}STRING{D}}},"
    f"where:{{properties:{{lat:{{type:{D}NUMBER{D}}}}},required:[{D}lat{D}],type:{D}OBJECT{D}}}}},"
    f"required:[{D}city{D}],type:{D}OBJECT{D}}}}}<tool|>"
)
NO_PARAMETERS_TOOL = {
    "type": "function",
    "function": {"name": "now", "description": "The time", "parameters": {}},
}
UNTYPED_PARAMETERS_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Ping",
        "parameters": {"properties": {"host": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def _text(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))


def _tool_round(arguments: dict[str, Any] | str, result: Any = "Sunny, 21 C") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


# --------------------------------------------------------------------------------------------------- the template


def test_user_turn_and_generation_prompt(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "  Hello!  "}]
    assert _text(tokenizer, messages) == "<bos><|turn>user\nHello!<turn|>\n"
    assert (
        _text(tokenizer, messages, add_generation_prompt=True)
        == "<bos><|turn>user\nHello!<turn|>\n<|turn>model\n"
    )


def test_system_turn_thinking_and_history(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<|channel>thought\nold thoughts<channel|>Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert _text(tokenizer, messages, add_generation_prompt=True, enable_thinking=True) == (
        "<bos><|turn>system\n<|think|>\nBe brief.<turn|>\n"
        "<|turn>user\nHi<turn|>\n<|turn>model\nHello.<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n"
    )
    assert _text(tokenizer, messages[1:2], enable_thinking=True) == (
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n"
    )


def test_tool_declarations(tokenizer: Any) -> None:
    rendered = _text(
        tokenizer,
        [{"role": "user", "content": "Hi"}],
        tools=[WEATHER_TOOL, NO_PARAMETERS_TOOL, UNTYPED_PARAMETERS_TOOL],
    )
    assert rendered == (
        "<bos><|turn>system\n"
        + WEATHER_DECLARATION
        + f"<|tool>declaration:now{{description:{D}The time{D}}}<tool|>"
        + f"<|tool>declaration:ping{{description:{D}Ping{D},parameters:{{properties:{{host:{{type:{D}STRING{D}}}}}}}}}<tool|>"
        + "<turn|>\n<|turn>user\nHi<turn|>\n"
    )


def test_tool_call_result_and_answer_share_one_model_turn(tokenizer: Any) -> None:
    arguments = {
        "city": "Paris",
        "days": 3,
        "exact": True,
        "where": {"lat": 48.85, "zone": None},
        "tags": ["a"],
    }
    messages = [*_tool_round(arguments), {"role": "assistant", "content": "It is sunny."}]
    call = (
        f"<|tool_call>call:get_weather{{city:{D}Paris{D},days:3,exact:true,tags:[{D}a{D}],"
        f"where:{{lat:48.85,zone:null}}}}<tool_call|>"
    )
    result = f"<|tool_response>response:get_weather{{value:{D}Sunny, 21 C{D}}}<tool_response|>"
    assert _text(tokenizer, messages, tools=[WEATHER_TOOL], add_generation_prompt=True) == (
        "<bos><|turn>system\n" + WEATHER_DECLARATION + "<turn|>\n<|turn>user\nWeather in Paris?<turn|>\n"
        "<|turn>model\n" + call + result + "It is sunny.<turn|>\n<|turn>model\n"
    )
    assert call == f"<|tool_call>call:get_weather{format_tool_arguments(arguments)}{TOOL_CALL_CLOSE}"


def test_after_tool_results_the_model_continues_its_turn(tokenizer: Any) -> None:
    rendered = _text(tokenizer, _tool_round({"city": "Paris"}), add_generation_prompt=True)
    assert rendered.endswith(
        f"<|tool_response>response:get_weather{{value:{D}Sunny, 21 C{D}}}<tool_response|>"
    ), "no <turn|> and no new generation prompt after tool results"
    structured = _text(tokenizer, _tool_round({"city": "Paris"}, {"temp": 21, "sky": "clear"}))
    assert structured.endswith(
        f"<|tool_response>response:get_weather{{sky:{D}clear{D},temp:21}}<tool_response|>"
    )
    blocks = _text(tokenizer, _tool_round({"city": "Paris"}, [{"type": "text", "text": "Sun"}]))
    assert blocks.endswith(f"<|tool_response>response:get_weather{{value:{D}Sun{D}}}<tool_response|>")


def test_a_call_without_its_result_hands_over_to_the_tool(tokenizer: Any) -> None:
    rendered = _text(tokenizer, _tool_round({"city": "Paris"})[:2], add_generation_prompt=True)
    assert rendered.endswith(f"call:get_weather{{city:{D}Paris{D}}}<tool_call|><|tool_response>")


def test_reasoning_is_kept_only_for_the_current_tool_steps(tokenizer: Any) -> None:
    current = _tool_round({"city": "Paris"})
    current[1]["reasoning_content"] = "I need the weather."
    assert "<|turn>model\n<|channel>thought\nI need the weather.\n<channel|><|tool_call>" in _text(
        tokenizer, current
    )
    earlier = [*current, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}]
    assert "<|channel>" not in _text(tokenizer, earlier)


def test_reasoning_after_the_last_user_message_is_kept_and_preserve_thinking_keeps_tool_steps(
    tokenizer: Any,
) -> None:
    answer = {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet back."}
    assert _text(tokenizer, [{"role": "user", "content": "Hi"}, answer]).endswith(
        "<|turn>model\n<|channel>thought\nGreet back.\n<channel|>Hello.<turn|>\n"
    )
    earlier = _tool_round({"city": "Paris"})
    earlier[1]["reasoning_content"] = "I need the weather."
    earlier += [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}]
    assert "I need the weather." in _text(tokenizer, earlier, preserve_thinking=True)
    assert "I need the weather." not in _text(tokenizer, earlier)


def test_arguments_given_as_a_json_string_or_none(tokenizer: Any) -> None:
    as_string = _tool_round('{city:<|"|>Paris<|"|>}')[:2]
    assert _text(tokenizer, as_string).endswith(
        f"call:get_weather{{city:{D}Paris{D}}}<tool_call|><|tool_response>"
    )
    as_none = _tool_round({})[:2]
    as_none[1]["tool_calls"][0]["function"]["arguments"] = None
    assert _text(tokenizer, as_none).endswith("call:get_weather{}<tool_call|><|tool_response>")


def test_the_committed_pairs_ship_the_kits_template() -> None:
    from gemma_mtp.testing import tool_use_dir
    from gemma_mtp.testing.tokenizer import kit_chat_template

    mini = Path(str(resources.files("gemma_mtp").joinpath("models/mini")))
    for folder in (mini, tool_use_dir()):
        for part in ("target", "assistant"):
            assert (folder / part / "chat_template.jinja").read_text(encoding="utf-8") == kit_chat_template()


def test_list_of_text_blocks(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": " there"}]},
    ]
    assert (
        _text(tokenizer, messages)
        == "<bos><|turn>system\nBe brief. <turn|>\n<|turn>user\nHellothere<turn|>\n"
    )
    image = [{"role": "system", "content": [{"type": "image", "url": "x.png"}]}]
    with pytest.raises(jinja2.TemplateError, match="text only in a system turn"):
        tokenizer.apply_chat_template(image, tokenize=False)


def test_media_blocks_become_one_placeholder_each(tokenizer: Any) -> None:
    """As in the real template: user and model turns write a placeholder where the block stands; a tool result's
    media follow its response block."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "image", "url": "a.png"}]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "shot", "arguments": {}}}],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": [
                {"type": "text", "text": "done"},
                {"type": "image", "url": "s.png"},
                {"type": "audio", "url": "x"},
            ],
        },
    ]
    assert _text(tokenizer, messages) == (
        "<bos><|turn>user\nLook<|image|><turn|>\n<|turn>model\n<|tool_call>call:shot{}<tool_call|>"
        '<|tool_response>response:shot{value:<|"|>done<|"|>}<tool_response|><|image|><|audio|>'
    )


def test_rendered_calls_parse_back(tokenizer: Any) -> None:
    arguments = {"q": 'a {b}, c: "d"', "n": [1, 2.5, None], "deep": {"ok": False}, "ü": "✓"}
    prompt = _text(tokenizer, _tool_round(arguments)[:2])
    answer = prompt.split("<|turn>model\n")[-1]
    parsed = parse_response(answer)
    assert [(call.name, call.arguments) for call in parsed.tool_calls] == [("get_weather", arguments)]
    assert parsed.content == ""


# --------------------------------------------------------------------------------------------------- rendering


def test_render_chat_matches_the_template_and_appends_the_prefill(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    ids = render_chat(tokenizer, messages, [WEATHER_TOOL])
    expected = tokenizer.apply_chat_template(
        messages, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids == list(expected)
    prefill = tool_call_prefill("get_weather", [WEATHER_TOOL])
    forced = render_chat(tokenizer, messages, [WEATHER_TOOL], prefill=prefill)
    assert forced == ids + tokenizer.encode(prefill, add_special_tokens=False)
    text = render_chat_text(tokenizer, messages, [WEATHER_TOOL], prefill=prefill)
    assert text.endswith("<|turn>model\n<|tool_call>call:get_weather{")
    assert tokenizer.decode(forced, skip_special_tokens=False) == text


def test_render_chat_passes_template_options_and_normalises(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one"}, "two"]},
    ]
    text = render_chat_text(tokenizer, messages, enable_thinking=True)
    assert text == "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\none\ntwo<turn|>\n<|turn>model\n"
    no_prompt = render_chat_text(tokenizer, messages, add_generation_prompt=False)
    assert no_prompt.endswith("<turn|>\n")


def test_render_chat_errors(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="needs add_generation_prompt"):
        render_chat(tokenizer, messages, add_generation_prompt=False, prefill="<|tool_call>call:")
    with pytest.raises(TypeError, match="tokenize"):
        render_chat(tokenizer, messages, tokenize=False)
    with pytest.raises(TypeError, match="prefill"):
        render_chat(tokenizer, messages, prefill=1)  # type: ignore[arg-type]
    bare = copy.copy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        render_chat(bare, messages)
    with pytest.raises(ValueError, match="empty"):
        render_chat(tokenizer, [])


# --------------------------------------------------------------------------------------------------- messages


def test_validate_messages_normalises_copies() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "x", "type": "function", "function": {"name": "get_time", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_call_id": "x", "content": "12:00"},
        {"role": "tool", "name": "get_weather", "content": {"temp": 21, "sky": {"cover": 0.5}}},
    ]
    original = copy.deepcopy(messages)
    result = validate_messages(messages)
    assert messages == original
    assert result[0]["content"] == "a\nb"
    assert result[1]["content"] == ""
    assert result[1]["tool_calls"] == [
        {
            "id": "call_1_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        },
        {"id": "x", "type": "function", "function": {"name": "get_time", "arguments": {}}},
    ]
    assert [result[2]["name"], result[3]["name"]] == ["get_time", "get_weather"]
    assert result[3]["content"] == {"temp": 21, "sky": {"cover": 0.5}}
    result[3]["content"]["sky"]["cover"] = 1.0
    result[1]["tool_calls"][0]["function"]["arguments"]["city"] = "Rome"
    assert messages == original, "the copies share nothing with the input"
    single = validate_messages([*_tool_round({"city": "Paris"})[:2], {"role": "tool", "content": "ok"}])
    assert single[2]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([], ValueError, "empty"),
        ("Hello", TypeError, "list of message dicts"),
        (["Hello"], TypeError, "message 0 is a str"),
        ([{"role": "bot", "content": "x"}], ValueError, "message 0 has role 'bot'"),
        ([{"role": "user"}], ValueError, r"message 0 \(user\) has no content"),
        ([{"role": "user", "content": 5}], TypeError, "content must be a string"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "image_url", "url": "x"}]},
            ],
            ValueError,
            r"message 1, content block 0: an 'image_url' block needs a URL string",
        ),
        (
            [{"role": "user", "content": [{"type": "document", "url": "x"}]}],
            ValueError,
            r"message 0, content block 0 has type 'document': only text, image and audio blocks",
        ),
        (
            [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}],
            ValueError,
            r"message 0, content block 0 is a 'video' block: video is not supported; send a few frames",
        ),
        (
            [{"role": "system", "content": [{"type": "image", "url": "https://example.com/a.png"}]}],
            ValueError,
            r"message 0, content block 0 is a media block in a system message",
        ),
        (
            [{"role": "user", "content": [{"type": "image", "url": "a.png", "path": "b.png"}]}],
            ValueError,
            r"an 'image' block needs exactly one of .* got \['path', 'url'\]",
        ),
        (
            [{"role": "user", "content": [{"type": "audio", "audio": b"x", "sampling_rate": 0}]}],
            ValueError,
            r"'sampling_rate' must be a positive integer",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}],
            ValueError,
            r"an 'input_audio' block needs base64 data",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], ValueError, "string 'text'"),
        (
            [{"role": "tool", "content": "x"}],
            ValueError,
            "does not follow an assistant message with tool_calls",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}],
            ValueError,
            "message 1 is a tool result",
        ),
        ([{"role": "assistant", "content": "", "tool_calls": {}}], TypeError, "tool_calls must be a list"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}],
            ValueError,
            "tool call 0: expected",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}],
                }
            ],
            ValueError,
            "not valid JSON",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            ValueError,
            "must be an object",
        ),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "bad name"}}]}],
            ValueError,
            "cannot be written in a Gemma 4 tool call",
        ),
        (
            [{"role": "assistant", "content": "", "reasoning_content": 3}],
            TypeError,
            "'reasoning_content' must be a string",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "a", "function": {"name": "f"}},
                        {"id": "b", "function": {"name": "g"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "zzz", "content": "x"},
            ],
            ValueError,
            r"cannot tell which call.*\['a', 'b'\]",
        ),
    ],
)
def test_invalid_messages_get_clear_errors(messages: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        validate_messages(messages)


def test_validate_tools() -> None:
    assert validate_tools(None) == []
    assert validate_tools([WEATHER_TOOL]) == [WEATHER_TOOL]
    with pytest.raises(TypeError, match="list of tool dicts"):
        validate_tools(WEATHER_TOOL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="get_json_schema"):
        validate_tools([{"name": "f"}])
    with pytest.raises(ValueError, match="used twice"):
        validate_tools([WEATHER_TOOL, WEATHER_TOOL])
    with pytest.raises(ValueError, match="JSON schema"):
        validate_tools([{"type": "function", "function": {"name": "f", "parameters": "x"}}])


# --------------------------------------------------------------------------------------------------- tool choice


def test_tool_call_prefill() -> None:
    tools = [WEATHER_TOOL, NO_PARAMETERS_TOOL]
    assert tool_call_prefill(None, tools) == ""
    assert tool_call_prefill("auto", tools) == ""
    assert tool_call_prefill("none", tools) == ""
    assert tool_call_prefill("required", tools) == "<|tool_call>call:"
    assert tool_call_prefill("now", tools) == "<|tool_call>call:now{"
    assert (
        tool_call_prefill({"type": "function", "function": {"name": "now"}}, tools) == "<|tool_call>call:now{"
    )
    with pytest.raises(
        ValueError, match=r"'nope', which is not among the tools given: \['get_weather', 'now'\]"
    ):
        tool_call_prefill("nope", tools)
    with pytest.raises(ValueError, match="at least one tool"):
        tool_call_prefill("required", [])
    with pytest.raises(TypeError, match="tool_choice must be"):
        tool_call_prefill(3, tools)  # type: ignore[arg-type]


def test_end_of_turn_markers_are_single_kit_tokens(tokenizer: Any) -> None:
    for marker in END_OF_TURN_MARKERS:
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1
