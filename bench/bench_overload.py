"""Overload must not amplify: goodput and wasted prefill at ~2x capacity, with and without decode
admission (router -> 2 prefill -> 2 decode workers, real processes on loopback).

    .venv/bin/python -m bench.bench_overload [--model builtin:tiny] [--overload 2] [--seconds 20]

One run, three phases on one stack, each driven by guidellm (bench/load_tool.py, its own
environment; its JSON reports kept as overload-<phase>.json beside --write, else in bench/out/).
The requests are rows of a seeded JSONL file (`prompt`, `output_tokens_count`; streaming,
ignore_eos) that guidellm sends in order. (1) Capacity: guidellm's `concurrent` profile,
--concurrency streams through the router with admission on for --capacity-seconds; capacity =
successful requests per second; the SLOs are --ttft-slo-factor x the median TTFT and
--itl-slo-factor x the median inter-token gap seen there (guidellm's: each request's mean gap,
token-weighted). (2) and (3): the same open-loop load (guidellm's seeded `poisson` profile at
--overload x capacity, as many requests as it sends in --seconds, each answered or failed; the same
lengths, prompts made unique per phase so no phase hits another's prefix cache) through a router
with `--decode-admission on` (this change) and through one with `--decode-admission off` (the
behaviour before it: one KV target, a refused push answered 5xx and re-prefilled on another prefill
worker, decode recomputing when all fail), in that order (--off-first: the other). The decode
workers get few KV blocks (--decode-kv-blocks), so that overload is a decode-side KV shortage.
Goodput: guidellm's, requests answered whose TTFT and mean inter-token gap meet the SLOs (its
GoodputSLO ttft_ms / tpot_ms), per second of the phase; throughput counts every answered request;
errors are guidellm's errored requests (a 5xx, a broken stream, a timeout). Prefill tokens: the
prefill workers' pdserve_kv_wasted_prefill_tokens_total (computed for KV that no decode worker
took) against their pdserve_prompt_tokens_total (prompts whose KV was handed over); recomputes:
decode's pdserve_kv_transfer_fallbacks_total. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.load_tool import (
    GUIDELLM_VERSION,
    Figures,
    Load,
    ToolUnavailable,
    ensure_guidellm,
    run_guidellm,
)
from e2e.local_processes import (
    Process,
    engine_debug,
    metric,
    router,
    running,
    wait_for_tiers,
    worker,
)
from pdserve.runtime.checkpoints.builtin import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
TEXT = ("report quarterly revenue grew while costs fell and the board approved a new plan "
        "for expansion into markets across the region with careful hiring")
WORDS = TEXT.split()
REQUEST_TIMEOUT = 120.0


def request_shapes(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt words, max tokens) of n requests: long prompts, short answers."""
    rng = random.Random(seed)
    return [(rng.randint(120, 240), rng.randint(16, 48)) for _ in range(n)]


def row(phase: str, index: int, words: int, max_tokens: int) -> dict:
    rng = random.Random(index)
    # A unique head: no phase or request shares a prefix block with another.
    text = f"{phase} {index} " + " ".join(rng.choice(WORDS) for _ in range(words))
    return {"prompt": text, "output_tokens_count": max_tokens}


def write_rows(path: Path, phase: str, shapes: list[tuple[int, int]]) -> Path:
    path.write_text("".join(json.dumps(row(phase, i, *shape)) + "\n"
                            for i, shape in enumerate(shapes)))
    return path


def poisson_count(rate: float, seconds: float, seed: int = 7) -> int:
    """How many arrivals a Poisson process at `rate` has in `seconds` (seeded: every phase the
    same count)."""
    rng, t, n = random.Random(seed), 0.0, 0
    while (t := t + rng.expovariate(rate)) < seconds:
        n += 1
    return n


