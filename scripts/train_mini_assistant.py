"""Distil the mini Gemma 4 MTP assistant (``gemma_mtp/models/mini/assistant``) from the mini target, seeded.

The assistant is trained exactly the way gemma-mtp drafts with it at inference: for the newest token
``x[t]`` (the target has processed ``x[0..t-1]``) it reads the target's embedding of ``x[t]``,
concatenated with the target's last hidden state at ``t - 1``, and attends only to the target's shared
KV states (keys and values of the last sliding and the last full layer) of positions ``0 .. t - 1``,
sliding layers the last ``W`` of them. Its position id is ``t - 1`` (``--draft-position last_accepted``,
as Google's LiteRT-LM runtime, vLLM and SGLang draft) or ``t`` (``pending``, as transformers'
``SinglePositionMultiTokenCandidateGenerator`` does; sliding layers then see ``W + 1`` keys, as far as
its mask reaches). The convention is recorded in the saved ``config.json`` (``gemma_mtp.draft_position``),
which gemma-mtp honours. Draft step ``j > 1`` feeds the assistant's own projected hidden state back in
with the next token, at the same position. All positions of a sequence are trained in one batched call:
every assistant layer reads only the shared KV, so queries never see each other, and the per-query
attention masks below reproduce the single-position inputs exactly (checked against the model's own
forward before training).

Training data are the target's own continuations of corpus and chat prompts (mostly greedy, some
sampled), so the contexts match what the target produces while decoding; the loss is the KL divergence
to the target's next-token distribution plus cross-entropy on its greedy token, for draft steps 1..K.

Usage (after ``scripts/train_mini_target.py``)::

    python scripts/train_mini_assistant.py
    python scripts/train_mini_assistant.py --steps 5 --sequences 64 --out /tmp/mini-assistant   # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from mini_corpus import HELD_OUT_PLAY, chat_examples, fetch_corpus_wheel, load_plays
from transformers import (
    AutoTokenizer,
    Gemma4AssistantConfig,
    Gemma4AssistantForCausalLM,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=Path, default=Path("gemma_mtp/models/mini/target"))
    parser.add_argument("--out", type=Path, default=Path("gemma_mtp/models/mini/assistant"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gemma-mtp-mini"))
    parser.add_argument("--sequences", type=int, default=2048, help="target continuations to distil on")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per continuation")
    parser.add_argument("--sampled-fraction", type=float, default=0.25, help="continuations sampled at T=1")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--draft-steps", type=int, default=4, help="unrolled draft steps K")
    parser.add_argument(
        "--num-assistant-tokens", type=int, default=5, help="draft length saved in the config"
    )
    parser.add_argument(
        "--draft-position",
        choices=("last_accepted", "pending"),
        default="last_accepted",
        help="the assistant's query position: n - 1 (Google's runtime, vLLM) or n (transformers)",
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def assistant_config(
    target: Gemma4ForCausalLM, layers: int, hidden_size: int = 256, intermediate_size: int = 2048
) -> Gemma4AssistantConfig:
    """A narrow assistant whose every layer reads the target's KV, like Google's E2B/E4B assistants."""
    tcfg = target.config
    sliding = tcfg.per_layer_config[tcfg.layer_types.index("sliding_attention")]
    full = tcfg.per_layer_config[tcfg.layer_types.index("full_attention")]
    layer_types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    text = Gemma4TextConfig(
        vocab_size=tcfg.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=sliding.num_key_value_heads,
        head_dim=sliding.head_dim,
        global_head_dim=full.head_dim,
        layer_types=layer_types,
        sliding_window=tcfg.sliding_window,
        num_kv_shared_layers=layers,
        max_position_embeddings=tcfg.max_position_embeddings,
        rope_parameters=tcfg.rope_parameters,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        pad_token_id=tcfg.pad_token_id,
        bos_token_id=tcfg.bos_token_id,
        eos_token_id=tcfg.eos_token_id,
        tie_word_embeddings=True,
    )
    return Gemma4AssistantConfig(
        text_config=text, backbone_hidden_size=tcfg.hidden_size, use_ordered_embeddings=False
    )


def prompts(tokenizer: PreTrainedTokenizerBase, work_dir: Path, count: int, seed: int) -> list[list[int]]:
    """Corpus windows (16-96 tokens, training plays only) and chat prompts ending in the generation prompt."""
    rng = random.Random(seed)
    plays = [p for p in load_plays(fetch_corpus_wheel(work_dir)) if p.slug != HELD_OUT_PLAY]
    scenes = [scene for p in plays for scene in p.scenes]
    conversations = chat_examples(plays, count, seed=seed + 7)
    out = []
    for i in range(count):
        if i % 4 == 3:
            messages = conversations[i][:-1]
            out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        else:
            ids = tokenizer(rng.choice(scenes)).input_ids
            length = rng.randint(16, 96)
            start = rng.randrange(max(1, len(ids) - length))
            window = ids[start : start + length]
            out.append([tokenizer.bos_token_id, *window] if start == 0 else window)
    return out


@torch.no_grad()
def generate_continuations(
    target: Gemma4ForCausalLM, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace
) -> list[tuple[list[int], int]]:
    """(sequence, prompt length) pairs: the target's own continuations of the mini corpus prompts."""
    all_prompts = prompts(tokenizer, args.work_dir, args.sequences, args.seed)
    return continue_prompts(target, tokenizer, all_prompts, args.new_tokens, args.sampled_fraction, args.seed)


