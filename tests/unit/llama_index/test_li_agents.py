"""LlamaIndex agents and structured output on GemmaMTP.

The runtime answers with scripted Gemma 4 text (see ``ScriptedAnswers``); everything between the agent and
that text is real: the adapter, the chat template, the runtime's parser and LlamaIndex's agent loop.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.agent.workflow import (
    AgentStream,
    AgentWorkflow,
    FunctionAgent,
    ReActAgent,
    ToolCallResult,
)
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

Q = '<|"|>'
ADD_CALL = "<|tool_call>call:add{a:2,b:3}<tool_call|>"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Sum(BaseModel):
    """The sum of two numbers, with a word on how it was found."""

    total: int
    explanation: str


SUM_CALL = f"<|tool_call>call:Sum{{explanation:{Q}two plus three{Q},total:5}}<tool_call|>"


async def _run(workflow: Any, question: str) -> tuple[Any, list[Any]]:
    handler = workflow.run(user_msg=question)
    events = [event async for event in handler.stream_events()]
    return await handler, events


@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_calls_the_tool_and_answers(
    llm: GemmaMTP, scripted: Any, speculation: SpeculationStatsHandler, streaming: bool
) -> None:
    scripted.add(ADD_CALL, "2 + 3 = 5.")
    agent = FunctionAgent(tools=[add], llm=llm, streaming=streaming, system_prompt="You add numbers.")
    output, events = await _run(agent, "What is 2 + 3?")
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert (result.tool_name, result.tool_kwargs, result.tool_output.content) == (
        "add",
        {"a": 2, "b": 3},
        "5",
    )
    assert str(output) == "2 + 3 = 5."
    assert any(isinstance(e, AgentStream) for e in events) == streaming
    second = scripted.requests[1]
    assert second["messages"][0] == {"role": "system", "content": "You add numbers."}
    assert [m["role"] for m in second["messages"][1:]] == ["user", "assistant", "tool"]
    assert second["messages"][3] == {"role": "tool", "content": "5", "tool_call_id": result.tool_id}
    assert (
        f"<|tool_call>call:add{{a:2,b:3}}<tool_call|><|tool_response>response:add{{value:{Q}5{Q}}}"
        in second["prompt"]
    )
    assert len(speculation.summaries) == 2


async def test_function_agent_initial_tool_choice_is_honoured(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(ADD_CALL, "5")
    agent = FunctionAgent(tools=[add], llm=llm, initial_tool_choice="add")
    await _run(agent, "What is 2 + 3?")
    assert [r["tool_choice"] for r in scripted.requests] == ["add", None]


async def test_agent_workflow_hands_off_between_agents(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(
        f"<|tool_call>call:handoff{{reason:{Q}it is arithmetic{Q},to_agent:{Q}calculator{Q}}}<tool_call|>",
        ADD_CALL,
        "2 + 3 = 5.",
    )
    triage = FunctionAgent(
        name="triage",
        description="Sends questions to the right agent.",
        system_prompt="Hand arithmetic to the calculator.",
        llm=llm,
        tools=[],
        can_handoff_to=["calculator"],
    )
    calculator = FunctionAgent(
        name="calculator", description="Adds numbers.", system_prompt="You add numbers.", llm=llm, tools=[add]
    )
    workflow = AgentWorkflow(agents=[triage, calculator], root_agent="triage")
    output, events = await _run(workflow, "What is 2 + 3?")
    assert [e.tool_name for e in events if isinstance(e, ToolCallResult)] == ["handoff", "add"]
    assert str(output) == "2 + 3 = 5."
    assert output.current_agent_name == "calculator"


async def test_react_agent_reasons_in_text(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(
        'Thought: I need to add the numbers.\nAction: add\nAction Input: {"a": 2, "b": 3}',
        "Thought: I can answer without using any more tools.\nAnswer: 5",
    )
    agent = ReActAgent(tools=[add], llm=llm)
    output, events = await _run(agent, "What is 2 + 3?")
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.tool_output.content == "5"
    assert str(output) == "5"
    assert scripted.requests[0]["messages"][0]["role"] == "system"
    assert "Observation: 5" in scripted.requests[1]["prompt"]


def test_structured_predict_through_a_forced_tool_call(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(SUM_CALL)
    result = llm.structured_predict(Sum, PromptTemplate("Add {a} and {b}."), a=2, b=3)
    assert result == Sum(total=5, explanation="two plus three")
    request = scripted.requests[0]
    assert request["tool_choice"] == "Sum"  # one tool, one call: forced by name
    assert request["messages"][-1] == {"role": "user", "content": "Add 2 and 3."}


async def test_astructured_predict(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(SUM_CALL)
    result = await llm.astructured_predict(Sum, PromptTemplate("Add {a} and {b}."), a=2, b=3)
    assert result.total == 5


def test_stream_structured_predict_ends_with_the_whole_object(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add(SUM_CALL)
    partials = list(llm.stream_structured_predict(Sum, PromptTemplate("Add {a} and {b}."), a=2, b=3))
    assert partials[-1] == Sum(total=5, explanation="two plus three")


def test_structured_predict_without_a_tool_call_fails_clearly(llm: GemmaMTP, scripted: Any) -> None:
    scripted.add("<|tool_call>call:I would rather not.")
    with pytest.raises(ValueError, match=r"Expected at least one tool call.*call:I would rather not\."):
        llm.structured_predict(Sum, PromptTemplate("Add {a} and {b}."), a=2, b=3)


async def test_function_agent_runs_on_the_unscripted_model(llm: GemmaMTP) -> None:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=add)], llm=llm)
    output, events = await _run(agent, "What is 2 + 3?")
    streamed = "".join(e.delta for e in events if isinstance(e, AgentStream))
    assert streamed == output.response.content
    assert output.raw["speculation"]["generated_tokens"] > 0
