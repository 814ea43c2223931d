"""Parsing Gemma 4 answers: whole, streamed at every split, through transformers' parser and the built-in one."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from gemma_mtp.chat import (
    GEMMA4_RESPONSE_TEMPLATE,
    MalformedToolCallError,
    ParsedResponse,
    StreamingResponseParser,
    ToolCall,
    arguments,
    format_tool_arguments,
    parse_response,
    parse_tool_arguments,
    parsing,
)
from gemma_mtp.testing.tokenizer import build_tokenizer

needs_response_parser = pytest.mark.skipif(
    parsing._ResponseParser is None, reason="transformers.utils.chat_parsing needs transformers >= 5.24"
)
BACKENDS = [pytest.param("transformers", marks=needs_response_parser), "fallback"]
D = '<|"|>'


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    content: str
    reasoning: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


CASES = [
    Case("plain", "The capital of France is Paris.<turn|>", "The capital of France is Paris."),
    Case("plain_unterminated", "Hello, how are you?", "Hello, how are you?"),
    Case("eos", "Done.\n<eos>", "Done."),
    Case("empty", "", ""),
    Case("whitespace_only", " \n <turn|>", ""),
    Case(
        "thinking_and_answer",
        "<|channel>thought\nThe user wants a sum.\n2 + 2 = 4.\n<channel|>The answer is 4.<turn|>",
        "The answer is 4.",
        reasoning="The user wants a sum.\n2 + 2 = 4.",
    ),
    Case(
        "one_call",
        f"<|tool_call>call:get_weather{{city:{D}Paris{D},days:3}}<tool_call|><|tool_response>",
        "",
        calls=[("get_weather", {"city": "Paris", "days": 3})],
    ),
    Case(
        "several_calls_after_text",
        f"Let me check both.<|tool_call>call:get_weather{{city:{D}Paris{D}}}<tool_call|>"
        f"<|tool_call>call:get_weather{{city:{D}Rome{D}}}<tool_call|><|tool_call>call:add{{a:1,b:2}}<tool_call|>"
        "<|tool_response>",
        "Let me check both.",
        calls=[
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Rome"}),
            ("add", {"a": 1, "b": 2}),
        ],
    ),
    Case(
        "thinking_then_call",
        f"<|channel>thought\nI need the weather.<channel|><|tool_call>call:get_weather{{city:{D}Oslo{D}}}"
        "<tool_call|><|tool_response>",
        "",
        reasoning="I need the weather.",
        calls=[("get_weather", {"city": "Oslo"})],
    ),
    Case(
        "nested_arguments",
        "<|tool_call>call:plan{steps:[{n:1,ok:true},{n:-2.5e3,ok:false}],meta:{owner:null,tags:[]},empty:{}}"
        "<tool_call|>",
        "",
        calls=[
            (
                "plan",
                {
                    "steps": [{"n": 1, "ok": True}, {"n": -2500.0, "ok": False}],
                    "meta": {"owner": None, "tags": []},
                    "empty": {},
                },
            )
        ],
    ),
    Case(
        "strings_with_syntax",
        f'<|tool_call>call:note{{text:{D}a {{b}}, c: d [e], "quoted"\nnext line{D},k:{D}{D}}}<tool_call|>',
        "",
        calls=[("note", {"text": 'a {b}, c: d [e], "quoted"\nnext line', "k": ""})],
    ),
    Case(
        "unicode",
        f"Voilà ☀️ — 東京.<|tool_call>call:translate{{text:{D}Grüße aus Zürich 🇨🇭{D},to:{D}日本語{D}}}"
        "<tool_call|>",
        "Voilà ☀️ — 東京.",
        calls=[("translate", {"text": "Grüße aus Zürich 🇨🇭", "to": "日本語"})],
    ),
    Case(
        "names_and_keys_beyond_words",
        "<|tool_call>call:weather-api.v2{max-days:2,None_is:None}<tool_call|>",
        "",
        calls=[("weather-api.v2", {"max-days": 2, "None_is": None})],
    ),
    Case(
        "json_quoted_strings",
        '<|tool_call>call:echo{"text":"say \\"hi\\"\\n"}<tool_call|>',
        "",
        calls=[("echo", {"text": 'say "hi"\n'})],
    ),
    Case(
        "call_then_answer_text",
        "<|tool_call>call:noop{}<tool_call|>\nAll set.<turn|>",
        "All set.",
        calls=[("noop", {})],
    ),
    Case("truncated_before_marker_ends", "Let me look <|tool_", "Let me look <|tool_"),
    Case(
        "truncated_in_call",
        f"Checking.<|tool_call>call:get_weather{{city:{D}Par",
        f"Checking.<|tool_call>call:get_weather{{city:{D}Par",
        malformed=[f"<|tool_call>call:get_weather{{city:{D}Par"],
    ),
    Case(
        "truncated_in_name",
        "<|tool_call>call:get_wea",
        "<|tool_call>call:get_wea",
        malformed=["<|tool_call>call:get_wea"],
    ),
    Case(
        "truncated_in_thought",
        "<|channel>thought\nFirst, consider <chan",
        "",
        reasoning="First, consider <chan",
    ),
    Case(
        "malformed_arguments",
        "Try: <|tool_call>call:add{a:,b:2}<tool_call|> ok<turn|>",
        "Try: <|tool_call>call:add{a:,b:2}<tool_call|> ok",
        malformed=["<|tool_call>call:add{a:,b:2}<tool_call|>"],
    ),
    Case(
        "arguments_not_an_object",
        "<|tool_call>call:add[1,2]<tool_call|>",
        "<|tool_call>call:add[1,2]<tool_call|>",
        malformed=["<|tool_call>call:add[1,2]<tool_call|>"],
    ),
    Case(
        "call_without_name",
        "<|tool_call>{a:1}<tool_call|>",
        "<|tool_call>{a:1}<tool_call|>",
        malformed=["<|tool_call>{a:1}<tool_call|>"],
    ),
    Case(
        "malformed_between_good_calls",
        "<|tool_call>call:a{}<tool_call|><|tool_call>call:b{x:}<tool_call|><|tool_call>call:c{y:1}<tool_call|>",
        "<|tool_call>call:b{x:}<tool_call|>",
        calls=[("a", {}), ("c", {"y": 1})],
        malformed=["<|tool_call>call:b{x:}<tool_call|>"],
    ),
    Case("ends_at_first_end_marker", "Answer.<turn|>\n<|turn>user\nmore<eos>", "Answer."),
    Case(
        "other_channel_is_content",
        "<|channel>final text<turn|>",
        "<|channel>final text",
    ),
]


def _summary(parsed: ParsedResponse) -> tuple[Any, ...]:
    return (
        parsed.content,
        parsed.reasoning,
        [(call.name, call.arguments) for call in parsed.tool_calls],
        [error.text for error in parsed.malformed_tool_calls],
    )


def _expected(case: Case) -> tuple[Any, ...]:
    return (case.content, case.reasoning, case.calls, case.malformed)


def _stream(text: str, cuts: list[int], backend: str, prefix: str = "") -> tuple[Any, ...]:
    """Feed ``text`` cut at ``cuts`` and add the events up the way a caller would."""
    parser = StreamingResponseParser(prefix, backend=backend)  # type: ignore[arg-type]
    bounds = [0, *cuts, len(text)]
    steps = [parser.feed(text[start:end]) for start, end in itertools.pairwise(bounds)]
    steps.append(parser.finish())
    reasoning = "".join(step.reasoning for step in steps)
    return (
        "".join(step.content for step in steps),
        reasoning or None,
        [(call.name, call.arguments) for step in steps for call in step.tool_calls],
        [error.text for step in steps for error in step.malformed_tool_calls],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_parse_whole(case: Case, backend: str) -> None:
    assert _summary(parse_response(case.text, backend=backend)) == _expected(case)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_stream_split_at_every_position_adds_up_to_the_whole(case: Case, backend: str) -> None:
    whole = _expected(case)
    for cut in range(len(case.text) + 1):
        assert _stream(case.text, [cut], backend) == whole, f"split at {cut}"
    assert _stream(case.text, list(range(1, len(case.text))), backend) == whole, "one character at a time"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c for c in CASES if "<" not in c.content], ids=lambda case: case.name)
def test_stream_never_emits_part_of_a_marker(case: Case, backend: str) -> None:
    parser = StreamingResponseParser(backend=backend)  # type: ignore[arg-type]
    for char in case.text:
        assert "<" not in parser.feed(char).content
    assert "<" not in parser.finish().content


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_holds_a_possible_marker_until_it_resolves(backend: str) -> None:
    parser = StreamingResponseParser(backend=backend)  # type: ignore[arg-type]
    assert parser.feed("Let me look <|tool_").content == "Let me look"
    step = parser.feed(f"call>call:search{{q:{D}cats{D}}}")
    assert (step.content, step.tool_calls) == ("", [])
    step = parser.feed("<tool_call|>")
    assert [(call.name, call.arguments) for call in step.tool_calls] == [("search", {"q": "cats"})]
    assert parser.finish() == parsing.ResponseEvents()

    parser = StreamingResponseParser(backend=backend)  # type: ignore[arg-type]
    assert parser.feed("a <").content == "a"
    assert parser.feed("b").content == " <b"


@pytest.mark.parametrize("backend", BACKENDS)
def test_reasoning_streams_before_the_answer(backend: str) -> None:
    parser = StreamingResponseParser(backend=backend)  # type: ignore[arg-type]
    assert parser.feed("<|channel>thought\nStep one").reasoning == "Step one"
    step = parser.feed(".\n<channel|>Four")
    assert (step.reasoning, step.content) == (".", "Four")


PREFILLED = [
    ("<|tool_call>call:get_weather{", f"city:{D}Paris{D}}}<tool_call|><|tool_response>"),
    ("<|tool_call>call:", f"get_weather{{city:{D}Paris{D}}}<tool_call|>"),
    (
        "<bos><|turn>user\nWeather?<turn|>\n<|turn>model\n<|tool_call>call:",
        f"get_weather{{city:{D}Paris{D}}}<tool_call|>",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("prefix", "generated"), PREFILLED)
def test_prefix_is_parsed_as_if_generated(prefix: str, generated: str, backend: str) -> None:
    parsed = parse_response(generated, prefix=prefix, backend=backend)  # type: ignore[arg-type]
    assert _summary(parsed) == ("", None, [("get_weather", {"city": "Paris"})], [])
    for cut in range(len(generated) + 1):
        assert _stream(generated, [cut], backend, prefix) == _summary(parsed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_prefix_counts_only_after_the_last_generation_prompt(backend: str) -> None:
    prompt = (
        "<bos><|turn>user\n<|channel>thought\nnot ours<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )
    parsed = parse_response("Hi.<turn|>", prefix=prompt, backend=backend)  # type: ignore[arg-type]
    assert _summary(parsed) == ("Hi.", None, [], [])
    after_tools = "<|tool_call>call:f{}<tool_call|><|tool_response>response:f{value:1}<tool_response|>"
    parsed = parse_response("It is 1.<turn|>", prefix=after_tools, backend=backend)  # type: ignore[arg-type]
    assert _summary(parsed) == ("It is 1.", None, [], [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tool_call_ids_are_unique_and_overridable(backend: str) -> None:
    text = "<|tool_call>call:a{}<tool_call|><|tool_call>call:a{}<tool_call|>"
    ids = [call.id for call in parse_response(text, backend=backend).tool_calls]  # type: ignore[arg-type]
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"call_[0-9a-f]{32}", call_id) for call_id in ids)
    counter = iter(range(100))
    parsed = parse_response(text, backend=backend, id_factory=lambda: f"c{next(counter)}")  # type: ignore[arg-type]
    assert [call.id for call in parsed.tool_calls] == ["c0", "c1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_callers_get_the_error(backend: str) -> None:
    text = "<|tool_call>call:add{a:,b:2}<tool_call|>"
    with pytest.raises(MalformedToolCallError) as caught:
        parse_response(text, strict=True, backend=backend)  # type: ignore[arg-type]
    assert caught.value.text == text
    assert "position" in caught.value.reason
    parser = StreamingResponseParser(strict=True, backend=backend)  # type: ignore[arg-type]
    parser.feed("<|tool_call>call:f{x:1")
    with pytest.raises(MalformedToolCallError, match="ended before"):
        parser.finish()


def test_parser_misuse_is_reported() -> None:
    parser = StreamingResponseParser()
    with pytest.raises(TypeError, match="takes text"):
        parser.feed(b"bytes")  # type: ignore[arg-type]
    parser.finish()
    with pytest.raises(RuntimeError, match="finished"):
        parser.feed("more")
    with pytest.raises(RuntimeError, match="already called"):
        parser.finish()
    with pytest.raises(ValueError, match="backend"):
        StreamingResponseParser(backend="other")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decoded text"):
        parse_response([1, 2, 3])  # type: ignore[arg-type]


def test_parsed_response_becomes_the_next_assistant_message() -> None:
    parsed = parse_response(
        f"<|channel>thought\nNeed it.<channel|><|tool_call>call:get_weather{{city:{D}Paris{D}}}<tool_call|>",
        id_factory=lambda: "call_1",
    )
    assert parsed.to_message() == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
        "reasoning_content": "Need it.",
    }
    assert ToolCall("x", "f", {"a": 1}).to_dict()["function"] == {"name": "f", "arguments": {"a": 1}}


# --------------------------------------------------------------------------------------------------- arguments

DIALECT_ARGUMENTS = [
    ("{}", {}),
    (f"{{city:{D}Paris{D},days:3}}", {"city": "Paris", "days": 3}),
    ("{ a : 1 , b : [ 1 , 2.5 , -3e2 ] }", {"a": 1, "b": [1, 2.5, -300.0]}),
    ("{flag:true,off:false,none:null}", {"flag": True, "off": False, "none": None}),
    (f"{{deep:{{deeper:{{deepest:[{{x:{D}y{D}}}]}}}}}}", {"deep": {"deeper": {"deepest": [{"x": "y"}]}}}),
    (f'{{s:{D}{{}}[],:"{D}}}', {"s": '{}[],:"'}),
    (f"{{ü:{D}ß{D}}}", {"ü": "ß"}),
    ('{"quoted":"a\\tb"}', {"quoted": "a\tb"}),
    (f"{{{D}spaced key{D}:1}}", {"spaced key": 1}),
]
READER_ONLY_ARGUMENTS = [
    ("{max-days:2}", {"max-days": 2}),
    ("{a.b:None}", {"a.b": None}),
]
BAD_ARGUMENTS = ["", "{", "{a:}", "{a:1,}", "{a 1}", f"{{a:{D}open}}", "{a:1}}", "{a:tru}", "[1]", "3"]


@pytest.mark.parametrize(("text", "expected"), DIALECT_ARGUMENTS)
def test_both_argument_readers_agree(text: str, expected: dict[str, Any]) -> None:
    assert arguments.read_arguments(text, use_transformers=True) == expected
    assert arguments.read_arguments(text, use_transformers=False) == expected
    assert arguments.ArgumentReader(text).read() == expected


@needs_response_parser
@pytest.mark.parametrize(("text", "expected"), READER_ONLY_ARGUMENTS)
def test_the_reader_covers_what_the_transformers_dialect_cannot(text: str, expected: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        arguments._parse_content(text, "json", arguments.ARGUMENT_DIALECT)  # type: ignore[misc]
    assert parse_tool_arguments(text) == expected
    assert arguments.read_arguments(text, use_transformers=False) == expected


@pytest.mark.parametrize("use_transformers", [True, False])
@pytest.mark.parametrize("text", BAD_ARGUMENTS)
def test_bad_arguments_raise_the_malformed_error(text: str, use_transformers: bool) -> None:
    with pytest.raises(MalformedToolCallError) as caught:
        arguments.read_arguments(text, use_transformers=use_transformers)
    assert caught.value.text == text


def test_deep_nesting_is_refused_cleanly() -> None:
    with pytest.raises(MalformedToolCallError, match="nested"):
        arguments.read_arguments("{a:" * 200 + "1" + "}" * 200, use_transformers=False)


FORMATTED = [
    ({"city": "Paris", "days": 3}, f"{{city:{D}Paris{D},days:3}}"),
    ({"b": 1, "A": 2, "c": 3}, "{A:2,b:1,c:3}"),
    ({"x": [True, None, 1.5, {"y": "z"}], "e": {}}, f"{{e:{{}},x:[true,null,1.5,{{y:{D}z{D}}}]}}"),
    ({}, "{}"),
]


@pytest.mark.parametrize(("arguments", "expected"), FORMATTED)
def test_format_tool_arguments_writes_the_call_syntax_and_reads_back(
    arguments: dict[str, Any], expected: str
) -> None:
    assert format_tool_arguments(arguments) == expected
    assert parse_tool_arguments(expected) == arguments


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"s": f"a{D}b"}, ValueError, "delimiter"),
        ({"bad key": 1}, ValueError, "bare"),
        ({"x": float("nan")}, ValueError, "JSON number"),
        ({"x": {1, 2}}, TypeError, "set"),
        (["not", "a", "dict"], TypeError, "dict"),
    ],
)
def test_format_tool_arguments_refuses_what_cannot_be_written(
    arguments: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        format_tool_arguments(arguments)


# --------------------------------------------------------------------------------------------------- tokenizers


def _canonical_gemma4_template() -> dict[str, Any]:
    serving = pytest.importorskip("transformers.cli.serving.utils")
    return dict(serving._RESPONSE_TEMPLATE_FALLBACKS[("gemma4",)])


def test_our_template_differs_from_transformers_gemma4_only_where_documented() -> None:
    canonical = _canonical_gemma4_template()
    ours = GEMMA4_RESPONSE_TEMPLATE
    # transformers 5.19 and before named the thinking field "thinking".
    thinking = canonical["fields"].get("reasoning_content") or canonical["fields"]["thinking"]
    assert ours["start_anchor"] == canonical["start_anchor"]
    assert ours["fields"]["reasoning_content"]["open"] == thinking["open"]
    assert ours["fields"]["reasoning_content"]["close"] == thinking["close"]
    assert ours["fields"]["tool_calls"]["close"] == canonical["fields"]["tool_calls"]["close"]
    assert ours["fields"]["end_of_turn"]["open"] == canonical["fields"]["content"]["close"]
    assert canonical["fields"]["tool_calls"]["content_args"] == arguments.ARGUMENT_DIALECT


WELL_FORMED_IN_BOTH = [
    "plain",
    "eos",
    "thinking_and_answer",
    "one_call",
    "several_calls_after_text",
    "thinking_then_call",
    "nested_arguments",
    "strings_with_syntax",
    "unicode",
    "json_quoted_strings",
    "truncated_in_thought",
    "malformed_arguments",
]


@needs_response_parser
@pytest.mark.parametrize("case", [c for c in CASES if c.name in WELL_FORMED_IN_BOTH], ids=lambda c: c.name)
def test_a_tokenizer_response_template_is_used_when_shipped(case: Case) -> None:
    tokenizer = build_tokenizer()
    tokenizer.response_template = _canonical_gemma4_template()
    assert _summary(parse_response(case.text, tokenizer)) == _expected(case)
    parser = StreamingResponseParser(tokenizer=tokenizer)
    steps = [parser.feed(char) for char in case.text] + [parser.finish()]
    assert "".join(step.content for step in steps) == case.content
    assert [(c.name, c.arguments) for step in steps for c in step.tool_calls] == case.calls


@needs_response_parser
def test_the_shipped_template_really_is_the_one_used() -> None:
    tokenizer = build_tokenizer()
    text = "<|tool_call>call:weather-api{}<tool_call|>"
    assert [call.name for call in parse_response(text, tokenizer).tool_calls] == ["weather-api"]
    tokenizer.response_template = _canonical_gemma4_template()  # its tool names are \w+ only
    parsed = parse_response(text, tokenizer)
    assert (parsed.tool_calls, [error.text for error in parsed.malformed_tool_calls]) == ([], [text])


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoded_kit_tokens_parse_token_by_token(backend: str) -> None:
    tokenizer = build_tokenizer()
    text = (
        "<|channel>thought\nThe user asks for Paris.<channel|>Checking now."
        f"<|tool_call>call:get_weather{{city:{D}Paris{D},days:3}}<tool_call|><|tool_response>"
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    parser = StreamingResponseParser(backend=backend)  # type: ignore[arg-type]
    decoded = ""
    steps = []
    for count in range(1, len(ids) + 1):
        now = tokenizer.decode(ids[:count], skip_special_tokens=False)
        steps.append(parser.feed(now[len(decoded) :]))
        decoded = now
    steps.append(parser.finish())
    assert decoded == text
    assert "".join(step.reasoning for step in steps) == "The user asks for Paris."
    assert "".join(step.content for step in steps) == "Checking now."
    assert [(c.name, c.arguments) for step in steps for c in step.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 3})
    ]
