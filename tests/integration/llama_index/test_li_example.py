"""The documented example runs offline on the kit pair and prints the acceptance statistics it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "examples" / "llama_index_rag_agent.py"


def test_rag_agent_example_runs_offline_and_reports_acceptance() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Sources:\n  - The acceptance rate is the share of drafted tokens" in out
    assert "--- RAG query: 1 request(s) ---" in out
    assert re.search(r"--- agent run: \d+ request\(s\) ---", out)
    rates = [float(r) for r in re.findall(r"overall acceptance rate (\d\.\d\d)", out)]
    assert len(rates) == 2
    assert all(0.0 < rate <= 1.0 for rate in rates)
