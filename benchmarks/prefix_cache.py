"""The prefix cache on vs off, side by side: an agent, a chat and a RAG chat engine that send their prompt again.

Four workloads, each run with the cache on and off in alternation (on/off, then off/on, ...) in one process:

* ``agent``: a LangChain ``create_agent`` agent on the testing kit's tool-use pair, a system prompt of ~1,000
  tokens and four tools, asked five things in one conversation (each a tool call and an answer: ten model steps);
* ``chat``: a five-turn chat with a ~1,150-token system prompt on the packaged ``gemma-mtp-mini`` pair, 32-token
  answers;
* ``rag``: a LlamaIndex ``context`` chat engine on ``gemma-mtp-mini`` whose retriever returns a ~2,000-token
  document set whole, asked five follow-up questions;
* ``media``: a multimodal agent-like chat on the testing kit's multimodal pair (dense, agreeing, images), a
  ~1,000-token system prompt and a new screenshot with a question at each of five steps (transformers backend
  only: vLLM's CPU build cannot load a multimodal Gemma 4 checkpoint, ``docs/multimodal.md``).

Each step's time to first token, its prompt tokens and those read from the cache, and each run's whole time are
recorded with the acceptance of the assistant's drafts. The transformers backend keeps the weights once for both
settings (``prefix_cache_bytes=0`` shares them); the vLLM backend runs two engines, prefix caching on and off::

    python benchmarks/prefix_cache.py measure --backend transformers --threads 1 --scenarios agent chat rag \
        --json docs/data/prefix-cache-transformers.json
    python benchmarks/prefix_cache.py measure --backend transformers --threads 1 --scenarios media \
        --json docs/data/prefix-cache-media.json
    .venv-vllm/bin/python benchmarks/prefix_cache.py measure --backend vllm --json docs/data/prefix-cache-vllm.json
    python benchmarks/prefix_cache.py publish docs/data/prefix-cache-transformers.json \
        docs/data/prefix-cache-media.json docs/data/prefix-cache-vllm.json

``publish`` writes the "Prefix cache" section of ``docs/benchmarks.md`` and its plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.benchmarking import describe_machine
from gemma_mtp.benchmarking.publish import section_markers, write_page_section
from gemma_mtp.benchmarking.tables import markdown_table
from gemma_mtp.testing import KitMedia, tiny_pair, tool_use_dir

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTION = "prefix-cache"
SCENARIOS = ("agent", "chat", "rag", "media")
TEXT_SCENARIOS = ("agent", "chat", "rag")
"""What the vLLM backend runs (its CPU build cannot load a multimodal checkpoint)."""
PAIR_OF = {"agent": "tool_use", "chat": "mini", "rag": "mini", "media": "media"}
SETTINGS = ("on", "off")

SENTENCES = (
    "Our agency books rail, ferry and air travel across Europe for families, schools and small companies.",
    "Every booking is confirmed in writing, and changes are free until fourteen days before departure.",
    "Travellers with reduced mobility get assistance at every station we serve, booked with the ticket.",
    "Prices include seat reservations on long-distance trains but not meals, which are sold on board.",
    "Children under four travel free on a parent's lap; older children pay the youth fare up to twenty-five.",
    "Lost luggage is reported to the carrier first; we follow up within two working days of the report.",
    "Our office in Lisbon opens at nine and closes at six, with a lunch break from one to two o'clock.",
    "Group bookings of ten or more people get one free place for the group leader and a fixed deposit.",
)
QUESTIONS = (
    "What do you offer to families?",
    "And what about luggage?",
    "When does the Lisbon office open?",
    "Do children pay on trains?",
    "How late can I change a booking?",
)
SCREEN_ASKS = (
    "Here is the login page. Which field comes first?",
    "I typed the name. What does the screen show now?",
    "A dialog opened. Which button should I press?",
    "The list loaded. Which row is selected?",
    "Saved. Is there an error message anywhere?",
)
SCREEN_REPLIES = (
    "The user name field; type the name there.",
    "The password field is focused now.",
    "Press OK to confirm the change.",
    "The third row, highlighted in blue.",
)
AGENT_ASKS = (
    "Call get_weather with city='Paris'.",
    "Call lookup_rate with code='Vinka' and days=12.",
    "Call convert_currency with amount=40 and currency='EUR'.",
    "Call find_flight with origin='Rome' and destination='Oslo'.",
    "Call get_weather with city='Lima'.",
)


def text_of(tokenizer: Any, tokens: int) -> str:
    """Travel-desk text of about ``tokens`` tokens."""
    parts: list[str] = []
    index = 0
    while len(tokenizer.encode(" ".join(parts), add_special_tokens=False)) < tokens:
        parts.append(SENTENCES[index % len(SENTENCES)])
        index += 1
    return " ".join(parts)


# -- workloads: each returns the speculation statistics and the answer of every model step, in order --------------------------


def run_agent(rt: Runtime, draft_length: int | None) -> list[dict[str, Any]]:
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    from langchain_gemma_mtp import ChatGemmaMTP

    @tool
    def get_weather(city: str) -> str:
        """Get the weather in a city."""
        return f"sunny in {city}"

    @tool
    def lookup_rate(code: str, days: int) -> str:
        """Look up the rate of a code."""
        return f"{code}: {days * 3} units"

    @tool
    def convert_currency(amount: int, currency: str) -> str:
        """Convert an amount of money to a currency."""
        return f"{amount * 2} {currency}"

    @tool
    def find_flight(origin: str, destination: str) -> str:
        """Find a flight between two cities."""
        return f"flight {origin}-{destination} at 9:40"

    llm = ChatGemmaMTP(runtime=rt, max_tokens=64, temperature=0.0, num_assistant_tokens=draft_length)
    agent = create_agent(
        llm,
        tools=[get_weather, lookup_rate, convert_currency, find_flight],
        system_prompt=text_of(rt.tokenizer, 1000),
    )
    messages: list[Any] = []
    steps: list[dict[str, Any]] = []
    for ask in AGENT_ASKS:
        messages.append(HumanMessage(ask))
        answer = agent.invoke({"messages": messages})["messages"]
        for message in answer[len(messages) :]:
            if message.type == "ai":
                calls = [(call["name"], call["args"]) for call in message.tool_calls]
                steps.append(
                    {**message.response_metadata["speculation"], "answer": f"{message.content}{calls}"}
                )
        messages = answer
    return steps


def run_chat(rt: Runtime, draft_length: int | None) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": text_of(rt.tokenizer, 1150)}]
    params = SamplingParams(max_new_tokens=32, ignore_eos=True, num_assistant_tokens=draft_length)
    steps = []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        result = rt.chat(messages, params)
        steps.append({**result.stats.as_dict(), "answer": result.content})
        messages.append({"role": "assistant", "content": result.content})
    return steps


def run_rag(rt: Runtime, draft_length: int | None) -> list[dict[str, Any]]:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.instrumentation import get_dispatcher

    from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

    documents = [Document(text=text_of(rt.tokenizer, 250) + f" (leaflet {i + 1})") for i in range(8)]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    llm = GemmaMTP(runtime=rt, max_new_tokens=32, ignore_eos=True, num_assistant_tokens=draft_length)
    engine = index.as_chat_engine(chat_mode="context", llm=llm, similarity_top_k=len(documents))
    handler = SpeculationStatsHandler()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    try:
        answers = [str(engine.chat(question)) for question in QUESTIONS]
    finally:
        dispatcher.event_handlers.remove(handler)
    return [
        {**summary.stats, "answer": answer}
        for summary, answer in zip(handler.summaries, answers, strict=True)
    ]


def screenshot(step: int, size: int = 224) -> Any:
    """A deterministic stand-in for a screenshot: a background gradient and a window that moves at each step."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype("uint8")
    at = 16 + 36 * step
    pixels[at : at + 60, at : at + 90] = (240, 240, 240)
    pixels[at : at + 12, at : at + 90] = (30, 90, 200 - 30 * step)
    return Image.fromarray(pixels)


