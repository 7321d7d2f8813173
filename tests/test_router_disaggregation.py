"""pdserve_router_disaggregation_total: one count per answered request, by how its prompt
reached decode, against fake workers (their /load and answers are all the router sees)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from pdserve.router.app import build_app
from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet

LONG = "a long prompt " * 20  # ~70 tokens at 4 characters a token
SHORT = "hi"


def fake_worker(identity: str, prefill_status: int = 200) -> web.Application:
    async def load(_: web.Request) -> web.Response:
        return web.json_response({"ready": True, "kv_port": 9, "identity": identity})

    async def complete(_: web.Request) -> web.Response:
        return web.json_response({"choices": [{"text": "x"}]}, status=prefill_status)

    app = web.Application()
    app.router.add_get("/load", load)
    app.router.add_post("/v1/completions", complete)
    return app


async def decisions(client: TestClient) -> dict[tuple[str, str], float]:
    text = await (await client.get("/metrics")).text()
    return {(s.labels["path"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "pdserve_router_disaggregation"
            for s in family.samples if s.name.endswith("_total") and s.value}


async def router_over(prefill: list[web.Application], decode: web.Application):
    servers = [TestServer(app) for app in [*prefill, decode]]
    for server in servers:
        await server.start_server()
    addresses = [f"{s.host}:{s.port}" for s in servers]
    app = build_app(RouterConfig("tiny"), WorkerSet("prefill", addresses[:-1]),
                    WorkerSet("decode", addresses[-1:]))
    client = TestClient(TestServer(app))
    await client.start_server()
    for _ in range(100):  # the first /load poll
        if (await client.get("/ready")).status == 200:
            break
        await asyncio.sleep(0.05)
    return client, servers


@pytest.mark.parametrize(("prefill", "prompt", "expected"), [
    ([fake_worker("m")], LONG, ("prefill_decode", "handoff")),
    ([fake_worker("m")], SHORT, ("decode_only", "short_prompt")),
    ([fake_worker("other")], LONG, ("decode_only", "no_prefill_peer")),
    ([fake_worker("m", 502), fake_worker("m", 502)], LONG, ("fallback", "prefill_failed")),
    ([], LONG, ("decode_only", "no_kv_target")),
])
async def test_each_request_counts_its_path_once(prefill, prompt, expected):
    client, servers = await router_over(prefill, fake_worker("m"))
    try:
        for _ in range(3):
            resp = await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt})
            assert resp.status == 200
        assert await decisions(client) == {expected: 3.0}
    finally:
        await client.close()
        for server in servers:
            await server.close()
