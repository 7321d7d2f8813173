"""Overload must not amplify: goodput and wasted prefill at ~2x capacity, with and without decode
admission (router -> 2 prefill -> 2 decode workers, real processes on loopback).

    .venv/bin/python -m bench.bench_overload [--model builtin:tiny] [--overload 2] [--seconds 20]

One run, three phases on one stack. (1) Capacity: a closed loop of --concurrency clients through
the router with admission on; capacity = completed requests per second; the SLOs are
--ttft-slo-factor x the median TTFT and --itl-slo-factor x the median inter-token gap seen
there. (2) and (3): the same open-loop load
(Poisson at --overload x capacity for --seconds; the same lengths, prompts made unique per phase
so no phase hits another's prefix cache) through a router with `--decode-admission on` (this
change) and through one with `--decode-admission off` (the behaviour before it: one KV target, a
refused push answered 5xx and re-prefilled on another prefill worker, decode recomputing when all
fail). The decode workers get few KV blocks (--decode-kv-blocks), so that overload is a
decode-side KV shortage. Goodput: requests answered 200 whose TTFT and mean inter-token gap meet
the SLOs, per second of the phase (first arrival to last answer); throughput counts every 200.
Prefill tokens: the prefill workers' pdserve_kv_wasted_prefill_tokens_total (computed for KV
that no decode worker took) against their pdserve_prompt_tokens_total (prompts whose KV was
handed over); recomputes: decode's pdserve_kv_transfer_fallbacks_total. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from e2e.local_processes import (
    Process,
    engine_debug,
    metric,
    router,
    running,
    wait_for_tiers,
    worker,
)

TEXT = ("report quarterly revenue grew while costs fell and the board approved a new plan "
        "for expansion into markets across the region with careful hiring")
WORDS = TEXT.split()
REQUEST_TIMEOUT = 120.0


@dataclass
class Outcome:
    status: int  # 0: no answer (connection error or client timeout)
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    end: float = 0.0


def request_shapes(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt words, max tokens) of n requests: long prompts, short answers."""
    rng = random.Random(seed)
    return [(rng.randint(120, 240), rng.randint(16, 48)) for _ in range(n)]


def body(phase: str, index: int, words: int, max_tokens: int) -> dict:
    rng = random.Random(index)
    # A unique head: no phase or request shares a prefix block with another.
    text = f"{phase} {index} " + " ".join(rng.choice(WORDS) for _ in range(words))
    return {"model": "tiny", "prompt": text, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}


async def one(session: aiohttp.ClientSession, url: str, payload: dict) -> Outcome:
    start = time.perf_counter()
    outcome = Outcome(0)
    last = None
    try:
        async with session.post(url + "/v1/completions", json=payload) as resp:
            outcome.status = resp.status
            async for line in resp.content:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                if b'"error"' in line:
                    outcome.status = 502  # the stream broke after its 200 went out
                now = time.perf_counter()
                if last is None:
                    outcome.ttft = now - start
                else:
                    outcome.gaps.append(now - last)
                last = now
    except (aiohttp.ClientError, TimeoutError):
        outcome.status = 0
    outcome.end = time.perf_counter()
    return outcome


async def closed_loop(url: str, concurrency: int, seconds: float) -> tuple[float, list[Outcome]]:
    """Completed requests per second with `concurrency` clients, and their outcomes."""
    shapes = request_shapes(10_000, seed=1)
    outcomes: list[Outcome] = []
    begin = time.perf_counter()
    counter = iter(range(len(shapes)))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() - begin < seconds:
            i = next(counter)
            outcomes.append(await one(session, url, body("capacity", i, *shapes[i])))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - begin
    return sum(o.status == 200 for o in outcomes) / elapsed, outcomes


