"""The router's aiohttp app: OpenAI endpoints, health, readiness, metrics, discovery loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pdserve.router.config import RouterConfig
from pdserve.router.discovery import WorkerSet
from pdserve.router.metrics import RouterMetrics
from pdserve.router.proxy import Proxy

log = logging.getLogger(__name__)
POLL_INTERVAL = 1.0
PROXY: web.AppKey[Proxy] = web.AppKey("pdserve_router_proxy", Proxy)


def build_app(config: RouterConfig, prefill: WorkerSet, decode: WorkerSet,
              resolve_interval: float = 5.0) -> web.Application:
    if not decode.configured:
        raise ValueError("the router needs decode workers: --decode-endpoints or --decode-service")
    metrics = RouterMetrics(config.served_model_name)
    proxy = Proxy(config, prefill, decode, metrics)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[PROXY] = proxy

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        ok = bool(decode.healthy_loads())
        return web.json_response({"ready": ok, "prefill": len(prefill.healthy_loads()),
                                  "decode": len(decode.healthy_loads())},
                                 status=200 if ok else 503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": config.served_model_name, "object": "model", "created": int(time.time()),
            "owned_by": "pdserve"}]})

    async def session_and_discovery(app: web.Application) -> AsyncIterator[None]:
        proxy.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        task = asyncio.create_task(discovery_loop(proxy.session, [prefill, decode],
                                                  resolve_interval, proxy.update_capacity))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.session.close()

    app.cleanup_ctx.append(session_and_discovery)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", proxy.handle)
    app.router.add_post("/v1/chat/completions", proxy.handle)
    return app


async def discovery_loop(session: aiohttp.ClientSession, tiers: list[WorkerSet],
                         resolve_interval: float,
                         after_poll: Callable[[], None] | None = None) -> None:
    last_resolve = -float("inf")
    while True:
        if time.monotonic() - last_resolve >= resolve_interval:
            last_resolve = time.monotonic()
            await asyncio.gather(*(tier.resolve() for tier in tiers))
        try:
            await asyncio.gather(*(tier.poll(session) for tier in tiers))
        except Exception:  # a poll must never end discovery
            log.exception("worker poll failed")
        if after_poll is not None:
            after_poll()
        await asyncio.sleep(POLL_INTERVAL)
