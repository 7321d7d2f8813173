"""guidellm against one `pdserve worker` and against a `pdserve router` in front of it, side by
side in one run (prints, never asserts).

    .venv/bin/python -m bench.bench_serving_load [--model builtin:tiny] [--profile concurrent]
        [--rate 4] [--prompt-tokens 128] [--output-tokens 32] [--seconds 20] [--rounds 1]
        [--write bench/results/serving_load.md]

Real processes on loopback, CPU: a `--role both` worker (the model's own tokenizer directory,
`pdserve model init` layout, is also guidellm's processor) and a router whose only decode
endpoint is that worker (no prefill tier: every request goes straight to it, so the difference
is the router's hop: its proxying, streaming relay and admission). The same guidellm load
(bench/load_tool.py: synthetic prompts of --prompt-tokens, --output-tokens generated with
ignore_eos, the --profile at --rate for --seconds) runs against the worker, then the router,
--rounds times alternated, each run with prompts of its own (a new seed: the worker's
prefix cache holds the previous run's). guidellm's JSON reports are kept beside the summary
(serving_load-<target>-<round>.json, request records sampled). The load generator shares the
machine with the servers (2 worker processes of guidellm's): on few cores it competes with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from bench.load_tool import (
    GUIDELLM_VERSION,
    Figures,
    Load,
    ToolUnavailable,
    ensure_guidellm,
    run_guidellm,
    table,
)
from e2e.local_processes import router, running, worker
from pdserve.runtime.checkpoints.builtin import resolve_model_path

REPO = Path(__file__).resolve().parent.parent


def warm_up(url: str, n: int = 3) -> None:
    """A few completions so the first measured requests do not pay one-time costs."""
    body = json.dumps({"model": "tiny", "prompt": "warm up the engine " * 8, "max_tokens": 8,
                       "temperature": 0}).encode()
    for _ in range(n):
        request = urllib.request.Request(url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--profile", default="concurrent",
                        choices=("concurrent", "constant", "poisson", "synchronous"))
    parser.add_argument("--rate", type=float, default=4, help="streams, or requests/s")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="per guidellm run")
    parser.add_argument("--rounds", type=int, default=2, help="worker/router runs alternated")
    parser.add_argument("--write", type=Path, help="markdown summary (reports beside it)")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    args = parser.parse_args()
    try:
        install_begin = time.monotonic()
        ensure_guidellm()
        install_s = time.monotonic() - install_begin
    except ToolUnavailable as exc:
        print(f"bench_serving_load: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    processor = resolve_model_path(args.model)
    load_before = os.getloadavg()[0]
    reports = (args.write.parent if args.write else REPO / "bench" / "out")
    load = Load(profile=args.profile, rate=args.rate, prompt_tokens=args.prompt_tokens,
                output_tokens=args.output_tokens, max_seconds=args.seconds, sample_size=10)
    results: dict[str, list[Figures]] = {"worker": [], "router": []}
    runs: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        both = worker("both", str(processor), logs)
        stack.enter_context(running(both))
        gateway = router([], [both], logs)
        stack.enter_context(running(gateway))
        wait_for_decode(gateway.url)
        warm_up(both.url)
        warm_up(gateway.url)
        for round_ in range(1, args.rounds + 1):
            for name, process in (("worker", both), ("router", gateway)):
                report = reports / f"serving_load-{name}-{round_}.json"
                begin = time.monotonic()
                # A seed of its own per run: the same prompts again would hit the worker's prefix
                # cache, which the run before filled.
                seed = 1000 * round_ + (name == "router")
                figures = run_guidellm(process.url, replace(load, seed=seed), report, processor,
                                       log=logs / f"guidellm-{name}-{round_}.log")
                runs.append((report.name, time.monotonic() - begin))
                results[name].extend(figures)
                print(f"round {round_} {name}: {figures[0]}", file=sys.stderr, flush=True)
    rows = {f"{name} (round {i + 1})": f for name, figs in results.items()
            for i, f in enumerate(figs)}
    rate = f"{args.rate:g} streams" if args.profile == "concurrent" else f"{args.rate:g} req/s"
    lines = [
        "# Serving load: one worker vs the router in front of it (guidellm)",
        "",
        f"`python -m bench.bench_serving_load --profile {args.profile} --rate {args.rate:g} "
        f"--prompt-tokens {args.prompt_tokens} --output-tokens {args.output_tokens} --seconds "
        f"{args.seconds:g} --rounds {args.rounds}` ({time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"{platform.machine()} CPU, {_cores()} cores shared with the load generator; 1-minute "
        f"load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after).",
        "",
        f"Load: guidellm {GUIDELLM_VERSION} (`bench/load_tool.py`; its own environment, ready in "
        f"{install_s:.0f}s this run), OpenAI `/v1/completions` streaming, synthetic prompts of "
        f"{args.prompt_tokens} tokens ({processor.name} tokenizer), {args.output_tokens} tokens "
        f"out (ignore_eos), {args.profile} at {rate}, {args.seconds:g}s per run. Model "
        f"{args.model} on one `--role both` CPU worker; the router's only endpoint is that "
        "worker. Latencies from guidellm's report (ms; ITL: each request's mean gap between "
        "tokens after the first, percentiles weighted by its tokens; successful requests).",
        "",
        table(rows),
        "",
        ratios(results),
        "",
        "guidellm reports (request records sampled, 10 per status): " +
        ", ".join(f"`{name}` ({seconds:.0f}s with guidellm's start-up)" for name, seconds in runs)
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


def ratios(results: dict[str, list[Figures]]) -> str:
    """Router / worker, medians over the rounds."""

    def med(name: str, key: str) -> float:
        return statistics.median(getattr(f, key) for f in results[name])

    parts = [f"{label} {med('router', key) / med('worker', key):.2f}x"
             for label, key in (("req/s", "requests_per_s"), ("output tok/s", "output_tok_s"),
                                ("TTFT p50", "ttft_p50"), ("TTFT p99", "ttft_p99"),
                                ("ITL p50", "itl_p50"), ("ITL p95", "itl_p95"))]
    return "Router / worker (medians over the rounds): " + ", ".join(parts) + "."


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def wait_for_decode(url: str, timeout: float = 30.0) -> None:
    """Until the router has discovered its (decode) worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError), \
                urllib.request.urlopen(url + "/ready", timeout=5) as resp:
            if json.loads(resp.read()).get("decode"):
                return
        time.sleep(0.2)
    raise TimeoutError("the router did not discover the worker")


if __name__ == "__main__":
    main()
