"""The checkpoint's own Gemma 4 processor, without torchvision, and the media of one prompt.

transformers' ``Gemma4Processor`` (and ``Gemma4UnifiedProcessor``) insist on a video processor, which needs
torchvision; images (the PIL image processor) and audio (the feature extractor) need none. The processor here is
the real class with the video processor left out (video is refused before it is reached), built from the
checkpoint's ``processor_config.json``; it expands placeholders and makes the tensors exactly as
``processor(text=..., images=..., audio=...)`` does.

The rendered prompt keeps one placeholder id per item (the chat template writes ``<|image|>`` / ``<|audio|>``);
:meth:`MediaProcessor.prepare` asks the processor to expand the placeholders alone, in prompt order, and splices
each expansion (``<|image>`` + N x ``<|image|>`` + ``<image|>``) into the prompt ids in place of its placeholder,
so the text's tokens stay those of the chat template.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemma_mtp.media.blocks import MediaKind, MediaSource
from gemma_mtp.media.prompt import MediaItem, PromptMedia

__all__ = ["MediaProcessor", "MediaSupport", "checkpoint_modalities", "media_support"]

_PROCESSOR_FILE = "processor_config.json"
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})


@dataclass(frozen=True)
class MediaSupport:
    """What a checkpoint reads besides text, and why not where it does not.

    ``processor`` is ``None`` for a text-only checkpoint; ``refusals`` maps ``"image"`` / ``"audio"`` to the
    reason a request with that kind is refused (no encoder in the checkpoint, no processor, torchvision missing),
    with ``{model}`` where the model's name goes.
    """

    processor: MediaProcessor | None
    refusals: dict[str, str]

    @property
    def modalities(self) -> frozenset[str]:
        """The media kinds requests may carry: ``{"image", "audio"}``, ``{"image"}`` or none."""
        return frozenset(kind for kind in ("image", "audio") if kind not in self.refusals)

    def check(self, sources: Sequence[MediaSource], model_name: str) -> MediaProcessor:
        """The processor, or the error for the first item this checkpoint cannot read."""
        for source in sources:
            reason = self.refusals.get(source.kind)
            if reason is not None:
                reason = reason.format(model=repr(model_name))
                raise ValueError(f"{source.where} is {_article(source.kind)} {source.kind}, but {reason}")
        assert self.processor is not None
        return self.processor


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def media_support(
    name: str, config: Any, tokenizer: Any, hub_options: dict[str, Any] | None = None
) -> MediaSupport:
    """Read what ``config`` (the target's) and the processor files of the checkpoint ``name`` allow, loading no
    weights. Without a ``tokenizer`` only what it reads is told (the processor is not built)."""
    vision = getattr(config, "vision_config", None)
    audio = getattr(config, "audio_config", None)
    if vision is None and audio is None:
        reason = "{model} reads text only (its config has no vision_config or audio_config)"
        return MediaSupport(None, {"image": reason, "audio": reason})
    refusals: dict[str, str] = {}
    if vision is None:
        refusals["image"] = "{model} has no vision encoder (its config has no vision_config)"
    if audio is None:
        refusals["audio"] = (
            "{model} has no audio encoder (its config has no audio_config; Gemma 4 E2B and E4B read audio)"
        )
    unified = config.model_type == "gemma4_unified"
    settings = _processor_settings(name, hub_options or {})
    if settings is None:
        reason = "{model} ships no " + _PROCESSOR_FILE + ", so its media cannot be processed"
        return MediaSupport(None, {"image": reason, "audio": reason})
    image_processor, image_refusal = (
        _image_processor(settings, unified) if vision is not None else (None, None)
    )
    if image_refusal is not None:
        refusals["image"] = "{model} " + image_refusal
    if tokenizer is None:
        return MediaSupport(None, refusals)
    feature_extractor = _feature_extractor(settings, unified)
    processor = MediaProcessor(
        _processor_class(unified)(
            feature_extractor,
            image_processor,
            copy.deepcopy(tokenizer),  # the processor adds <|video|> to its tokenizer: keep ours as it is
            None,
            **{
                k: settings[k]
                for k in ("image_seq_length", "audio_seq_length", "audio_ms_per_token")
                if k in settings
            },
        ),
        config,
    )
    return MediaSupport(processor, refusals)


def checkpoint_modalities(target: str, **hub_options: Any) -> frozenset[str] | None:
    """What the checkpoint ``target`` (a hub id, folder or packaged name) reads besides text, from its config and
    processor files alone: ``{"image", "audio"}``, ``{"image"}`` or nothing; ``None`` when its config is not on
    this machine (a hub id not downloaded yet: nothing is fetched, no weights are loaded)."""
    from transformers import AutoConfig
    from transformers.utils import cached_file

    from gemma_mtp.loading import resolve_names

    name = resolve_names(target, None)[0]
    options = {k: v for k, v in hub_options.items() if k in ("revision", "token", "cache_dir")}
    options["local_files_only"] = True
    if cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False, **options) is None:
        return None
    config = AutoConfig.from_pretrained(name, trust_remote_code=False, **options)
    return media_support(name, config, None, options).modalities


def _processor_settings(name: str, hub_options: dict[str, Any]) -> dict[str, Any] | None:
    from transformers.utils import cached_file

    options = {
        k: v for k, v in hub_options.items() if k in ("revision", "token", "cache_dir", "local_files_only")
    }
    path = cached_file(name, _PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False, **options)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    return settings if isinstance(settings, dict) else None


def _image_processor(settings: dict[str, Any], unified: bool) -> tuple[Any, str | None]:
    values = settings.get("image_processor")
    if not isinstance(values, dict):
        return None, f"ships no image processor settings in its {_PROCESSOR_FILE}"
    values = {k: v for k, v in values.items() if k not in ("image_processor_type", "processor_class")}
    if unified:
        try:
            from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
                Gemma4UnifiedImageProcessor,
            )
        except ImportError:
            return None, (
                "needs torchvision for images: transformers' Gemma4UnifiedImageProcessor (the 12B's) exists only "
                "for torchvision. Install it with: pip install torchvision"
            )
        return Gemma4UnifiedImageProcessor(**values), None
    from transformers.models.gemma4 import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(**values), None


def _feature_extractor(settings: dict[str, Any], unified: bool) -> Any:
    values = settings.get("feature_extractor")
    values = {
        k: v for k, v in (values or {}).items() if k not in ("feature_extractor_type", "processor_class")
    }
    if unified:
        from transformers.models.gemma4_unified import Gemma4UnifiedAudioFeatureExtractor

        return Gemma4UnifiedAudioFeatureExtractor(**values)
    from transformers.models.gemma4 import Gemma4AudioFeatureExtractor

    return Gemma4AudioFeatureExtractor(**values)


def _processor_class(unified: bool) -> type:
    """transformers' processor class, accepting ``None`` for the video processor (and the image processor)."""
    if unified:
        from transformers.models.gemma4_unified import Gemma4UnifiedProcessor as base
    else:
        from transformers.models.gemma4 import Gemma4Processor as base

    class WithoutVideo(base):  # type: ignore[misc,valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and argument_name in ("video_processor", "image_processor"):
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    WithoutVideo.__name__ = WithoutVideo.__qualname__ = f"{base.__name__}WithoutVideo"
    return WithoutVideo


class MediaProcessor:
    """The checkpoint's processor, and the prompt surgery that puts its expansion into rendered prompt ids."""

    def __init__(self, processor: Any, config: Any):
        self.processor = processor
        self.sampling_rate = int(getattr(processor.feature_extractor, "sampling_rate", 16_000))
        self.placeholder_ids = {
            "image": int(config.image_token_id),
            "audio": int(config.audio_token_id),
        }
        self.open_ids = {int(config.boi_token_id): "image", int(config.boa_token_id): "audio"}
        self.close_ids = {int(config.eoi_token_id), int(config.eoa_token_id)}
        self.placeholder_text = {"image": processor.image_token, "audio": processor.audio_token}

    def placeholder_counts(self, prompt_ids: Sequence[int]) -> dict[MediaKind, int]:
        return {kind: sum(1 for t in prompt_ids if t == pid) for kind, pid in self.placeholder_ids.items()}  # type: ignore[misc]

    def prepare(
        self,
        prompt_ids: Sequence[int],
        kinds: Sequence[MediaKind],
        decoded: Sequence[Any],
        digests: Sequence[str],
        image_soft_tokens: int | None = None,
    ) -> tuple[list[int], PromptMedia]:
        """The prompt ids with every placeholder expanded, and the prompt's :class:`PromptMedia`.

        ``kinds``/``decoded``/``digests`` list the items in the order their placeholders stand in the prompt.
        """
        images = [item for kind, item in zip(kinds, decoded, strict=True) if kind == "image"]
        audio = [item.waveform for kind, item in zip(kinds, decoded, strict=True) if kind == "audio"]
        text = "".join(self.placeholder_text[kind] for kind in kinds)
        kwargs: dict[str, Any] = {"return_tensors": "pt", "add_special_tokens": False}
        if image_soft_tokens is not None and images:
            kwargs["images_kwargs"] = {"max_soft_tokens": image_soft_tokens}
        out = self.processor(text=[text], images=[images] if images else None, audio=audio or None, **kwargs)
        runs = _runs(out["input_ids"][0].tolist(), self.open_ids, self.close_ids)
        # The n-th placeholder of a kind in the prompt is that kind's n-th item (the processor's own rule).
        queues: dict[int, deque[tuple[MediaKind, list[int], Any, str]]] = {
            pid: deque() for pid in self.placeholder_ids.values()
        }
        for kind, run, data, digest in zip(kinds, runs, decoded, digests, strict=True):
            queues[self.placeholder_ids[kind]].append((kind, run, data, digest))
        expanded: list[int] = []
        items: list[MediaItem] = []
        for token in prompt_ids:
            queue = queues.get(token)
            if queue is None:
                expanded.append(token)
                continue
            kind, run, data, digest = queue.popleft()
            start = len(expanded)
            expanded.extend(run)
            items.append(MediaItem(kind, start, len(expanded), len(run) - 2, digest, data))
        tensors = {k: v for k, v in out.items() if k not in _TEXT_KEYS and isinstance(v, torch.Tensor)}
        tensors["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids([expanded]))
        return expanded, PromptMedia(tuple(items), tensors)


def _runs(ids: list[int], open_ids: dict[int, str], close_ids: set[int]) -> list[list[int]]:
    """Split the processor's expansion of bare placeholders into one run per item (begin marker to end marker)."""
    runs: list[list[int]] = []
    current: list[int] | None = None
    for token in ids:
        if token in open_ids:
            current = [token]
        elif current is not None:
            current.append(token)
            if token in close_ids:
                runs.append(current)
                current = None
    return runs
