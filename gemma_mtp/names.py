"""Near-miss suggestions for names a caller mistyped: parameters, constructor arguments, packaged pairs.

Both adapters and the runtime reject an unknown name with the same hint, so that ``temprature=0.9`` fails with
"Did you mean 'temperature'?" wherever it is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]

_CUTOFF = 0.75


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` is a near miss of, or ``None``; never ``name`` itself (nothing to correct)."""
    others = [candidate for candidate in candidates if candidate != name]
    matches = difflib.get_close_matches(name, others, n=1, cutoff=_CUTOFF)
    return matches[0] if matches else None


def did_you_mean(names: Iterable[str], candidates: Iterable[str]) -> str:
    """``" Did you mean 'temperature'?"`` for the names among ``names`` that are near misses of a candidate
    (each correction named with its misspelling when there are several), or ``""`` when none is."""
    known = list(candidates)
    pairs = [(name, match) for name in sorted(names) if (match := closest(name, known)) is not None]
    if not pairs:
        return ""
    if len(pairs) == 1:
        return f" Did you mean {pairs[0][1]!r}?"
    return " Did you mean " + ", ".join(f"{match!r} for {name!r}" for name, match in pairs) + "?"
