"""Bad input gets a clear error, and the runtime stays usable for the next request."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import tiny_pair

PARAMS = SamplingParams(max_new_tokens=8, ignore_eos=True)


def still_works(rt: Runtime) -> None:
    assert len(rt.generate("Hello", PARAMS).token_ids) == 8


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ("", ValueError, "empty"),
        ([], ValueError, "empty"),
        ([1, 2, 10**6], ValueError, "Token ids must be integers"),
        ([1, "a"], ValueError, "Token ids must be integers"),
        (3.5, TypeError, "prompt must be"),
        ([{"role": "wizard", "content": "hi"}], ValueError, "wizard"),
    ],
)
def test_bad_prompts(agreeing: Runtime, prompt, error, match) -> None:
    with pytest.raises(error, match=match):
        agreeing.generate(prompt, PARAMS)
    still_works(agreeing)


def test_prompt_longer_than_the_context(agreeing: Runtime) -> None:
    with pytest.raises(ValueError, match="context window"):
        agreeing.generate([5] * agreeing.context_window, PARAMS)
    still_works(agreeing)


def test_output_stops_at_the_context_window(agreeing: Runtime) -> None:
    prompt = [5] * (agreeing.context_window - 3)
    result = agreeing.generate(prompt, SamplingParams(max_new_tokens=50, ignore_eos=True))
    assert len(result.token_ids) == 3 and result.finish_reason == "length"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_new_tokens", 0, ValueError),
        ("max_new_tokens", "10", TypeError),
        ("temperature", -0.1, ValueError),
        ("temperature", "hot", TypeError),
        ("temperature", float("nan"), ValueError),
        ("top_p", 0.0, ValueError),
        ("top_p", 1.5, ValueError),
        ("top_k", -1, ValueError),
        ("seed", -3, ValueError),
        ("num_assistant_tokens", 0, ValueError),
        ("stop", [""], ValueError),
        ("stop", [3], TypeError),
        ("adaptive_draft", "yes", TypeError),
    ],
)
def test_bad_sampling_values(field: str, value, error) -> None:
    with pytest.raises(error, match=field):
        SamplingParams(**{field: value})


def test_unknown_override_is_named() -> None:
    with pytest.raises(TypeError, match="temprature"):
        SamplingParams().with_overrides(temprature=0.3)


def test_params_must_be_sampling_params(agreeing: Runtime) -> None:
    with pytest.raises(TypeError, match="SamplingParams"):
        agreeing.generate("Hello", {"max_new_tokens": 3})  # type: ignore[arg-type]
    still_works(agreeing)


def test_unknown_local_path() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Runtime.load("./no/such/model", device="cpu")


def test_mismatched_pair_names_both_and_the_difference(tmp_path) -> None:
    dense = tiny_pair("dense")
    e2b = tiny_pair("e2b")
    # Assistant built for a 64-wide target, paired with a target of another width.
    wide = tmp_path / "wide-target"
    shutil.copytree(e2b.target_dir, wide)
    config = json.loads((wide / "config.json").read_text())
    config["hidden_size"] = 96
    (wide / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden size") as err:
        Runtime.load(str(wide), str(dense.assistant_dir), device="cpu")
    assert str(wide) in str(err.value) and str(dense.assistant_dir) in str(err.value)


def test_target_used_as_assistant_is_refused() -> None:
    dense = tiny_pair("dense")
    with pytest.raises(ValueError, match="not a Gemma 4 MTP assistant"):
        Runtime.load(str(dense.target_dir), str(dense.target_dir), device="cpu")


def test_remote_code_is_refused() -> None:
    dense = tiny_pair("dense")
    with pytest.raises(ValueError, match="trust_remote_code"):
        Runtime.load(str(dense.target_dir), str(dense.assistant_dir), device="cpu", trust_remote_code=True)


def test_bad_device_and_dtype() -> None:
    dense = tiny_pair("dense")
    with pytest.raises(ValueError, match="dtype"):
        Runtime.load(str(dense.target_dir), str(dense.assistant_dir), device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="device"):
        Runtime.load(str(dense.target_dir), str(dense.assistant_dir), device="tpu-of-dreams")


def test_a_misspelt_sampling_override_gets_the_near_miss() -> None:
    from gemma_mtp.names import closest, did_you_mean

    with pytest.raises(TypeError, match=r"temprature. Did you mean 'temperature'"):
        SamplingParams().with_overrides(temprature=0.5)
    assert closest("gemma-mtp-mini", ["gemma-mtp-mini"]) is None, "nothing to correct in what was given"
    assert did_you_mean(["frobnicate"], ["temperature"]) == ""


def test_an_empty_conversation_is_refused(agreeing: Runtime) -> None:
    for messages in (
        [{"role": "user", "content": ""}],
        [{"role": "system", "content": " "}, {"role": "user", "content": ""}],
    ):
        with pytest.raises(ValueError, match="The conversation is empty"):
            agreeing.chat(messages)
    assert agreeing.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_new_tokens=2)).token_ids


def test_a_prompt_longer_than_the_context_gets_only_our_error() -> None:
    mini = Runtime.load("gemma-mtp-mini", device="cpu")
    assert mini.tokenizer.model_max_length == mini.context_window  # transformers would warn past it
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    transformers_logger = logging.getLogger("transformers")  # it does not propagate to the root logger
    transformers_logger.addHandler(handler)
    try:
        for prompt in ("word " * 5000, [{"role": "user", "content": "word " * 5000}]):
            mini.tokenizer.deprecation_warnings.clear()  # transformers warns once per tokenizer
            with pytest.raises(ValueError, match="context window"):
                mini.encode(prompt)
    finally:
        transformers_logger.removeHandler(handler)
    assert not [w for w in warnings if "Token indices sequence length" in w]
