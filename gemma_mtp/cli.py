"""The ``gemma-mtp`` command: ``demo``, ``bench``, ``tune`` and ``verify``.

Every subcommand runs on the small pair shipped in the package (``gemma-mtp-mini``, offline) unless
``--model`` names another target (a hub id or a folder; its assistant follows Google's naming unless
``--assistant`` is given). This is the only runtime module allowed to import the LangChain and
LlamaIndex adapters, and only inside ``demo``, so the other subcommands work without those extras.

Exit status: 0 on success; 1 when ``verify`` finds a real divergence or the demo's greedy outputs
differ; 2 on bad input (arguments, prompt files, model names).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from gemma_mtp import __version__
from gemma_mtp.modeling import DRAFT_POSITIONS
from gemma_mtp.runtime import Prompt, Runtime

__all__ = [
    "CLIError",
    "build_parser",
    "check_budget",
    "common_options",
    "load_runtime",
    "main",
    "read_prompts",
]

DEFAULT_MODEL = "gemma-mtp-mini"
DTYPES = ("auto", "float32", "bfloat16", "float16")

DEMO_QUESTION = "Tell me about the sea."
DEMO_QUERY = "Who serves Prospero on the island?"
DEMO_DOCUMENTS = (
    "Prospero, the rightful Duke of Milan, lives on an island with his daughter Miranda.",
    "Ariel is a spirit who serves Prospero and raises the storm that wrecks the king's ship.",
    "Caliban, son of the witch Sycorax, was the island's only inhabitant before Prospero came.",
    "Ferdinand, the King of Naples' son, falls in love with Miranda after the shipwreck.",
)


class CLIError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


# -- output helpers ------------------------------------------------------------------------------------


class Spinner:
    """Shows that a blocking call (loading models) is still running, on a terminal; one line elsewhere."""

    FRAMES = "|/-\\"

    def __init__(self, message: str, stream: TextIO | None = None):
        self.message = message
        self.stream = stream or sys.stderr
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> Spinner:
        self._start = time.perf_counter()
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._spin, name="gemma-mtp-spinner", daemon=True)
            self._thread.start()
        else:
            print(f"{self.message} ...", file=self.stream, flush=True)
        return self

    def _spin(self) -> None:
        for frame in itertools.cycle(self.FRAMES):
            elapsed = time.perf_counter() - self._start
            self.stream.write(f"\r{frame} {self.message} ({elapsed:.0f} s)")
            self.stream.flush()
            if self._done.wait(0.1):
                return

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\033[K")
        outcome = "failed" if exc_type else "done"
        print(
            f"{self.message}: {outcome} in {time.perf_counter() - self._start:.1f} s",
            file=self.stream,
            flush=True,
        )


def _progress(stream: TextIO) -> Callable[[str], None]:
    """Progress lines for long measurements: rewritten in place on a terminal, one per line elsewhere."""
    tty = stream.isatty()

    def show(message: str) -> None:
        if tty:
            stream.write("\r\033[K" + message)
        else:
            stream.write(message + "\n")
        stream.flush()

    return show


def _end_progress(stream: TextIO) -> None:
    if stream.isatty():
        stream.write("\r\033[K")
        stream.flush()


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)


# -- loading -------------------------------------------------------------------------------------------


def _load(
    model: str,
    assistant: str | None,
    device: str | None,
    dtype: str,
    threads: int | None,
    draft_position: str | None = None,
) -> Runtime:
    import torch
    from transformers.utils import logging as hf_logging

    if threads is not None:
        torch.set_num_threads(threads)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the spinner is the progress indicator
    try:
        with Spinner(f"Loading {model}" + (f" + {assistant}" if assistant else "")):
            return Runtime.load(
                model,
                assistant,
                device=device,
                dtype=None if dtype == "auto" else dtype,
                draft_position=draft_position,  # type: ignore[arg-type]
            )
    except (OSError, ValueError) as err:
        raise CLIError(str(err)) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_runtime(args: argparse.Namespace) -> Runtime:
    """Load the pair named by ``common_options``' arguments, with a progress indicator."""
    rt = _load(args.model, args.assistant, args.device, args.dtype, args.threads, args.draft_position)
    dtype = rt.dtype
    print(
        f"target {rt.model_name}\nassistant {rt.assistant_name} (draft position {rt.draft_position})\n"
        f"on {rt.device} ({dtype})",
        file=sys.stderr,
    )
    return rt


