"""Conditional disaggregation through real processes (router, prefill and decode workers, the
tiny model): until a prefill has been measured the threshold sends long prompts to the prefill
tier; then an idle decode worker prefills them itself; one streaming to other clients keeps
long prompts until their prefills take its budget of its time (router/disagg_policy.py), then
hands the next ones to the prefill tier. The answers are the same either way."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from e2e.local_processes import http_get, metric_by_label, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STORY = ("the dragon sat by the sea and watched ships sail past the old lighthouse while "
         "children ran along the shore")
WORDS = STORY.split()


LONG_PROMPTS = 60  # of 500 words: more than 5% of 10 s of the tiny model's prefill time


def long_prompt(seed: int, words: int = 200) -> str:
    return f"{seed}: " + " ".join(WORDS[(seed * 7 + j) % len(WORDS)] for j in range(words))


def decisions(url: str) -> dict[str, float]:
    return metric_by_label(url, "pdserve_router_disaggregation_total", "reason")


async def complete(session: aiohttp.ClientSession, url: str, prompt: str,
                   max_tokens: int = 4) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["choices"][0]["text"]


def test_idle_decode_prefills_itself_busy_decode_hands_off(tmp_path):
    model = str(init_model(tmp_path / "tiny"))
    prefill, decode = worker("prefill", model, tmp_path), worker("decode", model, tmp_path)
    with running(prefill, decode):
        gateway = router([prefill], [decode], tmp_path, "--disaggregation", "conditional",
                         "--short-prompt-threshold", "8", "--resolve-interval", "0.2")
        with running(gateway):
            wait_for_tiers(gateway)
            asyncio.run(scenario(gateway.url, decode.url))


async def scenario(url: str, decode_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        first = await complete(session, url, long_prompt(0))
        assert decisions(url)["handoff"] == 1  # nothing measured yet: the threshold
        assert await complete(session, url, long_prompt(1))
        assert decisions(url)["local_cheaper"] == 1  # the decode worker was idle
        again = await complete(session, url, long_prompt(0))  # cached there now, same answer
        assert again == first

        # Streams running on the decode worker: a long prompt would stall them
        streams = [asyncio.create_task(complete(session, url, f"story {i}", 1500))
                   for i in range(3)]
        for _ in range(100):  # until the router's /load poll has seen them run
            load = json.loads(http_get(decode_url + "/load")[1])
            if load["num_running"] >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # the router polls /load every 0.2 s (--resolve-interval)
        assert not any(stream.done() for stream in streams)
        before = decisions(url)
        for seed in range(3, 3 + LONG_PROMPTS):  # beyond the budget: some go to the prefill tier
            await complete(session, url, long_prompt(seed, words=500), max_tokens=1)
        assert not any(stream.done() for stream in streams)
        after = decisions(url)
        assert after["local_cheaper"] > before["local_cheaper"]  # within the budget
        assert after["handoff"] > before["handoff"]  # beyond it
        for stream in streams:  # the client leaves: the workers abort them
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
