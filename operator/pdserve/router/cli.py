"""`pdserve router`: the OpenAI-compatible router in front of prefill and decode workers."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from pdserve.router.app import build_app
from pdserve.router.discovery import WorkerSet, parse_endpoints
from pdserve.router.priority import PriorityConfig
from pdserve.router.proxy import RouterConfig
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
    p.add_argument("--decode-admission", choices=("on", "off"), default="on",
                   help="off: no decode admission before prefill and no KV redirection (the "
                        "behaviour before them): a baseline for bench/bench_overload.py only")
    p.add_argument("--priority-classes", default="",
                   help="JSON {classes: [{name, priority, maxQueue, ttftTargetSeconds}], "
                        "defaultClass, apiKeys: {key: class}, starvationGuardEvery, "
                        "maxInFlightPerWorker}: one bounded queue per class at the router "
                        "(router/priority.py); unset: no queueing")
    p.add_argument("--priority-classes-file", default="",
                   help="the same JSON read from a file (keeps API keys off the command line)")
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
        classes = args.priority_classes
        if args.priority_classes_file:
            with open(args.priority_classes_file, encoding="utf-8") as f:
                classes = f.read()
        config = RouterConfig(args.served_model_name, args.short_prompt_threshold,
                              args.routing_policy, args.decode_admission == "on",
                              PriorityConfig.from_json(classes) if classes else None)
        app = build_app(config, prefill, decode, args.resolve_interval)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    web.run_app(app, host=args.host, port=args.port, handler_cancellation=True,
                backlog=LISTEN_BACKLOG,
                print=lambda msg: logging.getLogger(__name__).info(msg))
    return 0
