"""Loading a Gemma 4 target and its MTP assistant, and checking that they belong together.

Only safetensors weights are read and remote code is never run. A mismatched pair fails here, at load,
with both names and what differs, instead of producing garbage drafts later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_session, try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from gemma_mtp.families import default_assistant_id, family_of
from gemma_mtp.names import closest

__all__ = [
    "LoadedPair",
    "PairInfo",
    "default_draft_length",
    "end_of_generation_ids",
    "inspect_pair",
    "load_pair",
    "resolve_device",
    "resolve_dtype",
    "resolve_names",
]

TARGET_TYPES = ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text")
ASSISTANT_TYPES = ("gemma4_assistant", "gemma4_unified_assistant")

# Pairs that ship inside the installed package (no network needed).
PACKAGED_PAIRS = {"gemma-mtp-mini": "mini"}
_HUB_PROBE_TIMEOUT_S = 5.0


@dataclass
class LoadedPair:
    target: PreTrainedModel
    assistant: PreTrainedModel
    tokenizer: Any
    target_name: str
    assistant_name: str
    hub_options: dict[str, Any] = field(default_factory=dict)
    """Where the checkpoints came from (``revision``, ``cache_dir``, ...), for files read later (the processor's)."""


def _packaged_dir(name: str) -> Path:
    return Path(str(resources.files("gemma_mtp").joinpath("models", PACKAGED_PAIRS[name])))


def resolve_names(target: str, assistant: str | None) -> tuple[str, str]:
    """Turn user-facing names into loadable ids or folders (packaged pairs, ``-assistant`` naming)."""
    if not isinstance(target, (str, os.PathLike)) or not str(target).strip():
        raise ValueError(f"target must be a model id or a folder, got {target!r}")
    target = str(target)
    if target in PACKAGED_PAIRS:
        folder = _packaged_dir(target)
        return str(folder / "target"), str(assistant) if assistant else str(folder / "assistant")
    return target, str(assistant) if assistant else default_assistant_id(target)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (try 'cpu', 'cuda' or 'cuda:0')") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine")
    return resolved


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA, float32 elsewhere (half precision is slow on CPUs)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)} or 'auto'")
    return _DTYPES[name]


def _looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _config(name: str, role: str, options: dict[str, Any]) -> Any:
    """The checkpoint's config, failing fast and clearly when it cannot be found.

    transformers retries an unreachable hub for about half a minute before giving up; when the id is not
    a folder and not in the local Hugging Face cache, one short request to the hub tells at once whether
    it can be reached, and the error says so.
    """
    path = Path(name).expanduser()
    if path.exists():
        name = str(path)
    elif _looks_local(name):
        raise FileNotFoundError(
            f"The {role} folder {name!r} does not exist. Pass a hub id or an existing folder.{_suggestion(name)}"
        )
    elif not _offline(options) and not _in_hub_cache(name, options):
        problem = _hub_unreachable()
        if problem is not None:
            raise OSError(
                f"Could not load the {role} {name!r}: it is not a folder, not in the local Hugging Face cache, "
                f"and the Hugging Face Hub ({hf_constants.ENDPOINT}) could not be reached ({problem})."
                f"{_suggestion(name)} Check the id, or your network access to the Hub."
            )
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False, **options)
    except OSError as err:
        reason = str(err).strip().rstrip(".")
        raise OSError(
            f"Could not load the {role} {name!r}: {reason}.{_suggestion(name)} Check the id or folder, your "
            "network access to the Hugging Face Hub, and that the model's licence was accepted."
        ) from err


def _suggestion(name: str) -> str:
    """A hint about packaged pairs: the one ``name`` is a near miss of, or, when ``name`` is one (given where a
    single checkpoint was expected, e.g. as the assistant), how to give it."""
    if name in PACKAGED_PAIRS:
        return (
            f" {name!r} is a packaged pair (target and assistant): give it as the target, with no assistant, "
            f"e.g. Runtime.load({name!r})."
        )
    close = closest(Path(name).name, PACKAGED_PAIRS)
    return f" Did you mean the packaged pair {close!r}?" if close else ""


def _offline(options: dict[str, Any]) -> bool:
    return bool(options.get("local_files_only")) or bool(hf_constants.HF_HUB_OFFLINE)


def _in_hub_cache(name: str, options: dict[str, Any]) -> bool:
    try:
        found = try_to_load_from_cache(
            name, "config.json", cache_dir=options.get("cache_dir"), revision=options.get("revision")
        )
    except ValueError:  # not a valid hub id; the hub call below reports it
        return False
    return isinstance(found, str)


