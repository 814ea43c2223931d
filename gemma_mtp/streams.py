"""The streams a request is read through, closing and cancelling it explicitly.

:class:`RequestStream` (sync) and :class:`AsyncRequestStream` (decoded on a worker thread, read from the event loop)
end their request when they run out, fail or are closed, also before their first item. :class:`GuardedStream` and
:class:`AsyncGuardedStream` let an adapter hand its framework's own stream wrapper to the caller while keeping
``close()`` / ``aclose()`` a real cancellation (see ``docs/lifecycle.md``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from typing import Any, Generic, TypeVar

from gemma_mtp.lifecycle import Request, SummaryReason, start_worker
from gemma_mtp.stats import SpeculationStats

__all__ = [
    "AsyncGuardedStream",
    "AsyncMappedStream",
    "AsyncRequestStream",
    "GuardedStream",
    "MappedStream",
    "RequestStream",
    "close_with_guard",
]

_T = TypeVar("_T")
_U = TypeVar("_U")


class RequestStream(Generator[_T, None, None], Generic[_T]):
    """A request's deltas, as a generator whose ``close()`` cancels the request explicitly.

    The request ends when the deltas run out (with the last delta's ``finish_reason``), when iterating
    raises, or when the stream is closed, also before its first item: a stream that was created and
    never read still ends with a ``cancelled`` summary once closed.
    """

    def __init__(self, request: Request, items: Generator[_T, None, None]) -> None:
        self.request = request
        self._items = items
        self._finish: SummaryReason | None = None
        self._final_stats: SpeculationStats | None = None
        self._done = False
        self._busy = threading.RLock()  # held while a delta is read or the stream closes
        request.close_at_exit(self._close_if_idle)
        _register_opened(self)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def cancel(self) -> None:
        """Stop decoding after the round in progress; the stream then ends with a ``cancelled`` delta."""
        self.request.cancel()

    def map(self, convert: Callable[[_T], _U | None]) -> MappedStream[_U]:
        """This stream's items converted (``None`` results are skipped), closing and cancelling as this one."""
        return MappedStream(self, convert)

    def __iter__(self) -> RequestStream[_T]:
        return self

    def __next__(self) -> _T:
        return self.send(None)

    def send(self, value: None) -> _T:
        return self._step(lambda: next(self._items))

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> _T:  # type: ignore[override]
        error = typ if isinstance(typ, BaseException) else (typ() if val is None else val)
        return self._step(lambda: self._items.throw(error))

    def close(self) -> None:
        """Cancel the request and release it; its summary is sent now if it had not ended yet."""
        self.request.cancel()
        with self._busy:
            self._done = True
            try:
                self._items.close()
            finally:
                self._end()

    def __del__(self) -> None:
        # A backstop only, as for native generators: a stream dropped without close() still ends. During
        # interpreter finalization (a stream referenced until the end) it only stops decoding: the modules a
        # summary would go through are being torn down, and the shutdown hook closed it if nobody read it.
        if self._done:
            return
        if sys.is_finalizing():
            self.request.cancel()
        else:
            self.close()

    def _close_if_idle(self) -> None:
        """Close unless another thread is reading a delta (that thread then ends the cancelled request)."""
        if self._busy.acquire(blocking=False):
            try:
                if not self._done:
                    self.close()
            finally:
                self._busy.release()

    def _step(self, advance: Callable[[], _T]) -> _T:
        with self._busy:
            if self._done:
                raise StopIteration
            try:
                item = advance()
            except StopIteration:
                self._done = True
                self._end()
                raise
            except BaseException as err:
                self._done = True
                self.request.fail(err)
                raise
        finish = getattr(item, "finish_reason", None)
        if finish is not None:
            self._finish = finish
            self._final_stats = getattr(item, "stats", None)
        return item

    def _end(self) -> None:
        if self._finish is None:
            self.request.end("cancelled")
        else:
            self.request.end(self._finish, final_stats=self._final_stats)


class MappedStream(Generator[_U, None, None], Generic[_U]):
    """A :class:`RequestStream` seen through a conversion (an adapter's response type)."""

    def __init__(self, source: RequestStream[Any], convert: Callable[[Any], _U | None]) -> None:
        self._source = source
        self._convert = convert

    @property
    def request_id(self) -> str:
        return self._source.request_id

    def cancel(self) -> None:
        self._source.cancel()

    def __iter__(self) -> MappedStream[_U]:
        return self

    def __next__(self) -> _U:
        return self.send(None)

    def send(self, value: None) -> _U:
        while True:
            converted = self._converted(next(self._source))
            if converted is not None:
                return converted

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> _U:  # type: ignore[override]
        converted = self._converted(self._source.throw(typ, val, tb))
        return converted if converted is not None else self.send(None)

    def _converted(self, item: Any) -> _U | None:
        try:
            return self._convert(item)
        except BaseException as err:  # the request fails with its conversion, and stops
            self._source.request.fail(err)
            self._source.close()
            raise

    def close(self) -> None:
        self._source.close()


class AsyncRequestStream(AsyncGenerator[_T, None], Generic[_T]):
    """A request decoded on its own worker thread, read from the event loop.

    ``source`` is the request's :class:`RequestStream`, or a function that makes it on the worker thread
    (so that templating stays off the event loop). The worker starts at the first ``__anext__``.
    ``aclose()`` cancels the request and waits for the worker to finish its round, so that when it
    returns the summary has been sent and no thread is left running. Cancelling a task that awaits the
    next item cancels the request too.
    """

    def __init__(self, request: Request, source: RequestStream[_T] | Callable[[], RequestStream[_T]]):
        self.request = request
        self._source = source
        self._worker: _Worker | None = None
        self._finished = False  # the worker's last message ("done" or "error") was received
        self._closed = False
        _register_opened(self, replacing=source)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def cancel(self) -> None:
        """Stop decoding after the round in progress (the stream then ends with a ``cancelled`` delta)."""
        self.request.cancel()

    def map(self, convert: Callable[[_T], _U | None]) -> AsyncMappedStream[_U]:
        """This stream's items converted (``None`` results are skipped), closing and cancelling as this one."""
        return AsyncMappedStream(self, convert)

    def __aiter__(self) -> AsyncRequestStream[_T]:
        return self

    async def __anext__(self) -> _T:
        return await self.asend(None)

    async def asend(self, value: None) -> _T:
        if self._closed or self._finished:
            raise StopAsyncIteration
        if self._worker is None:
            self._worker = _Worker(self.request, self._source)
        try:
            kind, item = await self._worker.queue.get()
        except BaseException:
            # The consumer was cancelled while waiting: the request goes with it.
            self._closed = True
            self.request.cancel()
            raise
        if kind == "item":
            return item  # type: ignore[no-any-return]
        self._finished = True
        if kind == "error":
            raise item
        raise StopAsyncIteration

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> _T:  # type: ignore[override]
        await self.aclose()
        raise typ if isinstance(typ, BaseException) else (typ() if val is None else val)

    async def aclose(self) -> None:
        """Cancel the request and wait for its worker to finish the round in progress."""
        self._closed = True
        self.request.cancel()
        if self._worker is None:
            if isinstance(self._source, RequestStream):
                self._source.close()
            else:
                self.request.end("cancelled")
            return
        while not self._finished:
            kind, item = await self._worker.queue.get()
            if kind != "item":
                self._finished = True
                if kind == "error":
                    raise item

    async def collect(self) -> list[_T]:
        """Every item, closing (and so cancelling, if interrupted) the request on the way out."""
        try:
            return [item async for item in self]
        finally:
            await self.aclose()

    def __del__(self) -> None:
        # A backstop only, as for native generators: a stream dropped without aclose() stops decoding.
        # The worker holds the request, never this object, so this runs while the worker still works.
        if not self._finished:
            self.request.cancel()


class AsyncMappedStream(AsyncGenerator[_U, None], Generic[_U]):
    """An :class:`AsyncRequestStream` seen through a conversion (an adapter's response type)."""

    def __init__(self, source: AsyncRequestStream[Any], convert: Callable[[Any], _U | None]) -> None:
        self._source = source
        self._convert = convert

    @property
    def request_id(self) -> str:
        return self._source.request_id

    def cancel(self) -> None:
        self._source.cancel()

    def __aiter__(self) -> AsyncMappedStream[_U]:
        return self

    async def __anext__(self) -> _U:
        return await self.asend(None)

    async def asend(self, value: None) -> _U:
        while True:
            item = await self._source.__anext__()
            try:
                converted = self._convert(item)
            except BaseException as err:  # the request fails with its conversion, and stops
                self._source.request.fail(err)
                await self._source.aclose()
                raise
            if converted is not None:
                return converted

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> _U:  # type: ignore[override]
        return await self._source.athrow(typ, val, tb)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._source.aclose()


class _Worker:
    """The thread that decodes one async request and hands its items to the event loop."""

    def __init__(self, request: Request, source: RequestStream[Any] | Callable[[], RequestStream[Any]]):
        self.request = request
        self.source = source
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        start_worker(self.run)

    def put(self, kind: str, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, item))
        except RuntimeError:  # the event loop is closed: nobody is left to read, so stop decoding
            self.request.cancel()

    def run(self) -> None:
        try:
            stream = self.source if isinstance(self.source, RequestStream) else self.source()
            try:
                for item in stream:  # a cancelled request ends after its round with a ``cancelled`` delta
                    self.put("item", item)
            finally:
                stream.close()
        except BaseException as err:  # handed to the event loop, which re-raises it to the consumer
            self.put("error", err)
        else:
            self.put("done", None)


