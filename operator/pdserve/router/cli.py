"""`pdserve router`: the OpenAI-compatible router in front of prefill and decode workers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from pdserve.router.app import build_app
from pdserve.router.config import RouterConfig
from pdserve.router.disagg_policy import MODES
from pdserve.router.discovery import WorkerSet, parse_endpoints
from pdserve.router.priority import PriorityConfig, read_api_keys, watch_api_keys
from pdserve.router.routing import POLICIES

# Connections waiting to be accepted: aiohttp's default of 128 drops the SYNs of a larger burst
# of clients (retried 1 s, 3 s later); as the worker's (runtime/serving/server.py).
LISTEN_BACKLOG = 2048


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdserve router", description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--served-model-name", required=True)
    prefill = p.add_mutually_exclusive_group()
    prefill.add_argument("--prefill-endpoints", default="", help="static list h:p,h:p")
    prefill.add_argument("--prefill-service", default="",
                         help="headless Service DNSNAME:PORT, re-resolved periodically")
    decode = p.add_mutually_exclusive_group()
    decode.add_argument("--decode-endpoints", default="", help="static list h:p,h:p")
    decode.add_argument("--decode-service", default="",
                        help="headless Service DNSNAME:PORT, re-resolved periodically")
    p.add_argument("--resolve-interval", type=float, default=5.0,
                   help="seconds between DNS resolutions of the services")
    p.add_argument("--routing-policy", choices=POLICIES, default="prefix-affinity")
    p.add_argument("--short-prompt-threshold", type=int, default=32,
                   help="prompts estimated shorter than this many tokens skip the prefill tier")
    p.add_argument("--disaggregation", choices=MODES, default="conditional",
                   help="conditional: per request, through the prefill tier only when that adds "
                        "less latency than a prefill on the decode worker (router/"
                        "disagg_policy.py; the threshold until the first prefill is measured); "
                        "always: every prompt from --short-prompt-threshold tokens up")
    p.add_argument("--decode-admission", choices=("on", "off"), default="on",
                   help="off: no decode admission before prefill and no KV redirection (the "
                        "behaviour before them): a baseline for bench/bench_overload.py only")
    p.add_argument("--priority-classes", default="",
                   help="JSON {classes: [{name, priority, maxQueue, ttftTargetSeconds}], "
                        "defaultClass, starvationGuardEvery, maxInFlightPerWorker}: one "
                        "bounded queue per class at the router (router/priority.py); unset: "
                        "no queueing")
    p.add_argument("--api-keys-dir", type=Path,
                   help="DIR/<class>/<file>: each file one API key of that class (a request's "
                        "Authorization: Bearer <key> picks its class); re-read every few "
                        "seconds. The operator mounts each class's apiKeysSecretRef Secret "
                        "there. Needs --priority-classes")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.resolve_interval <= 0:
        p.error("--resolve-interval must be positive")
    if args.short_prompt_threshold < 0:
        p.error("--short-prompt-threshold must be >= 0")
    try:
        prefill = WorkerSet("prefill", parse_endpoints(args.prefill_endpoints),
                            args.prefill_service or None)
        decode = WorkerSet("decode", parse_endpoints(args.decode_endpoints),
                           args.decode_service or None)
        priority = (PriorityConfig.from_json(args.priority_classes)
                    if args.priority_classes else None)
        if args.api_keys_dir is not None:
            if priority is None:
                raise ValueError("--api-keys-dir needs --priority-classes (keys pick a class)")
            priority.api_keys.replace(read_api_keys(args.api_keys_dir, priority))
        config = RouterConfig(args.served_model_name, args.short_prompt_threshold,
                              args.routing_policy, args.decode_admission == "on", priority,
                              args.disaggregation)
        app = build_app(config, prefill, decode, args.resolve_interval)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    if priority is not None and args.api_keys_dir is not None:
        app.cleanup_ctx.append(_watching(args.api_keys_dir, priority))
    web.run_app(app, host=args.host, port=args.port, handler_cancellation=True,
                backlog=LISTEN_BACKLOG,
                print=lambda msg: logging.getLogger(__name__).info(msg))
    return 0


def _watching(directory: Path, priority: PriorityConfig,
              ) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that follows the key files while the app runs."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch_api_keys(directory, priority))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
