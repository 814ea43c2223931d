"""A script that closes its vLLM runtime exits quietly: no exception reported while the interpreter shuts down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "processes" / "vllm_close_and_exit.py"
ROOT = Path(__file__).resolve().parents[3]


def test_closing_the_runtime_leaves_nothing_to_report_at_exit() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "decoded: [" in done.stdout  # vLLM logs to stdout too
    for noise in ("Exception ignored", "Traceback", "AsyncLLM.__del__"):
        assert noise not in done.stderr, done.stderr[-4000:]
