"""The ``gemma-mtp`` command and ``benchmarks/run_benchmarks.py`` on the kit pairs, with tiny budgets.

No timing thresholds here: these check that every subcommand runs, reports the fields it promises and
exits with the documented status.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gemma_mtp.benchmarking import PeakMemory, load_prompts
from gemma_mtp.benchmarking.compare import reference_mtp_available
from gemma_mtp.cli import main
from gemma_mtp.testing import tiny_pair

ROOT = Path(__file__).resolve().parents[3]

needs_reference_mtp = pytest.mark.skipif(
    not reference_mtp_available(),
    reason="transformers' own MTP generate path fails in transformers 5.19 and before",
)


@pytest.fixture(scope="module")
def pair_args() -> list[str]:
    pair = tiny_pair("dense", agreeing=True)
    return ["--model", str(pair.target_dir), "--assistant", str(pair.assistant_dir)]


@pytest.fixture(scope="module")
def other_pair_args() -> list[str]:
    """A different target (random weights) sharing the kit tokenizer: forces a real divergence."""
    pair = tiny_pair("dense", agreeing=False)
    return ["--reference-model", str(pair.target_dir), "--reference-assistant", str(pair.assistant_dir)]


@pytest.fixture()
def one_prompt(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("Tell me about the sea.\n\n")
    return path


def test_demo_streams_both_frameworks_then_reports(pair_args, capsys) -> None:
    assert main(["demo", *pair_args, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "LangChain" in out and "LlamaIndex" in out
    for field in (
        "acceptance rate",
        "mean tokens per target pass",
        "rounds with drafts",
        "tokens/s with the assistant",
        "tokens/s target alone",
        "speed-up",
        "in alternation",
        "(median of 3 runs, range in brackets)",
    ):
        assert field in out
    assert "greedy outputs match" in out and "yes (2/2" in out


def test_demo_without_the_framework_extras_says_what_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # as if not installed
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "langchain_core" in err and 'pip install "gemma-mtp[all]"' in err


@needs_reference_mtp
def test_bench_reports_the_four_methods(pair_args, one_prompt, tmp_path, capsys) -> None:
    out_json = tmp_path / "bench.json"
    argv = ["bench", *pair_args, "--prompts", str(one_prompt), "--runs", "1", "--max-new-tokens", "6"]
    assert main([*argv, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for text in (
        "gemma-mtp, with assistant",
        "gemma-mtp, target only",
        "HF generate(assistant_model=...)",
        "HF generate, target only",
        "acceptance",
        "tokens/target pass",
        "TTFT ms",
        "peak MiB",
        "CPU:",
        # Runs repeat each prompt: the prefix cache is emptied before each, so none is served from it.
        "prompt tokens read from the prefix cache: 0",
    ):
        assert text in out
    report = json.loads(out_json.read_text())
    assert all(sample["cached_prompt_tokens"] == 0 for sample in report["samples"])
    assert report["machine"]["cpu_cores"] >= 1
    methods = {m["method"]: m for m in report["methods"]}
    assert set(methods) == {"mtp", "target_only", "hf_assisted", "hf_target"}
    for m in methods.values():
        assert m["matches_target_only"] is True  # greedy: all four write the same tokens
        assert m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0 and m["time_to_first_token_s"] > 0
    assert methods["target_only"]["speedup"] == pytest.approx(1.0)
    assert methods["target_only"]["tokens_per_target_forward"] == pytest.approx(1.0)
    assert methods["hf_target"]["acceptance_rate"] is None
    assert 0.0 <= methods["mtp"]["acceptance_rate"] <= 1.0
    assert 0.0 <= methods["hf_assisted"]["acceptance_rate"] <= 1.0


def test_tune_prints_the_cost_model_and_picks_a_draft_length(pair_args, one_prompt, tmp_path, capsys) -> None:
    out_json = tmp_path / "tune.json"
    argv = ["tune", *pair_args, "--prompts", str(one_prompt), "--draft-lengths", "1", "3"]
    argv += ["--temperatures", "0", "0.7", "--runs", "1", "--max-new-tokens", "8", "--json", str(out_json)]
    argv += ["--head-to-head-runs", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ("E[tokens/round]", "model ms/round", "model speed-up", "speed-up", "temperature 0.7"):
        assert text in out
    assert "best fixed setting at temperature 0: k=" in out
    assert "default policy at temperature 0.7:" in out and "of rounds without drafts" in out
    assert "Default policy vs best fixed setting" in out
    # two head-to-head runs are too few to call a difference real: no setting is advised
    assert "at temperature 0 the default draft policy needs no settings" in out
    assert "SamplingParams(num_assistant_tokens=" not in out
    report = json.loads(out_json.read_text())
    assert {(p["temperature"], p["draft_length"], p["method"]) for p in report["points"]} == {
        (0.0, 1, "argmax"),
        (0.0, 3, "argmax"),
        *((0.7, k, m) for k in (1, 3) for m in ("argmax", "sampled")),
    }
    for p in report["points"]:
        assert p["expected_tokens_per_round"] == pytest.approx(1 + sum(p["acceptance_by_position"]))
        assert p["model_speedup"] > 0 and p["measured_speedup"] > 0
    assert {b["draft_length"] for b in report["best_setting"].values()} <= {1, 3}
    assert set(report["forward_costs"]["verify_s"]) == {"1", "2", "3", "4"}
    for t in ("0.0", "0.7"):
        policy = report["default_policy"][t]
        assert policy["measured_speedup"] > 0 and 0.0 <= policy["plain_round_share"] <= 1.0
    assert [h["temperature"] for h in report["head_to_head"]] == [0.0, 0.7]
    assert all(len(h["policy_speedups"]) == 2 for h in report["head_to_head"])


def test_verify_identical_outputs_exit_zero_and_shows_progress(pair_args, capsys) -> None:
    assert main(["verify", *pair_args, "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("identical (") == len(load_prompts(None))
    assert "0 real divergences" in captured.out
    prompts = len(load_prompts(None))
    assert all(f"prompt {i}/{prompts}: " in captured.err for i in range(1, prompts + 1))


def test_the_packaged_mini_pair_is_the_default_and_named_as_such(one_prompt, capsys) -> None:
    assert main(["verify", "--prompts", str(one_prompt), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "gemma-mtp-mini with its assistant vs gemma-mtp-mini alone" in out
    assert "identical (" in out


def test_verify_real_divergence_exits_one(pair_args, other_pair_args, one_prompt, tmp_path, capsys) -> None:
    out_json = tmp_path / "verify.json"
    argv = ["verify", *pair_args, *other_pair_args, "--prompts", str(one_prompt), "--max-new-tokens", "8"]
    assert main([*argv, "--tolerance", "0", "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED at token" in out and "top-2 margin" in out
    report = json.loads(out_json.read_text())
    assert report["ok"] is False
    divergence = report["verdicts"][0]["divergence"]
    assert divergence["top2_margin"] >= 0 and divergence["gap"] > 0
    assert divergence["assistant_token"] != divergence["reference_token"]


def test_verify_flip_within_tolerance_is_a_near_tie(pair_args, other_pair_args, one_prompt, capsys) -> None:
    argv = ["verify", *pair_args, *other_pair_args, "--prompts", str(one_prompt), "--max-new-tokens", "8"]
    assert main([*argv, "--tolerance", "1000"]) == 0  # softcapped logits are within 60 of each other
    out = capsys.readouterr().out
    assert "NEAR-TIE at token" in out and "1 near-ties, 0 real divergences" in out


def test_jsonl_prompts_accept_strings_and_messages(pair_args, tmp_path, capsys) -> None:
    path = tmp_path / "prompts.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    path.write_text(json.dumps("Once upon a time") + "\n" + json.dumps(messages) + "\n")
    assert main(["verify", *pair_args, "--prompts", str(path), "--raw", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "'Once upon a time': identical" in out and "'Hello': identical" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("\n \n", "holds no prompts"),
        ("{not json\n", "not valid JSON"),
        ('{"role": "user"}\n', "expected a non-empty string or a list of chat messages"),
    ],
)
def test_bad_prompt_files_exit_two_with_the_reason(pair_args, tmp_path, capsys, content, message) -> None:
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["bench", *pair_args, "--prompts", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gemma-mtp bench: error:" in err and message in err


def test_missing_model_exits_two_and_names_it(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-model"
    assert main(["verify", "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


@pytest.mark.parametrize("command", ["demo", "bench", "tune", "verify", "bench --concurrency 1"])
@pytest.mark.parametrize("budget", ["100000", "5000"])
def test_a_budget_past_the_context_window_exits_two_in_one_line_before_decoding(
    pair_args, command, budget, capsys
) -> None:
    """The demo printed a traceback from LlamaIndex after its LangChain part had run."""
    assert main([*command.split(), *pair_args, "--max-new-tokens", budget]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert errors == [
        f"gemma-mtp {command.split()[0]}: error: --max-new-tokens {budget} does not fit: "
        + errors[0].split("does not fit: ", 1)[1]
    ]
    assert "has a context window of 2048 tokens" in errors[0] and "use --max-new-tokens" in errors[0]
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--runs", "0"],
        ["tune", "--temperatures", "hot"],
        ["verify", "--dtype", "float8"],
        ["demo", "--max-new-tokens", "-3"],
        [],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: gemma-mtp" in capsys.readouterr().err


def test_sampled_peak_memory_sees_the_process() -> None:
    import torch

    with PeakMemory(torch.device("cpu"), force_sampling=True) as memory:
        buffer = torch.ones(8 * 2**20, dtype=torch.uint8)
    assert memory.kind == "process RSS, sampled"
    assert memory.peak_bytes >= buffer.numel()


@needs_reference_mtp
def test_run_benchmarks_writes_the_page_and_plots(pair_args, one_prompt, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("run_benchmarks", ROOT / "benchmarks" / "run_benchmarks.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page, img = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img"
    argv = [
        *pair_args,
        "--prompts",
        str(one_prompt),
        "--runs",
        "1",
        "--tune-runs",
        "1",
        "--max-new-tokens",
        "6",
        "--head-to-head-runs",
        "1",
    ]
    argv += [
        "--draft-lengths",
        "1",
        "2",
        "--temperatures",
        "0",
        "1",
        "--output",
        str(page),
        "--img-dir",
        str(img),
    ]
    assert script.main(argv) == 0
    text = page.read_text()
    for heading in (
        "## Machine",
        "## Our loop and Hugging Face",
        "## Draft length and temperature",
        "## Reproduce",
    ):
        assert heading in text
    assert "| gemma-mtp, with assistant |" in text and "best fixed setting at temperature 1" in text
    assert "## Default draft policy vs the best fixed setting" in text
    # A kit pair lives in a temporary folder: the page names it by what it is, and under its own title.
    assert text.startswith("# Benchmarks: the kit's dense pair (agreeing)\n")
    results = text.split("## Reproduce")[0]  # the command below is this test's, with the folders it was given
    assert "gemma-mtp-kit-" not in results and "the kit's dense pair (agreeing) assistant on cpu" in results
    for plot in ("speedup_vs_draft_length.png", "acceptance_vs_temperature.png", "policy_vs_fixed.png"):
        assert (img / plot).read_bytes().startswith(b"\x89PNG")
        assert f"](img/{plot})" in text


def load(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constrained_benchmark_writes_its_section_and_the_full_page_keeps_it_and_the_concurrency_one(
    pair_args, one_prompt, tmp_path
) -> None:
    page = tmp_path / "benchmarks.md"
    concurrency = (
        "<!-- concurrency -->\n## Concurrency\n\nmeasured in the vLLM environment\n<!-- /concurrency -->"
    )
    page.write_text(f"# Benchmarks\n\n## Machine\n\nx\n\n{concurrency}\n\n## Reproduce\n\ny\n")
    common = [*pair_args, "--prompts", str(one_prompt), "--max-new-tokens", "6", "--output", str(page)]
    assert load("constrained").main([*common, "--runs", "1"]) == 0
    text = page.read_text()
    assert text.index("## Constrained decoding") < text.index("## Reproduce")
    for row in ("free, default policy", "JSON schema, default policy", "JSON schema, draft length 2"):
        assert f"| {row} |" in text
    assert "| NO |" not in text
    section = text[text.index("<!-- constrained-decoding -->") : text.index("<!-- /constrained-decoding -->")]
    argv = [*common, "--runs", "1", "--tune-runs", "1", "--draft-lengths", "1", "--temperatures", "0"]
    assert load("run_benchmarks").main([*argv, "--img-dir", str(tmp_path / "img")]) == 0
    rewritten = page.read_text()
    assert section in rewritten and concurrency in rewritten and "## Our loop and Hugging Face" in rewritten


def test_prefix_cache_benchmark_measures_the_multimodal_workload_and_publishes_its_row(
    tmp_path, capsys
) -> None:
    pytest.importorskip("matplotlib")
    bench = load("prefix_cache")
    results = tmp_path / "media.json"
    argv = ["measure", "--scenarios", "media", "--repeats", "1", "--json", str(results)]
    assert bench.main(argv) == 0
    (row,) = bench.summarise(json.loads(results.read_text()))
    # Every step after the first reads the steps before it, screenshots included, from the cache.
    assert row["steps"] == 5 and row["same_answers"]
    assert row["cached_prompt_tokens"][0] == 0
    assert all(
        0 < c < p for c, p in zip(row["cached_prompt_tokens"][1:], row["prompt_tokens"][1:], strict=True)
    )
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Reproduce\n\ny\n")
    assert (
        bench.main(["publish", str(results), "--output", str(page), "--img-dir", str(tmp_path / "img")]) == 0
    )
    assert "| multimodal agent-like chat, the kit's multimodal pair" in page.read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        bench.main(["measure", "--backend", "vllm", "--scenarios", "media", "--json", str(results)])
    assert "transformers backend only" in capsys.readouterr().err


def test_help_names_the_method_sweep_the_head_to_head_and_the_sweeps_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "draft method" in top and "head to head" in top
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    tune = " ".join(capsys.readouterr().out.split())
    for text in (
        "argmax and sampled drafts",
        "head to head",
        "(default: 1 2 3 4 5 6 7 8)",
        "(default: 0 0.7 1)",
    ):
        assert text in tune, text


def test_policy_rotation_writes_its_section_and_keeps_the_page(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location(
        "policy_rotation", ROOT / "benchmarks" / "policy_rotation.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Machine\n\nx\n\n## Reproduce\n\ny\n")
    argv = ["--pairs", "kit", "--rotations", "1", "--max-new-tokens", "6", "--draft-lengths", "1", "2"]
    argv += [
        "--sampled-lengths",
        "2",
        "--temperatures",
        "0",
        "1",
        "--long-requests",
        "2",
        "--output",
        str(page),
    ]
    assert script.main(argv) == 0
    text = page.read_text()
    assert text.index("<!-- policy-rotation -->") < text.index("## Reproduce") and "## Machine" in text
    for line in ("| 0 | k=", "| 0 | default policy |", "| 1 | target alone |", "greedy: default policy"):
        assert line in text
    assert "| 1 | k=2 (best fixed) |" in text and "best fixed (k=2)" in text  # two sampled drafts
    assert "long run: 2 greedy requests" in text and "tries of an alternative" in text
