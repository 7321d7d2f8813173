"""The worker's aiohttp application: health, readiness, metrics, models, errors and draining.

Role-specific routes live in their own modules and are added by `RouteInstaller`s
(`install(app, state)`), e.g. `openai_routes.install` for the OpenAI API on role `both`. Every
handler finds the shared `WorkerState` under `app[STATE]`.

Draining (SIGTERM): /ready turns 503 so the Service stops sending traffic, new generation requests
get 503, in-flight ones finish (bounded by the drain timeout), then the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pdserve.runtime.checkpoints.generation import GenerationDefaults
from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.engine.async_engine import AsyncEngine, EngineDeadError
from pdserve.runtime.serving.metrics import WorkerMetrics
from pdserve.runtime.serving.openai_protocol import RequestError, error_body

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LISTEN_BACKLOG = 2048  # connections waiting to be accepted (uvicorn's and gunicorn's default)


@dataclass
class WorkerState:
    """Everything the handlers share; one per worker process.

    The HTTP server starts before the model is loaded (so liveness holds during a long load);
    `engine`, `tokenizer`, `generation_defaults`, `max_model_len` and `model_identity` are set
    by the loader, then `loaded` turns true.
    """

    served_model_name: str
    role: str
    settings: dict[str, Any] = field(default_factory=dict)  # the parsed worker flags
    engine: AsyncEngine = field(init=False)
    grammars: Any = field(init=False)  # the engine's GrammarCompiler (thread-safe)
    tokenizer: Any = field(init=False)
    generation_defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    max_model_len: int = field(init=False)
    model_identity: ModelIdentity = field(init=False)  # what KV peers must share
    metrics: WorkerMetrics = field(init=False)
    # Run after the engine is up and before /ready turns 200 (e.g. a role's KV listener).
    on_loaded: list[Callable[[WorkerState], Awaitable[None]]] = field(default_factory=list)
    loaded: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics = WorkerMetrics(self.role, self.served_model_name, self._engine_stats)

    def _engine_stats(self) -> Any:
        return self.engine.stats if self.loaded else None

    def begin_request(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def end_request(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.in_flight:
            await self._idle.wait()

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.served_model_name:
            raise RequestError(f"model {model!r} does not exist; this worker serves "
                               f"{self.served_model_name!r}", param="model",
                               code="model_not_found")


STATE: web.AppKey[WorkerState] = web.AppKey("pdserve_worker_state", WorkerState)
RouteInstaller = Callable[[web.Application, WorkerState], None]

# Requests that do work the drain must wait for (and that are refused once draining).
_ADMITTING_METHODS = {"POST"}
_ALWAYS_SERVED = {"/health", "/ready", "/metrics"}


def json_error(status: int, message: str, *, type_: str, param: str | None = None,
               code: str | None = None) -> web.Response:
    return web.json_response(error_body(message, type_=type_, param=param, code=code),
                             status=status)


def not_serving(message: str) -> web.Response:
    """503 from a worker that takes no request now (loading, draining, engine stopped): with
    Retry-After, which tells the router that nothing was done and another worker may serve it."""
    response = json_error(503, message, type_="service_unavailable")
    response.headers["Retry-After"] = "1"
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """User errors become OpenAI-style 4xx bodies; anything else a 500 that names the failure."""
    try:
        return await handler(request)
    except RequestError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_ = "invalid_request_error" if exc.status < 500 else "server_error"
        return json_error(exc.status, exc.reason, type_=type_)
    except EngineDeadError as exc:
        return not_serving(str(exc))
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, f"internal error: {exc!r}", type_="internal_error")


@web.middleware
async def _admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    if not state.loaded and request.path not in _ALWAYS_SERVED:
        return not_serving("the model is still loading")
    if request.method not in _ADMITTING_METHODS:
        return await handler(request)
    if state.draining:
        return not_serving("this worker is shutting down")
    state.begin_request()
    try:
        return await handler(request)
    finally:
        state.end_request()


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.loaded and not state.draining and not state.engine.alive:  # liveness restarts it
        return web.json_response({"status": "the engine has stopped"}, status=503)
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not state.loaded:
        return web.json_response({"status": "loading"}, status=503)
    if not state.engine.alive:  # its requests would fail: take the pod out of its Service
        return web.json_response({"status": "the engine has stopped"}, status=503)
    return web.json_response({"status": "ready", "role": state.role})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[STATE].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = {"id": state.served_model_name, "object": "model", "created": state.created,
             "owned_by": "pdserve", "max_model_len": state.max_model_len}
    return web.json_response({"object": "list", "data": [model]})


async def _engine_debug(request: web.Request) -> web.Response:
    """Block and queue counters, for leak checks and operators poking at a pod."""
    state = request.app[STATE]
    stats = state.engine.stats
    return web.json_response({
        "num_waiting": stats.num_waiting, "num_running": stats.num_running,
        "num_free_blocks": stats.num_free_blocks, "num_blocks": stats.num_blocks,
        "kv_usage": stats.kv_usage, "prefix_queries": stats.prefix_queries,
        "prefix_hits": stats.prefix_hits, "active_streams": state.engine.num_active,
        "in_flight_http": state.in_flight, "draining": state.draining,
    })


def create_app(state: WorkerState, installers: Sequence[RouteInstaller] = ()) -> web.Application:
    app = web.Application(middlewares=[_errors, _admission], client_max_size=64 * 1024 * 1024)
    app[STATE] = state
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/debug/engine", _engine_debug)
    for install in installers:
        install(app, state)
    return app


async def serve(app: web.Application, host: str, port: int, drain_timeout: float,
                load: Callable[[WorkerState], Awaitable[None]]) -> None:
    """Serve, load the model (`load` sets engine/tokenizer/max_model_len and starts the engine),
    then run until SIGTERM/SIGINT and drain: refuse new work, finish in-flight, stop."""
    state = app[STATE]
    # Cancelling the handler of a client that went away is what aborts its request. The drain
    # below is the grace period; past it, cleanup cancels what is left almost at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    # aiohttp's default backlog of 128 drops the SYNs of a larger burst of connections (the
    # router's, at 1,000 concurrent streams): retried 1 s, 3 s later, long enough to fail the
    # router's 2-second readiness poll. The kernel caps it at net.core.somaxconn.
    await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("pdserve worker (role %s) listening on %s:%d, loading the model", state.role,
             host, port)
    try:
        if await _load_unless_stopped(state, load, stop):
            state.loaded = True
            log.info("pdserve worker ready: serving %r", state.served_model_name)
            await stop.wait()
            state.draining = True
            log.info("draining: %d request(s) in flight, waiting up to %.0fs",
                     state.in_flight, drain_timeout)
            try:
                await asyncio.wait_for(state.wait_idle(), timeout=drain_timeout)
            except TimeoutError:
                log.warning("drain timeout: cutting off %d request(s)", state.in_flight)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        state.draining = True
        await runner.cleanup()
        if hasattr(state, "engine"):
            await state.engine.stop()
    log.info("pdserve worker stopped")


async def _load_unless_stopped(state: WorkerState, load: Callable[[WorkerState], Awaitable[None]],
                               stop: asyncio.Event) -> bool:
    loading = asyncio.ensure_future(_load(state, load))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not loading.done():
        loading.cancel()
        log.info("stopped while loading the model")
        return False
    loading.result()  # a failed load ends the worker with its error
    return True


async def _load(state: WorkerState, load: Callable[[WorkerState], Awaitable[None]]) -> None:
    await load(state)
    for hook in state.on_loaded:
        await hook(state)
