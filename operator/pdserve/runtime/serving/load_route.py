"""`GET /load` on prefill and decode workers: what the router routes by, as one small JSON.

{"ready", "role", "kv_port" (decode: where prefill workers push KV; null elsewhere),
 "identity" (the model identity's digest: the router pairs prefill and decode workers whose
 digests are equal), "num_waiting", "num_running", "kv_usage", "num_free_blocks",
 "num_blocks", "block_size" (tokens a KV block holds), "max_num_seqs"}
"""

from __future__ import annotations

from aiohttp import web

from pdserve.runtime.serving.server import STATE

KV_PORT_KEY: web.AppKey[list[int]] = web.AppKey("pdserve_kv_port", list)


async def load_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kv_port = (request.app.get(KV_PORT_KEY) or [0])[0]  # 0 until the KV receiver listens
    ready = state.loaded and not state.draining and (state.role != "decode" or kv_port > 0)
    body: dict[str, object] = {"ready": ready, "role": state.role, "kv_port": kv_port or None}
    if state.loaded:
        stats = state.engine.stats
        body.update(identity=state.model_identity.digest, num_waiting=stats.num_waiting,
                    num_running=stats.num_running,
                    kv_usage=stats.kv_usage, num_free_blocks=stats.num_free_blocks,
                    num_blocks=stats.num_blocks,
                    block_size=state.engine.engine.config.block_size,
                    max_num_seqs=state.engine.engine.config.max_num_seqs)
    return web.json_response(body, status=200 if ready else 503)


def install_load_route(app: web.Application) -> None:
    app[KV_PORT_KEY] = [0]
    app.router.add_get("/load", load_handler)
