"""TTFT and inter-token latency: router -> prefill -> decode vs one `both` worker, mixed load.

    .venv/bin/python -m bench.bench_disagg [--model builtin:tiny] [--rate 4] [--seconds 20]

Real processes on loopback. The load mixes short chat turns (most requests, decode-heavy) with
long summarization prompts (few, prefill-heavy) arriving as a Poisson process; every request
streams, and the client times the first token and the gaps between later ones. The same load
(same seed) runs against each setup in turn. Prints, never asserts. Note that the disaggregated
setup runs two worker processes where `both` runs one: on a machine with few cores they compete.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from e2e.local_processes import metric, router, running, wait_for_tiers, worker

TEXT = ("report quarterly revenue grew while costs fell and the board approved a new plan "
        "for expansion into markets across the region with careful hiring")
WORDS = TEXT.split()


def workload(rate: float, seconds: float, seed: int = 0) -> list[tuple[float, dict]]:
    rng = random.Random(seed)
    t, requests = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            return requests
        if rng.random() < 0.2:  # summarization: long prompt, short answer
            words, max_tokens = rng.randint(300, 500), 16
        else:  # chat turn: short prompt, longer answer
            words, max_tokens = rng.randint(5, 40), 48
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        requests.append((t, {"model": "tiny", "prompt": text, "max_tokens": max_tokens,
                             "temperature": 0, "ignore_eos": True, "stream": True}))


async def one(session: aiohttp.ClientSession, url: str, body: dict,
              ttft: list[float], itl: list[float]) -> int:
    start = time.perf_counter()
    last = None
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            now = time.perf_counter()
            if last is None:
                ttft.append(now - start)
            else:
                itl.append(now - last)
            last = now
            tokens += 1
    return tokens


async def run_load(url: str, requests: list[tuple[float, dict]]) -> dict[str, float]:
    ttft: list[float] = []
    itl: list[float] = []
    begin = time.perf_counter()

    async def delayed(at: float, body: dict, session: aiohttp.ClientSession) -> int:
        await asyncio.sleep(max(0.0, begin + at - time.perf_counter()))
        return await one(session, url, body, ttft, itl)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        tokens = await asyncio.gather(*(delayed(at, body, session) for at, body in requests))
    elapsed = time.perf_counter() - begin
    q = statistics.quantiles
    return {"ttft_p50": q(ttft, n=100)[49], "ttft_p90": q(ttft, n=100)[89],
            "itl_p50": q(itl, n=100)[49], "itl_p90": q(itl, n=100)[89],
            "tok_s": sum(tokens) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    requests = workload(args.rate, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        prefill, decode = worker("prefill", args.model, logs), worker("decode", args.model, logs)
        both = worker("both", args.model, logs)
        with running(prefill, decode, both):
            gateway = router([prefill], [decode], logs)
            with running(gateway):
                wait_for_tiers(gateway)
                asyncio.run(run_load(both.url, requests[:4]))  # warm-up
                asyncio.run(run_load(gateway.url, requests[:4]))
                results = {"both (1 worker)": asyncio.run(run_load(both.url, requests))}
                moved = metric(decode.url, "pdserve_kv_transfer_bytes_total")
                results["disaggregated (router+P+D)"] = asyncio.run(
                    run_load(gateway.url, requests))
                moved = metric(decode.url, "pdserve_kv_transfer_bytes_total") - moved
    print(f"{len(requests)} requests in {args.seconds:.0f}s (Poisson {args.rate}/s; 20% long "
          f"prompts of 300-500 words, 80% chat turns), model {args.model}")
    print(f"{'setup':28} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>9} {'ITL p90':>9} "
          f"{'tok/s':>7}")
    for name, r in results.items():
        print(f"{name:28} {r['ttft_p50'] * 1e3:7.1f}ms {r['ttft_p90'] * 1e3:7.1f}ms "
              f"{r['itl_p50'] * 1e3:7.1f}ms {r['itl_p90'] * 1e3:7.1f}ms {r['tok_s']:7.1f}")
    print(f"KV handed over prefill -> decode: {moved / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
