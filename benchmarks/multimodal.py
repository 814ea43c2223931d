"""An image in the prompt: MTP speculative decoding against the target alone, side by side in one run.

The same conversation (a picture and a question) is answered greedily with the assistant (the default draft
policy) and by the target alone, alternating, ``--repeats`` times each. Time to the first token is reported apart:
it holds the prefill through the multimodal model, vision encoder included, which speculation does not change.
Decoding speed is measured after the first token (tokens / (elapsed - time to first token)); acceptance and
tokens per target forward pass stand next to it. Writes (or replaces) the "Multimodal" section of
``docs/benchmarks.md`` with ``--write``::

    PYTHONPATH=. python benchmarks/multimodal.py --threads 1 --repeats 5 --write     # the kit's multimodal pair
    PYTHONPATH=. python benchmarks/multimodal.py --model google/gemma-4-E4B-it --image photo.jpg --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.benchmarking.naming import assistant_label, model_label
from gemma_mtp.benchmarking.publish import section_markers, write_page_section
from gemma_mtp.benchmarking.tables import markdown_table
from gemma_mtp.testing import KitMedia, tiny_pair

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTION = "multimodal"
QUESTION = "Describe this picture in detail: what is in it, its colours and its layout."


def test_pattern(size: int = 224) -> Image.Image:
    """A deterministic picture: colour gradients and a few squares (no download needed)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype("uint8")
    for k in range(4):
        at = 20 + 45 * k
        pixels[at : at + 30, at : at + 30] = (255 * (k % 2), 64 * k, 255 - 60 * k)
    return Image.fromarray(pixels)


def measure(
    rt: Runtime, messages: list[dict[str, Any]], params: SamplingParams, use_assistant: bool
) -> dict[str, float]:
    result = rt.chat(messages, params, use_assistant=use_assistant)
    stats = result.stats
    ttft = stats.time_to_first_token_s or 0.0
    decode_s = max(stats.elapsed_s - ttft, 1e-9)
    return {
        "ttft_s": ttft,
        "decode_tps": (len(result.token_ids) - 1) / decode_s,
        "tokens": float(len(result.token_ids)),
        "acceptance": stats.acceptance_rate,
        "per_pass": stats.tokens_per_target_forward,
        "prompt_tokens": float(result.prompt_tokens),
        "ids": result.token_ids,  # type: ignore[dict-item]
    }


def section(rt: Runtime, pair: str, rows: dict[str, list[dict[str, Any]]], repeats: int, image: str) -> str:
    begin, end = section_markers(SECTION)
    med = {
        name: {
            k: statistics.median(r[k] for r in runs)
            for k in ("ttft_s", "decode_tps", "tokens", "acceptance", "per_pass", "prompt_tokens")
        }
        for name, runs in rows.items()
    }
    base = med["target alone"]["decode_tps"]
    table = [
        [
            name,
            f"{m['decode_tps']:.1f}",
            f"{m['decode_tps'] / base:.2f}x",
            "-" if name == "target alone" else f"{m['acceptance']:.2f}",
            f"{m['per_pass']:.2f}",
            f"{m['ttft_s'] * 1000:.0f}",
        ]
        for name, m in med.items()
    ]
    same = all(run["ids"] == rows["target alone"][0]["ids"] for runs in rows.values() for run in runs)
    return "\n".join(
        [
            begin,
            "## Multimodal: an image in the prompt",
            "",
            f"{pair}, {rt.device}, {rt.dtype}; {image}, "
            f"{int(med['target alone']['prompt_tokens'])} prompt tokens with the image's soft tokens, greedy, "
            f"{int(med['target alone']['tokens'])} new tokens, median of {repeats} alternating runs each "
            "(`benchmarks/multimodal.py`). Decoding speed counts the tokens after the first; time to the first "
            "token (the prefill through the multimodal model, vision encoder included) is apart.",
            "",
            markdown_table(
                [
                    "method",
                    "decode tokens/s",
                    "speed-up",
                    "acceptance",
                    "tokens per target pass",
                    "first token (ms)",
                ],
                table,
            ),
            "",
            f"Greedy output with the assistant {'equals' if same else 'DIFFERS from'} the target alone's in every run. "
            "On the kit's pair an assistant step costs about as much as a target step (the real assistants are "
            "2-5% of their targets), so its speed-up understates a real pair's; rerun with `--model` and a real "
            "picture for those.",
            end,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="a multimodal Gemma 4 target (default: the kit's agreeing multimodal pair)"
    )
    parser.add_argument("--assistant")
    parser.add_argument("--image", help="an image file (default: a generated test pattern)")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--draft-length", type=int, default=3, help="the fixed draft length compared")
    parser.add_argument("--threads", type=int, help="torch threads (1 keeps CPU timings steady)")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        rt = Runtime.load(args.model, args.assistant, device=args.device, dtype=args.dtype)
        pair = f"{model_label(rt.model_name)} with {assistant_label(rt.assistant_name)}"
    else:
        kit = tiny_pair("dense", agreeing=True, media=KitMedia(audio=False))
        rt = Runtime.load(str(kit.target_dir), str(kit.assistant_dir), device="cpu", dtype="float32")
        pair = "The testing kit's multimodal pair (dense, agreeing; its vision encoder has random weights)"
    picture = Image.open(args.image).convert("RGB") if args.image else test_pattern()
    described = Path(args.image).name if args.image else f"a {picture.width}x{picture.height} test pattern"
    messages = [
        {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": QUESTION}]}
    ]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    fixed = params.with_overrides(num_assistant_tokens=args.draft_length)
    settings = {
        "MTP (default policy)": (params, True),
        f"MTP (draft length {args.draft_length})": (fixed, True),
        "target alone": (params, False),
    }
    for settings_params, use_assistant in settings.values():  # warm-up, and the policy's first estimates
        measure(rt, messages, settings_params, use_assistant)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, (settings_params, use_assistant) in settings.items():
            rows[name].append(measure(rt, messages, settings_params, use_assistant))
    text = section(rt, pair, rows, args.repeats, described)
    print(text)
    if args.write:
        write_page_section(DOCS / "benchmarks.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
