"""TTFT and inter-token latency: router -> prefill -> decode vs one `both` worker, mixed load.

    .venv/bin/python -m bench.bench_disagg [--model builtin:tiny] [--rate 4] [--seconds 20]
        [--write bench/results/disagg.md]

Real processes on loopback, load from guidellm (bench/load_tool.py, its own environment). The
load mixes short chat turns (most requests, decode-heavy) with long summarization prompts (few,
prefill-heavy): a seeded JSONL file of `prompt` / `output_tokens_count` rows (about --rate x
--seconds of them) that guidellm sends in order, streaming, with ignore_eos, as a Poisson process
at --rate (its `poisson` profile, seeded), until every row is answered. The same rows and
arrivals run against each setup in turn; guidellm's reports are kept (disagg-<setup>.json
beside --write, else in bench/out/). TTFT and ITL are guidellm's: ITL is each request's mean
gap between tokens after the first, its percentiles weighted by the request's tokens. Prints,
never asserts. Note that the disaggregated setup runs two worker processes where `both` runs
one: on a machine with few cores they compete (and with guidellm).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from bench.bench_serving_load import warm_up
from bench.load_tool import GUIDELLM_VERSION, Load, ToolUnavailable, ensure_guidellm, run_guidellm
from e2e.local_processes import metric, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
TEXT = ("report quarterly revenue grew while costs fell and the board approved a new plan "
        "for expansion into markets across the region with careful hiring")
WORDS = TEXT.split()


def workload(rate: float, seconds: float, seed: int = 0) -> list[dict]:
    """Rows for guidellm's json_file data: as many as a Poisson process at `rate` sends in
    `seconds` (the same count and mix as before guidellm drove the load)."""
    rng = random.Random(seed)
    t, rows = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            return rows
        if rng.random() < 0.2:  # summarization: long prompt, short answer
            words, max_tokens = rng.randint(300, 500), 16
        else:  # chat turn: short prompt, longer answer
            words, max_tokens = rng.randint(5, 40), 48
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"prompt": text, "output_tokens_count": max_tokens})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--write", type=Path, help="markdown summary (reports beside it)")
    args = parser.parse_args()
    try:
        ensure_guidellm()
    except ToolUnavailable as exc:
        print(f"bench_disagg: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    rows = workload(args.rate, args.seconds)
    load_before = os.getloadavg()[0]
    processor = resolve_model_path(args.model)
    reports = args.write.parent if args.write else REPO / "bench" / "out"
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        data = logs / "workload.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        # Every row once, in order; the time bound only stops a run that hangs.
        load = Load(profile="poisson", rate=args.rate, data_file=data, max_requests=len(rows),
                    max_seconds=max(120.0, 6 * args.seconds), sample_size=10)
        prefill, decode = worker("prefill", args.model, logs), worker("decode", args.model, logs)
        both = worker("both", args.model, logs)
        with running(prefill, decode, both):
            gateway = router([prefill], [decode], logs)
            with running(gateway):
                wait_for_tiers(gateway)
                warm_up(both.url, 4)
                warm_up(gateway.url, 4)
                results = {"both (1 worker)": run_guidellm(
                    both.url, load, reports / "disagg-both.json", processor,
                    log=logs / "guidellm-both.log")[0]}
                moved = metric(decode.url, "pdserve_kv_transfer_bytes_total")
                results["disaggregated (router+P+D)"] = run_guidellm(
                    gateway.url, load, reports / "disagg-disaggregated.json", processor,
                    log=logs / "guidellm-disaggregated.log")[0]
                moved = metric(decode.url, "pdserve_kv_transfer_bytes_total") - moved
    lines = [f"{len(rows)} requests, Poisson {args.rate:g}/s (guidellm {GUIDELLM_VERSION}, "
             f"~{args.seconds:.0f}s; 20% long prompts of 300-500 words, 80% chat turns), "
             f"model {args.model}",
             f"{'setup':28} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>9} {'ITL p90':>9} "
             f"{'tok/s':>7} {'ok/err/inc':>10}"]
    for name, f in results.items():
        lines.append(f"{name:28} {f.ttft_p50:7.1f}ms {f.ttft_p90:7.1f}ms {f.itl_p50:7.1f}ms "
                     f"{f.itl_p90:7.1f}ms {f.output_tok_s:7.1f} "
                     f"{f'{f.successes}/{f.errors}/{f.incomplete}':>10}")
    lines.append(f"KV handed over prefill -> decode: {moved / 2**20:.2f} MiB")
    lines.append(f"machine: {os.cpu_count()} cores, 1-minute load average {load_before:.1f} "
                 f"before the run, {os.getloadavg()[0]:.1f} after")
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(
            "# Disaggregated vs one `both` worker (guidellm)\n\n"
            f"    .venv/bin/python -m bench.bench_disagg --model {args.model} --rate {args.rate:g} "
            f"--seconds {args.seconds:g} --write {args.write}\n\n```\n{text}\n```\n\n"
            "guidellm reports: `disagg-both.json`, `disagg-disaggregated.json` (request records "
            "sampled). ITL: each request's mean inter-token gap, percentiles weighted by its "
            "tokens (guidellm's definition).\n")


if __name__ == "__main__":
    main()
