"""The documented example runs offline on the kit pair, prints the acceptance statistics it promises, and its
agent ends with an answer of its own: no text of the conversation before it."""

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
        [sys.executable, str(EXAMPLE), "--max-new-tokens", "48"],
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
    agent = out.split("Agent A: ", 1)[1].split("\n--- agent run", 1)[0]
    assert "\n  [tool " in agent, "the kit pair's agent calls a tool (the grammar keeps its calls valid)"
    first, final = agent.split("\n  [tool ", 1)[0], agent.rsplit("]\n", 1)[1]
    for marker in ("<turn|>", "<|turn>", "<|tool_response>", "<tool_response|>"):
        assert marker not in final, final
    assert not (first.strip() and final.strip().startswith(first.strip())), (first, final)
    rates = [float(r) for r in re.findall(r"overall acceptance rate (\d\.\d\d)", out)]
    assert len(rates) == 2
    assert all(0.0 < rate <= 1.0 for rate in rates)
