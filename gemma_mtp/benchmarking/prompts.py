"""Prompts shared by ``demo``, ``bench``, ``tune`` and ``verify``, and reading them from a file.

The defaults suit both the packaged mini pair (trained on plays) and real instruction-tuned Gemma 4
checkpoints: short open questions, sent as chat turns so that the model's own chat template applies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemma_mtp.runtime import Prompt

__all__ = ["DEFAULT_PROMPTS", "as_chat", "load_prompts", "prompt_preview"]

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Tell me about the sea.",
    "What do you think of love?",
    "Write a few lines about a dream.",
    "Say something about the king.",
)


def as_chat(text: str) -> list[dict[str, Any]]:
    """One user turn, rendered later by the tokenizer's chat template."""
    return [{"role": "user", "content": text}]


def load_prompts(path: str | Path | None, *, chat: bool = True) -> list[Prompt]:
    """The prompts in ``path``, or :data:`DEFAULT_PROMPTS` when ``path`` is ``None``.

    A ``.jsonl`` file holds one JSON value per line: a string, or a list of chat messages (role/content
    dicts, sent as they are). Any other file holds one prompt per line; blank lines are skipped. With
    ``chat=True`` every string prompt becomes one user turn; with ``chat=False`` it is sent as raw text.
    """
    if path is None:
        raw: list[str | list[dict[str, Any]]] = list(DEFAULT_PROMPTS)
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"The prompts file {str(file)!r} does not exist.")
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if file.suffix == ".jsonl":
            raw = [_json_prompt(line, file, n) for n, line in enumerate(lines, 1)]
        else:
            raw = list(lines)
        if not raw:
            raise ValueError(f"The prompts file {str(file)!r} holds no prompts (one per line expected).")
    return [as_chat(p) if chat and isinstance(p, str) else p for p in raw]


def _json_prompt(line: str, file: Path, number: int) -> str | list[dict[str, Any]]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}:{number}: not valid JSON ({err.msg}).") from err
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise ValueError(
        f"{file}:{number}: expected a non-empty string or a list of chat messages, got {line!r}."
    )


def prompt_preview(prompt: Prompt, width: int = 48) -> str:
    """A one-line label for reports: the text, or the last message's content."""
    if isinstance(prompt, str):
        text = prompt
    elif prompt and isinstance(prompt[0], dict):
        content: Any = prompt[-1].get("content", "")  # type: ignore[union-attr]
        text = content if isinstance(content, str) else " ".join(_texts(content))
    else:
        text = f"<{len(prompt)} token ids>"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _texts(parts: Sequence[Any]) -> list[str]:
    return [p.get("text", "") for p in parts if isinstance(p, dict)]
