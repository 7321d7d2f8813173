"""Priority classes at the router under ~2x overload: high-class TTFT, low-class shedding and
total throughput, with and without classes, side by side in one run (real processes on
loopback: one `pdserve worker --role decode` on CPU, the tiny model, no prefill tier, behind
two `pdserve router`s, one with --priority-classes and --api-keys-dir, one without).

    .venv/bin/python -m bench.bench_priority [--model builtin:tiny] [--overload 2] [--seconds 20]
        [--slots 8] [--write bench/results/priority.md]

The load is guidellm's (bench/load_tool.py, its own environment; its JSON reports kept as
bench/out/priority-<phase>-<class>.json, git-ignored: with every request's record, megabytes).
Clients choose their class the way a tenant does in production: by API key. The router with
classes reads its keys from a directory laid out as the operator mounts the classes'
apiKeysSecretRef Secrets (one key of class high, one of class low), so one guidellm process
sends the high key and another the low key (guidellm's OpenAI backend sets one Authorization
header per process; it has no per-request header or body field).

(1) Capacity: guidellm's `concurrent` profile, --slots streams through the router without
classes for --capacity-seconds; capacity = its successful requests per second. (2) and (3): the
open loop, two guidellm processes started together, each with the seeded `poisson` profile: the
high key at --high-fraction of --overload x capacity, the low key at the rest (the sum of two
independent Poisson streams is a Poisson stream at the total rate), each sending as many
requests as its Poisson process has in --seconds and waiting for every answer (the same counts
and lengths every phase, prompts of ~10-30 tokens unique per phase, 16-32 tokens out,
streaming, ignore_eos), through the router without classes (keys mean nothing there: every
request alike, as today) and through the router with two classes: high (priority 0,
--high-ttft-target) and low (priority 10, maxQueue --low-max-queue, --low-ttft-target). Phases
in the order without, with, with, without (ABBA; figures over both of each), so drift in the
shared machine's load cancels. The worker runs --max-num-seqs --slots, which the router reads
from its /load: its slots are that plus a quarter (router/priority.py worker_slots), unless
--max-in-flight-per-worker.

Per class: guidellm's TTFT percentiles over its answered requests (request sent -> first
token), and its errored requests by HTTP status (429: shed). Throughput: answered requests (and
their output tokens) of both processes per second from the earlier process's start to the
later one's end. The two processes start a little apart (each loads its tokenizer and data
first): the start skew is printed. Goals of issue 15: high-class TTFT p99 within its target and
<= 0.3x the low class's p50, total throughput within 10% of the same load without classes.
Prints, never asserts.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.load_tool import (
    GUIDELLM_VERSION,
    Figures,
    Load,
    Outcomes,
    ToolUnavailable,
    ensure_guidellm,
    request_outcomes,
    run_guidellm,
)
from e2e.local_processes import Process, router, running, worker
from pdserve.runtime.checkpoints.builtin import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
TEXT = ("report quarterly revenue grew while costs fell and the board approved a new plan "
        "for expansion into markets across the region with careful hiring")
WORDS = TEXT.split()
KEYS = {"high": "sk-bench-high", "low": "sk-bench-low"}  # one tenant's key per class
CLASS_SEEDS = {"high": 11, "low": 12}
REQUEST_TIMEOUT = 300.0


def request_shapes(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt words, max tokens) of n requests: short prompts (below the router's short-prompt
    threshold too), short answers."""
    rng = random.Random(seed)
    return [(rng.randint(8, 24), rng.randint(16, 32)) for _ in range(n)]


def write_rows(path: Path, tag: str, shapes: list[tuple[int, int]]) -> Path:
    rows = []
    for index, (words, max_tokens) in enumerate(shapes):
        rng = random.Random(index)
        # a unique head: no phase or request shares a prefix block with another
        text = f"{tag} {index} " + " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append(json.dumps({"prompt": text, "output_tokens_count": max_tokens}) + "\n")
    path.write_text("".join(rows))
    return path


def poisson_count(rate: float, seconds: float, seed: int) -> int:
    """Arrivals of a seeded Poisson process at `rate` in `seconds` (every phase the same)."""
    rng, t, n = random.Random(seed), 0.0, 0
    while (t := t + rng.expovariate(rate)) < seconds:
        n += 1
    return n


