"""Tiny Gemma 4 target + MTP assistant pairs with real transformers classes, built offline in seconds.

Each variant reproduces, at toy size, the features of one family of real checkpoints
(``shared/gemma4-checkpoints.md``): sliding windows shorter than the test prompts, soft-capped logits,
per-layer input embeddings with KV-shared layers and a double-wide MLP (E2B/E4B), a centroid-masked
assistant head (E2B/E4B), keys shared with values plus separate global KV heads and mixture-of-experts
blocks (26B-A4B), and the unified classes (12B).

Random weights make an assistant that almost never agrees with its target, which leaves the accept
path of speculative decoding untested. ``agreeing=True`` therefore builds a pair with a known
structure instead: the target's residual stream is dominated by the current token's embedding and its
untied output head maps each token to a fixed successor (a random permutation of the vocabulary), while
attention and MLP add small context-dependent perturbations. The assistant implements the same
successor map exactly, so it agrees with the target most of the time, disagrees sometimes, and both
full and partial acceptance happen. EOS and end-of-turn ids sit inside the permutation, so generations
also end mid-draft.

That assistant ignores the target's hidden state and attention, so it drafts the same whatever position,
hidden state or keys/values the loop feeds it. ``contextual=True`` adds what a trained assistant has:
its input projection also reads the target's hidden state (and, from the second draft step, its own fed-back
state), and both of its layers' attention (one sliding, one full, each reading the target's shared
keys/values) write into its residual stream. The successor map still dominates, so drafts agree often
enough for partial acceptances, while a wrong position, hidden state or key/value entry changes drafts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma4 import (
    Gemma4AudioConfig,
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessorPil,
    Gemma4TextConfig,
    Gemma4VisionConfig,
)
from transformers.models.gemma4_assistant import Gemma4AssistantConfig, Gemma4AssistantForCausalLM
from transformers.models.gemma4_unified import (
    Gemma4UnifiedAudioConfig,
    Gemma4UnifiedAudioFeatureExtractor,
    Gemma4UnifiedConfig,
    Gemma4UnifiedForCausalLM,
    Gemma4UnifiedForConditionalGeneration,
    Gemma4UnifiedTextConfig,
    Gemma4UnifiedVisionConfig,
)
from transformers.models.gemma4_unified_assistant import (
    Gemma4UnifiedAssistantConfig,
    Gemma4UnifiedAssistantForCausalLM,
)

from gemma_mtp.testing.tokenizer import KIT_VOCAB_SIZE, build_tokenizer

__all__ = ["VARIANTS", "KitMedia", "TinyPair", "build_tiny_pair"]

VARIANTS = ("dense", "e2b", "moe", "unified")
"""``dense``: 31B-like; ``e2b``: E2B/E4B-like (PLE, KV-shared layers, double-wide MLP, centroid head);
``moe``: 26B-A4B-like (k = v, global KV heads, experts); ``unified``: the 12B classes."""

SLIDING_WINDOW = 16
# Scale of the sandwich norms in agreeing pairs, tuned so that greedy acceptance is about 0.6-0.8.
_PERTURBATION = {"dense": 5.0, "moe": 5.0, "unified": 5.0, "e2b": 2.8}
# Contextual assistants: weight of the target's hidden state in the input projection, and scale of the
# attention blocks' sandwich norms (the size of what attention adds to the residual stream).
_CONTEXT_HIDDEN = 1.0
_CONTEXT_ATTENTION = 1.0
END_OF_GENERATION = ("<eos>", "<turn|>", "<|tool_response>")


@dataclass(frozen=True)
class TinyPair:
    """Where a built pair lies on disk."""

    target_dir: Path
    assistant_dir: Path
    variant: str
    agreeing: bool
    contextual: bool = False
    media: KitMedia | None = None


@dataclass(frozen=True)
class KitMedia:
    """What a multimodal kit target reads: images always (a vision encoder), audio when ``audio`` is set.

    ``bidirectional_vision`` sets ``text_config.use_bidirectional_attention = "vision"`` (image tokens attend to each
    other on sliding layers, as in the larger Gemma 4 checkpoints). Images are fitted to ``max_soft_tokens`` (the
    smallest budget Gemma 4 supports, 70: a 32x32 image becomes 64 soft tokens with the kit's 4-pixel patches);
    one second of 16 kHz audio becomes 25 soft tokens.
    """

    audio: bool = True
    bidirectional_vision: bool = False
    max_soft_tokens: int = 70


def _target_config(
    variant: str, eos_ids: list[int], head_dim: int
) -> Gemma4TextConfig | Gemma4UnifiedTextConfig:
    common: dict[str, Any] = dict(
        vocab_size=KIT_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        global_head_dim=2 * head_dim,
        sliding_window=SLIDING_WINDOW,
        final_logit_softcapping=30.0,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=eos_ids,
    )
    if variant == "unified":
        return Gemma4UnifiedTextConfig(
            num_hidden_layers=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            **common,
        )
    if variant == "dense":
        return Gemma4TextConfig(
            num_hidden_layers=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            hidden_size_per_layer_input=0,
            vocab_size_per_layer_input=0,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            **common,
        )
    if variant == "e2b":
        return Gemma4TextConfig(
            num_hidden_layers=6,
            layer_types=["sliding_attention", "full_attention"] * 3,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=KIT_VOCAB_SIZE,
            num_kv_shared_layers=2,
            use_double_wide_mlp=True,
            **common,
        )
    if variant == "moe":
        return Gemma4TextConfig(
            num_hidden_layers=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            hidden_size_per_layer_input=0,
            vocab_size_per_layer_input=0,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            enable_moe_block=True,
            num_experts=4,
            top_k_experts=2,
            moe_intermediate_size=32,
            **common,
        )
    raise ValueError(f"unknown kit variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def _assistant_config(
    variant: str, target_config: Any, agreeing: bool, head_dim: int
) -> Gemma4AssistantConfig | Gemma4UnifiedAssistantConfig:
    hidden = target_config.hidden_size if agreeing else 32
    text: dict[str, Any] = dict(
        vocab_size=KIT_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        global_head_dim=2 * head_dim,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=target_config.eos_token_id,
        num_kv_shared_layers=2,
    )
    if variant == "unified":
        text_config = Gemma4UnifiedTextConfig(
            attention_k_eq_v=True, num_global_key_value_heads=1, use_bidirectional_attention=None, **text
        )
        return Gemma4UnifiedAssistantConfig(
            text_config=text_config.to_dict(), backbone_hidden_size=target_config.hidden_size
        )
    k_eq_v = (
        {"attention_k_eq_v": True, "num_global_key_value_heads": 1} if variant in ("dense", "moe") else {}
    )
    text_config = Gemma4TextConfig(
        hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, **k_eq_v, **text
    )
    centroid = {"use_ordered_embeddings": True, "num_centroids": 32, "centroid_intermediate_top_k": 8}
    return Gemma4AssistantConfig(
        text_config=text_config.to_dict(),
        backbone_hidden_size=target_config.hidden_size,
        **(centroid if variant == "e2b" else {}),
    )


# The kit's vision patches: 4 pixels, pooled 2 x 2 into one soft token.
_PATCH, _POOL = 4, 2


def _media_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    names = {
        "boi_token_id": "<|image>",
        "image_token_id": "<|image|>",
        "eoi_token_id": "<image|>",
        "boa_token_id": "<|audio>",
        "audio_token_id": "<|audio|>",
        "eoa_token_id": "<audio|>",
        "video_token_id": "<|video|>",
    }
    return {key: int(tokenizer.convert_tokens_to_ids(token)) for key, token in names.items()}


def _multimodal_config(
    variant: str, text_config: Any, tokenizer: PreTrainedTokenizerFast, media: KitMedia
) -> Gemma4Config | Gemma4UnifiedConfig:
    """The multimodal wrapper around ``text_config``: a tiny vision encoder and, with ``media.audio``, audio."""
    ids = _media_token_ids(tokenizer)
    if variant == "unified":
        # The 12B's encoder-free embedders: raw pooled patches and raw waveform frames, projected.
        vision = Gemma4UnifiedVisionConfig(
            patch_size=_PATCH,
            pooling_kernel_size=_POOL,
            mm_embed_dim=32,
            mm_posemb_size=64,
            output_proj_dims=32,  # what the final projection reads: the patch embedding, mm_embed_dim wide
        )
        audio = Gemma4UnifiedAudioConfig(audio_embed_dim=640) if media.audio else None
        return Gemma4UnifiedConfig(
            text_config=text_config.to_dict(),
            vision_config=vision.to_dict(),
            audio_config=audio.to_dict() if audio is not None else None,
            **ids,
        )
    if variant not in ("dense", "e2b"):
        raise ValueError(f"multimodal kit pairs are 'dense', 'e2b' or 'unified', got {variant!r}")
    vision = Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=_PATCH,
        pooling_kernel_size=_POOL,
        position_embedding_size=64,
    )
    # The subsampling's first channel count must equal the 128 mel bins (transformers' projection assumes it).
    audio_config = (
        Gemma4AudioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            subsampling_conv_channels=[128, 4],
            output_proj_dims=32,
        )
        if media.audio
        else None
    )
    return Gemma4Config(
        text_config=text_config.to_dict(),
        vision_config=vision.to_dict(),
        audio_config=audio_config.to_dict() if audio_config is not None else None,
        **ids,
    )


def _save_processor_config(target_dir: Path, variant: str, media: KitMedia) -> None:
    """``processor_config.json`` in transformers' nested form, as the real checkpoints ship it.

    The image processor is written as the PIL one (``Gemma4ImageProcessorPil``), which needs no torchvision; the
    unified image processor exists only for torchvision, so the unified kit pair writes its settings under that
    class's name.
    """
    settings = {"patch_size": _PATCH, "pooling_kernel_size": _POOL, "max_soft_tokens": media.max_soft_tokens}
    if variant == "unified":
        image: dict[str, Any] = {
            "image_processor_type": "Gemma4UnifiedImageProcessor",
            "do_normalize": False,
            **settings,
        }
        feature_extractor = Gemma4UnifiedAudioFeatureExtractor().to_dict()
        processor_class = "Gemma4UnifiedProcessor"
    else:
        image = Gemma4ImageProcessorPil(**settings).to_dict()
        feature_extractor = Gemma4AudioFeatureExtractor().to_dict()
        processor_class = "Gemma4Processor"
    config: dict[str, Any] = {
        "processor_class": processor_class,
        "image_processor": image,
        "image_seq_length": media.max_soft_tokens,
        "audio_seq_length": 750,
        "audio_ms_per_token": 40,
    }
    if media.audio:
        config["feature_extractor"] = feature_extractor
    (target_dir / "processor_config.json").write_text(json.dumps(config, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    """numpy values in the processors' dicts as plain JSON."""
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"cannot write {type(value).__name__} to JSON")
    return tolist()


