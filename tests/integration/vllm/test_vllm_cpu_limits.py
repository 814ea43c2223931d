"""What vLLM's CPU build cannot run is refused before its engine starts, with the reason and the way out.

The E2B/E4B-like kit pair's assistant has the centroid-masked head, for which vLLM's MTP proposer captures
CUDA graphs unconditionally; started, the engine would die in its worker with only a generic error. These
tests never start an engine: reaching the engine start fails the test, or ends it where that is the point.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gemma_mtp import Runtime
from gemma_mtp.backends import vllm_backend
from gemma_mtp.testing import tiny_pair


class _EngineStartReached(Exception):
    """Raised instead of starting an engine; carries the engine arguments the backend built."""

    def __init__(self, args: Any) -> None:
        super().__init__("the backend went on to start vLLM's engine")
        self.engine_args = args


@pytest.fixture
def engine_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform

    if current_platform.device_type != "cpu":
        pytest.skip("the refusal concerns vLLM's CPU build; the CUDA build captures the head's graphs")

    async def reached(args: Any) -> Any:
        raise _EngineStartReached(args)

    monkeypatch.setattr(vllm_backend, "_start_engine", reached)


def _load(variant: str, engine_options: dict[str, Any], **options: Any) -> Runtime:
    pair = tiny_pair(variant, agreeing=True, head_dim=32)
    centroid_head = json.loads((pair.assistant_dir / "config.json").read_text()).get("use_ordered_embeddings")
    assert bool(centroid_head) is (variant == "e2b")
    # An engine option no other test passes: Runtime.load's cache must not answer for the backend.
    options = {**engine_options, "max_num_seqs": 3, **options}
    return Runtime.load(
        str(pair.target_dir), str(pair.assistant_dir), backend="vllm", dtype="float32", **options
    )


@pytest.mark.usefixtures("engine_start")
def test_drafting_with_the_centroid_head_is_refused_before_the_engine_starts(
    engine_options: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="centroid-masked head") as refused:
        _load("e2b", engine_options)
    message = str(refused.value)
    assert "cannot run" in message and "CUDA graphs" in message
    assert "backend='transformers'" in message and "CUDA machine" in message
    assert "num_assistant_tokens=0" in message


@pytest.mark.usefixtures("engine_start")
@pytest.mark.parametrize(
    ("variant", "options", "speculative"),
    [("e2b", {"num_assistant_tokens": 0}, False), ("dense", {}, True)],
    ids=["centroid-pair-target-alone", "full-head-assistant-drafting"],
)
def test_what_the_cpu_build_runs_goes_on_to_the_engine(
    engine_options: dict[str, Any], variant: str, options: dict[str, Any], speculative: bool
) -> None:
    with pytest.raises(_EngineStartReached) as reached:
        _load(variant, engine_options, **options)
    assert (reached.value.engine_args.speculative_config is not None) is speculative
