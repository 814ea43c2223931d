"""A script that closes its vLLM runtime exits quietly: no exception reported while the interpreter shuts down."""

from __future__ import annotations

import subprocess
from collections.abc import Callable


def test_closing_the_runtime_leaves_nothing_to_report_at_exit(
    run_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = run_process("vllm_close_and_exit.py", timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "decoded: [" in done.stdout  # vLLM logs to stdout too
    for noise in ("Exception ignored", "Traceback", "AsyncLLM.__del__"):
        assert noise not in done.stderr, done.stderr[-4000:]
