"""Priority classes at the router under ~2x overload: high-class TTFT, low-class shedding and
total throughput, with and without classes, side by side in one run (real processes on
loopback: one `pdserve worker --role decode` on CPU, the tiny model, no prefill tier, behind
two `pdserve router`s, one with --priority-classes and one without).

    .venv/bin/python -m bench.bench_priority [--model builtin:tiny] [--overload 2] [--seconds 20]
        [--slots 8] [--write bench/results/priority.md]

(1) Capacity: --slots streams in a closed loop through the router without classes for
--capacity-seconds; capacity = answered requests per second. (2) and (3): the same seeded open
loop (Poisson arrivals at --overload x capacity for --seconds, --high-fraction of them of class
`high`, the rest `low`, every request naming its class in `x-pdserve-priority-class`; the same
prompts and lengths, streaming with ignore_eos) through the router without classes (the header
is ignored there: every request is alike, as today) and through the router with two classes
(phases in the order without, with, with, without: ABBA, figures over both of each, so drift
in the shared machine's load cancels):
high (priority 0, --high-ttft-target) and low (priority 10, maxQueue --low-max-queue,
--low-ttft-target). The worker runs --max-num-seqs --slots, which the router reads from its
/load: its slots are that plus a quarter (router/priority.py worker_slots), unless
--max-in-flight-per-worker. The load is this bench's own asyncio client: guidellm (the load
tool of the other benches) sends no per-request header or body field, so it cannot mix
classes. TTFT is the
client's, from sending to the first streamed token, for answered requests; throughput is answered
requests (and generated tokens) per second from the first arrival to the last answer. Goals of
issue 15: high-class TTFT p99 within its target and <= 0.3x the low class's p50, total
throughput within 10% of the same load without classes. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from e2e.local_processes import Process, router, running, worker

SENTENCE = ("report quarterly revenue grew while costs fell and the board approved a new plan "
            "for expansion into markets across the region with careful hiring")
TEXT = SENTENCE.split(" ")
TIMEOUT = aiohttp.ClientTimeout(total=300)


@dataclass(frozen=True)
class Arrival:
    at: float
    cls: str
    prompt: str
    max_tokens: int


@dataclass
class Result:
    cls: str
    status: int
    ttft: float | None = None
    tokens: int = 0
    retry_after: str | None = None
    done: float = 0.0


@dataclass
class Phase:
    name: str
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0


def prompt(rng: random.Random, tag: str) -> str:
    words = rng.randint(8, 24)  # ~10-30 tokens: below the router's short-prompt threshold too
    return tag + " " + " ".join(rng.choice(TEXT) for _ in range(words))


def arrivals(rate: float, seconds: float, high_fraction: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    out, t, i = [], 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        cls = "high" if rng.random() < high_fraction else "low"
        out.append(Arrival(t, cls, prompt(rng, f"r{seed}-{i}"), rng.randint(16, 32)))
        i += 1


async def send(session: aiohttp.ClientSession, url: str, arrival: Arrival) -> Result:
    body = {"model": "tiny", "prompt": arrival.prompt, "max_tokens": arrival.max_tokens,
            "stream": True, "ignore_eos": True, "temperature": 0.0}
    started = time.perf_counter()
    result = Result(arrival.cls, 0)
    try:
        async with session.post(f"{url}/v1/completions", json=body,
                                headers={"x-pdserve-priority-class": arrival.cls}) as resp:
            result.status = resp.status
            if resp.status != 200:
                result.retry_after = resp.headers.get("Retry-After")
                await resp.read()
            else:
                async for line in resp.content:
                    if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("choices") and event["choices"][0].get("text"):
                        if result.ttft is None:
                            result.ttft = time.perf_counter() - started
                        result.tokens += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.status = -1
        result.retry_after = str(exc)
    result.done = time.perf_counter()
    return result


async def open_loop(url: str, load: list[Arrival], name: str) -> Phase:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        start = time.perf_counter()

        async def at(arrival: Arrival) -> Result:
            await asyncio.sleep(max(0.0, start + arrival.at - time.perf_counter()))
            # prompts unique per phase: no phase hits the other's prefix cache
            return await send(session, url, Arrival(arrival.at, arrival.cls,
                                                    f"{name} {arrival.prompt}",
                                                    arrival.max_tokens))

        results = await asyncio.gather(*(at(a) for a in load))
        end = max(r.done for r in results)
    return Phase(name, list(results), end - start)


async def closed_loop(url: str, concurrency: int, seconds: float) -> float:
    rng = random.Random(99)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        start = time.perf_counter()
        answered = 0

        async def stream(k: int) -> None:
            nonlocal answered
            i = 0
            while time.perf_counter() - start < seconds:
                arrival = Arrival(0, "low", prompt(rng, f"cap{k}-{i}"), rng.randint(16, 32))
                result = await send(session, url, arrival)
                answered += result.status == 200
                i += 1

        await asyncio.gather(*(stream(k) for k in range(concurrency)))
        return answered / (time.perf_counter() - start)


def merged(phases: list[Phase]) -> Phase:
    return Phase(phases[0].name, [r for p in phases for r in p.results],
                 sum(p.seconds for p in phases))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(phase: Phase) -> dict[str, float | int | None]:
    def ttfts(cls: str) -> list[float]:
        return [r.ttft for r in phase.results if r.cls == cls and r.status == 200
                and r.ttft is not None]

    answered = [r for r in phase.results if r.status == 200]
    return {
        "sent": len(phase.results),
        "answered": len(answered),
        "high_ttft_p50": pct(ttfts("high"), 0.5), "high_ttft_p99": pct(ttfts("high"), 0.99),
        "low_ttft_p50": pct(ttfts("low"), 0.5), "low_ttft_p99": pct(ttfts("low"), 0.99),
        "high_shed": sum(r.status == 429 for r in phase.results if r.cls == "high"),
        "low_shed": sum(r.status == 429 for r in phase.results if r.cls == "low"),
        "errors": sum(r.status not in (200, 429) for r in phase.results),
        "retry_after_missing": sum(r.status == 429 and not r.retry_after for r in phase.results),
        "req_per_s": len(answered) / phase.seconds,
        "tok_per_s": sum(r.tokens for r in answered) / phase.seconds,
        "seconds": phase.seconds,
    }


def fmt(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}{unit}" if unit == " s" else f"{value:.2f}{unit}"


ROWS = [("requests sent", "sent", ""), ("answered", "answered", ""),
        ("high TTFT p50", "high_ttft_p50", " s"), ("high TTFT p99", "high_ttft_p99", " s"),
        ("low TTFT p50", "low_ttft_p50", " s"), ("low TTFT p99", "low_ttft_p99", " s"),
        ("high shed (429)", "high_shed", ""), ("low shed (429)", "low_shed", ""),
        ("429 without Retry-After", "retry_after_missing", ""), ("other errors", "errors", ""),
        ("throughput req/s", "req_per_s", ""), ("throughput tok/s", "tok_per_s", ""),
        ("phase seconds (to last answer)", "seconds", " s")]


def report(args: argparse.Namespace, capacity: float, rate: float, classes: dict,
           off: dict, on: dict, load_before: float, load_after: float) -> str:
    lines = [
        f"capacity (closed loop, {args.slots} streams, {args.capacity_seconds:g} s): "
        f"{capacity:.2f} req/s; open loop {rate:.2f} req/s ({args.overload:g}x) for "
        f"{args.seconds:g} s, {args.rounds} phase(s) of each (ABBA when 2, figures over "
        f"both), {args.high_fraction:.0%} high / {1 - args.high_fraction:.0%} low; "
        f"worker --max-num-seqs {args.slots}; load average {load_before:.2f} before, "
        f"{load_after:.2f} after", "",
        f"classes: `{json.dumps(classes)}`", "",
        "| | without classes | with classes |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(off[key], unit)} | {fmt(on[key], unit)} |"
              for label, key, unit in ROWS]
    high99, low50 = on["high_ttft_p99"], on["low_ttft_p50"]
    target = args.high_ttft_target
    ratio = (high99 / low50) if high99 is not None and low50 else None
    tput = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else None
    tok = on["tok_per_s"] / off["tok_per_s"] if off["tok_per_s"] else None
    lines += ["",
              f"- high TTFT p99 {fmt(high99, ' s')} vs target {target:g} s: "
              f"{'met' if high99 is not None and high99 <= target else 'NOT met'}",
              f"- high TTFT p99 / low TTFT p50 = {fmt(ratio)} (goal <= 0.3): "
              f"{'met' if ratio is not None and ratio <= 0.3 else 'NOT met'}",
              f"- throughput with / without classes: {fmt(tput)}x req/s, {fmt(tok)}x tok/s "
              f"(goal >= 0.9): {'met' if tput is not None and tput >= 0.9 else 'NOT met'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--overload", type=float, default=2.0, help="x measured capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="arrivals per load phase")
    parser.add_argument("--capacity-seconds", type=float, default=12.0)
    parser.add_argument("--slots", type=int, default=8, help="the worker's --max-num-seqs")
    parser.add_argument("--high-fraction", type=float, default=0.2)
    parser.add_argument("--high-ttft-target", type=float, default=2.0)
    parser.add_argument("--low-ttft-target", type=float, default=10.0)
    parser.add_argument("--low-max-queue", type=int, default=64)
    parser.add_argument("--max-in-flight-per-worker", type=int, default=0,
                        help="the classes' maxInFlightPerWorker; 0: unset (the router's default)")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                        help="2: phases without, with, with, without classes (ABBA), figures "
                             "over both of each; 1: without, with")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    parser.add_argument("--write", type=Path, help="append the markdown summary here")
    args = parser.parse_args()
    classes = {"classes": [
        {"name": "high", "priority": 0, "maxQueue": 256,
         "ttftTargetSeconds": args.high_ttft_target},
        {"name": "low", "priority": 10, "maxQueue": args.low_max_queue,
         "ttftTargetSeconds": args.low_ttft_target}]}
    if args.max_in_flight_per_worker:
        classes["maxInFlightPerWorker"] = args.max_in_flight_per_worker
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)

        def start(process: Process) -> Process:
            # one at a time (each picks free ports); a router is ready once it sees the worker
            stack.enter_context(running(process))
            return process

        decode = start(worker("decode", args.model, logs, "--max-num-seqs", str(args.slots)))
        plain = start(router([], [decode], logs))
        classy = start(router([], [decode], logs, "--priority-classes", json.dumps(classes)))
        asyncio.run(closed_loop(plain.url, args.slots, 3.0))  # warm-up
        capacity = asyncio.run(closed_loop(plain.url, args.slots, args.capacity_seconds))
        rate = args.overload * capacity
        load = arrivals(rate, args.seconds, args.high_fraction, args.seed)
        print(f"capacity {capacity:.2f} req/s; {len(load)} requests at {rate:.2f} req/s",
              flush=True)
        # ABBA (without, with, with, without): drift of the shared machine's load cancels
        phases: dict[str, list[Phase]] = {"off": [], "on": []}
        for round_, kind in enumerate(["off", "on", "on", "off"][:2 * args.rounds]):
            url = plain.url if kind == "off" else classy.url
            phase = asyncio.run(open_loop(url, load, f"{kind}{round_}"))
            phases[kind].append(phase)
            print(kind, json.dumps(summary(phase)), flush=True)
            time.sleep(2.0)
        off, on = summary(merged(phases["off"])), summary(merged(phases["on"]))
    text = report(args, capacity, rate, classes, off, on, load_before, os.getloadavg()[0])
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.write, "a", encoding="utf-8") as f:
            f.write(f"\n## Run {stamp}\n\n`python -m bench.bench_priority "
                    f"--overload {args.overload:g} --seconds {args.seconds:g} "
                    f"--slots {args.slots} --rounds {args.rounds}"
                    + (f" --max-in-flight-per-worker {args.max_in_flight_per_worker}"
                       if args.max_in_flight_per_worker else "") + f"`\n\n{text}\n")


if __name__ == "__main__":
    main()