def wait_idle(workers: list[Process], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = [engine_debug(w) for w in workers]
        if not any(s["num_running"] or s["num_waiting"] or s["in_flight_http"] for s in stats):
            return
        time.sleep(0.5)
    raise TimeoutError("the workers did not go idle between phases")


def counters(prefills: list[Process], decodes: list[Process], gateway: Process) -> dict:
    return {"wasted": sum(metric(p.url, "pdserve_kv_wasted_prefill_tokens_total")
                          for p in prefills),
            "prefilled": sum(metric(p.url, "pdserve_prompt_tokens_total") for p in prefills),
            "recomputed": sum(metric(d.url, "pdserve_kv_transfer_fallbacks_total")
                              for d in decodes),
            "retries": metric(gateway.url, "pdserve_router_prefill_retries_total"),
            "redirects": metric(gateway.url, "pdserve_router_kv_redirects_total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--overload", type=float, default=2.0, help="x measured capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="arrivals per load phase")
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--decode-kv-blocks", type=int, default=64)
    parser.add_argument("--ttft-slo-factor", type=float, default=10.0)
    parser.add_argument("--itl-slo-factor", type=float, default=2.0)
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    parser.add_argument("--off-first", action="store_true",
                        help="run the admission-off phase before the admission-on one")
    parser.add_argument("--write", type=Path, help="markdown summary (reports beside it)")
    args = parser.parse_args()
    try:
        ensure_guidellm()
    except ToolUnavailable as exc:
        print(f"bench_overload: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    processor = resolve_model_path(args.model)
    load_before = os.getloadavg()[0]
    reports = args.write.parent if args.write else REPO / "bench" / "out"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)

        def start(process: Process) -> Process:
            # One at a time: a process picks its ports when created, so one created before the
            # previous listens could be given the same free port.
            stack.enter_context(running(process))
            return process

        prefills = [start(worker("prefill", args.model, logs)) for _ in range(2)]
        decodes = [start(worker("decode", args.model, logs, "--num-kv-blocks",
                                str(args.decode_kv_blocks))) for _ in range(2)]
        new = start(router(prefills, decodes, logs, "--decode-admission", "on"))
        old = start(router(prefills, decodes, logs, "--decode-admission", "off"))
        wait_for_tiers(new)
        wait_for_tiers(old)
        # More rows than the closed loop can use: it stops at --capacity-seconds.
        capacity_rows = write_rows(logs / "capacity.jsonl", "capacity",
                                   request_shapes(int(60 * args.capacity_seconds), seed=1))
        seen = run_guidellm(new.url, Load(profile="concurrent", rate=args.concurrency,
                                          data_file=capacity_rows,
                                          max_seconds=args.capacity_seconds,
                                          request_timeout=REQUEST_TIMEOUT),
                            reports / "overload-capacity.json", processor,
                            log=logs / "guidellm-capacity.log")[0]
        capacity = seen.requests_per_s
        ttft_slo_ms = args.ttft_slo_factor * seen.ttft_p50
        itl_slo_ms = args.itl_slo_factor * seen.itl_p50
        rate = args.overload * capacity
        count = poisson_count(rate, args.seconds)
        results: dict[str, tuple[Figures, dict]] = {}
        phases = [("admission on (new)", new), ("admission off (before)", old)]
        for name, gateway in phases[::-1] if args.off_first else phases:
            phase = name.split()[1]
            wait_idle([*prefills, *decodes])
            before = counters(prefills, decodes, gateway)
            load = Load(profile="poisson", rate=rate, seed=7,
                        data_file=write_rows(logs / f"{phase}.jsonl", phase,
                                             request_shapes(count, seed=2)),
                        max_requests=count, max_seconds=max(300.0, 10 * args.seconds),
                        request_timeout=REQUEST_TIMEOUT, ttft_slo_ms=ttft_slo_ms,
                        itl_slo_ms=itl_slo_ms)
            figures = run_guidellm(gateway.url, load, reports / f"overload-{phase}.json",
                                   processor, log=logs / f"guidellm-{phase}.log")[0]
            after = counters(prefills, decodes, gateway)
            results[name] = (figures, {k: after[k] - before[k] for k in after})
    lines = [
        f"model {args.model}; 2 prefill + 2 decode workers ({args.decode_kv_blocks} KV blocks "
        f"each), prompts of 120-240 words, 16-48 tokens out; load from guidellm "
        f"{GUIDELLM_VERSION}",
        f"capacity: {capacity:.2f} req/s ({args.concurrency} concurrent streams, "
        f"{args.capacity_seconds:.0f}s); SLOs: TTFT <= {ttft_slo_ms / 1e3:.2f}s, mean ITL <= "
        f"{itl_slo_ms:.0f}ms ({args.ttft_slo_factor:g}x and {args.itl_slo_factor:g}x the "
        "medians at capacity)",
        f"load: Poisson {rate:.2f} req/s ({args.overload:g}x capacity), {count} requests "
        f"(~{args.seconds:.0f}s of arrivals; admission {'off' if args.off_first else 'on'} "
        "first)",
        f"machine: {os.cpu_count()} cores, 1-minute load average {load_before:.1f} before the "
        f"run, {os.getloadavg()[0]:.1f} after",
        "",
        "| router | goodput req/s | throughput req/s | answered | errors | SLO attainment "
        "| TTFT p50/p90 | mean ITL p50/p90 | prefill retries | KV redirects | prefill tokens "
        "wasted / handed over | decode recomputes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (f, delta) in sorted(results.items(), key=lambda item: "off" in item[0]):
        total = f.successes + f.errors + f.incomplete
        lines.append(
            f"| {name} | {_num(f.goodput)} | {f.requests_per_s:.2f} | {f.successes}/{total} | "
            f"{f.errors} | {_num(f.slo_attainment)} | {f.ttft_p50 / 1e3:.2f}/"
            f"{f.ttft_p90 / 1e3:.2f}s | {f.itl_p50:.1f}/{f.itl_p90:.1f}ms | "
            f"{delta['retries']:.0f} | {delta['redirects']:.0f} | {delta['wasted']:.0f} / "
            f"{delta['prefilled']:.0f} | {delta['recomputed']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(
            "# Overload: decode admission and KV redirection against the behaviour before "
            f"(guidellm)\n\n    .venv/bin/python -m bench.bench_overload --write {args.write}"
            f"{' --off-first' if args.off_first else ''}\n\n"
            f"{text}\n\nguidellm reports: `overload-capacity.json`, `overload-on.json`, "
            "`overload-off.json` (request records sampled).\n")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
