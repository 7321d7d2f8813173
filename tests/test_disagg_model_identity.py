"""Only workers of one model exchange KV, with real processes and two tiny checkpoints of the
same shape (one KV layout) but different weights, as during a rolling update from one model to
the next: the router pairs prefill only with decode workers of its model (the identity digest
of `/load`), so a request served by the other model's decode worker is prefilled there; every
answer is one model's own greedy output, never a mix; a push across models is refused at the
handshake, naming what differs, before any block is written."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from test_disagg_e2e import prompt

from e2e.local_processes import http_get, metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import init_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    old = str(init_model(models / "old", tie_word_embeddings=False))
    new = str(init_model(models / "new", tie_word_embeddings=True))
    logs = tmp_path_factory.mktemp("logs")
    prefill_old = worker("prefill", old, logs)
    decode_old, decode_new = worker("decode", old, logs), worker("decode", new, logs)
    with running(prefill_old, decode_old, decode_new):
        gateway = router([prefill_old], [decode_old, decode_new], logs,
                         "--short-prompt-threshold", "0", "--routing-policy", "round-robin")
        with running(gateway):
            wait_for_tiers(gateway)
            yield {"prefill": prefill_old, "old": decode_old, "new": decode_new,
                   "router": gateway}


def _load(process) -> dict:
    return json.loads(http_get(process.url + "/load")[1])


async def _complete(session, url, text, headers=None):
    body = {"model": "tiny", "prompt": text, "max_tokens": 8, "temperature": 0}
    async with session.post(url + "/v1/completions", json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_answers_are_one_models_own_and_never_a_mix(stack):
    assert _load(stack["prefill"])["identity"] == _load(stack["old"])["identity"]
    assert _load(stack["old"])["identity"] != _load(stack["new"])["identity"]
    prompts = [prompt(i) for i in range(24)]
    async with aiohttp.ClientSession() as session:
        # Asked directly, a decode worker prefills itself: each model's reference output.
        references = {}
        for name in ("old", "new"):
            answers = await asyncio.gather(*(_complete(session, stack[name].url, p)
                                             for p in prompts))
            references[name] = [body["choices"][0]["text"] for _, body in answers]
        assert references["old"] != references["new"]
        pushed = metric(stack["prefill"].url, "pdserve_kv_transfer_bytes_total")
        answers = await asyncio.gather(*(_complete(session, stack["router"].url, p)
                                         for p in prompts))
    assert all(status == 200 for status, _ in answers), answers
    for i, (_, body) in enumerate(answers):
        assert body["choices"][0]["text"] in (references["old"][i], references["new"][i]), i
    # Round-robin sends half to each decode worker: the old half through the prefill tier,
    # the new half straight to decode (no prefill worker of its model).
    assert metric(stack["prefill"].url, "pdserve_kv_transfer_bytes_total") > pushed
    _, page = http_get(stack["router"].url + "/metrics")
    assert 'pdserve_router_disaggregation_total{path="decode_only",reason="no_prefill_peer"}' \
        in page
    assert metric(stack["new"].url, "pdserve_kv_transfer_failures_total") == 0


async def test_a_push_to_another_models_decode_worker_is_refused(stack):
    target = f"127.0.0.1:{_load(stack['new'])['kv_port']}"
    async with aiohttp.ClientSession() as session:
        status, body = await _complete(session, stack["prefill"].url, prompt(40), {
            "x-pdserve-transfer-id": "cross-model", "x-pdserve-kv-target": target})
    assert status == 502
    assert "model mismatch" in body["error"]["message"]
    assert "weights: decode" in body["error"]["message"]
    stats = json.loads(http_get(stack["new"].url + "/debug/engine")[1])
    assert stats["num_free_blocks"] == stats["num_blocks"]  # nothing reserved or written


async def test_a_rolling_update_under_load_answers_with_one_models_output(stack, tmp_path):
    """Old prefill and decode workers replaced by new ones of the other model while clients
    keep sending: every request answered 200 with one model's own greedy output."""
    old_model, new_model = stack["old"].args[stack["old"].args.index("--model") + 1], \
        stack["new"].args[stack["new"].args.index("--model") + 1]
    old = [worker("prefill", old_model, tmp_path), worker("decode", old_model, tmp_path)]
    new = [worker("prefill", new_model, tmp_path), worker("decode", new_model, tmp_path)]
    prompts = [prompt(i) for i in range(12)]
    async with aiohttp.ClientSession() as session:
        references = {}
        for name in ("old", "new"):
            answers = await asyncio.gather(*(_complete(session, stack[name].url, p)
                                             for p in prompts))
            references[name] = [body["choices"][0]["text"] for _, body in answers]
        with running(*old):
            gateway = router([old[0], new[0]], [old[1], new[1]], tmp_path,
                             "--short-prompt-threshold", "0")
            with running(gateway):
                wait_for_tiers(gateway)
                answers: list[tuple[int, int, dict]] = []
                rolling = True

                async def client(first: int) -> None:
                    i = first
                    while rolling:
                        status, body = await _complete(session, gateway.url, prompts[i % 12])
                        answers.append((i % 12, status, body))
                        i += 4

                clients = [asyncio.create_task(client(i)) for i in range(4)]
                try:
                    await asyncio.sleep(2)
                    for process in new:  # the new ReplicaSet's pods come up ...
                        await asyncio.to_thread(process.start)
                    for process in new:
                        await asyncio.to_thread(process.wait_ready, "/ready")
                    await asyncio.sleep(2)
                    for process in old:  # ... and the old ones drain (SIGTERM) and go
                        await asyncio.to_thread(process.stop)
                    await asyncio.sleep(3)
                finally:
                    rolling = False
                    await asyncio.gather(*clients, return_exceptions=True)
                    for process in new:
                        process.stop()
    failed = [(i, status, body) for i, status, body in answers if status != 200]
    assert not failed, failed[:3]
    served = {"old": 0, "new": 0}
    for i, _, body in answers:
        text = body["choices"][0]["text"]
        assert text in (references["old"][i], references["new"][i]), (i, text)
        served["old" if text == references["old"][i] else "new"] += 1
    assert served["old"] and served["new"], served
