"""Suite-wide settings.

The kit models are tiny: intra-op parallelism buys nothing on them and, on a small machine running other
work, oversubscribed threads make each forward pass many times slower. One thread keeps timings steady.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parents[1]


def _run_process(script: str, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run ``tests/processes/<script>`` in a fresh interpreter that imports this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "processes" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def run_exit_scenario() -> Callable[[str, int], list[int]]:
    """Run ``tests/processes/exit_after_early_stream_exit.py``: real processes that leave a stream early and
    exit; returns their exit codes."""

    def run(scenario: str, runs: int) -> list[int]:
        if not hasattr(os, "fork"):
            pytest.skip("the process driver forks")
        done = _run_process("exit_after_early_stream_exit.py", scenario, str(runs), timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        codes: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(codes) == runs
        return codes

    return run


@pytest.fixture(scope="session")
def run_held_stream_exit(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[int, str, list[str]]]:
    """Run ``tests/processes/exit_with_a_stream_held.py``: a process that exits holding a stream it read from;
    returns its exit code, its stderr and the summary lines it logged."""

    def run(scenario: str) -> tuple[int, str, list[str]]:
        log = tmp_path_factory.mktemp("held-stream") / "log"
        done = _run_process("exit_with_a_stream_held.py", scenario, str(log), timeout=600)
        lines = log.read_text().splitlines() if log.exists() else []
        return done.returncode, done.stderr, lines

    return run


@pytest.fixture(scope="session")
def run_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a ``tests/processes`` script in a fresh interpreter: ``run_process(script, *args, timeout=...)``."""
    return _run_process