@torch.no_grad()
def _make_media_informative(target: PreTrainedModel, seed: int) -> None:
    """Re-draw the encoders' and embedders' weights at unit gain, so that different pictures and clips give
    clearly different features (transformers' initialisation, at std 0.02, maps every input to about the same)."""
    gen = torch.Generator().manual_seed(seed + 3)
    inner = target.model
    for part in ("vision_tower", "audio_tower", "embed_vision", "embed_audio"):
        module = getattr(inner, part, None)
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / fan_in**0.5)


@torch.no_grad()
def _make_agreeing(target: PreTrainedModel, assistant: PreTrainedModel, variant: str, seed: int) -> None:
    """Give the pair the successor-map structure described in the module docstring."""
    gen = torch.Generator().manual_seed(seed + 1)
    vocab = target.config.get_text_config().vocab_size
    successor = torch.randperm(vocab, generator=gen)
    embed = target.get_input_embeddings().weight
    embed.copy_(torch.randn(embed.shape, generator=gen))
    # Output row for token v is the embedding of its predecessor, so argmax(next | t) = successor[t].
    predecessor = torch.empty_like(successor)
    predecessor[successor] = torch.arange(vocab)
    head = embed[predecessor].clone()
    target.lm_head.weight = torch.nn.Parameter(head)
    # Gemma's sandwich norms fix the size of each block's residual update: their scale sets how often
    # the context overturns the successor map, i.e. how often drafts get rejected.
    # The language model's norms only: a multimodal target's vision and audio towers keep their own.
    for name, param in target.get_decoder().named_parameters():
        if any(
            key in name
            for key in ("post_attention_layernorm", "post_feedforward_layernorm", "post_per_layer")
        ):
            param.fill_(_PERTURBATION[variant])

    # Assistant: copy the target embedding half through unchanged; its own head is the same successor map.
    assistant.pre_projection.weight.zero_()
    hidden = assistant.config.get_text_config().hidden_size
    assistant.pre_projection.weight[:, :hidden] = (
        torch.eye(hidden) / target.config.get_text_config().hidden_size ** 0.5
    )
    assistant.get_input_embeddings().weight.copy_(head)
    assistant.lm_head.weight = assistant.get_input_embeddings().weight
    for name, param in assistant.model.named_parameters():
        if "o_proj" in name or "down_proj" in name:
            param.zero_()
    masked = getattr(assistant, "masked_embedding", None)
    if masked is not None:
        # Ordering the vocabulary so that each token's cluster is found: centroid c scores the tokens it holds.
        order = torch.randperm(vocab, generator=gen)
        masked.token_ordering.copy_(order)
        per = vocab // masked.num_centroids
        members = order.view(masked.num_centroids, per)
        masked.centroids.weight.copy_(head[members].mean(dim=1) * per**0.5)