def check_budget(rt: Runtime, prompts: Sequence[Prompt], max_new_tokens: int) -> None:
    """Refuse, before any decoding, a ``--max-new-tokens`` that does not fit in the context window with the
    longest prompt (the runtime would cut every answer short, and frameworks fail on it mid-run)."""
    try:
        longest = max(len(rt.encode(prompt)) for prompt in prompts)
    except ValueError as err:  # a prompt longer than the context window
        raise CLIError(str(err)) from err
    room = rt.context_window - longest
    if max_new_tokens > room:
        raise CLIError(
            f"--max-new-tokens {max_new_tokens} does not fit: {rt.model_name!r} has a context window of "
            f"{rt.context_window} tokens and the longest prompt takes {longest}; use --max-new-tokens "
            f"{room} or less"
        )


def read_prompts(args: argparse.Namespace) -> list[Prompt]:
    """The prompts named by ``--prompts``/``--raw`` (the built-in ones by default)."""
    from gemma_mtp.benchmarking import load_prompts

    try:
        return load_prompts(args.prompts, chat=not args.raw)
    except (OSError, ValueError) as err:
        raise CLIError(str(err)) from err


# -- demo ----------------------------------------------------------------------------------------------


def _stream_langchain(rt: Runtime, max_tokens: int) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from langchain_gemma_mtp import ChatGemmaMTP

    _section("LangChain: ChatPromptTemplate | ChatGemmaMTP | StrOutputParser")
    chain = (
        ChatPromptTemplate.from_messages([("human", "{question}")])
        | ChatGemmaMTP(runtime=rt, max_tokens=max_tokens, temperature=0)
        | StrOutputParser()
    )
    print(f"Q: {DEMO_QUESTION}\nA: ", end="", flush=True)
    for text in chain.stream({"question": DEMO_QUESTION}):
        print(text, end="", flush=True)
    print()


def _stream_llama_index(rt: Runtime, max_tokens: int) -> None:
    from llama_index.core import Document, MockEmbedding, VectorStoreIndex

    from llama_index_gemma_mtp import GemmaMTP

    _section(f"LlamaIndex: VectorStoreIndex over {len(DEMO_DOCUMENTS)} documents -> query engine (GemmaMTP)")
    # A constant mock embedding keeps the demo offline and deterministic; retrieval order is not the point.
    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in DEMO_DOCUMENTS], embed_model=MockEmbedding(embed_dim=8)
    )
    engine = index.as_query_engine(
        llm=GemmaMTP(runtime=rt, max_new_tokens=max_tokens, temperature=0.0),
        streaming=True,
        similarity_top_k=2,
    )
    print(f"Q: {DEMO_QUERY}\nA: ", end="", flush=True)
    response = engine.query(DEMO_QUERY)
    for text in response.response_gen:  # type: ignore[union-attr]
        print(text, end="", flush=True)
    print()


def _speed_report(rt: Runtime, max_tokens: int) -> bool:
    """Decode the demo's questions greedily with and without the assistant, in alternation over a few runs;
    print the report; say if the outputs matched."""
    from gemma_mtp.benchmarking.demo import measure_demo

    report = measure_demo(rt, (DEMO_QUESTION, DEMO_QUERY), max_tokens)
    _section("Report (greedy; the same questions with and without the assistant, in alternation)")
    print(report.format_text())
    matched, questions = report.matched
    return matched == questions