def run_media(rt: Runtime, draft_length: int | None) -> list[dict[str, Any]]:
    """A computer-use agent's loop in chat form: every step sends the whole conversation again with a new
    screenshot. The history keeps fixed replies (the kit pair's own answers are noise)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": text_of(rt.tokenizer, 1000)}]
    params = SamplingParams(max_new_tokens=32, ignore_eos=True, num_assistant_tokens=draft_length)
    steps = []
    for step, ask in enumerate(SCREEN_ASKS):
        content = [{"type": "image", "image": screenshot(step)}, {"type": "text", "text": ask}]
        messages.append({"role": "user", "content": content})
        result = rt.chat(messages, params)
        steps.append({**result.stats.as_dict(), "answer": result.content})
        messages.append({"role": "assistant", "content": SCREEN_REPLIES[step % len(SCREEN_REPLIES)]})
    return steps


WORKLOADS: dict[str, Callable[[Runtime, int | None], list[dict[str, Any]]]] = {
    "agent": run_agent,
    "chat": run_chat,
    "rag": run_rag,
    "media": run_media,
}


# -- measuring -------------------------------------------------------------------------------------------------


def load_pairs(
    backend: str, engine_options: dict[str, Any], names: Sequence[str]
) -> dict[str, dict[str, Runtime]]:
    """Per pair named (``tool_use``, ``mini``, ``media``): a runtime with the prefix cache on and one with it off."""
    tool_use = tool_use_dir()
    pairs: dict[str, tuple[str, str | None]] = {
        "tool_use": (str(tool_use / "target"), str(tool_use / "assistant")),
        "mini": ("gemma-mtp-mini", None),
    }
    if "media" in names:
        kit = tiny_pair("dense", agreeing=True, media=KitMedia(audio=False))
        pairs["media"] = (str(kit.target_dir), str(kit.assistant_dir))
    loaded: dict[str, dict[str, Runtime]] = {}
    for name in names:
        target, assistant = pairs[name]
        options = dict(engine_options) if backend == "vllm" else {"device": "cpu", "dtype": "float32"}
        loaded[name] = {
            setting: Runtime.load(
                target,
                assistant,
                backend=backend,
                prefix_cache_bytes=None if setting == "on" else 0,
                **options,
            )
            for setting in SETTINGS
        }
    return loaded


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine_options = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}
    runtimes = load_pairs(args.backend, engine_options, sorted({PAIR_OF[s] for s in args.scenarios}))
    runs: list[dict[str, Any]] = []
    for scenario in args.scenarios:
        for name, settings in (
            ("warm-up", SETTINGS),
            *((f"run {r + 1}", _order(r)) for r in range(args.repeats)),
        ):
            for setting in settings:
                rt = runtimes[PAIR_OF[scenario]][setting]
                rt.drop_cached_prefixes()  # every run starts cold; its later steps find what its earlier ones left
                # A pinned draft length (vLLM's engine pins its own): the adaptive policy, which each setting's
                # runtime learns separately, would otherwise draft differently in each, and rounding in verify
                # passes of other lengths can flip a near tie of the small pair's greedy choice.
                draft_length = rt.default_draft_length if args.backend == "transformers" else None
                start = time.perf_counter()
                steps = WORKLOADS[scenario](rt, draft_length)
                elapsed = time.perf_counter() - start
                print(
                    f"{scenario:5} {name:8} cache {setting:3}: {elapsed:6.2f} s, {len(steps)} steps",
                    file=sys.stderr,
                )
                if name != "warm-up":
                    runs.append(
                        {"scenario": scenario, "setting": setting, "elapsed_s": elapsed, "steps": steps}
                    )
    any_rt = next(iter(runtimes.values()))["on"]
    for settings in runtimes.values():
        for rt in settings.values():
            rt.close()
    return {
        "backend": args.backend,
        "machine": describe_machine(any_rt.device).as_dict(),
        "threads": args.threads,
        "repeats": args.repeats,
        "runs": runs,
    }


def _order(run: int) -> tuple[str, ...]:
    """On then off, then off then on: a machine that speeds up or slows down favours neither."""
    return SETTINGS if run % 2 == 0 else SETTINGS[::-1]


# -- summarising and publishing --------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario: medians over the runs of each step's time to first token, on and off, and of the whole run."""
    rows = []
    for scenario in SCENARIOS:
        runs = {
            s: [r for r in results["runs"] if r["scenario"] == scenario and r["setting"] == s]
            for s in SETTINGS
        }
        if not runs["on"] or not runs["off"]:
            continue
        steps = min(len(r["steps"]) for setting in SETTINGS for r in runs[setting])
        ttft = {
            s: [
                statistics.median(r["steps"][i]["time_to_first_token_s"] for r in runs[s])
                for i in range(steps)
            ]
            for s in SETTINGS
        }
        later = [ttft["on"][i] / ttft["off"][i] for i in range(1, steps)]

        def total(
            setting: str, key: str, runs: dict[str, list[dict[str, Any]]] = runs, steps: int = steps
        ) -> int:
            return sum(step[key] for r in runs[setting] for step in r["steps"][:steps])

        cached = [
            statistics.median(r["steps"][i]["cached_prompt_tokens"] for r in runs["on"]) for i in range(steps)
        ]
        prompt = [runs["on"][0]["steps"][i]["prompt_tokens"] for i in range(steps)]
        rows.append(
            {
                "scenario": scenario,
                "steps": steps,
                "ttft_on_s": ttft["on"],
                "ttft_off_s": ttft["off"],
                "later_ttft_ratio_median": statistics.median(later),
                "later_ttft_ratio_max": max(later),
                "whole_on_s": statistics.median(r["elapsed_s"] for r in runs["on"]),
                "whole_off_s": statistics.median(r["elapsed_s"] for r in runs["off"]),
                "acceptance_on": total("on", "accepted_tokens") / max(total("on", "drafted_tokens"), 1),
                "acceptance_off": total("off", "accepted_tokens") / max(total("off", "drafted_tokens"), 1),
                "prompt_tokens": prompt,
                "cached_prompt_tokens": cached,
                "same_answers": len({_answers(r) for s in SETTINGS for r in runs[s]}) == 1,
                "off_runs_agree": len({_answers(r) for r in runs["off"]}) == 1,
            }
        )
    return rows


