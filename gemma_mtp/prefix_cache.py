"""A store of prompt prefixes already processed, and the longest of them a new prompt can start from.

Agents send their system prompt, tool declarations and whole conversation again at every step, and chat apps
the history at every turn. A :class:`PrefixCache` keeps, for recent prompts, what a request needs to start at a
few *points* of the prompt (its end, the end of its first message) instead of processing those tokens again.
What a point holds is up to the backend (:mod:`gemma_mtp.prefix_state` for the transformers backend); the store
only knows its size in bytes, so that it can keep within its bound.

Keys are token ids plus the content digest of every media item (images, audio): a prompt repeats the same
placeholder ids for different media, so two prompts share only what precedes their first differing media item,
and a match never ends inside a media item (its tokens depend on the whole item). Least recently used entries
go first, and an entry that would take the store past its bound is not kept: the bound is never exceeded.
Entries never change once stored: a request reads them and writes its own new tensors.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

__all__ = ["CachedPrompt", "MediaSpan", "PrefixCache", "PrefixCacheUsage", "PrefixMatch", "reusable_length"]

_State = TypeVar("_State")


@dataclass(frozen=True)
class MediaSpan:
    """The prompt positions ``start..end - 1`` hold one media item's placeholder tokens; ``digest`` names its
    content (the same digest for the same image or clip, a different one otherwise)."""

    start: int
    end: int
    digest: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a media span needs 0 <= start < end, got {self.start}..{self.end}")


def _common_prefix(a: array[int], b: array[int]) -> int:
    """How many leading ids ``a`` and ``b`` share (slices compare in C; a binary search finds the first
    difference in a logarithmic number of them)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, different = 0, n  # a[:same] == b[:same], a[:different] != b[:different]
    while different - same > 1:
        middle = (same + different) // 2
        if a[:middle] == b[:middle]:
            same = middle
        else:
            different = middle
    return same


def reusable_length(
    ids: array[int], spans: Sequence[MediaSpan], other_ids: array[int], other_spans: Sequence[MediaSpan]
) -> int:
    """How many leading tokens of one prompt another prompt's state covers exactly.

    The common ids, cut at the first media item that is not the same item at the same place in both, and
    never ending inside a media item of either.
    """
    length = _common_prefix(ids, other_ids)
    for mine, theirs in zip(spans, other_spans, strict=False):
        if mine.start >= length and theirs.start >= length:
            break
        if mine != theirs:
            length = min(length, mine.start, theirs.start)
            break
    else:
        # One prompt has more media items than the other: the first extra one is a difference too.
        extra = list(spans[len(other_spans) :]) + list(other_spans[len(spans) :])
        if extra:
            length = min(length, min(span.start for span in extra))
    inside = [span.start for span in (*spans, *other_spans) if span.start < length < span.end]
    while inside:
        length = min(inside)
        inside = [span.start for span in (*spans, *other_spans) if span.start < length < span.end]
    return length


@dataclass(eq=False)
class CachedPrompt(Generic[_State]):
    """One processed prompt: its ids and media, and the state at each of its points (length → state).

    ``tensors`` lists every tensor the entry keeps alive, for the store's byte count (tensors shared with
    other entries, or between points, are counted once).
    """

    ids: array[int]
    spans: tuple[MediaSpan, ...]
    points: Mapping[int, _State]
    tensors: tuple[torch.Tensor, ...]
    _lengths: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lengths = sorted(self.points)
        if not self._lengths or self._lengths[0] < 1 or self._lengths[-1] > len(self.ids):
            raise ValueError(f"points must lie in 1..{len(self.ids)}, got {self._lengths}")

    def best_point(self, length: int) -> int | None:
        """The longest point at or before ``length`` (``None``: none)."""
        index = bisect.bisect_right(self._lengths, length)
        return self._lengths[index - 1] if index else None

    def extends(self, other: CachedPrompt[Any]) -> bool:
        """Whether this prompt continues ``other`` (``other``'s ids and media are where this one starts)."""
        return len(other.ids) < len(self.ids) and reusable_length(
            self.ids, self.spans, other.ids, other.spans
        ) == len(other.ids)


@dataclass(frozen=True)
class PrefixMatch(Generic[_State]):
    """The longest reusable point of a stored prompt: the first ``length`` tokens, in ``state``."""

    prompt: CachedPrompt[_State]
    length: int
    state: _State


