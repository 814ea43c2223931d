"""Names of models as reports show them: the packaged pair by its name, not its install folder, and a kit pair by
what it is, not its temporary folder."""

from __future__ import annotations

from gemma_mtp.loading import PACKAGED_PAIRS, resolve_names
from gemma_mtp.testing import kit_label

__all__ = ["assistant_label", "model_label"]


def model_label(target: str) -> str:
    """``gemma-mtp-mini`` for the packaged target's folder, the kit pair's description for a kit target's folder;
    any other id or folder as it is."""
    for name in PACKAGED_PAIRS:
        if resolve_names(name, None)[0] == target:
            return name
    return kit_label(target) or target


def assistant_label(assistant: str) -> str:
    """``gemma-mtp-mini assistant`` for the packaged assistant's folder, the kit pair's for a kit assistant's;
    any other as it is."""
    for name in PACKAGED_PAIRS:
        if resolve_names(name, None)[1] == assistant:
            return f"{name} assistant"
    return kit_label(assistant) or assistant
