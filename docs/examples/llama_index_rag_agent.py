"""A RAG query engine and a tool-calling agent on GemmaMTP, then the speculation statistics they produced.

Offline by default, on the testing kit's tiny Gemma 4 pair (random weights: the answers are gibberish, while the
retrieval, the streaming, the agent loop and the acceptance statistics are real)::

    python docs/examples/llama_index_rag_agent.py

With a real checkpoint (its MTP assistant is found by name: ``<model>-assistant``)::

    python docs/examples/llama_index_rag_agent.py --model google/gemma-4-E2B-it --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import re

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.tools import FunctionTool, QueryEngineTool

from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

DOCUMENTS = [
    "Gemma 4 ships in five sizes: E2B, E4B, 12B, 26B-A4B (a mixture of experts) and 31B.",
    "Every Gemma 4 checkpoint has a Multi-Token-Prediction assistant, a small drafter that shares its KV cache.",
    "Speculative decoding lets the assistant draft a few tokens and the target verify them in one forward pass.",
    "With greedy decoding the output is token for token what the target alone would write.",
    "The acceptance rate is the share of drafted tokens that the target accepts.",
]


class KeywordEmbedding(BaseEmbedding):
    """Hashed bag-of-words vectors: enough to retrieve these sentences without downloading an embedding model.

    Real applications use a real embedding model (any LlamaIndex embedding works with GemmaMTP).
    """

    dimensions: int = 256

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in re.findall(r"[a-z0-9-]+", text.lower()):
            vector[int(hashlib.sha1(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def build_llm(args: argparse.Namespace) -> GemmaMTP:
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.model:
        return GemmaMTP(
            model=args.model, assistant=args.assistant, device=args.device, dtype=args.dtype, **options
        )
    from gemma_mtp.testing import tiny_pair

    pair = tiny_pair("dense", agreeing=True)
    return GemmaMTP(
        model=str(pair.target_dir),
        assistant=str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        **options,
    )


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def print_stats(title: str, handler: SpeculationStatsHandler) -> None:
    totals = handler.totals()
    print(f"\n--- {title}: {totals['requests']} request(s) ---")
    for summary in handler.summaries:
        print(
            f"  {summary.finish_reason:>10}  {summary.generated_tokens:4d} tokens  "
            f"{summary.accepted_tokens:4d}/{summary.drafted_tokens:<4d} drafts accepted  "
            f"acceptance rate {summary.acceptance_rate:.2f}  {summary.tokens_per_second:7.1f} tokens/s"
        )
    print(
        f"  overall acceptance rate {totals['acceptance_rate']:.2f}, "
        f"{totals['mean_accepted_per_round']:.2f} accepted drafts per round over {totals['rounds']} rounds"
    )
    handler.reset()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="Gemma 4 checkpoint (hub id or folder); default: the offline kit pair"
    )
    parser.add_argument("--assistant", help="MTP assistant checkpoint; default: <model>-assistant")
    parser.add_argument("--device", help="e.g. cuda or cpu")
    parser.add_argument("--dtype", help="e.g. bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    llm = build_llm(args)
    stats = SpeculationStatsHandler()
    get_dispatcher().add_event_handler(stats)  # the root dispatcher sees every GemmaMTP request

    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in DOCUMENTS], embed_model=KeywordEmbedding()
    )
    query_engine = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True)
    question = "What does the acceptance rate measure?"
    print(f"Q: {question}\nA: ", end="", flush=True)
    response = await query_engine.aquery(question)
    async for token in response.async_response_gen():
        print(token, end="", flush=True)
    print("\nSources:", *(f"  - {n.node.get_content()}" for n in response.source_nodes), sep="\n")
    print_stats("RAG query", stats)

    docs_tool = QueryEngineTool.from_defaults(
        index.as_query_engine(llm=llm, similarity_top_k=2),
        name="gemma_docs",
        description="Answers questions about Gemma 4 and its MTP assistants.",
    )
    agent = FunctionAgent(
        tools=[docs_tool, FunctionTool.from_defaults(fn=add)],
        llm=llm,
        system_prompt="Use the tools to answer. Be brief.",
    )
    question = "How many Gemma 4 sizes are there, plus 2?"
    print(f"\nAgent Q: {question}\nAgent A: ", end="", flush=True)
    handler = agent.run(user_msg=question)
    async for event in handler.stream_events():
        if isinstance(event, AgentStream):
            print(event.delta, end="", flush=True)
        elif isinstance(event, ToolCallResult):
            print(
                f"\n  [tool {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content!r}]\n",
                end="",
            )
    await handler
    print_stats("agent run", stats)


if __name__ == "__main__":
    asyncio.run(main())
