"""Constraints on a byte-fallback tokenizer, as Gemma's: no control byte and no special token inside strings.

Gemma's tokenizer spells any byte as a ``<0xNN>`` token. The kit's tokenizer is byte-level, so this builds a small
byte-fallback tokenizer with Gemma 4's special tokens and checks the masks themselves, then random walks through
them to answers that the users' parsers read.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from gemma_mtp.chat import parse_response
from gemma_mtp.chat.grammar import answer_grammar
from gemma_mtp.constraints import ConstraintCompiler, ConstraintGuide, constraint_lark
from gemma_mtp.testing.tokenizer import GEMMA4_SPECIAL_TOKENS

PIECES = [
    "▁",
    "a",
    "b",
    "c",
    "x",
    "{",
    "}",
    '"',
    ":",
    ",",
    "▁the",
    "the",
    "ab",
    "\n",
    "\t",
    '":',
    '"}',
    "1",
    "2",
]
EOS = [1, 6, 11]  # <eos>, <turn|>, <|tool_response>


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(GEMMA4_SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in PIECES:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(GEMMA4_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def guide_after(tokenizer: PreTrainedTokenizerFast, lark: str, text: str) -> ConstraintGuide:
    guide = ConstraintCompiler(tokenizer, len(tokenizer), EOS).guide(lark, torch.device("cpu"))
    ids = tokenizer.encode(text, add_special_tokens=False)
    valid, _ = guide.rows(ids)
    assert valid == len(ids), text
    guide.commit(len(ids), ids)
    return guide


def forbidden(tokenizer: PreTrainedTokenizerFast, allowed: torch.Tensor, control: range) -> list[str]:
    special = set(range(len(GEMMA4_SPECIAL_TOKENS)))
    bytes_ = {tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in control}
    return [
        tokenizer.convert_ids_to_tokens(i)
        for i in allowed.nonzero().flatten().tolist()
        if i in special | bytes_
    ]


def test_json_strings_admit_no_control_byte_and_no_special_token(tokenizer: PreTrainedTokenizerFast) -> None:
    lark = constraint_lark(
        json_schema={"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}
    )
    assert lark is not None
    guide = guide_after(tokenizer, lark, '{"t": "ab')
    assert forbidden(tokenizer, guide.mask(), range(0x20)) == []
    assert guide.mask()[tokenizer.convert_tokens_to_ids("<0x61>")]  # plain bytes still pass


def test_tool_call_strings_admit_no_special_token_and_only_tab_and_line_breaks(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]},
            },
        }
    ]
    lark = answer_grammar(tools, "f")
    assert lark is not None
    guide = guide_after(tokenizer, lark, '<|tool_call>call:f{s:<|"|>ab')
    controls = [b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D)]
    allowed = guide.mask()
    assert forbidden(tokenizer, allowed, controls) == ['<|"|>']  # only the closing delimiter
    assert allowed[tokenizer.convert_tokens_to_ids("<0x0A>")]


@pytest.mark.parametrize("seed", range(10))
def test_random_walks_end_in_answers_the_parsers_read(tokenizer: PreTrainedTokenizerFast, seed: int) -> None:
    rng = random.Random(seed)
    schema = {
        "type": "object",
        "properties": {
            "t": {"type": "string", "maxLength": 6},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["t", "n"],
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    for lark, read in (
        (constraint_lark(json_schema=schema), json.loads),
        (answer_grammar(tools, "f"), lambda text: parse_response(text, strict=True).tool_calls[0].arguments),
    ):
        assert lark is not None
        guide = ConstraintCompiler(tokenizer, len(tokenizer), EOS).guide(lark, torch.device("cpu"))
        tokens: list[int] = []
        while not tokens or tokens[-1] not in EOS:
            allowed = guide.mask().nonzero().flatten().tolist()
            choice = rng.choice(allowed)
            guide.commit(0, [choice])
            tokens.append(choice)
            assert len(tokens) < 200
        value = read(tokenizer.decode(tokens[:-1], skip_special_tokens=False))
        assert set(value) == {"t", "n"} and len(value["t"]) <= 6 and 0 <= value["n"] <= 99
