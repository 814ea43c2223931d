"""A small byte-level BPE tokenizer with Gemma 4's special tokens, built offline in well under a second.

Byte-level means every string round-trips, including emoji and characters split across tokens, which
is what the incremental detokenizer tests need. The special tokens are spelled as Gemma 4 spells them
so that templating, parsing and stop handling are exercised against the real format.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "GEMMA4_MEDIA_TOKENS",
    "GEMMA4_SPECIAL_TOKENS",
    "KIT_VOCAB_SIZE",
    "build_tokenizer",
    "kit_chat_template",
    "train_gemma4_tokenizer",
]

KIT_VOCAB_SIZE = 512

# Order fixes the ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3 as in Gemma; the rest follow.
GEMMA4_SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<|turn>",
    "<turn|>",
    "<|channel>",
    "<channel|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    "<|tool>",
    "<tool|>",
    '<|"|>',
    "<|think|>",
)

# Media placeholders, as the real tokenizers spell them (begin, soft token, end of an image or audio clip; video's
# soft token). Only multimodal kit pairs carry them (ids 17..23), so text pairs keep their vocabulary.
GEMMA4_MEDIA_TOKENS: tuple[str, ...] = (
    "<|image>",
    "<|image|>",
    "<image|>",
    "<|audio>",
    "<|audio|>",
    "<audio|>",
    "<|video|>",
)
# The names transformers' Gemma 4 processors read from the tokenizer (``tokenizer.image_token`` and so on).
_MEDIA_TOKEN_NAMES = {
    "boi_token": "<|image>",
    "image_token": "<|image|>",
    "eoi_token": "<image|>",
    "boa_token": "<|audio>",
    "audio_token": "<|audio|>",
    "eoa_token": "<audio|>",
}

# Training text for the merges: English prose plus the pieces of the chat and tool-call syntax.
_TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. Speculative decoding drafts several tokens with a small
assistant model and verifies them with the target model in a single forward pass. Greedy output is
identical to the target alone, and sampled output follows exactly the target's distribution.
What is the weather in Paris today? It is sunny with a light breeze, about twenty degrees.
Please answer the question using the context below. The capital of France is Paris.
system user model tool call:get_weather{city:Paris,days:3} response:get_weather{temperature:21}
declaration:add{description:Add two integers,parameters:{properties:{a:{type:INTEGER},b:{type:INTEGER}}}}
Hello, how are you? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. JSON: {"a": 1, "b": [true, false, null]}
"""


def kit_chat_template() -> str:
    """The chat template written for the kit tokenizer (Gemma 4 turn, thinking and tool syntax)."""
    return resources.files("gemma_mtp.testing").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def train_gemma4_tokenizer(
    texts: Iterable[str], vocab_size: int, *, media: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (deterministic) with Gemma 4's special tokens at ids 0..16 and the
    kit's chat template, wrapped for transformers. The kit and the mini pair are both built with it.

    ``media=True`` adds the media placeholders (:data:`GEMMA4_MEDIA_TOKENS`, ids 17..23) under the names
    transformers' Gemma 4 processors read (``image_token``, ``boi_token``, ...).
    """
    specials = list(GEMMA4_SPECIAL_TOKENS) + (list(GEMMA4_MEDIA_TOKENS) if media else [])
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, expected {vocab_size}")
    for token_id, token in enumerate(specials):
        if tok.token_to_id(token) != token_id:
            raise RuntimeError(
                f"special token {token!r} got id {tok.token_to_id(token)}, expected {token_id}"
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        additional_special_tokens=specials[5:],
        **({"model_specific_special_tokens": dict(_MEDIA_TOKEN_NAMES)} if media else {}),
        chat_template=kit_chat_template(),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def build_tokenizer(vocab_size: int = KIT_VOCAB_SIZE, *, media: bool = False) -> PreTrainedTokenizerFast:
    """The kit's tokenizer, trained on a short built-in text (``media=True``: with the media placeholders)."""
    return train_gemma4_tokenizer([_TRAINING_TEXT] * 4, vocab_size, media=media)
