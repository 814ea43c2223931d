"""Measure gemma-mtp and write ``docs/benchmarks.md`` with its plots in ``docs/img/``.

Runs ``gemma-mtp bench`` (our loop and Hugging Face ``generate``, with and without the assistant) and
``gemma-mtp tune`` (draft length x draft method x temperature, cost model vs measurement, and the default
draft policy against the target alone and the best fixed setting) on one pair, then writes the results
page with a description of the machine. The same command works on a CUDA machine with the
real checkpoints::

    python benchmarks/run_benchmarks.py                                   # gemma-mtp-mini, offline, CPU
    python benchmarks/run_benchmarks.py --kit dense --output docs/benchmarks-kit.md --img-dir docs/img/kit
    python benchmarks/run_benchmarks.py --model google/gemma-4-E2B-it --device cuda --dtype bfloat16 \\
        --output docs/benchmarks-e2b-cuda.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gemma_mtp.benchmarking import compare_methods, describe_machine, sweep
from gemma_mtp.benchmarking.publish import page_section, plot_sweep, write_markdown, write_page_section
from gemma_mtp.cli import CLIError, common_options, load_runtime, read_prompts
from gemma_mtp.testing import VARIANTS, tiny_pair

DOCS = Path(__file__).resolve().parent.parent / "docs"
KEPT_SECTIONS = ("constrained-decoding", "concurrency", "multimodal", "prefix-cache", "policy-rotation")
"""Sections of the page that other commands write (``benchmarks/constrained.py``, ``gemma-mtp bench
--concurrency`` in the vLLM environment, ``benchmarks/prefix_cache.py``, ``benchmarks/policy_rotation.py``); a run
of this script keeps them as they are."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(64)],
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of the side-by-side comparison")
    parser.add_argument("--tune-runs", type=int, default=2, help="runs per setting of the sweep")
    parser.add_argument(
        "--head-to-head-runs",
        type=int,
        default=15,
        help="runs of target alone / default policy / best fixed setting, back to back (0 skips); on a "
        "shared CPU a run's ratio varies by 10-20%%, so the median needs many",
    )
    parser.add_argument(
        "--draft-methods", nargs="+", choices=["argmax", "sampled"], default=["argmax", "sampled"]
    )
    parser.add_argument("--num-assistant-tokens", type=int, help="draft length of the comparison")
    parser.add_argument("--draft-lengths", type=int, nargs="+", default=list(range(1, 9)), metavar="K")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7, 1.0], metavar="T")
    parser.add_argument(
        "--kit",
        choices=VARIANTS,
        help="measure one of the testing kit's agreeing pairs (built offline) instead of --model",
    )
    parser.add_argument("--output", type=Path, default=DOCS / "benchmarks.md", help="the Markdown page")
    parser.add_argument("--img-dir", type=Path, default=DOCS / "img", help="where the PNG plots go")
    parser.add_argument("--json", type=Path, help="also write every number as JSON")
    parser.add_argument(
        "--note", default="", help="a remark on the conditions of the run, printed under the machine"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/run_benchmarks.py", *(sys.argv[1:] if argv is None else argv)]
    )
    if args.kit:
        pair = tiny_pair(args.kit, agreeing=True)
        args.model, args.assistant = str(pair.target_dir), str(pair.assistant_dir)
    try:
        prompts = read_prompts(args)
        runtime = load_runtime(args)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    comparison = compare_methods(
        runtime,
        prompts,
        max_new_tokens=args.max_new_tokens,
        runs=args.runs,
        draft_length=args.num_assistant_tokens,
        progress=progress,
    )
    print(comparison.format_text())
    sweep_report = sweep(
        runtime,
        prompts,
        draft_lengths=args.draft_lengths,
        temperatures=args.temperatures,
        draft_methods=args.draft_methods,
        max_new_tokens=args.max_new_tokens,
        runs=args.tune_runs,
        head_to_head_runs=args.head_to_head_runs,
        progress=progress,
    )
    print(sweep_report.format_text())
    machine = describe_machine(runtime.device)
    plots = plot_sweep(sweep_report, args.img_dir)
    old_page = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    kept = {name: page_section(old_page, name) for name in KEPT_SECTIONS}
    # The default page is the packaged pair's; a page on another pair says which in its title.
    title = "Benchmarks" if comparison.model == "gemma-mtp-mini" else f"Benchmarks: {comparison.model}"
    write_markdown(args.output, machine, comparison, sweep_report, plots, command, args.note, title=title)
    for name, section in kept.items():
        if section is not None:
            write_page_section(args.output, name, section)
    print(f"wrote {args.output} and {', '.join(str(p) for p in plots)}", file=sys.stderr)
    if args.json:
        payload = {
            "machine": machine.as_dict(),
            "comparison": comparison.as_dict(),
            "sweep": sweep_report.as_dict(),
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
