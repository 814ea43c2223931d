"""Names of models as reports show them: the packaged pair by its name, not its install folder."""

from __future__ import annotations

from gemma_mtp.loading import PACKAGED_PAIRS, resolve_names

__all__ = ["assistant_label", "model_label"]


def model_label(target: str) -> str:
    """``gemma-mtp-mini`` for the packaged target's folder; any other id or folder as it is."""
    for name in PACKAGED_PAIRS:
        if resolve_names(name, None)[0] == target:
            return name
    return target


def assistant_label(assistant: str) -> str:
    """``gemma-mtp-mini assistant`` for the packaged assistant's folder; any other as it is."""
    for name in PACKAGED_PAIRS:
        if resolve_names(name, None)[1] == assistant:
            return f"{name} assistant"
    return assistant
