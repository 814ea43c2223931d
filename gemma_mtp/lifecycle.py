"""The life of one request: its cancel flag, its worker thread and its one summary.

A request starts when a :class:`~gemma_mtp.Runtime` entry point is called and ends exactly once, with a
:class:`RequestSummary` handed to the caller's ``on_summary`` hook:

* ``stop``, ``length`` or ``tool_calls``: decoding finished;
* ``cancelled``: the caller closed the stream (``close``/``aclose``, ``break`` then close), called
  ``cancel()``, set its cancel event, cancelled the awaiting task or pressed Ctrl-C;
* ``error``: the input was rejected or decoding raised (the exception still reaches the caller).

Every summary carries what was done up to that point (tokens, rounds, forward passes). Cancellation is
explicit: closing a stream sets the request's cancel flag, which the decoding loop reads after every
round; nothing depends on garbage collection.

The streams a request is read through are in :mod:`gemma_mtp.streams`. Requests that run on a worker thread (the
async API) use :func:`start_worker`. At interpreter shutdown
every live request is cancelled and every worker is joined, so no thread is inside a forward pass when
the interpreter tears down (a thread still running native code at that point aborts the process).
The hook is registered with ``threading._register_atexit``, the one ``concurrent.futures`` uses: it runs
at the start of ``threading._shutdown``, before non-daemon threads are joined and long before ``atexit``
callbacks and module teardown, while the worker can still finish its round normally. Workers are
non-daemon threads, so even if the hook could not run the interpreter would wait for them rather than
kill them mid-pass. A stream still referenced at exit and not being read is closed by the hook too, so its
request ends (``cancelled``) while frameworks can still take the summary; nothing a finaliser does during
interpreter finalization sends one (the frameworks' modules are being torn down by then).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from gemma_mtp.stats import RoundListener, SpeculationStats

__all__ = ["Request", "RequestSummary", "SummaryListener", "SummaryReason", "SummaryRelay", "start_worker"]

SummaryReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]

# How a request ends when its consumer stops it: a closed stream, a cancelled task, Ctrl-C.
_CANCELLATIONS = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)


@dataclass(frozen=True)
class RequestSummary:
    """How one request ended and what it did (sent once per request, whatever the ending).

    ``finish_reason`` is ``stop``, ``length`` or ``tool_calls`` when decoding finished, ``cancelled``
    when the caller stopped it and ``error`` when its input was rejected or decoding raised (``error``
    then holds ``"ExceptionType: message"``). ``stats`` covers every round that ran, also when the request
    was cancelled or failed part-way.
    """

    request_id: str
    finish_reason: SummaryReason
    stats: SpeculationStats
    error: str | None = None

    @classmethod
    def rejected(cls, error: BaseException) -> RequestSummary:
        """The summary of a call refused before the runtime saw it (an adapter's own argument checks)."""
        request_id = uuid.uuid4().hex
        return cls(request_id, _reason_of(error), SpeculationStats(request_id=request_id), _describe(error))

    def as_dict(self) -> dict[str, Any]:
        """Plain values: the ending, the error text and every figure of :meth:`SpeculationStats.as_dict`."""
        return {**self.stats.as_dict(), "finish_reason": self.finish_reason, "error": self.error}


SummaryListener = Callable[[RequestSummary], None]


def _reason_of(error: BaseException) -> SummaryReason:
    return "cancelled" if isinstance(error, _CANCELLATIONS) else "error"


def _describe(error: BaseException) -> str | None:
    return None if isinstance(error, _CANCELLATIONS) else f"{type(error).__name__}: {error}"


class Request:
    """One call to the runtime: its id, running statistics, cancel flag and once-only summary."""

    def __init__(
        self,
        on_round: RoundListener | None = None,
        on_summary: SummaryListener | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.request_id = uuid.uuid4().hex
        self.stats = SpeculationStats(request_id=self.request_id)
        self.on_round = on_round
        self._on_summary = on_summary
        self._cancel = threading.Event()
        self._external_cancel = cancel  # the caller's event, possibly shared: read, never set
        self._lock = threading.Lock()
        self.summary: RequestSummary | None = None
        self.prompt_token_ids: list[int] = []  # set by the runtime once the prompt is encoded
        self._close_at_exit: weakref.WeakMethod[Callable[[], None]] | None = None
        _registry.add_request(self)

    def close_at_exit(self, close: Callable[[], None]) -> None:
        """Have the interpreter-shutdown hook call ``close`` (a bound method, held weakly: the stream this
        request is read through, which closes only if no thread is reading it) if the request is still live."""
        self._close_at_exit = weakref.WeakMethod(close)

    def _end_at_exit(self) -> None:
        close = self._close_at_exit() if self._close_at_exit is not None else None
        if close is not None and self.summary is None:
            close()

    def cancel(self) -> None:
        """Stop the request after the round in progress (safe from any thread, any number of times)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        external = self._external_cancel
        return self._cancel.is_set() or (external is not None and external.is_set())

    def end(
        self,
        finish_reason: SummaryReason,
        error: BaseException | None = None,
        final_stats: SpeculationStats | None = None,
    ) -> None:
        """Record how the request ended and send its summary; later calls do nothing.

        ``final_stats`` is the snapshot the last delta carried, when decoding reached its end: the summary
        then holds exactly the figures the caller's result holds.
        """
        with self._lock:
            if self.summary is not None:
                return
            if final_stats is None:
                self.stats.finish()
                final_stats = self.stats.snapshot()
            self.summary = RequestSummary(
                self.request_id, finish_reason, final_stats, None if error is None else _describe(error)
            )
        _registry.discard_request(self)
        if self._on_summary is not None:
            self._on_summary(self.summary)

    def fail(self, error: BaseException) -> None:
        """End with ``cancelled`` (a closed stream, a cancelled task, Ctrl-C) or ``error``."""
        self.end(_reason_of(error), error)

    @contextmanager
    def checking_input(self) -> Iterator[None]:
        """Around a request's input checks: a rejection ends the request (``error``) and is re-raised."""
        try:
            yield
        except BaseException as err:
            self.fail(err)
            raise


class SummaryRelay:
    """Carries one call's summary from the runtime to a framework's callbacks, exactly once.

    The runtime may send a summary from a request's worker thread, while an async framework runs its
    callbacks on its event loop; and a call can fail in the adapter before the runtime sees it. An adapter
    makes one relay per call, passes :meth:`receive` as ``on_summary`` and wraps the start of the call in
    :meth:`covering_rejections`. With ``deliver``, each summary is forwarded at once on the thread that
    sent it (for synchronous callers); without, the adapter forwards it from its own side with
    :meth:`take` once the call has ended. Either way a summary is handed over once.
    """

    def __init__(self, deliver: SummaryListener | None = None) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._summary: RequestSummary | None = None
        self._taken = False

    def receive(self, summary: RequestSummary) -> None:
        """The ``on_summary`` hook to hand to the runtime."""
        with self._lock:
            if self._summary is not None:
                return
            self._summary = summary
        if self._deliver is not None:
            taken = self.take()
            if taken is not None:
                self._deliver(taken)

    def take(self) -> RequestSummary | None:
        """The summary, the first time it is asked for once it has arrived; ``None`` otherwise."""
        with self._lock:
            if self._summary is None or self._taken:
                return None
            self._taken = True
            return self._summary

    @contextmanager
    def covering_rejections(self) -> Iterator[None]:
        """Around the start of a call: an error raised before the runtime sent a summary gets one
        (:meth:`RequestSummary.rejected`), then propagates."""
        try:
            yield
        except BaseException as err:
            with self._lock:
                missing = self._summary is None
            if missing:
                self.receive(RequestSummary.rejected(err))
            raise


def start_worker(run: Callable[[], None]) -> threading.Thread:
    """Run ``run`` on a new request worker thread, joined (after cancelling its request) at shutdown."""
    thread = threading.Thread(target=_registry.run_worker, args=(run,), name="gemma-mtp-request")
    _registry.add_worker(thread)
    thread.start()
    return thread


class _Registry:
    """Live requests and request worker threads, for the interpreter-shutdown hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: weakref.WeakSet[Request] = weakref.WeakSet()
        self._workers: set[threading.Thread] = set()

    def add_request(self, request: Request) -> None:
        with self._lock:
            self._requests.add(request)

    def discard_request(self, request: Request) -> None:
        with self._lock:
            self._requests.discard(request)

    def add_worker(self, thread: threading.Thread) -> None:
        with self._lock:
            self._workers.add(thread)

    def run_worker(self, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def shutdown(self) -> None:
        """Cancel every live request, wait for every worker to finish its round, then close the streams of
        the requests still live that no thread is reading."""
        with self._lock:
            requests = list(self._requests)
            workers = list(self._workers)
        for request in requests:
            request.cancel()
        for thread in workers:
            if thread is not threading.current_thread():
                thread.join()
        for request in requests:
            request._end_at_exit()


_registry = _Registry()
threading._register_atexit(_registry.shutdown)  # type: ignore[attr-defined]
