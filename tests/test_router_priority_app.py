"""The router's priority queues over HTTP, against a fake decode worker that holds each request
until the test lets it finish: under overload high-class requests reach the worker before
queued low-class ones, low-class ones are shed with 429 + Retry-After, a high-class request is
never shed while low-class ones queue, and without classes nothing queues at the router."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from pdserve.router.app import build_app
from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet
from pdserve.router.priority import PriorityConfig
from pdserve.router.priority_queues import worker_slots

MAX_NUM_SEQS = 2
SLOTS = worker_slots(MAX_NUM_SEQS)  # the router's slots for this worker: 3


class FakeDecode:
    """A decode worker with max_num_seqs=MAX_NUM_SEQS; records each request's tag and priority on
    arrival and answers it when the test calls finish()."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []
        self.done = asyncio.Semaphore(0)
        self.app = web.Application()
        self.app.router.add_get("/load", self.load)
        self.app.router.add_post("/v1/completions", self.complete)

    async def load(self, _: web.Request) -> web.Response:
        return web.json_response({"ready": True, "max_num_seqs": MAX_NUM_SEQS, "num_running": 0})

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert "priority_class" not in body  # the router's field, not the worker's
        self.arrivals.append((body["prompt"], request.headers.get("x-pdserve-priority", "")))
        await self.done.acquire()
        return web.json_response({"choices": [{"text": "ok"}]})

    def finish(self, n: int = 1) -> None:
        for _ in range(n):
            self.done.release()


async def start(classes: dict | None):
    worker = FakeDecode()
    server = TestServer(worker.app)
    await server.start_server()
    config = RouterConfig("tiny", priority=(PriorityConfig.from_json(json.dumps(classes))
                                            if classes else None))
    decode = WorkerSet("decode", [f"{server.host}:{server.port}"])
    app = build_app(config, WorkerSet("prefill"), decode)
    client = TestClient(TestServer(app))
    await client.start_server()
    for _ in range(100):  # the first /load poll (it also sets the slots)
        if (await client.get("/ready")).status == 200:
            break
        await asyncio.sleep(0.05)
    return worker, server, client


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


CLASSES = {"classes": [{"name": "high", "priority": 0, "maxQueue": 1},
                       {"name": "low", "priority": 10, "maxQueue": 3}],
           "starvationGuardEvery": 100}


async def test_overload_high_first_low_shed_with_retry_after_high_never_shed():
    worker, server, client = await start(CLASSES)

    async def post(tag: str, cls: str | None, header: bool = True):
        headers = {"x-pdserve-priority-class": cls} if cls and header else {}
        body = {"model": "tiny", "prompt": tag, "max_tokens": 1}
        if cls and not header:
            body["priority_class"] = cls
        resp = await client.post("/v1/completions", json=body, headers=headers)
        return tag, resp.status, resp.headers.get("Retry-After"), await resp.json()

    try:
        busy = [asyncio.create_task(post(f"busy{i}", None)) for i in range(SLOTS)]  # default: low
        await until(lambda: len(worker.arrivals) == SLOTS)
        queued = []
        for i in range(3):  # fills the low queue (maxQueue 3)
            queued.append(asyncio.create_task(post(f"low{i}", "low")))
            await asyncio.sleep(0.02)
        shed = await post("low-over", "low")  # the low queue is full: shed at once
        assert shed[1] == 429 and int(shed[2]) >= 1
        assert shed[3]["error"]["type"] == "rate_limit_exceeded"
        assert "queue for priority class 'low' is full" in shed[3]["error"]["message"]

        # three high requests: the first queues (maxQueue 1), the next two take the places of
        # the newest queued low requests, which are answered 429 instead; no high one is shed
        high = [asyncio.create_task(post(f"high{i}", "high", header=i % 2 == 0))
                for i in range(3)]
        await asyncio.sleep(0.1)
        evicted = [await queued[2], await queued[1]]
        assert [(tag, status) for tag, status, _, _ in evicted] == [("low2", 429), ("low1", 429)]
        assert all(int(retry) >= 1 for _, _, retry, _ in evicted)

        worker.finish(2)  # two slots free up: both go to high requests, not to low0
        await until(lambda: len(worker.arrivals) == SLOTS + 2)
        worker.finish(2)
        await until(lambda: len(worker.arrivals) == SLOTS + 4)
        worker.finish(10)
        results = await asyncio.gather(*busy, *high, queued[0])
        assert all(status == 200 for _, status, _, _ in results)
        order = [tag for tag, _ in worker.arrivals]
        assert sorted(order[:SLOTS]) == [f"busy{i}" for i in range(SLOTS)]
        assert sorted(order[SLOTS:SLOTS + 3]) == ["high0", "high1", "high2"]
        assert order[SLOTS + 3] == "low0"
        assert {tag: prio for tag, prio in worker.arrivals}["high1"] == "0"  # the class's value
        assert {tag: prio for tag, prio in worker.arrivals}["low0"] == "10"

        metrics = await (await client.get("/metrics")).text()
        sheds = {(s.labels["priority_class"], s.labels["reason"]): s.value
                 for family in text_string_to_metric_families(metrics)
                 if family.name == "pdserve_router_priority_shed"
                 for s in family.samples if s.name.endswith("_total")}
        assert sheds == {("low", "queue_full"): 1.0, ("low", "evicted"): 2.0}
        unknown = await client.post("/v1/completions", json={"prompt": "x"},
                                    headers={"x-pdserve-priority-class": "gold"})
        assert unknown.status == 400
        assert "unknown priority class 'gold'" in (await unknown.json())["error"]["message"]
    finally:
        worker.finish(100)
        await client.close()
        await server.close()


async def test_without_classes_nothing_queues_at_the_router():
    worker, server, client = await start(None)
    try:
        tasks = [asyncio.create_task(client.post("/v1/completions", json={"prompt": f"r{i}"}))
                 for i in range(3 * SLOTS)]
        await until(lambda: len(worker.arrivals) == 3 * SLOTS)  # beyond the slots: no queue
        worker.finish(3 * SLOTS)
        assert all(r.status == 200 for r in await asyncio.gather(*tasks))
    finally:
        worker.finish(100)
        await client.close()
        await server.close()
