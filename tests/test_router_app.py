"""The router's HTTP surface without ready workers: health, readiness, models, metrics, and
clear errors for bad input and for having no decode worker."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from e2e.local_processes import free_port
from pdserve.router.app import build_app
from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet


@pytest.fixture
async def client():
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: never ready
    app = build_app(RouterConfig("tiny"), WorkerSet("prefill"), WorkerSet("decode", [dead]))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_health_ready_models_metrics(client):
    assert (await client.get("/health")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 503 and (await ready.json())["decode"] == 0
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert "pdserve_router_requests_total" in await (await client.get("/metrics")).text()


async def test_bad_input_is_a_400(client):
    resp = await client.post("/v1/completions", data=b"{not json")
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/completions", json=["a list"])
    assert resp.status == 400
    resp = await client.post("/v1/completions", json={"prompt": "hi"},
                             headers={"x-pdserve-priority": "urgent"})
    assert resp.status == 400 and "priority" in (await resp.json())["error"]["message"]


async def test_no_decode_worker_is_a_503(client):
    resp = await client.post("/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 503
    metrics = await (await client.get("/metrics")).text()
    assert 'outcome="http_503",path="/v1/chat/completions"' in metrics


def test_router_needs_decode_workers():
    with pytest.raises(ValueError, match="needs decode workers"):
        build_app(RouterConfig("tiny"), WorkerSet("prefill"), WorkerSet("decode"))
    with pytest.raises(ValueError, match="not both"):
        WorkerSet("decode", ["a:1"], "svc:1")
