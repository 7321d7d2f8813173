"""Overload must not amplify, with real processes: a decode worker with very few KV blocks beside
a roomy one behind one router. Concurrent long prompts are all answered with a `both` worker's
tokens, the prefill tier computes each prompt once (the full decode worker passes the KV on
instead of the prompt being prefilled again), and no KV block stays in use."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from test_disagg_e2e import WORDS
from test_disagg_failures import wait_all_free

from e2e.local_processes import http_get, metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# ~230 tokens (15 blocks of 16) each, 64 more generated: one request fits the small decode
# worker's 28 blocks, two do not; the router, estimating 4 characters a token where the tiny
# tokenizer makes ~3, believes two fit and sends them there (round-robin), so one is refused.
NUM_PROMPTS = 8
SMALL_KV_BLOCKS = "28"


def long_prompt(i: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(120))


def body(i: int) -> dict:
    return {"model": "tiny", "prompt": long_prompt(i), "max_tokens": 64, "temperature": 0,
            "ignore_eos": True}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model = str(init_model(tmp_path_factory.mktemp("model") / "tiny"))
    logs = tmp_path_factory.mktemp("logs")
    prefill = worker("prefill", model, logs)
    small = worker("decode", model, logs, "--num-kv-blocks", SMALL_KV_BLOCKS)
    roomy = worker("decode", model, logs)
    both = worker("both", model, logs)
    with running(prefill, small, roomy, both):
        gateway = router([prefill], [small, roomy], logs, "--short-prompt-threshold", "8",
                         "--routing-policy", "round-robin")
        with running(gateway):
            wait_for_tiers(gateway)
            yield {"prefill": prefill, "small": small, "roomy": roomy, "both": both,
                   "router": gateway}


async def complete(session: aiohttp.ClientSession, url: str, payload: dict) -> dict:
    async with session.post(url + "/v1/completions", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_full_decode_worker_passes_the_kv_on_and_nothing_is_prefilled_twice(stack):
    gateway, prefill = stack["router"], stack["prefill"]
    async with aiohttp.ClientSession() as session:
        got = await asyncio.gather(*(complete(session, gateway.url, body(i))
                                     for i in range(NUM_PROMPTS)))
        want = [await complete(session, stack["both"].url, body(i)) for i in range(NUM_PROMPTS)]
    assert [g["choices"][0]["text"] for g in got] == [w["choices"][0]["text"] for w in want]
    prompt_tokens = sum(w["usage"]["prompt_tokens"] for w in want)
    assert metric(prefill.url, "pdserve_prompt_tokens_total") == prompt_tokens  # each once
    assert metric(prefill.url, "pdserve_kv_wasted_prefill_tokens_total") == 0
    assert metric(gateway.url, "pdserve_router_prefill_retries_total") == 0
    assert metric(gateway.url, "pdserve_router_kv_redirects_total") >= 1
    for decode in (stack["small"], stack["roomy"]):
        assert metric(decode.url, "pdserve_kv_transfer_fallbacks_total") == 0  # no recompute
        await wait_all_free(decode)
    await wait_all_free(prefill)


async def test_kv_no_decode_worker_has_room_for_is_answered_no_room_and_counted_wasted(stack):
    """Straight to the prefill worker: a prompt larger than the small decode worker's whole
    pool queues at it for room (8 s of its --kv-timeout of 10 s), then 503 says why."""
    prefill, small = stack["prefill"], stack["small"]
    kv_port = json.loads(http_get(small.url + "/load")[1])["kv_port"]
    wasted = metric(prefill.url, "pdserve_kv_wasted_prefill_tokens_total")
    words = ["zebra", *(WORDS[j % len(WORDS)] for j in range(260))]  # no prefix cached here
    huge = {**body(0), "prompt": " ".join(words)}
    async with aiohttp.ClientSession() as session, session.post(
            prefill.url + "/v1/completions", json=huge,
            headers={"x-pdserve-transfer-id": "too-big",
                     "x-pdserve-kv-targets": f"127.0.0.1:{kv_port}"}) as resp:
        assert resp.status == 503, await resp.text()
        assert resp.headers["x-pdserve-kv-refused"] == "no-room"
        assert "no free KV blocks" in (await resp.json())["error"]["message"]
    assert metric(prefill.url, "pdserve_kv_wasted_prefill_tokens_total") > wasted + 28 * 16
    await wait_all_free(small)
    await wait_all_free(prefill)
