"""Decode admission before prefill (router/admission.py) and what the router does with a
prefill worker's answer: the KV redirected to another decode worker, or no decode worker with
room (no second prefill). Pure logic first, then the router against fake workers."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from pdserve.router.admission import (
    Claim,
    blocks_for,
    candidates,
    has_room,
    kv_targets,
    with_room,
)
from pdserve.router.app import build_app
from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet
from pdserve.router.routing import WorkerLoad

LONG = "a long prompt " * 20  # 70 tokens at 4 characters a token: 5 blocks of 16


def load(free: int | None, claimed: int = 0) -> WorkerLoad:
    return WorkerLoad(free_blocks=free, block_size=16, claimed_blocks=claimed)


def test_room_is_free_blocks_less_the_routers_claims():
    assert blocks_for(70, 16) == 5 and blocks_for(64, 16) == 4 and blocks_for(5, 0) == 0
    assert has_room(load(5), 70) and not has_room(load(4), 70)
    assert not has_room(load(8, claimed=4), 70)
    assert has_room(load(None), 10_000)  # a worker that reports no blocks is not judged
    assert set(with_room({"a": load(9), "b": load(2), "c": load(None)}, 70)) == {"a", "c"}


def test_without_room_anywhere_the_shortest_backlog_is_the_candidate():
    loads = {"a": load(4, claimed=30), "b": load(2, claimed=10), "c": load(1, claimed=9)}
    assert set(candidates(loads, 70)) == {"b", "c"}  # 8 blocks short each
    assert set(candidates({**loads, "d": load(40)}, 70)) == {"d"}
    assert candidates({}, 70) == {}


def test_targets_are_the_choice_first_then_most_room_first():
    loads = {"a": load(1), "b": load(50), "c": load(9), "d": load(3, claimed=1)}
    assert kv_targets("a", loads, 70) == ["a", "b", "c", "d"]
    assert kv_targets("c", loads, 70) == ["c", "b", "d", "a"]


def test_a_claim_counts_until_released_and_follows_the_kv():
    first, second = load(10), load(10)
    claim = Claim(first, 70)
    assert first.claimed_blocks == 5
    claim.move(second)
    assert (first.claimed_blocks, second.claimed_blocks) == (0, 5)
    claim.release()
    claim.release()  # twice is harmless (the decode answer, then the request's end)
    assert second.claimed_blocks == 0


class FakeDecode:
    def __init__(self, free_blocks: int, kv_port: int) -> None:
        self.free_blocks, self.kv_port = free_blocks, kv_port
        self.transfers: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/load", self.load)
        self.app.router.add_post("/v1/completions", self.complete)

    async def load(self, _: web.Request) -> web.Response:
        return web.json_response({"ready": True, "kv_port": self.kv_port, "identity": "m",
                                  "num_free_blocks": self.free_blocks, "block_size": 16})

    async def complete(self, request: web.Request) -> web.Response:
        self.transfers.append(request.headers.get("x-pdserve-transfer-id"))
        return web.json_response({"choices": [{"text": "x"}]})


class FakePrefill:
    """Takes the KV to the first target in `accepting`, or answers that none had room."""

    def __init__(self, accepting: set[str]) -> None:
        self.accepting = accepting
        self.targets: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/load", self.load)
        self.app.router.add_post("/v1/completions", self.complete)

    async def load(self, _: web.Request) -> web.Response:
        return web.json_response({"ready": True, "identity": "m"})

    async def complete(self, request: web.Request) -> web.Response:
        self.targets.append(request.headers["x-pdserve-kv-targets"])
        for target in request.headers["x-pdserve-kv-targets"].split(","):
            if target in self.accepting:
                return web.json_response({"choices": [{"text": "x"}]},
                                         headers={"x-pdserve-kv-receiver": target})
        return web.json_response({"error": {"message": "full"}}, status=503,
                                 headers={"x-pdserve-kv-refused": "no-room"})


async def metrics_of(client: TestClient) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("pdserve_router_") and s.name.endswith("_total")}


@pytest.fixture
async def stack():
    started = []

    async def start(prefills, decodes):
        servers = [TestServer(w.app) for w in [*prefills, *decodes]]
        for server in servers:
            await server.start_server()
            started.append(server)
        addresses = [f"{s.host}:{s.port}" for s in servers]
        app = build_app(RouterConfig("tiny", short_prompt_threshold=8),
                        WorkerSet("prefill", addresses[:len(prefills)]),
                        WorkerSet("decode", addresses[len(prefills):]))
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        for _ in range(100):  # the first /load poll
            ready = await (await client.get("/ready")).json()
            if ready["decode"] == len(decodes) and ready["prefill"] == len(prefills):
                break
            await asyncio.sleep(0.05)
        return client

    yield start
    for item in reversed(started):
        await item.close()


async def test_the_decode_worker_with_room_comes_first(stack):
    full, roomy = FakeDecode(2, 7001), FakeDecode(100, 7002)
    prefill = FakePrefill({"127.0.0.1:7001", "127.0.0.1:7002"})
    client = await stack([prefill], [full, roomy])
    resp = await client.post("/v1/completions", json={"model": "tiny", "prompt": LONG})
    assert resp.status == 200
    assert prefill.targets == ["127.0.0.1:7002,127.0.0.1:7001"]
    assert len(roomy.transfers) == 1 and not full.transfers


async def test_kv_redirected_by_the_prefill_worker_goes_with_its_decode_request(stack):
    stale, other = FakeDecode(100, 7001), FakeDecode(3, 7002)  # 7001 is full in truth
    prefill = FakePrefill({"127.0.0.1:7002"})
    client = await stack([prefill], [stale, other])
    resp = await client.post("/v1/completions", json={"model": "tiny", "prompt": LONG})
    assert resp.status == 200
    assert len(other.transfers) == 1 and not stale.transfers
    counts = await metrics_of(client)
    assert counts["pdserve_router_kv_redirects_total[]"] == 1
    assert counts["pdserve_router_disaggregation_total[('path', 'prefill_decode'), "
                  "('reason', 'handoff')]"] == 1


async def test_no_decode_room_anywhere_is_not_prefilled_again(stack):
    prefills = [FakePrefill(set()), FakePrefill(set())]
    decode = FakeDecode(100, 7001)
    client = await stack(prefills, [decode])
    resp = await client.post("/v1/completions", json={"model": "tiny", "prompt": LONG})
    assert resp.status == 200  # decode follows its --kv-fallback
    assert sum(len(p.targets) for p in prefills) == 1
    counts = await metrics_of(client)
    assert counts["pdserve_router_prefill_retries_total[]"] == 0
    assert counts["pdserve_router_disaggregation_total[('path', 'fallback'), "
                  "('reason', 'decode_full')]"] == 1
