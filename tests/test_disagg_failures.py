"""KV handoff failures with real processes: a prefill worker killed mid-transfer, a transfer
nobody claims, and both --kv-fallback policies. No reserved block may leak."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest
from test_disagg_e2e import prompt

from e2e.local_processes import (
    engine_debug,
    http_get,
    metric,
    metric_by_label,
    router,
    running,
    wait_for_tiers,
    worker,
)
from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.disagg.kv_transfer.sender import TEST_DELAY_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
DELAY = {TEST_DELAY_ENV: "3"}


@pytest.fixture(scope="module", params=["tcp", "nixl"])
def stack(tmp_path_factory, request):
    """The whole module runs once per KV transport (the prefill workers pick it)."""
    model = str(init_model(tmp_path_factory.mktemp("model") / "tiny"))
    logs = tmp_path_factory.mktemp("logs")
    p1, p2, p3 = (worker("prefill", model, logs, "--kv-transport", request.param, env=DELAY)
                  for _ in range(3))
    d1 = worker("decode", model, logs, "--kv-timeout", "4")
    d2 = worker("decode", model, logs, "--kv-fallback", "fail")
    with running(p1, p2, p3, d1, d2):
        r1 = router([p1, p3], [d1], logs, "--short-prompt-threshold", "0")
        r2 = router([p2], [d2], logs, "--short-prompt-threshold", "0")
        with running(r1, r2):
            wait_for_tiers(r1)
            wait_for_tiers(r2)
            # d1 asked directly (no transfer header) prefills locally: the reference output.
            yield {"p1": p1, "p2": p2, "p3": p3, "d1": d1, "d2": d2, "reference": d1, "r1": r1,
                   "r2": r2}


def body(i: int) -> dict:
    return {"model": "tiny", "prompt": prompt(i), "max_tokens": 8, "temperature": 0}


async def post(url: str, payload: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            url + "/v1/completions", json=payload, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def wait_reserved(decode, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine_debug(decode)
        if stats["num_free_blocks"] < stats["num_blocks"]:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the decode worker never reserved blocks")


async def wait_all_free(decode, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine_debug(decode)
        if stats["num_free_blocks"] == stats["num_blocks"]:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"reserved KV blocks leaked: {engine_debug(decode)}")


async def test_unclaimed_transfer_is_freed_after_kv_timeout(stack):
    p1, d1 = stack["p1"], stack["d1"]
    kv_port = json.loads(http_get(d1.url + "/load")[1])["kv_port"]
    status, _ = await post(p1.url, body(50), {"x-pdserve-transfer-id": "never-claimed",
                                              "x-pdserve-kv-target": f"127.0.0.1:{kv_port}"})
    assert status == 200
    stats = engine_debug(d1)
    assert stats["num_free_blocks"] < stats["num_blocks"]  # held for the decode request
    await asyncio.sleep(4.5)
    await wait_all_free(d1)


async def serving(prefills, timeout=30.0):
    """The prefill worker with a request in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in prefills:
            if process.popen.poll() is None and engine_debug(process)["in_flight_http"]:
                return process
        await asyncio.sleep(0.05)
    raise TimeoutError("no prefill worker took the request")


async def test_client_leaving_mid_transfer_cancels_it_on_both_workers(stack):
    d1 = stack["d1"]
    failures = metric_by_label(d1.url, "pdserve_kv_transfer_failures_total", "reason")
    request = asyncio.ensure_future(post(stack["r1"].url, body(55)))
    await wait_reserved(d1)
    prefill = await serving([stack["p1"], stack["p3"]])
    request.cancel()  # the client goes away while the KV push stalls (the test hook)
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await wait_all_free(d1)
    # Freed because the push was cut (a failure), not by the KV timeout (which counts none).
    assert metric_by_label(d1.url, "pdserve_kv_transfer_failures_total", "reason") == {
        **failures, "transfer_error": failures["transfer_error"] + 1}
    for _ in range(100):
        stats = engine_debug(prefill)
        if not stats["in_flight_http"] and stats["num_free_blocks"] == stats["num_blocks"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the prefill worker kept the request: {stats}")


async def test_prefill_killed_mid_transfer_is_retried_then_recomputed(stack):
    d1, reference = stack["d1"], stack["reference"]
    failures = metric(d1.url, "pdserve_kv_transfer_failures_total")
    fallbacks = metric(d1.url, "pdserve_kv_transfer_fallbacks_total")
    request = asyncio.ensure_future(post(stack["r1"].url, body(51)))
    await wait_reserved(d1)
    first = await serving([stack["p1"], stack["p3"]])
    first.kill()  # mid-transfer: the router retries on the other prefill worker
    second = await serving([stack["p1"], stack["p3"]])
    assert second is not first
    await wait_reserved(d1)  # its transfer reserved blocks and stalls (the test hook)
    second.kill()  # no prefill worker left: the decode worker recomputes the prompt
    status, got = await request
    assert status == 200, got
    _, want = await post(reference.url, body(51))
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert metric(d1.url, "pdserve_kv_transfer_failures_total") >= failures + 1
    assert metric(d1.url, "pdserve_kv_transfer_fallbacks_total") == fallbacks + 1
    assert metric(stack["r1"].url, "pdserve_router_prefill_retries_total") >= 1
    await wait_all_free(d1)
    # Later requests succeed (the router took the dead prefill workers out).
    status, later = await post(stack["r1"].url, body(52))
    _, want = await post(reference.url, body(52))
    assert status == 200 and later["choices"][0]["text"] == want["choices"][0]["text"]
    await wait_all_free(d1)


async def test_kv_fallback_fail_answers_cleanly(stack):
    d2 = stack["d2"]
    request = asyncio.ensure_future(post(stack["r2"].url, body(53)))
    await wait_reserved(d2)
    stack["p2"].kill()
    status, got = await request
    assert status == 503 and "did not arrive" in got["error"]["message"]
    await wait_all_free(d2)
    assert engine_debug(d2)["num_running"] == 0


async def test_decode_dying_mid_stream_ends_the_stream_with_an_error(stack):
    """Runs last: it kills d2 (behind r2) while a response streams."""
    payload = {**body(54), "max_tokens": 1500, "ignore_eos": True, "stream": True}
    events = []
    async with aiohttp.ClientSession() as session, session.post(
            stack["r2"].url + "/v1/completions", json=payload) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data:"):
                events.append(line.strip())
                if len(events) == 3:
                    stack["d2"].kill()
    assert events[-1] == b"data: [DONE]"
    assert b"failed mid-stream" in events[-2]
