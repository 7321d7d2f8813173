"""Assembling one worker process: settings -> app (role routes) -> serve, loading the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pdserve.runtime.checkpoints.generation import read_generation_defaults
from pdserve.runtime.checkpoints.identity import model_identity
from pdserve.runtime.cli import DEFAULTS, kv_compression
from pdserve.runtime.devices.resolve import dtype_name, torch_threads
from pdserve.runtime.engine.async_engine import AsyncEngine
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.serving.server import WorkerState, create_app, serve

log = logging.getLogger(__name__)

# Worker settings that are EngineConfig fields; unset ones keep the engine's defaults.
ENGINE_SETTINGS = ("model", "device", "dtype", "block_size", "num_kv_blocks", "max_num_seqs",
                   "max_num_batched_tokens", "max_model_len", "enable_prefix_caching",
                   "tensor_parallel_size", "num_nodes", "rendezvous")


def engine_config(settings: dict[str, Any]) -> EngineConfig:
    return EngineConfig(**{name: settings[name] for name in ENGINE_SETTINGS
                           if settings.get(name) is not None},
                        kv_compression=kv_compression({**DEFAULTS, **settings}),
                        grammar_cache_bytes=int({**DEFAULTS, **settings}["grammar_cache_mb"])
                        << 20)


async def load_engine(state: WorkerState) -> None:
    """Build the engine off the event loop (weights load for a while), then start stepping it."""
    log.info("torch uses %d CPU thread(s)", torch_threads(state.settings.get("threads")))
    engine = await asyncio.to_thread(LLMEngine, engine_config(state.settings))
    state.tokenizer = engine.tokenizer
    state.grammars = engine.grammars
    state.generation_defaults = read_generation_defaults(engine.model_path)
    if state.generation_defaults.not_applied:
        log.warning("generation_config.json sets %s, which pdserve's sampler does not apply",
                    ", ".join(state.generation_defaults.not_applied))
    state.max_model_len = engine.max_model_len
    state.model_identity = model_identity(engine.model_path, dtype_name(engine.dtype),
                                          engine.config.block_size)
    log.info("model identity %s (%s)", state.model_identity.digest, state.model_identity)
    state.engine = AsyncEngine(engine)
    state.engine.start()
    # xgrammar's import and vocabulary tables take seconds: built beside serving, so the first
    # constrained request does not pay them (it waits for them if it comes sooner).
    warming = asyncio.get_running_loop().run_in_executor(None, engine.grammars.warm_up)
    warming.add_done_callback(_report_grammar_warm_up)


def _report_grammar_warm_up(future: asyncio.Future[None]) -> None:
    if future.exception() is not None:
        log.error("constrained decoding is unavailable: %s", future.exception())


def build_worker_app(settings: dict[str, Any],
                     install: Callable[[web.Application, WorkerState], None]) -> web.Application:
    state = WorkerState(served_model_name=settings["served_model_name"], role=settings["role"],
                        settings=settings)
    return create_app(state, [install])


async def run_worker(settings: dict[str, Any],
                     install: Callable[[web.Application, WorkerState], None]) -> None:
    app = build_worker_app(settings, install)
    await serve(app, settings["host"], settings["port"], settings["drain_timeout"], load_engine)