def key_directory(root: Path) -> Path:
    """The router's --api-keys-dir, as the operator mounts the classes' Secrets."""
    for cls, key in KEYS.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "bench-tenant").write_text(key + "\n")
    return root


@dataclass
class ClassRun:
    """One class's guidellm process in one phase."""

    figures: Figures
    outcomes: Outcomes


def phase(url: str, name: str, rates: dict[str, float], counts: dict[str, int],
          processor: Path, reports: Path, logs: Path) -> dict[str, ClassRun]:
    """Both classes' guidellm processes at once against `url`."""

    def one(cls: str) -> ClassRun:
        rows = write_rows(logs / f"{name}-{cls}.jsonl", f"{name}-{cls}",
                          request_shapes(counts[cls], CLASS_SEEDS[cls]))
        load = Load(profile="poisson", rate=rates[cls], seed=CLASS_SEEDS[cls], data_file=rows,
                    max_requests=counts[cls], max_seconds=REQUEST_TIMEOUT * 2,
                    request_timeout=REQUEST_TIMEOUT, sample_size=0)
        report = reports / f"priority-{name}-{cls}.json"
        (figures,) = run_guidellm(url, load, report, processor, api_key=KEYS[cls],
                                  log=logs / f"guidellm-{name}-{cls}.log", worker_processes=1)
        (outcomes,) = request_outcomes(report)
        return ClassRun(figures, outcomes)

    with ThreadPoolExecutor(len(KEYS)) as pool:
        futures = {cls: pool.submit(one, cls) for cls in KEYS}
        return {cls: future.result() for cls, future in futures.items()}


def summary(runs: list[dict[str, ClassRun]]) -> dict[str, float | int | None]:
    """Figures over the phases of one kind: TTFT percentiles per class (the mean over the
    phases of guidellm's percentile: each phase has the same load), counts and throughput
    summed."""
    out: dict[str, float | int | None] = {}
    for cls in KEYS:
        of_class = [run[cls] for run in runs]
        sent = sum(r.outcomes.answered + sum(r.outcomes.http_errors.values())
                   + r.outcomes.other_errors + r.outcomes.incomplete for r in of_class)
        shed = sum(r.outcomes.http_errors.get(429, 0) for r in of_class)
        out[f"{cls}_sent"] = sent
        out[f"{cls}_answered"] = sum(r.outcomes.answered for r in of_class)
        for q in ("p50", "p99"):
            values = [getattr(r.figures, f"ttft_{q}") / 1e3 for r in of_class
                      if r.outcomes.answered]
            out[f"{cls}_ttft_{q}"] = sum(values) / len(values) if values else None
        out[f"{cls}_shed"] = shed
        out[f"{cls}_shed_rate"] = shed / sent if sent else None
        out[f"{cls}_errors"] = sum(sum(v for s, v in r.outcomes.http_errors.items() if s != 429)
                                   + r.outcomes.other_errors + r.outcomes.incomplete
                                   for r in of_class)
    spans = [max(r.outcomes.end for r in run.values()) - min(r.outcomes.start
                                                             for r in run.values())
             for run in runs]
    skews = [abs(run["high"].outcomes.start - run["low"].outcomes.start) for run in runs]
    answered = sum(r.outcomes.answered for run in runs for r in run.values())
    tokens = sum(r.outcomes.output_tokens for run in runs for r in run.values())
    out.update(req_per_s=answered / sum(spans), tok_per_s=tokens / sum(spans),
               seconds=sum(spans), skew=max(skews))
    return out


def fmt(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if unit == "%":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}{unit}" if unit == " s" else f"{value:.2f}{unit}"


ROWS = [(f"{cls} {label}", f"{cls}_{key}", unit) for cls in KEYS for label, key, unit in (
    ("requests sent", "sent", ""), ("answered", "answered", ""),
    ("TTFT p50", "ttft_p50", " s"), ("TTFT p99", "ttft_p99", " s"),
    ("shed (429)", "shed", ""), ("shed rate", "shed_rate", "%"),
    ("other errors", "errors", ""))] + [
    ("answered throughput req/s", "req_per_s", ""), ("answered throughput tok/s", "tok_per_s", ""),
    ("phase seconds (first start to last answer)", "seconds", " s"),
    ("largest start skew of the two guidellm processes", "skew", " s")]


