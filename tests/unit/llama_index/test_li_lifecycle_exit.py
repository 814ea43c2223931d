"""Exiting with LlamaIndex streams left open, in real processes: an async stream left early (twenty processes, all
code 0), and a stream still referenced when the script ends (its request ends once, while LlamaIndex can still
take the event, and nothing is dispatched during interpreter finalization)."""

from __future__ import annotations

from collections.abc import Callable


def test_leaving_an_async_stream_early_then_exiting_exits_cleanly_every_time(
    run_exit_scenario: Callable[[str, int], list[int]],
) -> None:
    codes = run_exit_scenario("llama_index", 20)
    assert codes == [0] * 20, f"exit codes {codes} (-6: the process aborted at shutdown)"


def test_a_stream_still_referenced_at_exit_ends_before_finalization_without_a_traceback(
    run_held_stream_exit: Callable[[str], tuple[int, str, list[str]]],
) -> None:
    code, stderr, lines = run_held_stream_exit("llama_index")
    assert code == 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    assert lines == ["summary cancelled finalizing=False"]