def _check_demo_extras() -> None:
    missing = [name for name in ("langchain_core", "llama_index.core") if not _importable(name)]
    if missing:
        raise CLIError(
            f"the demo needs the LangChain and LlamaIndex extras ({', '.join(missing)} not installed): "
            'pip install "gemma-mtp[all]"'
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _demo_prompts() -> list[Prompt]:
    """The demo's prompts: its question, its query, and the query engine's prompt with every document."""
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT_TMPL

    from gemma_mtp.benchmarking import as_chat

    rag = DEFAULT_TEXT_QA_PROMPT_TMPL.format(context_str="\n\n".join(DEMO_DOCUMENTS), query_str=DEMO_QUERY)
    return [as_chat(DEMO_QUESTION), as_chat(DEMO_QUERY), as_chat(rag)]


def _demo(args: argparse.Namespace) -> int:
    _check_demo_extras()
    rt = load_runtime(args)
    check_budget(rt, _demo_prompts(), args.max_new_tokens)
    _stream_langchain(rt, args.max_new_tokens)
    _stream_llama_index(rt, args.max_new_tokens)
    return 0 if _speed_report(rt, args.max_new_tokens) else 1


# -- bench, tune, verify ----------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from gemma_mtp.benchmarking import compare_methods, describe_machine

    prompts = read_prompts(args)  # a bad file fails before minutes of loading
    if args.concurrency is not None:
        return _bench_concurrency(args, prompts)
    if args.backend != ["transformers"]:
        raise CLIError("--backend applies to the concurrency benchmark: add --concurrency 1,2,4,8,16")
    rt = load_runtime(args)
    check_budget(rt, prompts, args.max_new_tokens)
    report = compare_methods(
        rt,
        prompts,
        max_new_tokens=args.max_new_tokens,
        runs=args.runs,
        draft_length=args.num_assistant_tokens,
        progress=_progress(sys.stderr),
    )
    _end_progress(sys.stderr)
    machine = describe_machine(rt.device)
    print("\n".join(machine.lines()) + "\n")
    print(report.format_text())
    _write_json(args.json, {"machine": machine.as_dict(), **report.as_dict()})
    return 0


def _bench_concurrency(args: argparse.Namespace, prompts: list[Prompt]) -> int:
    from gemma_mtp.benchmarking import describe_machine
    from gemma_mtp.benchmarking.concurrency import Setting, measure_concurrency

    settings: list[Setting] = []
    for backend in args.backend:
        if backend == "transformers":
            rt = load_runtime(args)
            settings += [Setting("transformers + MTP", rt, True), Setting("transformers alone", rt, False)]
        elif backend == "vllm":
            options = dict(args.vllm_option or [])
            with_mtp = _load_engine(args, "vllm", options)
            alone = _load_engine(args, "vllm", {**options, "num_assistant_tokens": 0})
            settings += [Setting("vllm + MTP", with_mtp, True), Setting("vllm alone", alone, False)]
        else:
            if not args.base_url:
                raise CLIError("--backend openai needs --base-url (the server's OpenAI-compatible URL)")
            server = _load_engine(args, "openai", {"base_url": args.base_url})
            settings.append(Setting("server (openai)", server, True))
    for setting in settings:
        check_budget(setting.runtime, prompts, args.max_new_tokens)
    report = measure_concurrency(
        settings,
        prompts,
        levels=args.concurrency,
        max_new_tokens=args.max_new_tokens,
        runs=args.runs,
        model=args.model,
        progress=_progress(sys.stderr),
    )
    _end_progress(sys.stderr)
    import torch

    devices = [s.runtime.device for s in settings if isinstance(s.runtime.device, torch.device)]
    machine = describe_machine(devices[0] if devices else torch.device("cpu"))
    print("\n".join(machine.lines()) + "\n")
    print(report.format_text())
    threads = torch.get_num_threads()
    if threads > 1 and any(
        s.runtime.backend == "transformers" and s.runtime.device.type == "cpu" for s in settings
    ):
        print(
            f"\nnote: in process on the CPU with {threads} torch threads. Requests decode on worker threads, where "
            "torch's small operations run slower once a second thread has used torch, drafting rounds most "
            "(docs/index.md, Concurrency); compare with --threads 1."
        )
    if args.plot is not None:
        report.plot(args.plot)
    _write_json(args.json, {"machine": machine.as_dict(), **report.as_dict()})
    return 0


def _load_engine(args: argparse.Namespace, backend: str, options: dict[str, Any]) -> Runtime:
    try:
        with Spinner(f"Starting {backend} on {args.model}"):
            return Runtime.load(
                args.model,
                args.assistant,
                backend=backend,
                device=args.device,
                dtype=None if args.dtype == "auto" else args.dtype,
                **options,
            )
    except (OSError, ValueError, ImportError) as err:
        raise CLIError(str(err)) from err


def _tune(args: argparse.Namespace) -> int:
    from gemma_mtp.benchmarking import describe_machine, sweep

    prompts = read_prompts(args)  # a bad file fails before minutes of loading
    rt = load_runtime(args)
    check_budget(rt, prompts, args.max_new_tokens)
    report = sweep(
        rt,
        prompts,
        draft_lengths=args.draft_lengths,
        temperatures=args.temperatures,
        draft_methods=args.draft_methods,
        max_new_tokens=args.max_new_tokens,
        runs=args.runs,
        head_to_head_runs=args.head_to_head_runs,
        progress=_progress(sys.stderr),
    )
    _end_progress(sys.stderr)
    machine = describe_machine(rt.device)
    print("\n".join(machine.lines()) + "\n")
    print(report.format_text())
    print()
    for t in report.temperatures:
        best, pin = report.best(t), report.pin_advice(t)
        if pin is not None:
            print(
                f"at temperature {t:g} the best fixed setting beat the default policy beyond the runs' noise; to "
                f"pin it: SamplingParams({pin}), or num_assistant_tokens={best.draft_length} on the adapters"
            )
        else:
            print(
                f"at temperature {t:g} the default draft policy needs no settings: the best fixed setting was not "
                "faster beyond the runs' noise" + ("" if report.head_to_head else " (no head-to-head runs)")
            )
    best = report.best(min(report.temperatures))
    positions = _draft_positions(rt, prompts, args.max_new_tokens, best.draft_length)
    _write_json(args.json, {"machine": machine.as_dict(), **report.as_dict(), "draft_positions": positions})
    return 0


def _draft_positions(
    rt: Runtime, prompts: list[Prompt], max_new_tokens: int, draft_length: int | None
) -> dict[str, Any] | None:
    """Print and return greedy acceptance under both draft-position conventions (transformers backend)."""
    from gemma_mtp.benchmarking import compare_draft_positions

    if rt.backend != "transformers":
        return None

    report = compare_draft_positions(rt, prompts, max_new_tokens=max_new_tokens, draft_length=draft_length)
    print("\n" + report.format_text())
    better = report.better_than(rt.draft_position)
    if better is not None:
        print(
            f"this assistant accepts more at draft position {better!r}, beyond the noise of these prompts: "
            f"pass --draft-position {better} (Runtime.load(..., draft_position={better!r}))"
        )
    return report.as_dict()


def _verify(args: argparse.Namespace) -> int:
    from gemma_mtp.benchmarking import verify_greedy

    prompts = read_prompts(args)  # a bad file fails before minutes of loading
    rt = load_runtime(args)
    reference = None
    check_budget(rt, prompts, args.max_new_tokens)
    if args.reference_model:
        reference = _load(
            args.reference_model, args.reference_assistant, args.device, args.dtype, args.threads
        )
        check_budget(reference, prompts, args.max_new_tokens)
    try:
        report = verify_greedy(
            rt,
            prompts,
            max_new_tokens=args.max_new_tokens,
            tolerance=args.tolerance,
            reference=reference,
            progress=_progress(sys.stderr),
        )
    except ValueError as err:
        raise CLIError(str(err)) from err
    _end_progress(sys.stderr)
    print(report.format_text(rt.tokenizer.decode))
    positions = _draft_positions(rt, prompts, args.max_new_tokens, None)
    _write_json(args.json, {**report.as_dict(), "draft_positions": positions})
    return 0 if report.ok else 1


# -- arguments -----------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"temperatures must be in [0, 100], got {value}")
    return value


def common_options(max_new_tokens: int, prompts: bool = True) -> argparse.ArgumentParser:
    """Model and workload options shared by the subcommands and ``benchmarks/run_benchmarks.py``."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"target: hub id or folder (default: {DEFAULT_MODEL}, the small pair shipped in the package)",
    )
    group.add_argument("--assistant", help="MTP assistant: hub id or folder (default: <model>-assistant)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    group.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="default: bfloat16 on CUDA, float32 on CPU"
    )
    group.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    group.add_argument(
        "--draft-position",
        choices=DRAFT_POSITIONS,
        help="the assistant's query position: last_accepted (n - 1, as Google's runtime and vLLM draft) or "
        "pending (n, as transformers' generate does) (default: what the assistant's config records, "
        "else last_accepted)",
    )
    run = common.add_argument_group("workload")
    run.add_argument(
        "--max-new-tokens", type=_positive_int, default=max_new_tokens, help=f"default: {max_new_tokens}"
    )
    if prompts:
        run.add_argument(
            "--prompts",
            type=Path,
            metavar="FILE",
            help="one prompt per line, or .jsonl with a string or a message list per line (default: built in)",
        )
        run.add_argument("--raw", action="store_true", help="send prompts as plain text, not as a chat turn")
    return common


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be integers >= 1, got {text!r}")
    return levels


def _engine_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-mtp",
        description="Gemma 4 speculative decoding with MTP assistants: demo, benchmarks, tuning, verification.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[common_options(96, prompts=False)],
        help="stream a LangChain chain and a LlamaIndex query, then report the speed-up",
        description="Streams a LangChain chain and a LlamaIndex query engine on the pair, then decodes the same "
        "questions with and without the assistant and reports acceptance, tokens per target pass, "
        "tokens/s and whether greedy outputs matched.",
    )
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser(
        "bench",
        parents=[common_options(64)],
        help="our loop vs Hugging Face generate, with and without the assistant",
        description="Greedy decoding of the same prompts and token budget by four methods: our loop with the "
        "assistant, our loop alone, HF generate alone and HF generate(assistant_model=...). Medians over runs.",
    )
    bench.add_argument(
        "--runs",
        type=_positive_int,
        default=3,
        help="timed runs over all prompts; with --concurrency, runs of every level (default: 3)",
    )
    bench.add_argument(
        "--num-assistant-tokens", type=_positive_int, help="draft length (default: the assistant's own)"
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    concurrency = bench.add_argument_group(
        "concurrency",
        "with --concurrency: aggregate tokens/s and request latency against concurrent requests, per backend, "
        "with and without MTP (instead of the four-method comparison)",
    )
    concurrency.add_argument(
        "--concurrency", type=_levels, metavar="N,N,...", help="concurrency levels, e.g. 1,2,4,8,16"
    )
    concurrency.add_argument(
        "--backend",
        nargs="+",
        choices=("transformers", "vllm", "openai"),
        default=["transformers"],
        help="backends to measure side by side (default: transformers)",
    )
    concurrency.add_argument(
        "--vllm-option",
        type=_engine_option,
        action="append",
        metavar="KEY=VALUE",
        help="a vLLM engine argument (VALUE read as JSON when it parses), e.g. enforce_eager=true; repeatable",
    )
    concurrency.add_argument(
        "--base-url", help="the server for --backend openai, e.g. http://127.0.0.1:8000/v1"
    )
    concurrency.add_argument("--plot", type=Path, metavar="PNG", help="also plot the results")
    bench.set_defaults(handler=_bench)

    tune = commands.add_parser(
        "tune",
        parents=[common_options(64)],
        help="sweep draft length x temperature x draft method; the default policy head to head with the best "
        "fixed setting",
        description="Decodes the prompts with each draft length and temperature (when sampling, with argmax and "
        "sampled drafts) and without the assistant, prints the cost model's speed-up next to the measured one, "
        "picks the best fixed setting, then runs the default draft policy head to head against it.",
    )
    tune.add_argument(
        "--draft-lengths",
        type=_positive_int,
        nargs="+",
        default=list(range(1, 9)),
        metavar="K",
        help="draft lengths swept (default: 1 2 3 4 5 6 7 8)",
    )
    tune.add_argument(
        "--temperatures",
        type=_temperature,
        nargs="+",
        default=[0.0, 0.7, 1.0],
        metavar="T",
        help="temperatures swept (default: 0 0.7 1)",
    )
    tune.add_argument(
        "--draft-methods",
        nargs="+",
        choices=["argmax", "sampled"],
        default=["argmax", "sampled"],
        help="draft methods swept when sampling (default: both)",
    )
    tune.add_argument("--runs", type=_positive_int, default=2, help="runs per setting (default: 2)")
    tune.add_argument(
        "--head-to-head-runs",
        type=_non_negative_int,
        default=3,
        help="runs of the default policy against the best fixed setting, back to back (default: 3; 0 skips)",
    )
    tune.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    tune.set_defaults(handler=_tune)

    verify = commands.add_parser(
        "verify",
        parents=[common_options(64)],
        help="greedy output with vs without the assistant, prompt by prompt",
        description="Decodes each prompt greedily with and without the assistant. At the first differing token "
        "it reports the target's top-2 logit margin; a flip where both tokens are within --tolerance of "
        "the best logit is a near-tie (half precision can legitimately cause one), anything else a real "
        "divergence. Exit status 1 on a real divergence, else 0.",
    )
    verify.add_argument(
        "--tolerance",
        type=float,
        help="near-tie threshold in logits (default by dtype: float32 0.01, float16 0.25, bfloat16 0.5)",
    )
    verify.add_argument(
        "--reference-model",
        metavar="MODEL",
        help="compare against this target decoding alone instead of the same target (same tokenizer)",
    )
    verify.add_argument(
        "--reference-assistant",
        metavar="MODEL",
        help="the reference's assistant, loaded with it as a pair (default: <reference-model>-assistant)",
    )
    verify.add_argument("--json", type=Path, metavar="FILE", help="also write the verdicts as JSON")
    verify.set_defaults(handler=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gemma-mtp`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CLIError as err:
        print(f"gemma-mtp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
