"""Request lifecycles on a real worker: client disconnects, no KV block leak after 1,000 mixed
requests (completed, aborted, rejected), and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys

import aiohttp
import pytest
from runtime_worker_process import (
    MODEL_NAME,
    WorkerProcess,
    free_port,
    is_idle,
    metric_value,
    tiny_model_dir,
)

LABELS = {"role": "both", "model": MODEL_NAME}
LONG = 1500  # tokens: generation takes seconds, long enough to leave in the middle


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    process = WorkerProcess(tiny_model_dir(tmp_path_factory), "--num-kv-blocks", "128",
                            "--block-size", "16", "--max-num-seqs", "16",
                            log_path=tmp_path_factory.mktemp("logs") / "worker.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def completion(prompt: str = "Tell me a story", max_tokens: int = LONG, **extra) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
            "ignore_eos": True, **extra}


def counters(worker) -> tuple[float, float]:
    text = worker.metrics_text()
    return (metric_value(text, "pdserve_generation_tokens_total", **LABELS),
            metric_value(text, "pdserve_requests_total", finish_reason="abort", **LABELS))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_streaming_client_that_disconnects_frees_its_blocks(worker):
    tokens_before, aborts_before = counters(worker)
    async with aiohttp.ClientSession() as session:
        response = await session.post(worker.base_url + "/v1/completions",
                                      json=completion(stream=True))
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: ")
        assert worker.get_json("/debug/engine")["num_running"] == 1
        response.close()
    stats = worker.wait_engine_idle()
    assert is_idle(stats), stats
    tokens_after, aborts_after = counters(worker)
    assert tokens_after - tokens_before < LONG
    assert aborts_after == aborts_before + 1


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_non_streaming_client_that_gives_up_frees_its_blocks(worker):
    tokens_before, aborts_before = counters(worker)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        with pytest.raises(TimeoutError):
            await session.post(worker.base_url + "/v1/completions", json=completion())
    stats = worker.wait_engine_idle()
    assert is_idle(stats), stats
    tokens_after, aborts_after = counters(worker)
    assert tokens_after - tokens_before < LONG
    assert aborts_after == aborts_before + 1


async def _one_request(session: aiohttp.ClientSession, url: str, index: int,
                       rng: random.Random) -> str:
    """Request `index` of the mix; returns its kind: ok, disconnected, timed-out or rejected."""
    words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(
        rng.randint(1, 60)))
    prompt = ("Shared system prompt for every request of the session. " if index % 2 else "")
    prompt += words
    kind = index % 10
    if kind == 7:  # a streaming client that leaves after the first event
        async with session.post(url + "/v1/completions",
                                json=completion(prompt, 300, stream=True)) as response:
            assert response.status == 200
            await response.content.readline()
        return "disconnected"
    if kind == 8:  # a client that times out while waiting for a whole answer
        try:
            async with session.post(url + "/v1/completions", json=completion(prompt, 300),
                                    timeout=aiohttp.ClientTimeout(total=0.05)) as response:
                await response.read()
        except TimeoutError:
            return "timed-out"
        return "ok"
    if kind == 9:  # bad input, three ways
        bad = [json.dumps(completion(prompt, -1)), json.dumps(completion("x " * 3000, 2)),
               "{not json"][index % 3]
        async with session.post(url + "/v1/completions", data=bad) as response:
            assert response.status == 400, await response.text()
        return "rejected"
    stream = index % 3 == 0
    if index % 2:
        body = {"model": MODEL_NAME, "max_tokens": rng.randint(1, 3), "stream": stream,
                "messages": [{"role": "user", "content": prompt}]}
        path = "/v1/chat/completions"
    else:
        body = completion(prompt, rng.randint(1, 3), stream=stream)
        path = "/v1/completions"
    async with session.post(url + path, json=body) as response:
        assert response.status == 200, await response.text()
        payload = await response.read()
    if stream:
        assert payload.endswith(b"data: [DONE]\n\n")
    return "ok"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_no_block_leak_after_a_thousand_mixed_requests(worker):
    rng = random.Random(7)
    limit = asyncio.Semaphore(16)
    kinds: list[str] = []

    async def run(session, index):
        async with limit:
            kinds.append(await _one_request(session, worker.base_url, index, rng))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(run(session, index) for index in range(1000)))
    assert len(kinds) == 1000
    assert kinds.count("rejected") == 100 and kinds.count("disconnected") == 100
    stats = worker.wait_engine_idle()
    assert is_idle(stats), stats
    # ...and the worker still serves.
    async with aiohttp.ClientSession() as session:
        response = await session.post(worker.base_url + "/v1/completions",
                                      json=completion(max_tokens=2))
        assert (await response.json())["usage"]["completion_tokens"] == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigterm_drains_in_flight_requests_then_exits(tmp_path_factory):
    worker = WorkerProcess(tiny_model_dir(tmp_path_factory), "--drain-timeout", "60",
                           log_path=tmp_path_factory.mktemp("logs") / "drain.log")
    try:
        worker.wait_ready()
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                worker.base_url + "/v1/completions",
                json=completion(max_tokens=600, stream=True,
                                stream_options={"include_usage": True}))
            first = await response.content.readline()
            assert first.startswith(b"data: ")
            worker.terminate()
            for _ in range(100):
                if worker.get_status("/ready") == 503:
                    break
                await asyncio.sleep(0.05)
            assert worker.get_status("/ready") == 503
            assert worker.get_status("/health") == 200
            refused = await session.post(worker.base_url + "/v1/completions",
                                         json=completion(max_tokens=1))
            assert refused.status == 503
            assert (await refused.json())["error"]["type"] == "service_unavailable"
            events = [first] + [line async for line in response.content if line.strip()]
        assert events[-1] == b"data: [DONE]\n"
        usage = json.loads(events[-2].removeprefix(b"data: "))["usage"]
        assert usage["completion_tokens"] == 600
        assert worker.process.wait(timeout=60) == 0
    finally:
        worker.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_drain_is_bounded_by_the_drain_timeout(tmp_path_factory):
    worker = WorkerProcess(tiny_model_dir(tmp_path_factory), "--drain-timeout", "0.2",
                           log_path=tmp_path_factory.mktemp("logs") / "drain-timeout.log")
    try:
        worker.wait_ready()
        async with aiohttp.ClientSession() as session:
            # Far more tokens than can be generated within the 0.2-second drain.
            response = await session.post(worker.base_url + "/v1/completions",
                                          json=completion(max_tokens=2000, stream=True))
            await response.content.readline()
            worker.terminate()
            lines = []
            with contextlib.suppress(aiohttp.ClientPayloadError):
                lines += [line async for line in response.content]
        assert b"data: [DONE]\n" not in lines  # cut off, not finished
        assert worker.process.wait(timeout=60) == 0
        assert "drain timeout: cutting off 1 request(s)" in worker.log()
    finally:
        worker.stop()


def test_a_model_directory_that_is_not_there_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pdserve", "worker", "--model",
                           str(tmp_path / "missing"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "has no config.json" in done.stderr and "Traceback" not in done.stderr
