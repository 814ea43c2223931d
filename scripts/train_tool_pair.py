"""Train the "tool-use" test pair (``gemma_mtp/testing/tool_use``) from scratch on CPU, seeded.

The kit pairs of :mod:`gemma_mtp.testing` have random weights: their calls and JSON are valid by construction
under a constraint, but they cannot *decide* anything (end a string, stop after one call, copy an argument from
the request). This pair can, at toy scale: a ``Gemma4ForCausalLM`` target with the kit's tokenizer and chat
template, trained on synthetic Gemma 4 chat transcripts (``scripts/tool_corpus.py``: tool calls whose arguments
come from the request, a short answer after the tool's result, records and JSON objects with short strings, plain
short answers), and a ``Gemma4AssistantForCausalLM`` distilled from it the way ``scripts/train_mini_assistant.py``
distils the mini assistant. It is what LangChain's standard integration suite runs on.

The loss weights the model's own turns fully and the rest of each transcript (declarations, requests, tool
results) by ``--prompt-weight``, so that the little training there is goes to the decisions.

Copying a value from the request into a call (``f(3)`` asked, ``f{input:3}`` written) is the hard decision: it
needs attention heads that find the value in the request, which emerge late. Every ``--eval-every`` steps the log
prints a copy metric (:func:`copy_accuracy`): on held-out requests that name a tool and its values, the share of
calls the model would write with every integer and string value copied (greedy, teacher-forced), and the share
of value tokens it gets right. A pair trained for 450 steps of 3,072 tokens scored 0.00 (value tokens 0.28);
copying emerged with these choices, the committed run ending at 0.57 (0.91):

* 2,400 steps of 2,048 tokens, on 20,000 transcripts of which about 30% name a tool and its values and 27% are
  copying drills (``repeat``: random numbers and strings, which can only be copied);
* every attention head with its own keys and values (four key-value heads, not one shared);
* query and key norms that start at ``head_dim ** -0.25`` (:func:`cool_initial_attention`): Gemma 4 does not scale
  attention logits, so unit norms start it sharp and random; in runs otherwise alike, the value-token share
  reached 0.40 by step 600 with this start, 0.33 without.

Usage (from a checkout with the package installed; the committed pair took 30 minutes on one thread of a 2-core
CPU running another training at the same time: 1,781 s, of which 1,640 s for the target's 2,400 steps; rerun with
the defaults on the otherwise quieter machine, 894 s, it came out bit-identical; another ``--threads`` may round
differently)::

    python scripts/train_tool_pair.py
    python scripts/train_tool_pair.py --steps 20 --assistant-steps 5 --out /tmp/tool-use   # a quick smoke run
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tool_corpus import Example, examples, named_examples
from train_mini_assistant import (
    assistant_config,
    check_batched_equals_single,
    continue_prompts,
    distil,
    save_assistant,
)
from train_mini_target import learning_rate, save_checkpoint
from train_mini_target import target_config as mini_target_config
from transformers import (
    Gemma4AssistantForCausalLM,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    PreTrainedTokenizerFast,
)

from gemma_mtp.testing import build_tokenizer

SLIDING_WINDOW = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gemma_mtp/testing/tool_use"))
    parser.add_argument("--examples", type=int, default=20000, help="synthetic transcripts to train on")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-tokens", type=int, default=2048, help="tokens per batch (padding included)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--prompt-weight", type=float, default=0.1)
    parser.add_argument("--assistant-steps", type=int, default=40)
    parser.add_argument("--assistant-prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", type=int, default=50, help="held-out named requests for the copy metric")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between copy-metric logs")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def target_config(tokenizer: PreTrainedTokenizerFast) -> Gemma4TextConfig:
    """Four layers of width 128, sliding and full attention alternating: the mini target's recipe, smaller."""
    return mini_target_config(
        tokenizer,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        head_dim=32,
        global_head_dim=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        sliding_window=SLIDING_WINDOW,
        num_key_value_heads=4,
    )


def render(tokenizer: PreTrainedTokenizerFast, example: Example, upto: int, prompt: bool) -> list[int]:
    """Token ids of the first ``upto`` messages as the chat template renders them (with the generation prompt)."""
    return tokenizer.apply_chat_template(
        example.messages[:upto],
        tools=example.tools or None,
        add_generation_prompt=prompt,
        tokenize=True,
        return_dict=False,
    )


