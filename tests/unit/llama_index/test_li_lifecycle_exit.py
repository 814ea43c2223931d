"""The reported scenario: leave a LlamaIndex async stream early and exit. Twenty real processes, all code 0."""

from __future__ import annotations

from collections.abc import Callable


def test_leaving_an_async_stream_early_then_exiting_exits_cleanly_every_time(
    run_exit_scenario: Callable[[str, int], list[int]],
) -> None:
    codes = run_exit_scenario("llama_index", 20)
    assert codes == [0] * 20, f"exit codes {codes} (-6: the process aborted at shutdown)"
