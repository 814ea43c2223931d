"""Read two deltas of a stream, keep the stream in a global, let the interpreter exit.

Run as ``python exit_with_a_stream_held.py {llama_index|runtime} LOG``. The process appends to ``LOG`` one line
per request summary it sees (``summary <finish_reason> finalizing=<bool>``: from LlamaIndex's dispatcher, or from
the runtime's ``on_summary``), and ``ended while finalizing`` for every request that ended during interpreter
finalization, when the frameworks' modules are being torn down. It writes with ``os.write`` on a descriptor opened
at the start, which still works then.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gemma_mtp import Runtime, SamplingParams, lifecycle

LOG = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
_end = lifecycle.Request.end


def _log(line: str, write: Any = os.write, log: int = LOG) -> None:
    write(log, (line + "\n").encode())


def _watched_end(
    self: Any,
    *args: Any,
    finalizing: Any = sys.is_finalizing,
    log: Any = _log,
    end: Any = _end,
    **kwargs: Any,
) -> None:
    # Everything it uses is bound here: module globals may already be gone during finalization.
    if finalizing():
        log("ended while finalizing")
    end(self, *args, **kwargs)


lifecycle.Request.end = _watched_end  # type: ignore[method-assign]


def llama_index_stream() -> Any:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.llms import ChatMessage

    from llama_index_gemma_mtp import GemmaMTP
    from llama_index_gemma_mtp.events import SpeculationSummaryEvent

    class Summaries(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, SpeculationSummaryEvent):
                _log(f"summary {event.finish_reason} finalizing={sys.is_finalizing()}")

    get_dispatcher().add_event_handler(Summaries())
    llm = GemmaMTP(model="gemma-mtp-mini", device="cpu", max_new_tokens=24)
    return llm.stream_chat([ChatMessage(role="user", content="Speak, friend.")])


def runtime_stream() -> Any:
    runtime = Runtime.load("gemma-mtp-mini", device="cpu")
    return runtime.stream_chat(
        [{"role": "user", "content": "Speak, friend."}],
        SamplingParams(max_new_tokens=24),
        on_summary=lambda s: _log(f"summary {s.finish_reason} finalizing={sys.is_finalizing()}"),
    )


stream = {"llama_index": llama_index_stream, "runtime": runtime_stream}[sys.argv[1]]()
next(stream)
next(stream)
globals()["_kept"] = stream