async def open_loop(url: str, phase: str, rate: float, seconds: float) -> tuple[float,
                                                                                list[Outcome]]:
    rng = random.Random(7)  # the same arrivals and shapes in every phase
    arrivals, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        arrivals.append(t)
    shapes = request_shapes(len(arrivals), seed=2)
    begin = time.perf_counter()

    async def at(delay: float, payload: dict, session: aiohttp.ClientSession) -> Outcome:
        await asyncio.sleep(max(0.0, begin + delay - time.perf_counter()))
        return await one(session, url, payload)

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        outcomes = await asyncio.gather(*(at(delay, body(phase, i, *shapes[i]), session)
                                          for i, delay in enumerate(arrivals)))
    return max(o.end for o in outcomes) - begin, list(outcomes)


def meets(outcome: Outcome, ttft_slo: float, itl_slo: float) -> bool:
    return (outcome.status == 200 and outcome.ttft is not None and outcome.ttft <= ttft_slo
            and (not outcome.gaps or statistics.fmean(outcome.gaps) <= itl_slo))


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
    args = parser.parse_args()
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
        capacity, seen = asyncio.run(closed_loop(new.url, args.concurrency,
                                                 args.capacity_seconds))
        served = [o for o in seen if o.status == 200 and o.ttft is not None]
        ttft_slo = args.ttft_slo_factor * statistics.median(o.ttft for o in served if o.ttft)
        itl_slo = args.itl_slo_factor * statistics.median(g for o in served for g in o.gaps)
        rate = args.overload * capacity
        results = {}
        for name, gateway in (("admission on (new)", new), ("admission off (before)", old)):
            wait_idle([*prefills, *decodes])
            before = counters(prefills, decodes, gateway)
            elapsed, outcomes = asyncio.run(open_loop(gateway.url, name.split()[1], rate,
                                                      args.seconds))
            after = counters(prefills, decodes, gateway)
            results[name] = (elapsed, outcomes, {k: after[k] - before[k] for k in after})
    print(f"model {args.model}; 2 prefill + 2 decode workers ({args.decode_kv_blocks} KV blocks "
          f"each), prompts of 120-240 words, 16-48 tokens out")
    print(f"capacity: {capacity:.2f} req/s ({args.concurrency} clients in a closed loop, "
          f"{args.capacity_seconds:.0f}s); SLOs: TTFT <= {ttft_slo:.2f}s, mean ITL <= "
          f"{itl_slo * 1e3:.0f}ms ({args.ttft_slo_factor:g}x and {args.itl_slo_factor:g}x the "
          "medians at capacity)")
    print(f"load: Poisson {rate:.2f} req/s ({args.overload:g}x capacity) for {args.seconds:.0f}s")
    print("| router | goodput req/s | throughput req/s | 200s | 5xx | no answer | TTFT p50/p90 "
          "| mean ITL p50/p90 | prefill retries | KV redirects | prefill tokens wasted / handed "
          "over | decode recomputes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (elapsed, outcomes, delta) in results.items():
        ok = [o for o in outcomes if o.status == 200 and o.ttft is not None]
        good = sum(meets(o, ttft_slo, itl_slo) for o in outcomes)
        ttft = percentiles([o.ttft for o in ok if o.ttft is not None])
        itl = percentiles([statistics.fmean(o.gaps) for o in ok if o.gaps])
        print(f"| {name} | {good / elapsed:.2f} | {len(ok) / elapsed:.2f} | "
              f"{len(ok)}/{len(outcomes)} | {sum(o.status >= 500 for o in outcomes)} | "
              f"{sum(o.status == 0 for o in outcomes)} | {ttft[0]:.2f}/{ttft[1]:.2f}s | "
              f"{itl[0] * 1e3:.1f}/{itl[1] * 1e3:.1f}ms | {delta['retries']:.0f} | "
              f"{delta['redirects']:.0f} | {delta['wasted']:.0f} / {delta['prefilled']:.0f} | "
              f"{delta['recomputed']:.0f} |")


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p90), NaN without values."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=10)
    return statistics.median(values), cuts[8]


if __name__ == "__main__":
    main()