@torch.no_grad()
def continue_prompts(
    target: Gemma4ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    all_prompts: list[list[int]],
    new_tokens: int,
    sampled_fraction: float,
    seed: int,
) -> list[tuple[list[int], int]]:
    """(sequence, prompt length) pairs: the target's own continuations (every ``1 / sampled_fraction``-th batch
    sampled at T=1, the rest greedy), in left-padded batches of 32, each cut after its first end token."""
    torch.manual_seed(seed)
    eos = set(target.generation_config.eos_token_id)
    data = []
    started = time.perf_counter()
    for i in range(0, len(all_prompts), 32):
        chunk = all_prompts[i : i + 32]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in chunk])[:, None]).long()
        sample = (i // 32) % round(1 / sampled_fraction) == 0 if sampled_fraction > 0 else False
        out = target.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
        )
        for prompt, row in zip(chunk, out[:, width:].tolist(), strict=True):
            new = []
            for token in row:
                new.append(token)
                if token in eos:
                    break
            data.append((prompt + new, len(prompt)))
        print(f"generated {len(data)}/{len(all_prompts)} ({time.perf_counter() - started:.0f}s)", flush=True)
    return data


def sliding_entries(sliding_window: int, draft_position: str) -> int:
    """How many of the newest sliding keys gemma-mtp's drafter passes (``Drafter.sliding_entries``)."""
    return sliding_window if draft_position == "last_accepted" else sliding_window + 1


def query_positions(length: int, draft_position: str) -> torch.Tensor:
    """Position ids of the queries for the newest tokens ``x[1..length-1]``."""
    return torch.arange(1, length) - (1 if draft_position == "last_accepted" else 0)


