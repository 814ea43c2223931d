"""What differs between the Gemma 4 families: names, sizes and the draft length that pays off.

Some real assistants ship without ``num_assistant_tokens`` in their generation config, and transformers
then drafts 20 tokens per round, far past where acceptance dies out. The defaults below are the
published starting points at temperature 0 (vLLM recipes, Google's guide); ``gemma-mtp tune`` measures
the best value for a given machine and workload.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_DRAFT_LENGTH", "Family", "default_assistant_id", "family_of"]

DEFAULT_DRAFT_LENGTH = 4


@dataclass(frozen=True)
class Family:
    name: str
    draft_length: int


# Keyed by the target's hidden size (and whether it mixes experts), which identifies each release.
_FAMILIES: dict[tuple[int, bool], Family] = {
    (1536, False): Family("E2B", 2),
    (2560, False): Family("E4B", 4),
    (3840, False): Family("12B", 4),
    (2816, True): Family("26B-A4B", 4),
    (5376, False): Family("31B", 4),
}


def family_of(hidden_size: int, moe: bool) -> Family:
    """The family of a target with this hidden size; small unknown models get the generic default."""
    return _FAMILIES.get((hidden_size, moe), Family("custom", DEFAULT_DRAFT_LENGTH))


def default_assistant_id(target: str) -> str:
    """Google's naming: ``google/gemma-4-E2B-it`` -> ``google/gemma-4-E2B-it-assistant`` (folders alike)."""
    return target.rstrip("/\\") + "-assistant"
