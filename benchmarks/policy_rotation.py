"""The default draft policy against every fixed draft length and the target alone, in rotation.

Measures, on the packaged mini pair and on one of the testing kit's agreeing pairs (built offline), every
setting in the same rotation with a fresh runtime per run (see :mod:`gemma_mtp.benchmarking.rotation`),
then a long run of greedy requests on one runtime that counts the policy's tries of alternatives. Writes the
results into the "policy-rotation" section of ``docs/benchmarks.md``::

    python benchmarks/policy_rotation.py --threads 1                  # both pairs, 5 rotations
    python benchmarks/policy_rotation.py --threads 1 --rotations 9 --note 'nothing else ran on the machine'
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gemma_mtp.benchmarking import describe_machine, load_prompts
from gemma_mtp.benchmarking.publish import section_markers, write_page_section
from gemma_mtp.benchmarking.rotation import long_run, rotate
from gemma_mtp.runtime import Runtime
from gemma_mtp.testing import VARIANTS, tiny_pair

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTION = "policy-rotation"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", nargs="+", default=["mini", "kit"], choices=["mini", "kit"])
    parser.add_argument(
        "--kit", choices=VARIANTS, default="dense", help="the kit pair's family (default: dense)"
    )
    parser.add_argument("--rotations", type=int, default=5, help="rotations of every setting (default: 5)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--draft-lengths", type=int, nargs="+", default=list(range(1, 9)), metavar="K")
    parser.add_argument(
        "--sampled-lengths",
        type=int,
        nargs="*",
        default=[1, 2, 3],
        metavar="K",
        help="fixed numbers of sampled drafts timed at each sampling temperature (default: 1 2 3; none: omit)",
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7, 1.0], metavar="T")
    parser.add_argument(
        "--long-requests", type=int, default=60, help="greedy requests of the long run (default: 60; 0 skips)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=DOCS / "benchmarks.md", help="the page to write into")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, help="also write every run as JSON")
    parser.add_argument("--note", default="", help="a remark on the conditions of the run")
    return parser.parse_args(argv)


def load(pair: str, kit: str) -> Runtime:
    if pair == "mini":
        return Runtime.load("gemma-mtp-mini")
    built = tiny_pair(kit, agreeing=True)
    return Runtime.load(str(built.target_dir), str(built.assistant_dir))


def report_progress(pair: str, message: str) -> None:
    print(f"{pair}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/policy_rotation.py", *(sys.argv[1:] if argv is None else argv)]
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = load_prompts(None)
    sections, payload = [], {}
    for pair in args.pairs:
        runtime = load(pair, args.kit)
        report = rotate(
            runtime,
            prompts,
            draft_lengths=args.draft_lengths,
            sampled_lengths=args.sampled_lengths,
            temperatures=args.temperatures,
            rotations=args.rotations,
            max_new_tokens=args.max_new_tokens,
            progress=functools.partial(report_progress, pair),
        )
        if args.long_requests:
            print(f"{pair}: long run of {args.long_requests} requests", file=sys.stderr, flush=True)
            report.long = long_run(
                runtime, prompts, requests=args.long_requests, max_new_tokens=args.max_new_tokens
            )
        if pair == "kit":
            report.model = f"kit pair ({args.kit}, agreeing)"
        print(report.format_text() + "\n")
        sections.append(report.format_markdown())
        payload[pair] = report.as_dict()
    machine = describe_machine(torch.device("cpu"))
    if not args.no_write:
        begin, end = section_markers(SECTION)
        text = "\n\n".join(
            [
                begin,
                "## The default draft policy in rotation (`benchmarks/policy_rotation.py`)",
                "Every setting in the same rotation, a fresh runtime per run (its first rounds included), "
                "ignore_eos so that every run decodes the same number of tokens. On "
                + "; ".join(machine.lines()[:2])
                + (f". {args.note[:1].upper()}{args.note[1:]}." if args.note else "."),
                *sections,
                f"```bash\n{command}\n```",
                end,
            ]
        )
        write_page_section(args.output, SECTION, text)
        print(f"wrote the {SECTION} section of {args.output}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine.as_dict(), **payload}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