def _answers(run: dict[str, Any]) -> tuple[str, ...]:
    return tuple(step["answer"] for step in run["steps"])


LABELS = {
    "agent": "LangChain agent, tool-use pair (~1,000-token system prompt, 4 tools)",
    "chat": "five-turn chat, gemma-mtp-mini (~1,150-token system prompt)",
    "rag": "LlamaIndex context chat engine, gemma-mtp-mini (~2,000-token documents)",
    "media": "multimodal agent-like chat, the kit's multimodal pair (~1,000-token system prompt, a new "
    "screenshot of 64 soft tokens per step)",
}


def section(results: Sequence[dict[str, Any]], image: str) -> str:
    begin, end = section_markers(SECTION)
    lines = [
        begin,
        "## Prefix cache: agents, chat and RAG that send their prompt again",
        "",
        "Each workload runs with the prefix cache on and off in alternation in one process, every run starting "
        "cold (`drop_cached_prefixes()`), so its first step processes the whole prompt and the later steps find "
        "what the earlier ones left. Time to first token (TTFT) is the runtime's, from the request's start to its "
        "first token; the whole run includes the frameworks' own work and the tools. Acceptance is that of the "
        "assistant's drafts over all steps (the same tokens either way: greedy output does not change).",
        "",
    ]
    backends = [result["backend"] for result in results]
    for result in results:
        machine = result["machine"]
        threads = f", {result['threads']} torch thread(s)" if result.get("threads") else ""
        heading = f"### {result['backend']} backend"
        if backends.count(result["backend"]) > 1:  # measured in more than one run: say which workloads
            measured = dict.fromkeys(run["scenario"] for run in result["runs"])
            heading += ": " + ", ".join(measured)
        lines += [
            heading,
            "",
            f"{machine['cpu']} ({machine['cpu_cores']} cores, shared), accelerator: {machine['accelerator']}"
            f"{threads}; {machine['date']}; medians of {result['repeats']} runs per setting.",
            "",
        ]
        headers = (
            "workload",
            "steps",
            "TTFT step 1 on / off",
            "TTFT steps 2+ on / off (median ratio, worst step)",
            "prompt tokens read from the cache, steps 2+",
            "whole run on / off",
            "acceptance on / off",
            "same answers",
        )
        rows = []
        for row in summarise(result):
            later_on = statistics.median(row["ttft_on_s"][1:])
            later_off = statistics.median(row["ttft_off_s"][1:])
            share = sum(row["cached_prompt_tokens"][1:]) / max(sum(row["prompt_tokens"][1:]), 1)
            rows.append(
                [
                    LABELS[row["scenario"]],
                    str(row["steps"]),
                    f"{row['ttft_on_s'][0] * 1000:.0f} / {row['ttft_off_s'][0] * 1000:.0f} ms",
                    f"{later_on * 1000:.0f} / {later_off * 1000:.0f} ms "
                    f"({row['later_ttft_ratio_median']:.2f}×, {row['later_ttft_ratio_max']:.2f}×)",
                    f"{share:.0%}",
                    f"{row['whole_on_s']:.2f} / {row['whole_off_s']:.2f} s "
                    f"({row['whole_off_s'] / row['whole_on_s']:.2f}× faster)",
                    f"{row['acceptance_on']:.2f} / {row['acceptance_off']:.2f}",
                    "yes"
                    if row["same_answers"]
                    else "no: the cache-off runs differ among themselves too"
                    if not row["off_runs_agree"]
                    else "NO",
                ]
            )
        lines += [markdown_table(headers, rows), ""]
    lines += [
        "In process, a later step processes only what its prompt adds (the previous answer, the new message or tool "
        "result) and gets its first token in a few percent of the time; the whole run gains less where decoding, the "
        "frameworks and the tools take a larger share. vLLM reuses whole KV blocks (128 positions on its CPU build) and "
        "computes the last matching block again when it drafts with MTP, so up to ~250 positions per step are "
        "processed again there. Drafts have the pair's default length on both backends (the adaptive policy, which "
        "each setting's runtime would learn separately, is left out); 'same answers' compares every step's answer "
        "over all runs of both settings (greedy decoding): on the mini pair one answer of the RAG workload has a near tie "
        "(ending after 28 tokens or going on) that is decided differently from run to run in either setting, the "
        "cache-off runs included, with the same prompt and draft length: rounding, not the cache. In the "
        "multimodal workload a step's new screenshot goes through the vision encoder and the model with the cached "
        "state of the steps before it; with the cache off every step encodes every earlier screenshot again. The "
        "multimodal run is a short one on a shared machine. The tests hold "
        "the cache to exact equality on the kit pairs (`tests/unit/runtime/test_prefix_cache.py`, "
        "`tests/unit/runtime/test_prefix_cache_media.py`).",
        "",
        f"![time to first token per step, prefix cache on and off]({image})",
        "",
        end,
    ]
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One row of plots per backend, whichever of its runs measured each workload.
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_backend.setdefault(result["backend"], []).extend(summarise(result))
    summaries = list(by_backend.items())
    figure, axes = plt.subplots(
        len(summaries), len(SCENARIOS), figsize=(4.2 * len(SCENARIOS), 3.2 * len(summaries)), squeeze=False
    )
    for row_axes, (backend, rows) in zip(axes, summaries, strict=True):
        by_scenario = {row["scenario"]: row for row in rows}
        for ax, scenario in zip(row_axes, SCENARIOS, strict=True):
            row = by_scenario.get(scenario)
            if row is None:
                ax.set_visible(False)
                continue
            steps = range(1, row["steps"] + 1)
            ax.plot(steps, [t * 1000 for t in row["ttft_off_s"]], "o-", label="cache off", color="#999999")
            ax.plot(steps, [t * 1000 for t in row["ttft_on_s"]], "o-", label="cache on", color="#1f77b4")
            ax.set_title(f"{scenario} ({backend})", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("time to first token (ms)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def publish(args: argparse.Namespace) -> None:
    results = [json.loads(Path(p).read_text()) for p in args.results]
    image = args.img_dir / "prefix_cache.png"
    plot(results, image)
    page = args.output
    write_page_section(page, SECTION, section(results, str(image.relative_to(page.parent))))
    for result in results:
        for row in summarise(result):
            print(
                f"{result['backend']:12} {row['scenario']:5} TTFT steps 2+ on/off: median "
                f"{row['later_ttft_ratio_median']:.2f}x, worst {row['later_ttft_ratio_max']:.2f}x; whole run "
                f"{row['whole_off_s'] / row['whole_on_s']:.2f}x faster"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "measure", help="run the workloads, cache on and off, and write the results as JSON"
    )
    run.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    run.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        help="the workloads to run (default: all four on the transformers backend, the text ones on vLLM)",
    )
    run.add_argument("--repeats", type=int, default=3, help="runs per setting, in alternation (default: 3)")
    run.add_argument("--threads", type=int, help="torch CPU threads (transformers backend)")
    run.add_argument("--json", type=Path, required=True, help="where to write the results")
    out = commands.add_parser("publish", help="write the docs section and the plot from measured results")
    out.add_argument("results", nargs="+", help="JSON files written by measure")
    out.add_argument("--output", type=Path, default=DOCS / "benchmarks.md")
    out.add_argument("--img-dir", type=Path, default=DOCS / "img")
    args = parser.parse_args(argv)
    if args.command == "measure":
        if args.scenarios is None:
            args.scenarios = list(SCENARIOS if args.backend == "transformers" else TEXT_SCENARIOS)
        if args.backend == "vllm" and "media" in args.scenarios:
            parser.error(
                "the media workload runs on the transformers backend only: vLLM's CPU build cannot load a "
                "multimodal Gemma 4 checkpoint (see docs/multimodal.md)"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "measure":
        results = measure(args)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        for row in summarise(results):
            print(
                f"{row['scenario']:5} TTFT steps 2+ on/off: median {row['later_ttft_ratio_median']:.2f}x, worst "
                f"{row['later_ttft_ratio_max']:.2f}x; whole run {row['whole_off_s'] / row['whole_on_s']:.2f}x "
                f"faster; acceptance {row['acceptance_on']:.2f} / {row['acceptance_off']:.2f}"
            )
    else:
        publish(args)
    return 0


if __name__ == "__main__":  # vLLM starts its engine processes by spawning, which imports this module again
    sys.exit(main())
