"""Leave an async stream early, then let the interpreter exit: every process must exit with code 0.

Run as ``python exit_after_early_stream_exit.py {llama_index|runtime} RUNS``. The imports and the loading of
the packaged pair happen once, in the parent; each run is a forked child that executes the scenario and then
exits through the normal interpreter shutdown, exactly as a script does. A run so costs a few rounds and one
interpreter shutdown instead of importing torch (and LlamaIndex) again; up to ``os.cpu_count()`` children run
at once. The parent prints the children's exit codes as JSON (``-6`` is an abort).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import torch

from gemma_mtp import Runtime, SamplingParams

torch.set_num_threads(1)


def llama_index_scenario() -> Callable[[], Coroutine[Any, Any, None]]:
    """The scenario as a LlamaIndex user writes it (imports done before forking)."""
    from llama_index.core.llms import ChatMessage

    from llama_index_gemma_mtp import GemmaMTP

    async def scenario() -> None:
        llm = GemmaMTP(model="gemma-mtp-mini", device="cpu", max_new_tokens=400)
        stream = await llm.astream_chat([ChatMessage(role="user", content="Speak, friend.")], ignore_eos=True)
        async for _chunk in stream:
            break

    return scenario


def runtime_scenario() -> Callable[[], Coroutine[Any, Any, None]]:
    """The same on the runtime's own async stream."""

    async def scenario() -> None:
        runtime = Runtime.load("gemma-mtp-mini", device="cpu")
        params = SamplingParams(max_new_tokens=400, ignore_eos=True)
        async for _delta in runtime.astream_chat([{"role": "user", "content": "Speak, friend."}], params):
            break

    return scenario


SCENARIOS = {"llama_index": llama_index_scenario, "runtime": runtime_scenario}


def main() -> None:
    scenario, runs = SCENARIOS[sys.argv[1]](), int(sys.argv[2])
    Runtime.load("gemma-mtp-mini", device="cpu")  # the children find it in the runtime's cache
    parallel = max(1, min(4, os.cpu_count() or 1))
    codes: list[int] = []
    running = 0
    for _ in range(runs):
        if running == parallel:
            codes.append(os.waitstatus_to_exitcode(os.wait()[1]))
            running -= 1
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            asyncio.run(scenario())
            sys.exit(0)  # the child ends like any script: through interpreter shutdown
        running += 1
    for _ in range(running):
        codes.append(os.waitstatus_to_exitcode(os.wait()[1]))
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