def shared_kv_masks(positions: int, keys: int, window: int) -> dict[str, torch.Tensor]:
    """Boolean (1, 1, Q, K) masks: the query for ``x[t]`` (t = 1..Q) sees keys ``< t``; sliding layers the last ``window``.

    The drafter passes exactly those keys, and ``Gemma4AssistantForCausalLM.create_attention_masks`` lets one
    query see all of them (its bidirectional window ``|q - k| <= W`` reaches the last ``W + 1``).
    """
    t = torch.arange(1, positions + 1)[:, None]
    k = torch.arange(keys)[None, :]
    full = k < t
    sliding = full & (k >= t - window)
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def draft_pass(
    assistant: Gemma4AssistantForCausalLM,
    token_embeds: torch.Tensor,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    shared_kv: dict[str, tuple[torch.Tensor, torch.Tensor]],
    masks: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draft step for many queries at once: the body of ``Gemma4AssistantForCausalLM.forward``."""
    inputs = assistant.pre_projection(torch.cat([token_embeds, hidden], dim=-1))
    # output_hidden_states keeps transformers from slicing the queries to `logits_to_keep` before the
    # KV-shared layers (an optimisation for prefill that assumes per-layer inputs exist).
    out = assistant.model(
        inputs_embeds=inputs,
        attention_mask=masks,
        position_ids=positions,
        shared_kv_states=shared_kv,
        use_cache=False,
        output_hidden_states=True,
    )
    last = out.last_hidden_state
    return assistant.lm_head(last), assistant.post_projection(last)


@torch.no_grad()
def target_pass(target: Gemma4ForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Last hidden states, shared KV states and soft-capped logits of the target over whole sequences."""
    out = target.model(input_ids=ids, use_cache=False, return_shared_kv_states=True)
    hidden = out.last_hidden_state
    logits = target.lm_head(hidden)
    cap = target.config.final_logit_softcapping
    logits = torch.tanh(logits / cap) * cap
    return hidden, dict(out.shared_kv_states), logits


@torch.no_grad()
def check_batched_equals_single(
    target: Gemma4ForCausalLM, assistant: Gemma4AssistantForCausalLM, draft_position: str
) -> None:
    """The batched training pass must give the same logits as the model's own one-position forward."""
    length = target.config.sliding_window + 40
    ids = torch.randint(17, target.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    hidden, kv, _ = target_pass(target, ids)
    embed = target.get_input_embeddings()
    q = length - 1
    positions = query_positions(length, draft_position)[None]
    window = sliding_entries(target.config.sliding_window, draft_position)
    masks = shared_kv_masks(q, length, window)
    batched, _ = draft_pass(assistant, embed(ids[:, 1:]), hidden[:, :-1], positions, kv, masks)
    for t in (1, 5, target.config.sliding_window, length - 1):
        visible = {
            name: (k[:, :, max(0, t - window) : t], v[:, :, max(0, t - window) : t])
            if name == "sliding_attention"
            else (k[:, :, :t], v[:, :, :t])
            for name, (k, v) in kv.items()
        }
        single = assistant(
            inputs_embeds=torch.cat([embed(ids[:, t : t + 1]), hidden[:, t - 1 : t]], dim=-1),
            position_ids=positions[:, t - 1 : t],
            shared_kv_states=visible,
        ).logits[0, 0]
        error = (single - batched[0, t - 1]).abs().max().item()
        if error > 1e-4:
            raise RuntimeError(
                f"batched draft pass differs from the single-position forward at t={t}: {error}"
            )


def distillation_loss(
    target: Gemma4ForCausalLM,
    assistant: Gemma4AssistantForCausalLM,
    ids: torch.Tensor,
    loss_mask: torch.Tensor,
    draft_steps: int,
    draft_position: str,
) -> tuple[torch.Tensor, list[float]]:
    """Mean over draft steps of KL(target || assistant) + CE(target's greedy token); and per-step accuracy."""
    hidden, kv, target_logits = target_pass(target, ids)
    embed = target.get_input_embeddings()
    with torch.no_grad():
        token_embeds = embed(ids)
    batch, length = ids.shape
    q = length - 1
    positions = query_positions(length, draft_position)[None].expand(batch, -1)
    masks = shared_kv_masks(q, length, sliding_entries(target.config.sliding_window, draft_position))
    state = hidden[:, :-1]  # target hidden state at t - 1 for queries t = 1..L-1
    total = torch.zeros(())
    accuracy = []
    for j in range(draft_steps):
        # Step j+1 at query t reads token x[t + j] and predicts the target's distribution at t + j.
        index = torch.clamp(torch.arange(1, length) + j, max=length - 1)
        logits, state = draft_pass(assistant, token_embeds[:, index], state, positions, kv, masks)
        teacher = target_logits[:, index]
        valid = loss_mask[:, index] & (torch.arange(1, length) + j <= length - 1)[None]
        log_q = F.log_softmax(logits.float(), dim=-1)
        p = F.softmax(teacher.float(), dim=-1)
        kl = (p * (torch.log(p.clamp_min(1e-9)) - log_q)).sum(-1)
        greedy = teacher.argmax(-1)
        ce = F.nll_loss(log_q.reshape(-1, log_q.shape[-1]), greedy.reshape(-1), reduction="none").view_as(kl)
        weight = valid.float()
        total = total + ((kl + ce) * weight).sum() / weight.sum().clamp_min(1)
        hits = ((logits.argmax(-1) == greedy).float() * weight).sum() / weight.sum().clamp_min(1)
        accuracy.append(hits.item())
    return total / draft_steps, accuracy


def collate(sequences: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and a mask of the positions whose targets lie in the generated continuation."""
    width = max(len(seq) for seq, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        # logits at position p predict token p + 1: train from the prompt's last position on.
        mask[row, prompt_len - 1 : len(seq) - 1] = True
    return ids, mask


def save_assistant(
    assistant: Gemma4AssistantForCausalLM, target_dir: Path, out: Path, draft_length: int, draft_position: str
) -> None:
    """float16 safetensors, float32 compute on load, the target's tokenizer, draft length and convention."""
    out.mkdir(parents=True, exist_ok=True)
    half = Gemma4AssistantForCausalLM(assistant.config)
    half.load_state_dict(assistant.state_dict())
    half.to(torch.float16)
    target_generation = GenerationConfig.from_pretrained(target_dir)
    half.generation_config = GenerationConfig(
        bos_token_id=target_generation.bos_token_id,
        pad_token_id=target_generation.pad_token_id,
        eos_token_id=target_generation.eos_token_id,
        num_assistant_tokens=draft_length,
        num_assistant_tokens_schedule="constant",
    )
    half.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (target_dir / name).exists():
            shutil.copyfile(target_dir / name, out / name)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config["gemma_mtp"] = {"draft_position": draft_position}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def distil(
    target: Gemma4ForCausalLM,
    assistant: Gemma4AssistantForCausalLM,
    data: list[tuple[list[int], int]],
    pad_id: int,
    args: argparse.Namespace,
    started: float,
    checkpoint: Callable[[Gemma4AssistantForCausalLM], None] | None = None,
) -> None:
    """Train ``assistant`` on the target's continuations ``data`` (``args``: steps, batch_size, lr, draft_steps,
    draft_position, seed), with linear warm-up and decay; ``checkpoint`` is called every 50 steps."""
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(assistant.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    assistant.train()
    order: list[int] = []
    for step in range(args.steps):
        if len(order) < args.batch_size:
            order = list(range(len(data)))
            rng.shuffle(order)
        batch = [data[order.pop()] for _ in range(args.batch_size)]
        ids, mask = collate(batch, pad_id)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * (1 - step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, accuracy = distillation_loss(
            target, assistant, ids, mask, args.draft_steps, args.draft_position
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(assistant.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            acc = " ".join(f"{a:.2f}" for a in accuracy)
            elapsed = time.perf_counter() - started
            print(
                f"step {step} loss {loss.item():.3f} top-1 agreement per draft step [{acc}] {elapsed:.0f}s",
                flush=True,
            )
        if checkpoint is not None and (step + 1) % 50 == 0:
            checkpoint(assistant)
    assistant.eval()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target = Gemma4ForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    assistant = Gemma4AssistantForCausalLM(assistant_config(target, args.layers))
    with torch.no_grad():
        # Same width as the target: start the tied embedding/head from the target's vocabulary geometry.
        assistant.get_input_embeddings().weight.copy_(target.get_input_embeddings().weight)
    print(f"assistant parameters {sum(p.numel() for p in assistant.parameters()) / 1e6:.2f}M", flush=True)
    check_batched_equals_single(target, assistant, args.draft_position)

    data = generate_continuations(target, tokenizer, args)

    def checkpoint(model: Gemma4AssistantForCausalLM) -> None:
        save_assistant(
            model,
            args.target,
            args.work_dir / "assistant-checkpoint",
            args.num_assistant_tokens,
            args.draft_position,
        )

    distil(target, assistant, data, tokenizer.pad_token_id, args, started, checkpoint)
    save_assistant(assistant, args.target, args.out, args.num_assistant_tokens, args.draft_position)
    print(f"done in {time.perf_counter() - started:.0f}s, saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