def report(args: argparse.Namespace, capacity: float, rate: float, counts: dict[str, int],
           classes: dict[str, object], off: dict[str, float | int | None],
           on: dict[str, float | int | None], load_before: float, load_after: float) -> str:
    lines = [
        f"load from guidellm {GUIDELLM_VERSION}: capacity (`concurrent`, {args.slots} streams, "
        f"{args.capacity_seconds:g} s) {capacity:.2f} req/s; open loop {rate:.2f} req/s "
        f"({args.overload:g}x) as two Poisson processes, high {args.high_fraction:.0%} "
        f"({counts['high']} requests) and low {1 - args.high_fraction:.0%} ({counts['low']} "
        f"requests), ~{args.seconds:g} s of arrivals; {args.rounds} phase(s) of each (ABBA "
        f"when 2, figures over both); worker --max-num-seqs {args.slots}; machine "
        f"{os.cpu_count()} cores, 1-minute load average {load_before:.2f} before, "
        f"{load_after:.2f} after", "",
        f"classes: `{json.dumps(classes)}`; one API key per class in --api-keys-dir", "",
        "| | without classes | with classes |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(off[key], unit)} | {fmt(on[key], unit)} |"
              for label, key, unit in ROWS]
    high99, low50 = on["high_ttft_p99"], on["low_ttft_p50"]
    target = args.high_ttft_target
    ratio = (high99 / low50) if isinstance(high99, float) and low50 else None
    tput = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else None
    tok = on["tok_per_s"] / off["tok_per_s"] if off["tok_per_s"] else None
    lines += ["",
              f"- high TTFT p99 {fmt(high99, ' s')} vs target {target:g} s: "
              f"{'met' if isinstance(high99, float) and high99 <= target else 'NOT met'}",
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
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    parser.add_argument("--write", type=Path, help="append the markdown summary here")
    args = parser.parse_args()
    try:
        ensure_guidellm()
    except ToolUnavailable as exc:
        print(f"bench_priority: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    processor = resolve_model_path(args.model)
    reports = REPO / "bench" / "out"
    classes: dict[str, object] = {"classes": [
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
        classy = start(router([], [decode], logs, "--priority-classes", json.dumps(classes),
                              "--api-keys-dir", str(key_directory(Path(tmp) / "api-keys"))))
        # more rows than the closed loop can use: it stops at --capacity-seconds
        rows = write_rows(logs / "capacity.jsonl", "capacity",
                          request_shapes(int(200 * args.capacity_seconds), seed=1))
        seen = run_guidellm(plain.url, Load(profile="concurrent", rate=args.slots,
                                            data_file=rows, max_seconds=args.capacity_seconds,
                                            request_timeout=REQUEST_TIMEOUT),
                            reports / "priority-capacity.json", processor,
                            log=logs / "guidellm-capacity.log")[0]
        capacity = seen.requests_per_s
        rate = args.overload * capacity
        rates = {"high": args.high_fraction * rate, "low": (1 - args.high_fraction) * rate}
        counts = {cls: poisson_count(rates[cls], args.seconds, CLASS_SEEDS[cls])
                  for cls in KEYS}
        print(f"capacity {capacity:.2f} req/s; {counts} requests at {rate:.2f} req/s",
              flush=True)
        # ABBA (without, with, with, without): drift of the shared machine's load cancels
        runs: dict[str, list[dict[str, ClassRun]]] = {"off": [], "on": []}
        for round_, kind in enumerate(["off", "on", "on", "off"][:2 * args.rounds]):
            url = plain.url if kind == "off" else classy.url
            runs[kind].append(phase(url, f"{kind}{round_}", rates, counts, processor,
                                    reports, logs))
            print(kind, json.dumps(summary(runs[kind][-1:])), flush=True)
            time.sleep(2.0)
        off, on = summary(runs["off"]), summary(runs["on"])
    text = report(args, capacity, rate, counts, classes, off, on, load_before,
                  os.getloadavg()[0])
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.write, "a", encoding="utf-8") as f:
            f.write(f"\n## Run (guidellm, classes by API key) {stamp}\n\n"
                    f"`python -m bench.bench_priority --overload {args.overload:g} "
                    f"--seconds {args.seconds:g} --slots {args.slots} --rounds {args.rounds}"
                    + (f" --max-in-flight-per-worker {args.max_in_flight_per_worker}"
                       if args.max_in_flight_per_worker else "") + f"`\n\n{text}\n")


if __name__ == "__main__":
    main()