@dataclass(frozen=True)
class PrefixCacheUsage:
    """A prefix cache's bound, the bytes its entries hold (never more than the bound) and how many prompts."""

    capacity_bytes: int
    bytes_used: int
    prompts: int


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return str(tensor.device), storage.data_ptr()


class PrefixCache(Generic[_State]):
    """Stored prompts, least recently used first, within ``capacity_bytes`` (``0``: nothing is stored).

    Thread-safe: concurrent requests look up and offer entries while others decode.
    """

    def __init__(self, capacity_bytes: int):
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ValueError(
                f"prefix_cache_bytes must be an integer >= 0 (0 turns the prefix cache off), got {capacity_bytes!r}"
            )
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, CachedPrompt[_State]] = OrderedDict()
        # Every tensor storage the entries keep alive: (nbytes, entries holding it).
        self._storages: dict[tuple[str, int], list[int]] = {}
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    @property
    def bytes_used(self) -> int:
        """Bytes of tensor memory the stored entries hold (each storage counted once)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def usage(self) -> PrefixCacheUsage:
        with self._lock:
            return PrefixCacheUsage(self.capacity_bytes, self._bytes, len(self._entries))

    def prompts(self) -> list[CachedPrompt[_State]]:
        """The stored prompts, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def lookup(self, ids: Sequence[int], spans: Sequence[MediaSpan] = ()) -> PrefixMatch[_State] | None:
        """The longest stored point that the prompt ``ids`` (with ``spans``) starts with; it becomes the most
        recently used. ``None`` when nothing matches."""
        if not self.enabled:
            return None
        wanted = array("q", ids)
        best: PrefixMatch[_State] | None = None
        with self._lock:
            for prompt in reversed(self._entries.values()):  # most recent first: it wins ties
                point = prompt.best_point(reusable_length(wanted, spans, prompt.ids, prompt.spans))
                if point is not None and (best is None or point > best.length):
                    best = PrefixMatch(prompt, point, prompt.points[point])
            if best is not None:
                self._entries.move_to_end(id(best.prompt))
        return best

    def offer(self, prompt: CachedPrompt[_State]) -> bool:
        """Store ``prompt``, evicting least recently used entries as needed; ``False`` when it cannot fit.

        Entries it continues (a conversation's previous prompt, whose points it carries over or no longer
        needs) are dropped, and an entry for the same ids and media is kept as it is.
        """
        if not self.enabled:
            return False
        with self._lock:
            for other in list(self._entries.values()):
                if other.spans == prompt.spans and other.ids == prompt.ids:
                    self._entries.move_to_end(id(other))
                    return True
            for other in list(self._entries.values()):
                if prompt.extends(other):
                    self._remove(other)
            while self._bytes + self._added_bytes(prompt) > self.capacity_bytes and self._entries:
                self._remove(next(iter(self._entries.values())))
            if self._bytes + self._added_bytes(prompt) > self.capacity_bytes:
                return False
            self._entries[id(prompt)] = prompt
            for key, nbytes in self._storages_of(prompt.tensors).items():
                held = self._storages.setdefault(key, [nbytes, 0])
                if held[1] == 0:
                    self._bytes += nbytes
                held[1] += 1
            return True

    def clear(self) -> None:
        """Drop every entry (their memory is freed once no running request reads it)."""
        with self._lock:
            self._entries.clear()
            self._storages.clear()
            self._bytes = 0

    # -- bookkeeping (under the lock) ---------------------------------------------------------------------

    @staticmethod
    def _storages_of(tensors: Iterable[torch.Tensor]) -> dict[tuple[str, int], int]:
        return {_storage_key(t): t.untyped_storage().nbytes() for t in tensors}

    def _added_bytes(self, prompt: CachedPrompt[_State]) -> int:
        return sum(
            nbytes
            for key, nbytes in self._storages_of(prompt.tensors).items()
            if self._storages.get(key, (0, 0))[1] == 0
        )

    def _remove(self, prompt: CachedPrompt[_State]) -> None:
        del self._entries[id(prompt)]
        for key in self._storages_of(prompt.tensors):
            held = self._storages[key]
            held[1] -= 1
            if held[1] == 0:
                self._bytes -= held[0]
                del self._storages[key]
