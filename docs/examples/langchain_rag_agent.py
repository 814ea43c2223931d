"""A small RAG chain and a tool-calling agent loop on ChatGemmaMTP, with MTP acceptance statistics.

Runs offline by default on the testing kit's tiny pair (random weights, built in seconds): the pipeline,
the streaming and the speculation statistics are all real, but the model's text is gibberish. Point
``--model`` at a real Gemma 4 checkpoint (hub id or local folder) for real answers:

    python docs/examples/langchain_rag_agent.py
    python docs/examples/langchain_rag_agent.py --model google/gemma-4-E4B-it --device cuda
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_gemma_mtp import ChatGemmaMTP, SpeculationCallbackHandler

DOCUMENTS = [
    "Gemma 4 ships Multi-Token-Prediction (MTP) assistant checkpoints next to its instruction-tuned models.",
    "An MTP assistant drafts a few tokens from the target's last hidden state; the target verifies them "
    "in one forward pass, so several tokens can be accepted per pass.",
    "Greedy speculative decoding returns exactly the tokens the target model alone would return.",
    "The acceptance rate is the share of drafted tokens that the target accepts.",
    "The E2B and E4B assistants have about 78 million parameters; the 31B assistant about 470 million.",
]


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def count_words(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


TOOLS = {t.name: t for t in (multiply, count_words)}


def build_model(args: argparse.Namespace) -> ChatGemmaMTP:
    """The model from ``--model``, or the offline kit pair when no model is given."""
    if args.model:
        return ChatGemmaMTP(
            model=args.model,
            assistant=args.assistant,
            device=args.device,
            dtype=args.dtype,
            max_tokens=args.max_tokens,
        )
    from gemma_mtp.testing import tiny_runtime

    print("No --model given: using the offline testing kit pair (random weights).")
    print("Its text is gibberish; the streaming, tool plumbing and acceptance statistics are real.\n")
    return ChatGemmaMTP(runtime=tiny_runtime("agreeing"), max_tokens=args.max_tokens)


def build_rag_chain(llm: ChatGemmaMTP) -> Runnable:
    """Retriever over an in-memory store (deterministic fake embeddings) | prompt | model | text."""
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=256))
    store.add_documents([Document(page_content=text) for text in DOCUMENTS])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from the context only, in one or two sentences.\n\nContext:\n{context}"),
            ("human", "{question}"),
        ]
    )

    def format_docs(docs: list[Document]) -> str:
        return "\n".join(f"- {doc.page_content}" for doc in docs)

    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )


def run_agent(
    llm: ChatGemmaMTP, question: str, config: dict[str, Any], max_steps: int = 4
) -> list[BaseMessage]:
    """Call the model, run the tools it asks for, feed the results back, until it answers in text."""
    agent = llm.bind_tools(list(TOOLS.values()))
    messages: list[BaseMessage] = [
        SystemMessage("Use the tools for arithmetic and counting."),
        HumanMessage(question),
    ]
    for step in range(1, max_steps + 1):
        reply = agent.invoke(messages, config=config)
        messages.append(reply)
        rate = reply.response_metadata["speculation"]["acceptance_rate"]
        if not reply.tool_calls:
            print(f"  step {step}: answer ({rate:.0%} of drafts accepted): {reply.content!r}")
            return messages
        for call in reply.tool_calls:
            result = TOOLS[call["name"]].invoke(call)
            print(f"  step {step}: {call['name']}({call['args']}) -> {result.content}")
            messages.append(result)
    print(f"  stopped after {max_steps} steps")
    return messages


def print_statistics(title: str, handler: SpeculationCallbackHandler) -> None:
    s = handler.summary()
    print(
        f"{title}: {s['requests']} request(s), {s['generated_tokens']} tokens in {s['rounds']} target passes "
        f"({s['tokens_per_round']:.2f} tokens/pass), {s['accepted_tokens']}/{s['drafted_tokens']} drafts "
        f"accepted ({s['acceptance_rate']:.1%}), {s['tokens_per_second']:.1f} tokens/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="Gemma 4 target: hub id or local folder (default: offline kit pair)")
    parser.add_argument("--assistant", help="MTP assistant (default: <model>-assistant)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bfloat16 on CUDA)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most new tokens per answer")
    args = parser.parse_args()

    llm = build_model(args)
    total = SpeculationCallbackHandler()

    print("== RAG chain (streamed) ==")
    rag = SpeculationCallbackHandler()
    question = "What does an MTP assistant do?"
    print(f"Q: {question}\nA: ", end="", flush=True)
    for piece in build_rag_chain(llm).stream(question, config={"callbacks": [rag, total]}):
        print(piece, end="", flush=True)
    print()
    print_statistics("RAG", rag)

    print("\n== Tool-calling agent ==")
    agent = SpeculationCallbackHandler()
    messages = run_agent(llm, "What is 12.5 times 8?", config={"callbacks": [agent, total]})
    if not any(getattr(m, "tool_calls", None) for m in messages):
        print("  (no tool call: a real Gemma 4 checkpoint calls `multiply` here)")
    print_statistics("Agent", agent)

    print()
    print_statistics("All requests", total)


if __name__ == "__main__":
    main()
