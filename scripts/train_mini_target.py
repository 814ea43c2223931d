"""Train the mini Gemma 4 target (``gemma_mtp/models/mini/target``) from scratch on CPU, seeded.

It is a smoke-test model: the real ``Gemma4ForCausalLM`` architecture (sliding and full attention
layers, proportional RoPE on the full layers, final logit soft-capping, tied embeddings) at a size
that trains in about 40 minutes on one CPU thread, so that the project can demonstrate and measure
speculative decoding without a model hub. Its shape is chosen for that measurement: eight thin layers
make a target forward cost several times an assistant step, as it does for the real pairs on a GPU.

Usage (from a checkout with the package installed, e.g. ``pip install -e .``)::

    python scripts/train_mini_target.py                  # the committed model
    python scripts/train_mini_target.py --steps 20 --out /tmp/mini-target   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mini_corpus import HELD_OUT_PLAY, build_tokenizer, chat_examples, fetch_corpus_wheel, load_plays
from transformers import Gemma4ForCausalLM, Gemma4TextConfig, GenerationConfig, PreTrainedTokenizerFast

SEQ_LEN = 256
SLIDING_WINDOW = 128
# <eos>, <turn|>, <|tool_response>: where Gemma 4 generation ends (the real targets use the same three).
END_TOKENS = ("<eos>", "<turn|>", "<|tool_response>")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gemma_mtp/models/mini/target"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gemma-mtp-mini"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2.5e-3)
    parser.add_argument("--chat-examples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def target_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> Gemma4TextConfig:
    """Eight layers of width 256: three sliding-window layers then one full layer, twice (E2B-like GQA).

    ``overrides`` replace fields, for other pairs trained from scratch (``scripts/train_tool_pair.py``).
    """
    fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        global_head_dim=128,
        layer_types=["sliding_attention"] * 3
        + ["full_attention"]
        + ["sliding_attention"] * 3
        + ["full_attention"],
        sliding_window=SLIDING_WINDOW,
        final_logit_softcapping=30.0,
        max_position_embeddings=4096,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(list(END_TOKENS)),
        tie_word_embeddings=True,
    )
    return Gemma4TextConfig(**{**fields, **overrides})


def encode_documents(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], conversations: list[list[dict[str, str]]], seed: int
) -> torch.Tensor:
    """One token stream of shuffled documents: scenes start with <bos>, chats are rendered by the template."""
    docs = [[tokenizer.bos_token_id, *tokenizer(text).input_ids] for text in texts]
    docs += [tokenizer.apply_chat_template(conv, tokenize=True, return_dict=False) for conv in conversations]
    random.Random(seed).shuffle(docs)
    return torch.tensor([token for doc in docs for token in doc], dtype=torch.long)


def windows(stream: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping training windows of ``length + 1`` tokens (inputs and shifted labels)."""
    count = (stream.numel() - 1) // length
    starts = torch.arange(count) * length
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def lm_loss(model: Gemma4ForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: Gemma4ForCausalLM, val: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [lm_loss(model, val[i : i + batch_size]).item() for i in range(0, len(val), batch_size)]
    model.train()
    return sum(losses) / len(losses)


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(model: Gemma4ForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """float16 safetensors (half the size) with a config that asks for float32 compute when loaded on CPU."""
    out.mkdir(parents=True, exist_ok=True)
    half = Gemma4ForCausalLM(model.config)
    half.load_state_dict(model.state_dict())
    half.to(torch.float16)
    half.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(list(END_TOKENS)),
    )
    half.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    plays = load_plays(fetch_corpus_wheel(args.work_dir))
    train_plays = [p for p in plays if p.slug != HELD_OUT_PLAY]
    held_out = [p for p in plays if p.slug == HELD_OUT_PLAY]
    train_convs = chat_examples(train_plays, args.chat_examples, seed=args.seed)
    val_convs = chat_examples(held_out, 100, seed=args.seed + 1)
    train_texts = [scene for p in train_plays for scene in p.scenes]
    tokenizer = build_tokenizer(
        train_texts + [tok_text for conv in train_convs for tok_text in (m["content"] for m in conv)]
    )

    train = windows(encode_documents(tokenizer, train_texts, train_convs, args.seed), SEQ_LEN)
    val_texts = [scene for p in held_out for scene in p.scenes]
    val = windows(encode_documents(tokenizer, val_texts, val_convs, args.seed), SEQ_LEN)[:64]
    print(
        f"train windows {len(train)} ({train.numel() / 1e6:.2f}M tokens), val windows {len(val)}", flush=True
    )

    model = Gemma4ForCausalLM(target_config(tokenizer))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"target parameters {n_params / 1e6:.2f}M", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    checkpoint_dir = args.work_dir / "target-checkpoint"
    for step in range(args.steps):
        start = (step * args.batch_size) % len(order)
        if start + args.batch_size > len(order):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + step))
            start = 0
        batch = train[order[start : start + args.batch_size]]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - started
            print(
                f"step {step} loss {loss.item():.3f} lr {group['lr']:.2e} elapsed {elapsed:.0f}s", flush=True
            )
        if (step + 1) % 100 == 0 or step == args.steps - 1:
            print(f"step {step} val loss {evaluate(model, val, args.batch_size):.3f}", flush=True)
            save_checkpoint(model, tokenizer, checkpoint_dir)

    save_checkpoint(model, tokenizer, args.out)
    model.eval()
    for prompt in ("PROSPERO:\n", "<bos><|turn>user\nTell me about love.<turn|>\n<|turn>model\n"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=60, do_sample=False)
        print(f"--- {prompt!r}\n{tokenizer.decode(out[0, ids.shape[1] :])}", flush=True)
    print(f"done in {time.perf_counter() - started:.0f}s, saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
