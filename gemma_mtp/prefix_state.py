"""What a request on the transformers backend needs to start after a prompt prefix, kept and given back.

After the target has processed a prompt's first ``n`` tokens, a request continues from:

* the target's KV cache: every position of the full-attention layers, and on sliding layers the last ``W - 1``
  (transformers' :class:`~transformers.DynamicSlidingWindowLayer` keeps no more, so a cache cannot be cropped
  back to an earlier position once it has moved on: the state at a point is taken when the prefill passes it);
* the keys/values the assistant attends to: those of the target's last non-shared layer of each type, all
  positions on full attention and the last ``W`` or ``W + 1`` on sliding layers (:class:`~gemma_mtp.modeling.Drafter`).

A :class:`PointState` therefore holds the last ``keep`` positions of every sliding layer (``keep`` covers both
the cache's ``W - 1`` one position back, and either drafting convention's window, so runtimes that differ only
in their draft position share entries), plus the full-attention layers' states over the whole stored prompt,
shared by all its points and sliced at restore time. A request always processes at least its prompt's last token
itself (a prompt stored whole is restored one position short), so the target's last hidden state, which
chooses the first token and which the assistant drafts from, always comes from the request's own prefill, and
every round of every request is one target forward pass. KV-shared layers (E2B/E4B) store nothing of their
own, so they have nothing to keep. Nothing here is ever written to: a restored cache's layers are views that
the next forward pass replaces by new tensors (``torch.cat``), so requests never share state in place.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from gemma_mtp.prefix_cache import CachedPrompt, MediaSpan, PrefixMatch

__all__ = ["PointState", "PrefixStates"]

LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PointState:
    """The state after the first ``length`` tokens of a stored prompt."""

    length: int
    windows: Mapping[int, LayerKV]  # sliding cache layer -> keys/values of positions length-keep..length-1
    full: Mapping[int, LayerKV]  # full-attention cache layer -> keys/values of the whole stored prompt

    def tensors(self) -> list[torch.Tensor]:
        held = []
        for keys, values in (*self.windows.values(), *self.full.values()):
            held += [keys, values]
        return held


class PrefixStates:
    """Takes :class:`PointState` objects from a prefilled cache and restores them into fresh caches.

    ``decoder`` is the target's text decoder (its attention modules say which layer each drafting layer type
    reads); ``keep`` is how many sliding positions a point holds.
    """

    def __init__(self, decoder: torch.nn.Module, keep: int):
        self.keep = keep
        attention = [layer.get_submodule("self_attn") for layer in decoder.get_submodule("layers").children()]
        self.store_layers: dict[str, int] = {
            str(module.layer_type): index
            for index, module in enumerate(attention)
            if getattr(module, "store_full_length_kv", False)
        }

    def capture(
        self,
        ids: Sequence[int],
        spans: Sequence[MediaSpan],
        cache: DynamicCache,
        start: int,
        points: Sequence[int],
        source: PrefixMatch[PointState] | None,
    ) -> CachedPrompt[PointState] | None:
        """The entry for a prompt whose tokens ``start..`` a prefill just processed into ``cache``.

        Call it before anything crops ``cache``: its sliding layers then still hold every position from the
        restored window on. Points after ``start`` come from this prefill; earlier ones are carried over from ``source`` (the entry the
        request started from) where it has them. ``None`` when no point is left.
        """
        end = len(ids)
        full = {
            index: (layer.keys, layer.values)
            for index, layer in enumerate(cache.layers)
            if _holds_states(layer) and not getattr(layer, "is_sliding", False)
        }
        states: dict[int, PointState] = {}
        inside_media = {p for p in points if any(span.start < p < span.end for span in spans)}
        for point in sorted({p for p in (*points, end) if 0 < p <= end} - inside_media):
            if point > start:
                states[point] = PointState(point, self._windows(cache, end, point), full)
            elif source is not None and point in source.prompt.points:
                states[point] = PointState(point, source.prompt.points[point].windows, full)
        if not states:
            return None
        tensors = {id(t): t for state in states.values() for t in state.tensors()}
        return CachedPrompt(array("q", ids), tuple(spans), states, tuple(tensors.values()))

    def _windows(self, cache: DynamicCache, end: int, point: int) -> dict[int, LayerKV]:
        """Every sliding layer's last ``keep`` positions before ``point``, copied out of the layer's states
        (which cover the positions up to ``end``)."""
        windows = {}
        for index, layer in enumerate(cache.layers):
            if not (_holds_states(layer) and getattr(layer, "is_sliding", False)):
                continue
            held = layer.keys.shape[-2]
            stop = held - (end - point)
            first = max(stop - self.keep, 0)
            windows[index] = (
                layer.keys[:, :, first:stop].clone(),
                layer.values[:, :, first:stop].clone(),
            )
        return windows

    @staticmethod
    def restore(cache: DynamicCache, state: PointState, length: int) -> None:
        """Put the state after ``length`` tokens into ``cache`` (a new one): the layers a prefill of those tokens
        would leave. ``length`` is the point's or one less (each window holds a position more than a cache needs).
        """
        if not state.length - 1 <= length <= state.length:
            raise ValueError(
                f"a point at {state.length} restores {state.length - 1} or {state.length} tokens"
            )
        back = state.length - length
        for index, layer in enumerate(cache.layers):
            if index in state.full:
                keys, values = state.full[index]
                keys, values = keys[:, :, :length], values[:, :, :length]
            elif index in state.windows:
                keys, values = state.windows[index]
                held = keys.shape[-2] - back
                keys, values = keys[:, :, :held], values[:, :, :held]
            else:
                continue
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = length

    def draft_kv(self, cache: DynamicCache) -> dict[str, LayerKV]:
        """The keys/values the assistant reads, per layer type, from a cache that no crop has touched yet
        since its prefill (or restore): every held position of the layer that shares its states."""
        return {
            layer_type: (cache.layers[index].keys, cache.layers[index].values)
            for layer_type, index in self.store_layers.items()
        }


def _holds_states(layer: object) -> bool:
    """Whether a cache layer stores keys/values (KV-shared layers read another layer's and store none)."""
    return getattr(layer, "keys", None) is not None and getattr(layer, "is_initialized", True)
