"""The worker app in-process around a stand-in engine (pure server logic): what it answers while
the model loads, the on_loaded hooks, and stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import pytest
from runtime_worker_process import free_port

from pdserve.runtime.engine.async_engine import AsyncEngine
from pdserve.runtime.serving import openai_routes
from pdserve.runtime.serving.server import WorkerState, create_app, serve


@dataclass
class Stats:
    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_free_blocks: int = 8
    num_blocks: int = 8
    kv_tokens_pruned: int = 0
    kv_bytes_saved: int = 0


class IdleEngine:
    def add_request(self, request_id, prompt_token_ids, params, priority=0):
        raise ValueError("this stand-in serves no requests")

    def abort(self, request_id):
        return False

    def step(self):
        return []

    def has_unfinished(self):
        return False

    def stats(self):
        return Stats()

    def close(self):
        pass


@pytest.mark.timeout(30)
async def test_loading_then_ready_then_sigterm():
    loaded = asyncio.Event()
    hooks: list[str] = []

    async def load(state: WorkerState) -> None:
        await loaded.wait()
        state.engine = AsyncEngine(IdleEngine())
        state.tokenizer = SimpleNamespace(vocab_size=100)  # token-id prompts need no more
        state.max_model_len = 64
        state.engine.start()

    async def hook(state: WorkerState) -> None:
        hooks.append("ran" if not state.loaded else "too late")

    state = WorkerState(served_model_name="m", role="both")
    state.on_loaded.append(hook)
    port = free_port()
    app = create_app(state, [openai_routes.install])
    serving = asyncio.create_task(serve(app, "127.0.0.1", port, 5.0, load))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url + "/health") as response:
                    assert response.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        async with session.get(url + "/ready") as response:
            assert response.status == 503 and (await response.json())["status"] == "loading"
        async with session.get(url + "/v1/models") as response:
            assert response.status == 503
            assert "loading" in (await response.json())["error"]["message"]
        async with session.get(url + "/metrics") as response:
            assert response.status == 200
            assert "pdserve_requests_running{" not in await response.text()

        loaded.set()
        for _ in range(100):
            async with session.get(url + "/ready") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert hooks == ["ran"]
        async with session.get(url + "/metrics") as response:
            assert 'pdserve_kv_blocks_total{model="m",role="both"} 8.0' in await response.text()
        async with session.get(url + "/debug/engine") as response:
            assert (await response.json())["num_free_blocks"] == 8
        # The engine's own refusal of a request is the client's 400, not a 500.
        async with session.post(url + "/v1/completions",
                                json={"prompt": [1, 2, 3], "max_tokens": 2}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "this stand-in serves no requests"

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, timeout=10)
    assert state.draining


class BrokenEngine(IdleEngine):
    """Its first step breaks the runner: the engine thread stops for good."""

    def __init__(self):
        self.pending = False

    def add_request(self, request_id, prompt_token_ids, params, priority=0):
        self.pending = True

    def has_unfinished(self):
        return self.pending

    def step(self):
        from pdserve.runtime.engine.errors import RunnerBrokenError

        raise RunnerBrokenError("the device is gone")


@pytest.mark.timeout(30)
async def test_a_dead_engine_fails_health_and_readiness():
    async def load(state: WorkerState) -> None:
        state.engine = AsyncEngine(BrokenEngine())
        state.tokenizer = SimpleNamespace(vocab_size=100)
        state.max_model_len = 64
        state.engine.start()

    state = WorkerState(served_model_name="m", role="both")
    port = free_port()
    serving = asyncio.create_task(serve(create_app(state, [openai_routes.install]), "127.0.0.1",
                                        port, 5.0, load))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url + "/ready") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        async with session.post(url + "/v1/completions",
                                json={"prompt": [1, 2, 3], "max_tokens": 2}) as response:
            assert response.status >= 500
        for path in ("/health", "/ready"):
            async with session.get(url + path) as response:
                assert response.status == 503, path
                assert (await response.json())["status"] == "the engine has stopped"
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, timeout=10)
