"""Runs the (not thread-safe) LLMEngine in one background thread behind an asyncio API.

The engine thread owns the engine: every call into it (admitting, aborting, the disaggregation
roles' prefill_only / admit_with_kv / release via `call`) is queued as a command and run between
steps. Step outputs travel back to the event loop with one `call_soon_threadsafe` per step and are
fanned out to per-request asyncio queues. A request whose consumer goes away (client disconnect,
handler cancelled, generator closed early) is aborted, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from pdserve.runtime.engine.errors import RunnerBrokenError

log = logging.getLogger(__name__)

T = TypeVar("T")
# A step that could run nothing waits this long (or for the next command) before retrying:
# long enough not to spin, short next to a KV transfer.
STALLED_WAIT_SECONDS = 0.005


class EngineLike(Protocol):
    """The part of `LLMEngine` this wrapper drives (see engine/llm_engine.py)."""

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: Any,
                    priority: int = 0) -> None: ...
    def abort(self, request_id: str) -> bool: ...
    def step(self) -> list[Any]: ...
    def has_unfinished(self) -> bool: ...
    def stats(self) -> Any: ...  # with `num_running`, the sequences a step runs
    def close(self) -> None: ...


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served any more."""


class AsyncEngine:
    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._crashed = False
        self._stats: Any = engine.stats()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pdserve-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop stepping, join the engine thread and close the engine (a tensor-parallel
        replica stops its other ranks); streams still open get EngineDeadError."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.engine.close)

    @property
    def stats(self) -> Any:
        """The engine's stats as of the end of its latest step (safe to read from any thread)."""
        return self._stats

    @property
    def alive(self) -> bool:
        """Whether the engine thread still runs (False once it crashed or stopped)."""
        return self._thread is not None and self._thread.is_alive() and not self._crashed

    @property
    def num_active(self) -> int:
        return len(self._streams)

    # -- requests --------------------------------------------------------------------------

    async def call(self, fn: Callable[[EngineLike], T]) -> T:
        """Run `fn(engine)` on the engine thread between steps and return its result."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise EngineDeadError("the engine is not running")
        loop = self._loop
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def command() -> None:
            try:
                result = fn(self.engine)
            except Exception as exc:  # handed to the awaiting coroutine, not lost in the thread
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._commands.put(command)
        self._wakeup.set()
        return await future

    async def submit(self, request_id: str, prompt_token_ids: list[int], params: Any,
                     priority: int = 0) -> RequestStream:
        """Admit a request and return the stream of its outputs.

        Raises the engine's ValueError (a bad request) here, before any output exists, so a
        server can still answer 400. The caller must `close()` the stream when done with it.
        """
        return await self.admit(request_id, lambda engine: engine.add_request(
            request_id, prompt_token_ids, params, priority=priority))

    async def admit(self, request_id: str, add: Callable[[EngineLike], object]) -> RequestStream:
        """Open `request_id`'s stream, then run `add(engine)` (any way of admitting it).

        If `add` fails or the caller is cancelled meanwhile, the request is aborted: a queued
        add still runs, and the abort queued after it undoes it.
        """
        stream = self.open_stream(request_id)
        try:
            await self.call(add)
        except BaseException:
            self.abort(request_id)
            raise
        return stream

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: Any,
                       priority: int = 0) -> AsyncIterator[Any]:
        """Admit a request and yield its StepOutputs up to the finished one."""
        stream = await self.submit(request_id, prompt_token_ids, params, priority)
        try:
            async for output in stream:
                yield output
        finally:
            stream.close()

    def open_stream(self, request_id: str) -> RequestStream:
        """Register the stream that receives `request_id`'s outputs; admit the request after."""
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[request_id] = outputs
        return RequestStream(self, request_id, outputs)

    def forget(self, request_id: str) -> None:
        """Stop routing outputs to a finished request's stream."""
        self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        """Abort a request (idempotent; unknown ids are ignored)."""
        self.forget(request_id)
        self._commands.put(functools.partial(self._abort_in_engine, request_id))
        self._wakeup.set()

    # -- engine thread ---------------------------------------------------------------------

    def _abort_in_engine(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_commands()
                if self.engine.has_unfinished():
                    if not self._step():
                        # Nothing could run (e.g. the free blocks are held by KV transfers):
                        # sleep until a command or a moment has passed, rather than spin and
                        # starve the threads that would free them.
                        self._wakeup.wait(STALLED_WAIT_SECONDS)
                        self._wakeup.clear()
                else:
                    self._wakeup.wait()
                    self._wakeup.clear()
        except BaseException as exc:
            log.exception("engine thread crashed")
            self._crashed = True  # before the streams learn it: /health says so from then on
            self._fail_all(EngineDeadError(f"the engine thread crashed: {exc!r}"))
            raise
        self._run_commands()
        self._fail_all(EngineDeadError("the engine has stopped"))

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()
            self._stats = self.engine.stats()

    def _step(self) -> bool:
        """One engine step; False when it made no progress (no output, nothing running)."""
        try:
            outputs = self.engine.step()
        except RunnerBrokenError:
            raise  # no later step can succeed: stop the engine (the worker turns unhealthy)
        except Exception as exc:
            # A failing step must not take the whole worker down: fail the requests in it.
            log.exception("engine step failed; aborting the in-flight requests")
            self._fail_all(RuntimeError(f"engine step failed: {exc!r}"))
            return True
        finally:
            self._stats = self.engine.stats()
        if outputs and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, outputs)
        return bool(outputs) or self._stats.num_running > 0

    def _fail_all(self, error: BaseException) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._fail_streams, error)

    # -- event loop side -------------------------------------------------------------------

    def _dispatch(self, outputs: list[Any]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)

    def _fail_streams(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for request_id, stream in streams.items():
            stream.put_nowait(error)
            self._commands.put(functools.partial(self._abort_in_engine, request_id))
        self._wakeup.set()


class RequestStream:
    """One request's outputs as an async iterator; `close()` before the end aborts it.

    Cancellation while waiting (the handler of a disconnected client) aborts the request too.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, outputs: asyncio.Queue[Any]) -> None:
        self.request_id = request_id
        self._engine = engine
        self._outputs = outputs
        self._finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._outputs.get()
        except BaseException:
            self.close()
            raise
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finished:
            self._finished = True
            self._engine.forget(self.request_id)
        return item

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine.abort(self.request_id)
