"""KV compression through the real path: router -> prefill (snapkv) -> decode, as processes, against
one `both` worker with the same compression.

Greedy outputs must be token-identical, with and without the per-request opt-out; the prefill
worker hands over fewer KV bytes for compressed prompts, and says so in its metrics.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from e2e.local_processes import engine_debug, metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.compression.config import OPT_OUT_HEADER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SNAPKV = ["--kv-compression-method", "snapkv", "--kv-compression-ratio", "0.5",
          "--kv-compression-window-tokens", "16"]
STORY = ("the dragon sat by the sea and watched ships sail past the old lighthouse while "
         "children ran along the shore collecting shells and telling stories of pirates")
WORDS = STORY.split()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model = str(init_model(tmp_path_factory.mktemp("model") / "tiny"))
    logs = tmp_path_factory.mktemp("logs")
    prefill, decode, both = (worker("prefill", model, logs, *SNAPKV),
                             worker("decode", model, logs), worker("both", model, logs, *SNAPKV))
    with running(prefill, decode, both):
        gateway = router([prefill], [decode], logs, "--short-prompt-threshold", "8")
        with running(gateway):
            wait_for_tiers(gateway)
            yield {"prefill": prefill, "decode": decode, "both": both, "router": gateway}


def prompt(i: int) -> str:
    length = [12, 40, 90, 160, 240][i % 5] + i
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(length))


async def complete(session, url, body, headers=None):
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def tokens(response):
    return response["choices"][0]["logprobs"]["tokens"]


async def test_compressed_handoff_is_token_identical_to_one_compressing_worker(stack):
    bodies = [{"model": "tiny", "prompt": prompt(i), "max_tokens": 4 + (i * 5) % 20,
               "temperature": 0, "logprobs": 1, "ignore_eos": True} for i in range(32)]
    async with aiohttp.ClientSession() as session:
        routed = await asyncio.gather(*(complete(session, stack["router"].url, b)
                                        for b in bodies))
        local = await asyncio.gather(*(complete(session, stack["both"].url, b) for b in bodies))
    for got, want in zip(routed, local, strict=True):
        assert tokens(got) == tokens(want)
    assert metric(stack["prefill"].url, "pdserve_kv_compressed_handoffs_total") > 0
    assert metric(stack["decode"].url, "pdserve_kv_compressed_handoffs_total") > 0
    assert metric(stack["prefill"].url, "pdserve_kv_compression_pruned_tokens_total") > 0
    assert metric(stack["prefill"].url, "pdserve_kv_compression_saved_bytes_total") > 0
    assert metric(stack["prefill"].url, "pdserve_kv_transfer_failures_total") == 0


async def test_opting_out_moves_the_whole_prompt_and_changes_nothing_else(stack):
    decode = stack["decode"]
    text = prompt(3) + " and then the tide came in"  # a prompt no earlier test sent
    body = {"model": "tiny", "prompt": text, "max_tokens": 8, "temperature": 0,
            "logprobs": 1, "ignore_eos": True}
    moved = {}
    async with aiohttp.ClientSession() as session:
        for choice, headers, request in (
                ("compressed", None, body),
                ("header", {OPT_OUT_HEADER: "none"}, {**body, "prompt": "once " + text}),
                ("body", None, {**body, "prompt": "twice " + text,
                                "kv_compression": "none"})):
            before = metric(decode.url, "pdserve_kv_transfer_bytes_total")
            got = await complete(session, stack["router"].url, request, headers)
            want = await complete(session, stack["both"].url, request, headers)
            assert tokens(got) == tokens(want)
            moved[choice] = metric(decode.url, "pdserve_kv_transfer_bytes_total") - before
    # Prompts the decode worker holds no block of: the whole prompt, or half its KV, travels.
    assert moved["header"] == moved["body"] > 0
    assert moved["compressed"] <= 0.6 * moved["header"]


def test_no_blocks_leak(stack):
    for name in ("prefill", "decode", "both"):
        stats = engine_debug(stack[name])
        assert stats["num_running"] == 0 and stats["num_waiting"] == 0
        assert stats["num_free_blocks"] == stats["num_blocks"], (name, stats)
