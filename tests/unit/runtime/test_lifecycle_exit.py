"""Interpreter shutdown with a request in flight: real processes, each must exit with code 0.

A worker thread still inside a forward pass when the interpreter tears down aborts the process
("terminate called without an active exception", exit code 134). The runtime cancels live requests and
joins their workers before shutdown; the scenario runs in real processes, several times, because the
failure depends on timing.
"""

from __future__ import annotations

from collections.abc import Callable


def test_leaving_a_runtime_async_stream_early_then_exiting_exits_cleanly(
    run_exit_scenario: Callable[[str, int], list[int]],
) -> None:
    codes = run_exit_scenario("runtime", 8)
    assert codes == [0] * 8, f"exit codes {codes} (-6: the process aborted at shutdown)"


def test_a_stream_still_referenced_at_exit_ends_once_before_finalization(
    run_held_stream_exit: Callable[[str], tuple[int, str, list[str]]],
) -> None:
    code, stderr, lines = run_held_stream_exit("runtime")
    assert code == 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    assert lines == ["summary cancelled finalizing=False"]
