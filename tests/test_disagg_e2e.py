"""Router -> prefill -> decode as real processes (tiny model), against one `both` worker.

Greedy outputs must be token-identical, for many concurrent requests of mixed lengths and for
multi-turn sessions whose later turns hit the prefix cache on both sides (the decode worker then
receives fewer blocks than the prompt has). The official `openai` client works unchanged.
"""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from e2e.local_processes import (
    engine_debug,
    http_get,
    metric,
    pd_stack,
)
from pdserve.runtime.checkpoints.builtin import init_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STORY = ("the dragon sat by the sea and watched ships sail past the old lighthouse while "
         "children ran along the shore collecting shells and telling stories of pirates")
WORDS = STORY.split()
BLOCK_BYTES = 2 * 2 * 16 * 2 * 16 * 4  # tiny model: layers x (K,V) x block x kv heads x dim x f32


@pytest.fixture(scope="module", params=["tcp", "nixl"])
def stack(tmp_path_factory, request):
    """The whole module runs once per KV transport (the prefill worker picks it)."""
    model = str(init_model(tmp_path_factory.mktemp("model") / "tiny"))
    with pd_stack(model, tmp_path_factory.mktemp("logs"),
                  prefill_args=("--kv-transport", request.param)) as stack:
        yield stack


def prompt(i: int) -> str:
    length = [2, 5, 12, 30, 60, 110][i % 6] + i
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(length))


async def complete(session, url, body):
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def chat(session, url, messages):
    body = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_concurrent_mixed_lengths_are_token_identical(stack):
    bodies = [{"model": "tiny", "prompt": prompt(i), "max_tokens": 1 + (i * 7) % 24,
               "temperature": 0, "logprobs": 1} for i in range(40)]
    async with aiohttp.ClientSession() as session:
        routed = await asyncio.gather(*(complete(session, stack["router"].url, b)
                                        for b in bodies))
        local = await asyncio.gather(*(complete(session, stack["both"].url, b) for b in bodies))
    for got, want in zip(routed, local, strict=True):
        assert got["choices"][0]["logprobs"]["tokens"] == want["choices"][0]["logprobs"]["tokens"]
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
        assert got["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    assert metric(stack["decode"].url, "pdserve_kv_transfer_bytes_total") > 0
    assert metric(stack["prefill"].url, "pdserve_kv_transfer_failures_total") == 0


async def test_multi_turn_sessions_hit_both_prefix_caches(stack):
    decode, prefill = stack["decode"], stack["prefill"]
    prefill_hits = metric(prefill.url, "pdserve_prefix_cache_hits_total")

    async def session_turns(session, s):
        history = [{"role": "system", "content": f"You are agent {s}. " + prompt(s + 40)}]
        cached = []
        for turn in range(4):
            history.append({"role": "user", "content": f"step {turn}: " + prompt(turn + s)})
            got = await chat(session, stack["router"].url, history)
            want = await chat(session, stack["both"].url, history)
            assert got["choices"][0]["message"] == want["choices"][0]["message"]
            cached.append(got["usage"]["prompt_tokens_details"]["cached_tokens"])
            history.append(got["choices"][0]["message"])
        return cached

    async with aiohttp.ClientSession() as session:
        per_session = await asyncio.gather(*(session_turns(session, s) for s in range(3)))
    for cached in per_session:
        # Later turns: the decode worker already held the history's blocks.
        assert all(c > 0 for c in cached[1:]), per_session
    assert metric(prefill.url, "pdserve_prefix_cache_hits_total") > prefill_hits

    # One more turn alone: only the blocks the decode worker lacks travel.
    history = [{"role": "system", "content": "You are agent 0. " + prompt(40)},
               {"role": "user", "content": "step 0: " + prompt(0)}]
    async with aiohttp.ClientSession() as session:
        await chat(session, stack["router"].url, history)
        before = metric(decode.url, "pdserve_kv_transfer_bytes_total")
        history.append({"role": "user", "content": "and then?"})
        got = await chat(session, stack["router"].url, history)
    moved = metric(decode.url, "pdserve_kv_transfer_bytes_total") - before
    prompt_blocks = -(-got["usage"]["prompt_tokens"] // 16)
    assert 0 < moved < prompt_blocks * BLOCK_BYTES


def test_openai_client_through_router(stack):
    routed = openai.OpenAI(base_url=stack["router"].url + "/v1", api_key="unused")
    local = openai.OpenAI(base_url=stack["both"].url + "/v1", api_key="unused")
    assert [m.id for m in routed.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "Write a story about " + prompt(20)}]
    got = routed.chat.completions.create(model="tiny", messages=messages, max_tokens=16,
                                         temperature=0)
    want = local.chat.completions.create(model="tiny", messages=messages, max_tokens=16,
                                         temperature=0)
    assert got.choices[0].message.content == want.choices[0].message.content
    stream = routed.chat.completions.create(model="tiny", messages=messages, max_tokens=16,
                                            temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == want.choices[0].message.content
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    got = routed.chat.completions.create(model="tiny", messages=messages, tools=tools,
                                         max_tokens=16, temperature=0)
    want = local.chat.completions.create(model="tiny", messages=messages, tools=tools,
                                         max_tokens=16, temperature=0)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].message.tool_calls == want.choices[0].message.tool_calls
    completion = routed.completions.create(model="tiny", prompt=prompt(33), max_tokens=8,
                                           temperature=0)
    assert completion.choices[0].text == local.completions.create(
        model="tiny", prompt=prompt(33), max_tokens=8, temperature=0).choices[0].text


def test_router_metrics_and_errors(stack):
    url = stack["router"].url
    status, text = http_get(url + "/metrics")
    assert status == 200
    assert 'pdserve_time_to_first_token_seconds_count{model="tiny",role="router"}' in text
    assert "pdserve_router_requests_total" in text
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=prompt(3), max_tokens=8, temperature=-1)


async def test_client_disconnect_cancels_on_the_decode_worker(stack):
    decode = stack["decode"]
    body = {"model": "tiny", "prompt": prompt(30), "max_tokens": 1500, "temperature": 0,
            "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as session, session.post(
            stack["router"].url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        events = 0
        async for line in resp.content:
            events += line.startswith(b"data:")
            if events == 3:
                break
        assert engine_debug(decode)["num_running"] == 1
    for _ in range(100):  # the router closed its upstream stream: the decode worker aborts
        stats = engine_debug(decode)
        if stats["num_running"] == 0 and stats["num_free_blocks"] == stats["num_blocks"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the request kept running after the client left: {stats}")


def test_no_blocks_leak(stack):
    for name in ("prefill", "decode"):
        stats = engine_debug(stack[name])
        assert stats["num_running"] == 0 and stats["num_waiting"] == 0
        assert stats["num_free_blocks"] == stats["num_blocks"], (name, stats)
