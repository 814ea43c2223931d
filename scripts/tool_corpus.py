"""Synthetic Gemma 4 chat transcripts for the "tool-use" test pair (``scripts/train_tool_pair.py``), seeded.

Each example is a conversation plus the tools it declares, in the OpenAI shapes that the chat template renders
(``{"type": "function", "function": {...}}`` tools, assistant ``tool_calls``, role ``"tool"`` results). The tasks
are drawn at random from a general distribution, so that the trained model learns the *decisions* an agent or an
extraction chain needs rather than a list of answers:

* ``named``: the user names a tool and its argument values; the answer is one call with those values (copied
  from the request), then, after the tool's result, one short sentence (so the model learns to stop calling).
* ``described``: the user asks for something a declared tool does (look-ups at a place, records created under a
  name in any script) without naming it; the answer is one call whose string arguments are copied from the request.
* ``record``: a declared object-shaped tool (``Joke``, ``Recipe`` ...) is filled in from a request for such an
  object, with short string values that close; optional fields are left out when the request says so.
* ``json``: a request for a JSON object with the keys it names, answered by a short ``json.dumps`` object.
* ``chat``: short plain answers, with or without tools declared (a request no tool serves gets text).
* ``repeat``: short requests to repeat a number, a random string of letters and digits, a name in any script or a
  place, answered by exactly that: short transcripts dense in copying from the request, which calls rely on
  (numbers and random strings cannot be guessed, only copied).

Names of tools, arguments, keys, topics, places and people are random combinations of word lists and random
strings (ASCII and other scripts), so that no request or answer of a test suite is reproduced verbatim.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Example", "examples", "named_examples"]

VERBS = ("get", "lookup", "find", "fetch", "compute", "check", "search", "calc", "read", "query", "load")
NOUNS = (
    "weather", "price", "stock", "time", "distance", "population", "score", "balance", "order", "ticket",
    "flight", "forecast", "rate", "temperature", "humidity", "traffic", "rating", "volume", "speed", "status",
    "inventory", "account", "invoice", "shipment", "booking", "profile", "record", "member", "client", "vendor",
    "customer", "user", "patient", "student", "author", "product", "item", "task", "event", "note",
)  # fmt: skip
ADJECTIVES = (
    "magic", "secret", "simple", "special", "fancy", "quick", "double", "random", "hidden", "lucky", "strange",
    "basic", "custom", "unicode", "global", "local", "mystic", "prime", "tiny", "smart", "golden", "silent",
)  # fmt: skip
OBJECTS = (
    "Joke", "Poem", "Riddle", "Fact", "Story", "Recipe", "Quote", "Review", "Headline", "Slogan", "Summary",
    "Tip", "Answer", "Idea", "Question", "Haiku", "Limerick", "Toast", "Motto", "Legend",
)  # fmt: skip
FIELD_PAIRS = (
    ("setup", "punchline"), ("title", "body"), ("question", "answer"), ("name", "description"),
    ("topic", "text"), ("headline", "summary"), ("first_line", "last_line"), ("claim", "reason"),
    ("hook", "twist"), ("subject", "detail"), ("intro", "ending"), ("prompt", "reply"),
)  # fmt: skip
FIELD_HINTS = (
    "question to set up the {obj}", "answer to resolve the {obj}", "the main text of the {obj}",
    "a short title for the {obj}", "what the {obj} is about", "the last part of the {obj}",
    "the opening of the {obj}", "one sentence about the {obj}",
)  # fmt: skip
TOPICS = (
    "cats", "dogs", "the sea", "coffee", "robots", "pirates", "winter", "music", "math", "birds", "trains",
    "pizza", "space", "the moon", "bees", "dragons", "rain", "books", "bicycles", "owls", "tea", "clocks",
    "frogs", "ghosts", "mountains", "penguins", "computers", "gardens", "snow", "rivers", "cheese", "wizards",
    "the library", "sharks", "elephants", "soup", "the post office", "kites", "volcanoes", "tigers",
)  # fmt: skip
WORDS = (
    "a", "the", "my", "one", "big", "small", "old", "new", "red", "blue", "happy", "sleepy", "brave", "quiet",
    "walks", "sings", "jumps", "asks", "finds", "loses", "wants", "sees", "likes", "makes", "into", "with",
    "over", "under", "near", "for", "why", "did", "what", "does", "because", "it", "was", "too", "very",
    "again", "home", "today", "always", "never", "day", "night", "friend", "hat", "door", "road", "box",
)  # fmt: skip
ARG_NAMES = (
    "input", "x", "y", "n", "a", "b", "value", "count", "amount", "number", "size", "limit", "index", "level",
    "city", "location", "place", "name", "query", "text", "word", "label", "code", "unit", "mode", "flag",
    "verbose", "enabled", "ratio", "weight", "height", "year", "days", "id", "key", "title", "color", "lang",
)  # fmt: skip
TYPE_OF_ARG = {
    "input": "integer", "x": "number", "y": "number", "n": "integer", "a": "integer", "b": "integer",
    "value": "integer", "count": "integer", "amount": "number", "number": "integer", "size": "integer",
    "limit": "integer", "index": "integer", "level": "integer", "city": "string", "location": "string",
    "place": "string", "name": "string", "query": "string", "text": "string", "word": "string",
    "label": "string", "code": "string", "unit": "string", "mode": "string", "flag": "boolean",
    "verbose": "boolean", "enabled": "boolean", "ratio": "number", "weight": "number", "height": "number",
    "year": "integer", "days": "integer", "id": "integer", "key": "string", "title": "string",
    "color": "string", "lang": "string",
}  # fmt: skip
PLACE_ARGS = ("location", "city", "place", "where", "area", "region")
STATES = ("CA", "NY", "TX", "WA", "OR", "FL", "IL", "MA", "CO", "AZ", "UK", "FR", "DE", "JP")
KINDS_OF_COMPANY = (
    "technology", "shipping", "food", "design", "toy", "travel", "music", "energy", "textile", "media",
)  # fmt: skip
NATIONALITIES = (
    "Chinese", "Japanese", "Korean", "Greek", "Russian", "French", "German", "Spanish", "Thai", "Arabic",
    "Indian", "Brazilian", "Turkish", "Polish", "Czech", "Vietnamese",
)  # fmt: skip
# Unicode ranges to draw names from: CJK, hiragana, katakana, hangul, Cyrillic, Greek, Thai, accented Latin.
SCRIPTS = (
    (0x4E00, 0x9FA5), (0x3041, 0x3093), (0x30A1, 0x30F3), (0xAC00, 0xD7A3), (0x0410, 0x044F),
    (0x0391, 0x03C9), (0x0E01, 0x0E2E), (0x00C0, 0x00FF),
)  # fmt: skip
SYLLABLES = (
    "ka", "lo", "mi", "ra", "ten", "sa", "vo", "ber", "dan", "el", "fi", "gor", "ha", "is", "jo", "ku", "lin",
    "mar", "no", "pe", "qui", "ro", "sen", "tor", "u", "vin", "wa", "xe", "ya", "zo",
)  # fmt: skip
ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
GREETINGS = ("Hello!", "Hi!", "Hello", "Hi there", "Good morning!", "Hey!", "Greetings.")
GREETING_ANSWERS = (
    "Hello! How can I help you today?",
    "Hi! What can I do for you?",
    "Hello! Ask me anything.",
)


@dataclass
class Example:
    """One conversation and the tools declared to it (empty when none)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)