def _hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached, or ``None`` when it answers (one request, 5 s at most)."""
    try:
        get_session().head(hf_constants.ENDPOINT, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as err:  # any transport failure means unreachable; its text goes into the message
        return f"{type(err).__name__}: {err}"
    return None


def _check_pair(target_name: str, target_cfg: Any, assistant_name: str, assistant_cfg: Any) -> None:
    problems = []
    if target_cfg.model_type not in TARGET_TYPES:
        problems.append(
            f"the target is a {target_cfg.model_type!r} model, not a Gemma 4 model ({TARGET_TYPES})"
        )
    if assistant_cfg.model_type not in ASSISTANT_TYPES:
        problems.append(
            f"the assistant is a {assistant_cfg.model_type!r} model, not a Gemma 4 MTP assistant ({ASSISTANT_TYPES})"
        )
    if not problems:
        target_text = target_cfg.get_text_config()
        assistant_text = assistant_cfg.get_text_config()
        if assistant_cfg.backbone_hidden_size != target_text.hidden_size:
            problems.append(
                f"the assistant was trained for a target with hidden size {assistant_cfg.backbone_hidden_size}, "
                f"the target has {target_text.hidden_size}"
            )
        if assistant_text.vocab_size != target_text.vocab_size:
            problems.append(
                f"vocabularies differ: assistant {assistant_text.vocab_size} tokens, target {target_text.vocab_size}"
            )
    if problems:
        raise ValueError(
            f"{assistant_name!r} cannot draft for {target_name!r}: "
            + "; ".join(problems)
            + ". Pass the assistant "
            "published with this target (Google's naming: '<target>-assistant')."
        )


def load_pair(
    target: str,
    assistant: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **loader_options: Any,
) -> LoadedPair:
    """Load and check a target/assistant pair and the target's tokenizer."""
    if loader_options.get("trust_remote_code"):
        raise ValueError(
            "trust_remote_code is not supported: gemma-mtp only runs transformers' own Gemma 4 code."
        )
    loader_options.pop("trust_remote_code", None)
    loader_options.pop("use_safetensors", None)
    target_name, assistant_name = resolve_names(target, assistant)
    hub_options: dict[str, Any] = {
        k: loader_options[k]
        for k in ("revision", "token", "cache_dir", "local_files_only")
        if k in loader_options
    }
    target_cfg = _config(target_name, "target", hub_options)
    assistant_cfg = _config(assistant_name, "assistant", hub_options)
    _check_pair(target_name, target_cfg, assistant_name, assistant_cfg)

    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    model_options = {
        "dtype": torch_dtype,
        "use_safetensors": True,
        "trust_remote_code": False,
        **loader_options,
    }
    target_model = AutoModelForCausalLM.from_pretrained(_local_or_id(target_name), **model_options).eval()
    assistant_model = AutoModelForCausalLM.from_pretrained(
        _local_or_id(assistant_name), **model_options
    ).eval()
    if "device_map" not in loader_options:
        target_model.to(resolved_device)
        assistant_model.to(resolved_device)
    tokenizer = AutoTokenizer.from_pretrained(_local_or_id(target_name), **hub_options)
    return LoadedPair(target_model, assistant_model, tokenizer, target_name, assistant_name, hub_options)


@dataclass
class PairInfo:
    """What engines other than ours need to know of a checked pair, read without loading any weights."""

    target_name: str
    assistant_name: str  # empty when the assistant was not needed and not given (a server drafts)
    target_config: Any
    assistant_config: Any
    tokenizer: Any
    context_window: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    default_draft_length: int


def inspect_pair(
    target: str, assistant: str | None = None, *, needs_assistant: bool = True, **hub_options: Any
) -> PairInfo:
    """Resolve and check a pair as :func:`load_pair` does, reading only configs and the tokenizer.

    With ``needs_assistant=False`` (a server that drafts with its own assistant) and no ``assistant`` given,
    the assistant is not looked for: ``assistant_name`` is then empty and the draft length the family's.
    """
    target_name, assistant_name = resolve_names(target, assistant)
    target_cfg = _config(target_name, "target", hub_options)
    assistant_cfg = None
    if needs_assistant or assistant is not None or str(target) in PACKAGED_PAIRS:
        assistant_cfg = _config(assistant_name, "assistant", hub_options)
        _check_pair(target_name, target_cfg, assistant_name, assistant_cfg)
    else:
        assistant_name = ""
    tokenizer = AutoTokenizer.from_pretrained(_local_or_id(target_name), **hub_options)
    text_config = target_cfg.get_text_config()
    return PairInfo(
        target_name=target_name,
        assistant_name=assistant_name,
        target_config=target_cfg,
        assistant_config=assistant_cfg,
        tokenizer=tokenizer,
        context_window=int(text_config.max_position_embeddings),
        vocab_size=int(text_config.vocab_size),
        eos_token_ids=end_of_generation_ids(_generation_config(target_name, hub_options), tokenizer),
        default_draft_length=default_draft_length(
            _generation_config(assistant_name, hub_options) if assistant_name else None, text_config
        ),
    )


def _generation_config(name: str, options: dict[str, Any]) -> GenerationConfig | None:
    """The checkpoint's generation config, or ``None`` when it ships none."""
    try:
        return GenerationConfig.from_pretrained(_local_or_id(name), **options)
    except OSError:
        return None


def end_of_generation_ids(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end an answer: the target's generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    return frozenset(int(i) for i in ids)


def default_draft_length(assistant_generation_config: Any, target_text_config: Any) -> int:
    """The assistant checkpoint's ``num_assistant_tokens`` when it sets one, else the family's default."""
    configured = (
        assistant_generation_config.to_diff_dict().get("num_assistant_tokens")
        if assistant_generation_config is not None
        else None
    )
    if configured:
        return int(configured)
    return family_of(
        target_text_config.hidden_size, bool(getattr(target_text_config, "enable_moe_block", False))
    ).draft_length


def _local_or_id(name: str) -> str:
    path = Path(name).expanduser()
    return str(path) if path.exists() else name
