"""Loading fails fast and clearly, failed loads are remembered, runtimes report the name they were given and
pickle as their load arguments."""

from __future__ import annotations

import pickle
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import gemma_mtp.loading as loading
from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_pair


@pytest.fixture
def forget_failures() -> Any:
    yield
    with Runtime._cache_lock:
        Runtime._failed.clear()


@pytest.fixture
def hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No hub (whatever this machine's network), and any attempt to ask transformers for it is recorded."""
    asked: list[str] = []
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: "ConnectError: no route to host")

    def from_pretrained(name: str, **kwargs: Any) -> Any:
        asked.append(name)
        raise OSError("transformers would retry here for half a minute")

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", from_pretrained)
    return asked


def test_an_unreachable_hub_fails_at_once_naming_the_id_and_the_hub(
    hub_unreachable: list[str], forget_failures: Any
) -> None:
    started = time.perf_counter()
    with pytest.raises(OSError) as caught:
        Runtime.load("google/gemma-4-nope", device="cpu")
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "'google/gemma-4-nope'" in message
    assert "could not be reached" in message and "ConnectError" in message
    assert ".." not in message
    assert hub_unreachable == [], "transformers was asked although the hub is unreachable"


def test_a_typo_of_the_packaged_name_gets_a_suggestion(
    hub_unreachable: list[str], forget_failures: Any
) -> None:
    with pytest.raises(OSError, match="Did you mean the packaged pair 'gemma-mtp-mini'"):
        Runtime.load("gemma-mtp-minii", device="cpu")


def test_the_packaged_name_given_as_the_assistant_says_how_to_give_it(
    monkeypatch: pytest.MonkeyPatch, forget_failures: Any
) -> None:
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: "ConnectError: no route to host")
    target = str(Path(str(resources.files("gemma_mtp").joinpath("models/mini/target"))))
    with pytest.raises(OSError) as caught:
        Runtime.load(target, "gemma-mtp-mini", device="cpu")
    message = str(caught.value)
    assert "Did you mean" not in message, "nothing to correct in what was given"
    assert "'gemma-mtp-mini' is a packaged pair" in message and "Runtime.load('gemma-mtp-mini')" in message


def test_a_failed_load_is_remembered_for_the_same_arguments(
    monkeypatch: pytest.MonkeyPatch, forget_failures: Any
) -> None:
    probes: list[int] = []

    def unreachable() -> str:
        probes.append(1)
        return "ConnectError: no route to host"

    monkeypatch.setattr(loading, "_hub_unreachable", unreachable)
    for _ in range(3):
        with pytest.raises(OSError, match="gemma-4-nope"):
            Runtime.load("google/gemma-4-nope", device="cpu")
    assert len(probes) == 1
    with pytest.raises(OSError, match="clear_cache"):
        Runtime.load("google/gemma-4-nope", device="cpu")
    loaded = dict(Runtime._cache)  # the other tests' runtimes, put back after clear_cache()
    try:
        Runtime.clear_cache()
        with pytest.raises(OSError):
            Runtime.load("google/gemma-4-nope", device="cpu")
    finally:
        Runtime._cache.update(loaded)
    assert len(probes) == 2


def test_a_reachable_hub_that_refuses_says_so_without_doubled_periods(
    monkeypatch: pytest.MonkeyPatch, forget_failures: Any
) -> None:
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: None)

    def refuse(name: str, **kwargs: Any) -> Any:
        raise OSError(f"{name} is not a local folder and is not a valid model identifier.")

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(OSError) as caught:
        Runtime.load("google/gemma-4-nope", device="cpu")
    message = str(caught.value)
    assert "not a valid model identifier" in message and ".." not in message


def test_a_missing_folder_suggests_the_packaged_name(forget_failures: Any) -> None:
    with pytest.raises(FileNotFoundError, match="Did you mean the packaged pair 'gemma-mtp-mini'"):
        Runtime.load("./gemma-mtp-mimi", device="cpu")


def test_the_packaged_pair_reports_its_name_not_its_install_path() -> None:
    runtime = Runtime.load("gemma-mtp-mini", device="cpu")
    assert runtime.model_name == "gemma-mtp-mini"


def test_a_folder_reports_the_folder_it_was_given() -> None:
    pair = tiny_pair("dense", agreeing=True)
    runtime = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    assert runtime.model_name == str(pair.target_dir)


def test_a_loaded_runtime_pickles_as_its_load_arguments() -> None:
    runtime = Runtime.load("gemma-mtp-mini", device="cpu")
    assert pickle.loads(pickle.dumps(runtime)) is runtime


def test_a_runtime_built_from_a_backend_refuses_to_pickle_clearly() -> None:
    runtime = Runtime.load("gemma-mtp-mini", device="cpu")
    handmade = Runtime(runtime.engine)
    with pytest.raises(TypeError, match=r"Runtime\.load"):
        pickle.dumps(handmade)


def test_a_server_needs_no_assistant_but_checks_one_given() -> None:
    """Server mode looked for a local ``<target>-assistant`` folder although the server drafts."""
    pair = tiny_pair("dense", agreeing=True)
    info = loading.inspect_pair(str(pair.target_dir), needs_assistant=False)
    assert info.assistant_name == "" and info.assistant_config is None
    assert info.context_window > 0 and info.eos_token_ids and info.default_draft_length > 0
    with pytest.raises(FileNotFoundError, match="assistant"):
        loading.inspect_pair(str(pair.target_dir))  # in process the assistant is needed
    given = loading.inspect_pair(str(pair.target_dir), str(pair.assistant_dir), needs_assistant=False)
    assert given.assistant_name == str(pair.assistant_dir) and given.assistant_config is not None
    mini_assistant = str(Path(str(resources.files("gemma_mtp").joinpath("models/mini/assistant"))))
    with pytest.raises(ValueError, match="hidden"):
        loading.inspect_pair(str(pair.target_dir), mini_assistant, needs_assistant=False)