def _ascii_name(rng: random.Random, words: int = 1) -> str:
    return " ".join(
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))).capitalize() for _ in range(words)
    )


def _script_name(rng: random.Random) -> str:
    low, high = rng.choice(SCRIPTS)
    return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(2, 6)))


def _person_or_company(rng: random.Random) -> str:
    return _script_name(rng) if rng.random() < 0.6 else _ascii_name(rng, rng.randint(1, 2))


def _place(rng: random.Random) -> str:
    name = _ascii_name(rng, rng.choice((1, 1, 2)))
    return f"{name}, {rng.choice(STATES)}" if rng.random() < 0.5 else name


def _phrase(rng: random.Random, lo: int = 3, hi: int = 7, end: str = ".") -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.5:
        words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS))
    return " ".join(words).capitalize() + end


def _value(rng: random.Random, kind: str) -> Any:
    if kind == "integer":
        return rng.choice((rng.randint(0, 9), rng.randint(0, 99), rng.randint(-50, 999)))
    if kind == "number":
        return round(rng.uniform(-20, 100), rng.choice((1, 2)))
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice((_ascii_name(rng), _phrase(rng, 1, 3, ""), _script_name(rng)))


def _spoken(value: Any) -> str:
    """How a request writes a value: strings quoted, booleans lower-case, as in code."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def _schema(kind: str, rng: random.Random, description: str | None = None) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": kind}
    if description is not None:
        prop["description"] = description
    elif rng.random() < 0.3:
        prop["description"] = f"the {rng.choice(NOUNS)} to use"
    return prop


def _tool(
    name: str, description: str, props: dict[str, dict[str, Any]], required: list[str]
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"properties": props, "type": "object"}
    if required:
        parameters["required"] = required
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _docstring(summary: str, props: dict[str, dict[str, Any]]) -> str:
    """A Google-style docstring description, as LangChain's ``@tool`` passes it on."""
    args = "\n".join(f"        {key}: The {key.replace('_', ' ')} to use." for key in props)
    return f"{summary}\n\n    Args:\n{args}\n\n    Returns:\n        The result of the {summary.split()[0].lower()}."


