"""The documented RAG + agent example runs offline on the kit pair and prints acceptance statistics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "examples" / "langchain_rag_agent.py"


def test_rag_agent_example_runs_offline() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--max-tokens", "8"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "random weights" in out and "gibberish" in out
    assert "RAG: 1 request(s), 8 tokens" in out
    assert "Agent: 1 request(s)" in out
    assert "All requests: 2 request(s)" in out
    assert "drafts accepted" in out