@torch.no_grad()
def _make_contextual(assistant: PreTrainedModel, seed: int) -> None:
    """Let an agreeing assistant's drafts depend on the target's hidden state and on its attention."""
    gen = torch.Generator().manual_seed(seed + 2)
    hidden = assistant.config.get_text_config().hidden_size
    backbone = assistant.config.backbone_hidden_size
    weight = assistant.pre_projection.weight
    weight[:, hidden:] = torch.randn(hidden, backbone, generator=gen) * _CONTEXT_HIDDEN / backbone**0.5
    for name, param in assistant.model.named_parameters():
        if "o_proj" in name:
            param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
        elif "post_attention_layernorm" in name:
            param.fill_(_CONTEXT_ATTENTION)


def _untie(config: Any) -> None:
    config.tie_word_embeddings = False
    text = config.get_text_config()
    text.tie_word_embeddings = False


def _save(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path, gen: GenerationConfig
) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    gen.save_pretrained(path)


def build_tiny_pair(
    dest: str | Path,
    variant: str = "dense",
    *,
    agreeing: bool = False,
    contextual: bool = False,
    seed: int = 0,
    num_assistant_tokens: int | None = 3,
    head_dim: int = 16,
    media: KitMedia | None = None,
) -> TinyPair:
    """Build a tiny target + assistant pair into ``dest`` (two subfolders) and return where they lie.

    ``media`` builds a multimodal target (``Gemma4ForConditionalGeneration``, or
    ``Gemma4UnifiedForConditionalGeneration`` for ``"unified"``) with a vision encoder, optionally an audio
    encoder, the kit tokenizer with the media placeholders and a ``processor_config.json`` whose image processor
    and feature extractor load without torchvision (:class:`KitMedia`).

    ``contextual=True`` (with ``agreeing=True``) makes the assistant's drafts depend on the target's
    hidden state and keys/values (see the module docstring). ``num_assistant_tokens=None`` leaves it out
    of the assistant's generation config, as some real assistants do, so that the per-family default is
    exercised. ``head_dim`` sets the sliding layers' head size (global layers get twice it); vLLM's CPU
    attention needs at least 32.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown kit variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if contextual and not agreeing:
        raise ValueError("contextual=True builds on the agreeing pair; pass agreeing=True as well")
    dest = Path(dest)
    tokenizer = build_tokenizer(media=media is not None)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in END_OF_GENERATION]
    torch.manual_seed(seed)
    text_config = _target_config(variant, eos_ids, head_dim)
    assistant_config = _assistant_config(variant, text_config, agreeing, head_dim)
    target_config: Any = text_config
    if media is not None:
        text_config.use_bidirectional_attention = "vision" if media.bidirectional_vision else None
        target_config = _multimodal_config(variant, text_config, tokenizer, media)
    if agreeing:
        _untie(target_config)
    if media is not None:
        target_cls: Any = (
            Gemma4UnifiedForConditionalGeneration if variant == "unified" else Gemma4ForConditionalGeneration
        )
    else:
        target_cls = Gemma4UnifiedForCausalLM if variant == "unified" else Gemma4ForCausalLM
    assistant_cls = Gemma4UnifiedAssistantForCausalLM if variant == "unified" else Gemma4AssistantForCausalLM
    target = target_cls(target_config).eval()
    assistant = assistant_cls(assistant_config).eval()
    if media is not None:
        _make_media_informative(target, seed)
    if agreeing:
        _make_agreeing(target, assistant, variant, seed)
    if contextual:
        _make_contextual(assistant, seed)

    target_gen = GenerationConfig(eos_token_id=eos_ids, bos_token_id=2, pad_token_id=0, do_sample=False)
    assistant_gen = GenerationConfig(eos_token_id=eos_ids, bos_token_id=2, pad_token_id=0, do_sample=False)
    if num_assistant_tokens is not None:
        assistant_gen.num_assistant_tokens = num_assistant_tokens
    target_dir, assistant_dir = dest / "target", dest / "assistant"
    _save(target, tokenizer, target_dir, target_gen)
    _save(assistant, tokenizer, assistant_dir, assistant_gen)
    if media is not None:
        _save_processor_config(target_dir, variant, media)
    (dest / "kit.json").write_text(
        json.dumps(
            {
                "variant": variant,
                "agreeing": agreeing,
                "contextual": contextual,
                "seed": seed,
                "head_dim": head_dim,
                "media": None if media is None else media.__dict__,
            }
        )
    )
    return TinyPair(target_dir, assistant_dir, variant, agreeing, contextual, media)