def _function_name(rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    if style == 1:
        return f"{rng.choice(ADJECTIVES)}_function"
    if style == 2:
        return f"{rng.choice(ADJECTIVES)}_{rng.choice(NOUNS)}"
    return f"{rng.choice(VERBS)}{rng.choice(NOUNS).capitalize()}"


def _random_tool(rng: random.Random, name: str | None = None) -> dict[str, Any]:
    name = name or _function_name(rng)
    keys = rng.sample(ARG_NAMES, rng.choice((0, 1, 1, 1, 2, 2, 3)))
    props = {key: _schema(TYPE_OF_ARG[key], rng) for key in keys}
    summary = rng.choice(
        (
            f"Apply a {rng.choice(ADJECTIVES)} function to an input.",
            f"Calculate a {rng.choice(ADJECTIVES)} function.",
            f"Return the {rng.choice(NOUNS)} for the given values.",
            f"Compute the {rng.choice(NOUNS)}.",
            f"Look up a {rng.choice(NOUNS)}.",
        )
    )
    if name.endswith("_no_args"):
        props = {}
    description = _docstring(summary, props) if props and rng.random() < 0.2 else summary
    required = [key for key in keys if rng.random() < 0.85]
    return _tool(name, description, props, required)


def _call(name: str, arguments: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _with_result(messages: list[dict[str, Any]], call: dict[str, Any], result: str, answer: str) -> None:
    """Append the tool's result and the short answer that reads it (which ends the turn)."""
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    messages.append({"role": "assistant", "content": answer})


def _call_turn(
    rng: random.Random, messages: list[dict[str, Any]], name: str, args: dict[str, Any]
) -> dict[str, Any]:
    call = _call(name, args, rng.randrange(10_000))
    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    return call


def _tools_around(rng: random.Random, tool: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool among 0-2 others, in random order."""
    tools = [tool] + [_random_tool(rng) for _ in range(rng.choice((0, 0, 0, 1, 2)))]
    rng.shuffle(tools)
    return tools


def _named(rng: random.Random) -> Example:
    name = _function_name(rng) + ("_no_args" if rng.random() < 0.1 else "")
    tool = _random_tool(rng, name)
    props = tool["function"]["parameters"]["properties"]
    args = {key: _value(rng, prop["type"]) for key, prop in props.items()}
    positional = ", ".join(_spoken(v) for v in args.values())
    keyword = " and ".join(f"{k}={_spoken(v)}" for k, v in args.items())
    request = rng.choice(
        (
            f"What is the value of {name}({positional})? Use the tool.",
            f"What is {name}({positional})?",
            f"Call {name} with {keyword}." if args else f"Call {name}.",
            f"Use the {name} tool with {keyword}." if args else f"Use the {name} tool.",
            f"Please run {name}({positional}) for me.",
            f"What does {name} return for {positional}?" if args else f"What does {name} return?",
            f"Compute {name}({positional}) using the tool.",
        )
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
    call = _call_turn(rng, messages, name, args)
    if rng.random() < 0.6:
        result = _value(rng, rng.choice(("integer", "number", "string")))
        answer = rng.choice(
            (
                f"The value of {name}({positional}) is {result}.",
                f"The result is {result}.",
                f"It is {result}.",
            )
        )
        _with_result(messages, call, str(result), answer)
    return Example(messages, _tools_around(rng, tool))


def _lookup(rng: random.Random) -> Example:
    noun = rng.choice(NOUNS)
    arg = rng.choice(PLACE_ARGS)
    name = rng.choice((f"get_{noun}", f"{rng.choice(VERBS)}_{noun}", f"{noun}_at"))
    summary = rng.choice(
        (f"Get the {noun} at a location.", f"Get {noun} at a {arg}.", f"Look up the {noun} in a {arg}.")
    )
    tool = _tool(name, summary, {arg: _schema("string", rng)}, [arg])
    place = _place(rng)
    request = rng.choice(
        (
            f"What is the {noun} in {place}?",
            f"What's the {noun} like in {place} today?",
            f"How is the {noun} in {place}?",
            f"Tell me the {noun} for {place}.",
            f"Can you check the {noun} at {place}?",
        )
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
    call = _call_turn(rng, messages, name, {arg: place})
    if rng.random() < 0.7:
        reading = rng.choice(
            ("It's sunny.", "It is raining.", "42", "Closed today.", "Cold and windy.", "Fine.")
        )
        answer = rng.choice((f"The {noun} in {place}: {reading}", f"In {place}, {reading.lower()}", reading))
        _with_result(messages, call, reading, answer)
    return Example(messages, _tools_around(rng, tool))


def _create(rng: random.Random) -> Example:
    noun = rng.choice(NOUNS)
    name = rng.choice((f"create_{noun}", f"{rng.choice(ADJECTIVES)}_{noun}", f"add_{noun}", f"new_{noun}"))
    name_key = rng.choice((f"{noun}_name", "name", f"{noun}_title"))
    about_key = rng.choice(("description", "notes", "summary", "about"))
    props = {name_key: _schema("string", rng), about_key: _schema("string", rng)}
    summary = f"Tool for creating a {noun} with {rng.choice(('a name', 'Unicode name', 'a title'))}."
    description = _docstring(summary, props) if rng.random() < 0.5 else summary
    tool = _tool(name, description, props, [name_key, about_key])
    who = _person_or_company(rng)
    gloss = _ascii_name(rng, rng.randint(1, 2))
    what = f"a {rng.choice(NATIONALITIES)} {rng.choice(KINDS_OF_COMPANY)} company"
    request = rng.choice(
        (
            f"Create a {noun} named '{who}' ({gloss}) - {what}",
            f"Create a {noun} named '{who}' - {what}.",
            f"Add a {noun} called '{who}', {what}.",
            f"Please make a new {noun} '{who}' ({gloss}), {what}.",
        )
    )
    about = rng.choice((what, what.capitalize(), f"{what} ({gloss})"))
    messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
    call = _call_turn(rng, messages, name, {name_key: who, about_key: about})
    if rng.random() < 0.5:
        _with_result(messages, call, f"Created {noun}: {who}", f"Done: {who} is created.")
    return Example(messages, _tools_around(rng, tool))


def _record(rng: random.Random) -> Example:
    obj = rng.choice(OBJECTS)
    name = obj + rng.choice(("", "", "", "Dict", "Schema"))
    first, second = rng.choice(FIELD_PAIRS)
    hints = rng.sample(FIELD_HINTS, 2)
    props = {
        key: _schema("string", rng, hint.format(obj=obj.lower()) if rng.random() < 0.8 else None)
        for key, hint in zip((first, second), hints, strict=True)
    }
    optional = rng.random() < 0.3
    topic = rng.choice(TOPICS)
    values = {first: _phrase(rng, 3, 7, "?" if first in ("setup", "question") else "."), second: _phrase(rng)}
    if optional and rng.random() < 0.5:
        request = f"Give me the {first} to a {obj.lower()} about {topic}, no {second}."
        values.pop(second)
    elif optional:
        request = f"Give me a {obj.lower()} about {topic}, include the {second}."
    else:
        request = rng.choice(
            (
                f"Tell me a {obj.lower()} about {topic}.",
                f"Write a {obj.lower()} about {topic}.",
                f"I want a {obj.lower()} about {topic}.",
                f"Make up a {obj.lower()} about {topic}.",
            )
        )
    tool = _tool(
        name,
        rng.choice((f"{obj} to tell user.", f"A {obj.lower()}.", f"{obj} about a topic.")),
        props,
        [first] if optional else [first, second],
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
    _call_turn(rng, messages, name, values)
    return Example(messages, [tool])


def _json(rng: random.Random) -> Example:
    obj = rng.choice(OBJECTS).lower()
    keys = list(rng.choice(FIELD_PAIRS)) if rng.random() < 0.6 else rng.sample(ARG_NAMES, rng.randint(1, 3))
    topic = rng.choice(TOPICS)
    quoted = " and ".join(f"'{key}'" for key in keys)
    request = rng.choice(
        (
            f"Tell me a {obj} about {topic}. Return the result as a JSON with {quoted} keys. "
            "Return nothing other than JSON.",
            f"Give me a {obj} about {topic} as a JSON object with {quoted} keys.",
            f"Answer in JSON with keys {', '.join(keys)}: a {obj} about {topic}.",
            f"Return a JSON object with {quoted} for a {obj} about {topic}. Only JSON.",
        )
    )
    answer = json.dumps({key: _phrase(rng, 2, 6) for key in keys}, ensure_ascii=False)
    return Example([{"role": "user", "content": request}, {"role": "assistant", "content": answer}])


def _chat(rng: random.Random) -> Example:
    kind = rng.randrange(4)
    if kind == 0:
        request, answer = rng.choice(GREETINGS), rng.choice(GREETING_ANSWERS)
    elif kind == 1:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        request, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    elif kind == 2:
        topic = rng.choice(TOPICS)
        request, answer = f"Tell me a joke about {topic}.", _phrase(rng, 4, 9, "?") + " " + _phrase(rng)
    else:
        topic = rng.choice(TOPICS)
        request, answer = f"Say something about {topic}.", _phrase(rng, 4, 10)
    messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    tools = [_random_tool(rng) for _ in range(rng.choice((0, 0, 1, 2)))]
    return Example(messages, tools)


def _copy_text(rng: random.Random) -> str:
    """Something to repeat: a number of up to six digits, a random string of letters and digits, a name in any
    script or a place. Numbers and random strings cannot be guessed, only copied."""
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randint(-999, 10 ** rng.randint(1, 6)))
    if kind == 1:
        return "".join(rng.choice(ALPHANUMERIC) for _ in range(rng.randint(1, 12)))
    if kind == 2:
        return _script_name(rng)
    if kind == 3:
        return _ascii_name(rng, rng.randint(1, 2))
    return _place(rng)


def _repeat(rng: random.Random) -> Example:
    what = _copy_text(rng)
    request = rng.choice(
        (
            f"Repeat after me: '{what}'",
            f"Say '{what}'.",
            f"Write {what} and nothing else.",
            f"Echo '{what}'.",
            f"Copy this exactly: {what}",
        )
    )
    return Example([{"role": "user", "content": request}, {"role": "assistant", "content": what}])


TASKS: tuple[tuple[Callable[[random.Random], Example], float], ...] = (
    (_named, 0.30),
    (_lookup, 0.08),
    (_create, 0.12),
    (_record, 0.10),
    (_json, 0.08),
    (_chat, 0.05),
    (_repeat, 0.27),
)


def examples(count: int, seed: int) -> list[Example]:
    """``count`` examples drawn from :data:`TASKS` with their weights, deterministic for ``seed``."""
    rng = random.Random(seed)
    makers = [maker for maker, _ in TASKS]
    weights = [weight for _, weight in TASKS]
    return [rng.choices(makers, weights)[0](rng) for _ in range(count)]


def named_examples(count: int, seed: int) -> list[Example]:
    """``count`` requests that name a tool and its values, deterministic for ``seed``: the copy metric's probes."""
    rng = random.Random(seed)
    return [_named(rng) for _ in range(count)]