# -- framework wrappers ---------------------------------------------------------------------------------
#
# Frameworks wrap an adapter's stream in their own generator (for callbacks and tracing), and some of those
# wrappers do not close the stream they wrap when they are closed: the request would then run on until the
# wrapped stream is garbage-collected, which never happens while a tracer holds the wrapper's exception.
# Adapters return their framework's stream inside a guard instead; closing the guard closes every request
# stream opened while the framework's code ran, explicitly, and then the framework's stream.

_opened: ContextVar[list[Any] | None] = ContextVar("gemma_mtp_opened_streams", default=None)


def _register_opened(stream: Any, replacing: Any = None) -> None:
    """Register a new request stream with the guard collecting them, if any (``replacing`` the stream it
    wraps: an async stream's source is closed by its worker thread, never by the guard)."""
    opened = _opened.get()
    if opened is not None:
        if any(item is replacing for item in opened):
            opened.remove(replacing)
        opened.append(stream)


def close_with_guard(resource: Any) -> None:
    """Have the guard whose framework code is running close ``resource`` too when the guard is closed.

    ``resource`` has ``aclose()`` (awaited by :class:`AsyncGuardedStream`) or ``close()``; it is closed
    after the request streams opened before it, and before the framework's own stream, so that what it
    does on closing (an adapter reporting the request's summary to its framework) happens while the
    framework's run is still open. Outside a guard this does nothing.
    """
    _register_opened(resource)


