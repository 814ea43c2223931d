"""Offline testing kit: tiny but real Gemma 4 target + MTP assistant pairs, built in seconds.

``tiny_runtime()`` is what most tests want: a :class:`~gemma_mtp.Runtime` on a kit pair, built once per
process into a temporary folder. ``build_tiny_pair()`` writes a pair where you choose, for tests that
load from disk themselves (for example users' own CI). ``tool_use_dir()`` is a committed pair that was
trained to decide what a kit pair cannot (call a tool once with the arguments a request names, end its
strings, answer briefly), for tests of agents and structured output on an unscripted model.
"""

from __future__ import annotations

import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_mtp.testing.models import VARIANTS, KitMedia, TinyPair, build_tiny_pair
from gemma_mtp.testing.tokenizer import GEMMA4_SPECIAL_TOKENS, build_tokenizer

if TYPE_CHECKING:
    from gemma_mtp.runtime import Runtime

__all__ = [
    "GEMMA4_SPECIAL_TOKENS",
    "KINDS",
    "VARIANTS",
    "KitMedia",
    "TinyPair",
    "build_tiny_pair",
    "build_tokenizer",
    "kit_label",
    "tiny_pair",
    "tiny_runtime",
    "tool_use_dir",
]

_built: dict[tuple[str, bool, bool, int | None, int, KitMedia | None], TinyPair] = {}
_lock = threading.Lock()
_root = Path(tempfile.mkdtemp(prefix="gemma-mtp-kit-"))


def tiny_pair(
    variant: str = "dense",
    *,
    agreeing: bool = False,
    contextual: bool = False,
    num_assistant_tokens: int | None = 3,
    head_dim: int = 16,
    media: KitMedia | None = None,
) -> TinyPair:
    """A kit pair built once per process (into a temporary folder) and reused.

    ``head_dim=32`` builds a pair that vLLM's CPU attention accepts (it needs head sizes of 32 or more).
    ``media`` builds a multimodal target (:class:`KitMedia`: images, audio, bidirectional vision attention).
    """
    key = (variant, agreeing, contextual, num_assistant_tokens, head_dim, media)
    with _lock:
        if key not in _built:
            kind = "contextual" if contextual else "agreeing" if agreeing else "random"
            extra = "" if media is None else f"-media{len([k for k in _built if k[-1] is not None])}"
            _built[key] = build_tiny_pair(
                _root / f"{variant}-{kind}-{num_assistant_tokens}-h{head_dim}{extra}",
                variant,
                agreeing=agreeing,
                contextual=contextual,
                num_assistant_tokens=num_assistant_tokens,
                head_dim=head_dim,
                media=media,
            )
        return _built[key]


def kit_label(folder: str) -> str | None:
    """How reports name the target or assistant folder of a kit pair built in this process (its folder is
    temporary, so its path says nothing), e.g. ``"the kit's dense pair (agreeing)"``; ``None`` for any other."""
    path = Path(folder)
    with _lock:
        pairs = list(_built.values())
    for pair in pairs:
        kind = "contextual" if pair.contextual else "agreeing" if pair.agreeing else "random"
        reads = "" if pair.media is None else ", images" + (" and audio" if pair.media.audio else "")
        name = f"the kit's {pair.variant} pair ({kind}{reads})"
        if path == pair.target_dir:
            return name
        if path == pair.assistant_dir:
            return f"{name} assistant"
    return None


KINDS = ("agreeing", "contextual", "random")


def tiny_runtime(
    kind: str = "agreeing",
    variant: str = "dense",
    *,
    num_assistant_tokens: int | None = 3,
    media: KitMedia | None = None,
) -> Runtime:
    """A Runtime on a kit pair.

    ``kind``: ``"agreeing"`` (assistant mostly right, drafting from the token alone), ``"contextual"``
    (mostly right, and its drafts depend on the target's hidden state and keys/values) or ``"random"``.
    ``media``: a multimodal target (``variant`` ``"dense"``, ``"e2b"`` or ``"unified"``) reading images and,
    with ``KitMedia(audio=True)`` (the default), audio.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
    from gemma_mtp.runtime import Runtime

    pair = tiny_pair(
        variant,
        agreeing=kind != "random",
        contextual=kind == "contextual",
        num_assistant_tokens=num_assistant_tokens,
        media=media,
    )
    return Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")


def tool_use_dir() -> Path:
    """The folder of the committed "tool-use" pair: ``target/`` and ``assistant/``, loadable offline.

    A tiny Gemma 4 pair (``Gemma4ForCausalLM`` and ``Gemma4AssistantForCausalLM``, the kit's tokenizer and chat
    template) trained by ``scripts/train_tool_pair.py`` on synthetic chat transcripts: asked for a tool by name
    or by what it does, it calls it once with the values the request gives, then answers the tool's result in
    a short sentence; asked for a record or a JSON object, it writes short strings that end. Outside those
    tasks its text is nonsense: it is a test fixture, not a language model.
    """
    return Path(str(resources.files("gemma_mtp.testing").joinpath("tool_use")))