def encode(tokenizer: PreTrainedTokenizerFast, example: Example) -> tuple[list[int], list[int]]:
    """The whole transcript's ids, and the offsets where each model part starts (what the template adds after
    the generation prompt or after a tool's result) and ends."""
    ids = render(tokenizer, example, len(example.messages), prompt=False)
    parts = []
    for index, message in enumerate(example.messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, example, index, prompt=True)
        upto = render(tokenizer, example, index + 1, prompt=False)
        if ids[: len(upto)] != upto or upto[: len(prompt)] != prompt:
            raise RuntimeError(
                "a model turn and its prompt do not render as prefixes of the whole transcript"
            )
        parts += [len(prompt), len(upto)]
    return ids, parts


def weights_of(length: int, parts: list[int], prompt_weight: float) -> list[float]:
    """Loss weight of each position's *next* token: 1 inside model parts, ``prompt_weight`` elsewhere."""
    weights = [prompt_weight] * length
    for start, end in zip(parts[::2], parts[1::2], strict=True):
        for position in range(start - 1, end - 1):
            weights[position] = 1.0
    return weights


def batches(lengths: list[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length, each group within ``batch_tokens`` (padded), in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > batch_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    rng.shuffle(groups)
    return groups


def collate(encoded: list[tuple[list[int], list[float]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and per-position loss weights (padding weighs nothing)."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    weights = torch.zeros((len(encoded), width), dtype=torch.float32)
    for row, (seq, weight) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        weights[row, : len(seq)] = torch.tensor(weight)
    return ids, weights


def weighted_loss(model: Gemma4ForCausalLM, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
    )
    w = weights[:, :-1].reshape(-1)
    return (losses * w).sum() / w.sum()


def value_spans(text: str, arguments: dict[str, Any]) -> list[tuple[int, int]]:
    """Character spans, in a transcript ending with one call, of the call's integer and string values, each with
    what ends it (the closing quote of a string, the comma or brace after a number): what copying decides."""
    call = text.rindex("<|tool_call>")
    spans = []
    for key, value in arguments.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            continue
        written = f"{value}" if isinstance(value, int) else f'<|"|>{value}<|"|>'
        start = text.index(f"{key}:{written}", call) + len(key) + 1
        opening = 0 if isinstance(value, int) else len('<|"|>')
        spans.append((start + opening, start + len(written) + (1 if isinstance(value, int) else 0)))
    return spans


def copy_probes(
    tokenizer: PreTrainedTokenizerFast, count: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """Held-out requests that name a tool and its values, rendered up to the end of the call, with the
    positions whose next token is a value's (or its end): the copy metric's probes."""
    probes = []
    for example in named_examples(count, seed):
        text = tokenizer.apply_chat_template(
            example.messages[:2], tools=example.tools, tokenize=False, add_generation_prompt=False
        )
        text = text[: text.index("<tool_call|>") + len("<tool_call|>")]
        spans = value_spans(text, example.messages[1]["tool_calls"][0]["function"]["arguments"])
        if not spans:
            continue
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        positions = [
            index - 1
            for index, (start, end) in enumerate(encoded["offset_mapping"])
            if any(start < high and end > low for low, high in spans)
        ]
        probes.append((encoded["input_ids"], positions))
    return probes


@torch.no_grad()
def copy_accuracy(model: Gemma4ForCausalLM, probes: list[tuple[list[int], list[int]]]) -> tuple[float, float]:
    """Teacher-forced, whether the model copies a call's values from the request: the fraction of probes whose
    every value token (and the token that ends the value) is the model's greedy next token, and the fraction of
    those tokens that are."""
    model.eval()
    exact = right = total = 0
    for ids, positions in probes:
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        hits = logits[positions].argmax(-1) == torch.tensor(ids)[[p + 1 for p in positions]]
        exact += bool(hits.all())
        right += int(hits.sum())
        total += len(positions)
    model.train()
    return exact / len(probes), right / total


def cool_initial_attention(model: Gemma4ForCausalLM) -> None:
    """Scale the query and key norms to ``head_dim ** -0.25`` each, so attention logits start with the usual
    ``1/sqrt(head_dim)`` temperature: Gemma 4 does not scale them (its trained norms do), and from unit norms the
    initial attention is sharp and random, which delays the heads that copy from the request."""
    with torch.no_grad():
        for layer in model.model.layers:
            attention = layer.self_attn
            attention.q_norm.weight.fill_(attention.head_dim**-0.25)
            attention.k_norm.weight.fill_(attention.head_dim**-0.25)


def train_target(
    tokenizer: PreTrainedTokenizerFast,
    data: list[tuple[list[int], list[float]]],
    probes: list[tuple[list[int], list[int]]],
    args: argparse.Namespace,
) -> Gemma4ForCausalLM:
    model = Gemma4ForCausalLM(target_config(tokenizer))
    cool_initial_attention(model)
    model.train()
    print(f"target parameters {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = random.Random(args.seed)
    lengths = [len(ids) for ids, _ in data]
    queue: list[list[int]] = []
    started = time.perf_counter()
    for step in range(args.steps):
        if not queue:
            queue = batches(lengths, args.batch_tokens, rng)
        ids, weights = collate([data[i] for i in queue.pop()], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = weighted_loss(model, ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last = step == args.steps - 1
        if step % 10 == 0 or last:
            elapsed = time.perf_counter() - started
            print(
                f"step {step} loss {loss.item():.3f} ({ids.shape[0]}x{ids.shape[1]}) {elapsed:.0f}s",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or last:
            exact, tokens = copy_accuracy(model, probes)
            print(f"step {step} copy accuracy {exact:.2f} (value tokens {tokens:.2f})", flush=True)
    model.eval()
    return model


def model_prompts(tokenizer: PreTrainedTokenizerFast, corpus: list[Example]) -> list[list[int]]:
    """Every point of a transcript where the model speaks: what the assistant is distilled on."""
    return [
        render(tokenizer, example, index, prompt=True)
        for example in corpus
        for index, message in enumerate(example.messages)
        if message["role"] == "assistant"
    ]


def train_assistant(
    target: Gemma4ForCausalLM, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace, started: float
) -> Gemma4AssistantForCausalLM:
    """A one-layer assistant distilled from ``target`` on its own continuations of held-out transcripts."""
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    assistant = Gemma4AssistantForCausalLM(
        assistant_config(target, layers=1, hidden_size=target.config.hidden_size, intermediate_size=256)
    )
    with torch.no_grad():
        assistant.get_input_embeddings().weight.copy_(target.get_input_embeddings().weight)
    check_batched_equals_single(target, assistant, "last_accepted")
    prompts = model_prompts(tokenizer, examples(args.assistant_prompts, seed=args.seed + 1))
    data = continue_prompts(target, tokenizer, prompts, new_tokens=48, sampled_fraction=0.25, seed=args.seed)
    distil_args = argparse.Namespace(
        steps=args.assistant_steps,
        batch_size=4,
        lr=3e-3,
        draft_steps=3,
        draft_position="last_accepted",
        seed=args.seed,
    )
    distil(target, assistant, data, tokenizer.pad_token_id, distil_args, started)
    return assistant


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    corpus = examples(args.examples, seed=args.seed)
    data = []
    for example in corpus:
        ids, parts = encode(tokenizer, example)
        data.append((ids, weights_of(len(ids), parts, args.prompt_weight)))
    tokens = sum(len(ids) for ids, _ in data)
    print(
        f"{len(data)} transcripts, {tokens / 1e6:.2f}M tokens ({time.perf_counter() - started:.0f}s)",
        flush=True,
    )

    probes = copy_probes(tokenizer, args.probes, seed=args.seed + 2)
    target = train_target(tokenizer, data, probes, args)
    target_dir = args.out / "target"
    save_checkpoint(target, tokenizer, target_dir)
    assistant = train_assistant(target, tokenizer, args, started)
    save_assistant(
        assistant, target_dir, args.out / "assistant", draft_length=3, draft_position="last_accepted"
    )
    print(f"done in {time.perf_counter() - started:.0f}s, saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