class _Collecting:
    """Makes request streams created inside ``with`` register in ``opened``."""

    def __init__(self, opened: list[Any]) -> None:
        self._opened = opened
        self._token: Token[list[Any] | None] | None = None

    def __enter__(self) -> None:
        self._token = _opened.set(self._opened)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _opened.reset(self._token)


class GuardedStream(Generator[_T, None, None], Generic[_T]):
    """A framework's stream whose ``close()`` first closes the request streams opened beneath it.

    ``make`` calls the framework; request streams created during that call or while iterating register
    here, whichever of the two the framework does lazily. ``within`` is entered around each of those
    steps too, for an adapter that makes per-call context (its framework's run) known to the code the
    framework calls.
    """

    def __init__(
        self,
        make: Callable[[], Iterator[_T]],
        within: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self._opened: list[Any] = []
        self._within = within
        with _Collecting(self._opened), within():
            self._outer = make()

    def __iter__(self) -> GuardedStream[_T]:
        return self

    def __next__(self) -> _T:
        return self.send(None)

    def send(self, value: None) -> _T:
        with _Collecting(self._opened), self._within():
            return next(self._outer)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> _T:  # type: ignore[override]
        self.close()
        raise typ if isinstance(typ, BaseException) else (typ() if val is None else val)

    def close(self) -> None:
        try:
            for stream in self._opened:
                stream.close()
        finally:
            close = getattr(self._outer, "close", None)
            if close is not None:
                close()


class AsyncGuardedStream(AsyncGenerator[_T, None], Generic[_T]):
    """The async twin of :class:`GuardedStream`; :meth:`open` for frameworks whose call is a coroutine."""

    def __init__(
        self,
        make: Callable[[], AsyncIterator[_T]] | None = None,
        within: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self._opened: list[Any] = []
        self._outer: AsyncIterator[_T] | None = None
        self._within = within
        if make is not None:
            with _Collecting(self._opened), within():
                self._outer = make()

    @classmethod
    async def open(cls, make: Callable[[], Awaitable[AsyncIterator[_T]]]) -> AsyncGuardedStream[_T]:
        guard: AsyncGuardedStream[_T] = cls()
        with _Collecting(guard._opened):
            guard._outer = await make()
        return guard

    def __aiter__(self) -> AsyncGuardedStream[_T]:
        return self

    async def __anext__(self) -> _T:
        return await self.asend(None)

    async def asend(self, value: None) -> _T:
        assert self._outer is not None
        with _Collecting(self._opened), self._within():
            return await self._outer.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> _T:  # type: ignore[override]
        await self.aclose()
        raise typ if isinstance(typ, BaseException) else (typ() if val is None else val)

    async def aclose(self) -> None:
        try:
            for stream in self._opened:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                else:
                    stream.close()
        finally:
            aclose = getattr(self._outer, "aclose", None)
            if aclose is not None:
                await aclose()
