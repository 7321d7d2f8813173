"""`pdserve plan` against an exhaustive sweep of the discrete-event simulator (prints, never
asserts): on each seed workload, the plan's cheapest P/D split beside the cheapest split the
simulator finds meeting the same targets, and the simulator's attainment at the plan's split.

    .venv/bin/python -m bench.bench_plan_sweep [--write bench/results/plan_sweep.md]

Llama-3.1-8B on H100 pods of one chip, KV over pdserve's TCP transport (the plan's model and
the simulator's pods share one ReplicaPerf), TTFT 1 s and TPOT 50 ms for 90% of requests. The
workload the plan sees is the trace's own samples (lengths, and the share of prompt tokens a
session's previous turn left in a prefix cache), so both judge the same requests. The
simulator supports one pod shape for both roles and no short-prompt threshold: the comparison
is over prefill x decode replica counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pdserve.planning.catalog import default_catalog
from pdserve.planning.perf import replica_perf
from pdserve.planning.predict import Deployment, predict
from pdserve.planning.search import PodShape, Targets, size_disaggregated
from pdserve.planning.shapes import KNOWN_SHAPES
from pdserve.planning.sim.traces import KINDS, Trace, build_trace
from pdserve.planning.validate import simulated_attainment
from pdserve.planning.workload import Lengths, Priority, Workload

RATES = {"summarization": (30.0, 60.0), "story": (60.0, 120.0), "agentic": (40.0, 80.0)}
DURATION_S = 900.0
TARGETS = Targets(ttft_seconds=1.0, tpot_seconds=0.05, attainment=0.9)
MAX_PER_ROLE = 16
H100 = default_catalog()["nvidia-h100"]
PERF = replica_perf(H100, KNOWN_SHAPES["llama-3.1-8b"], "bfloat16", 1)
SHAPE = PodShape(H100, PERF)


def _trace(kind: str, rate: float) -> Trace:
    mix = tuple(1.0 if k == kind else 0.0 for k in KINDS)
    return build_trace(kind, DURATION_S, lambda t: rate, lambda t: mix, seed=7)


def _workload(trace: Trace) -> Workload:
    requests = trace.requests
    prompts = Lengths(tuple((float(r.prompt), 1 / len(requests)) for r in requests))
    outputs = Lengths(tuple((float(r.output), 1 / len(requests)) for r in requests))
    return Workload(trace.name, prompts, outputs, trace.prefix_hit(), 1.0,
                    (Priority("default", 1.0),), "balanced")


def _simulated_attainment(trace: Trace, prefill: int, decode: int) -> float:
    """`pdserve plan`'s check of a split, every request counted."""
    return simulated_attainment(Deployment(PERF, prefill, PERF, decode), trace, TARGETS,
                                warmup_share=0.0)


def _sweep(trace: Trace) -> tuple[tuple[int, int] | None, int]:
    """The fewest pods (prefill, decode) the simulator finds meeting the targets, by pod count
    then attainment; and how many runs it took."""
    runs = 0
    for total in range(2, 2 * MAX_PER_ROLE + 1):
        best: tuple[float, tuple[int, int]] | None = None
        for prefill in range(1, min(total - 1, MAX_PER_ROLE) + 1):
            decode = total - prefill
            if decode > MAX_PER_ROLE:
                continue
            runs += 1
            attainment = _simulated_attainment(trace, prefill, decode)
            if attainment >= TARGETS.attainment and (best is None or attainment > best[0]):
                best = (attainment, (prefill, decode))
        if best is not None:
            return best[1], runs
    return None, runs


def _row(kind: str, trace: Trace) -> str:
    workload = _workload(trace)
    rate = len(trace.requests) / DURATION_S
    planned = size_disaggregated(SHAPE, SHAPE, 0, workload, rate, TARGETS, float("inf"))
    best, runs = _sweep(trace)
    swept = f"{best[0]} + {best[1]} ({runs} runs)" if best else f"none ({runs} runs)"
    if planned is None:
        return f"| {kind} | {rate:.1f} | none | - | {swept} | - |"
    predicted = predict(planned, workload, rate, TARGETS.ttft_seconds, TARGETS.tpot_seconds,
                        quantiles=False).attainment
    simulated = _simulated_attainment(trace, planned.prefill_replicas, planned.decode_replicas)
    pods = planned.prefill_replicas + planned.decode_replicas
    ratio = f"{pods / sum(best):.2f}" if best else "-"
    return (f"| {kind} | {rate:.1f} | {planned.prefill_replicas} + {planned.decode_replicas} "
            f"| {predicted:.1%} / {simulated:.1%} | {swept} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    started = time.time()
    lines = ["## pdserve plan vs an exhaustive simulator sweep", "",
             "Llama-3.1-8B, nvidia-h100 x1 pods, TTFT 1 s and TPOT 50 ms for 90% of requests, "
             f"{DURATION_S:.0f} s Poisson traces (`python -m bench.bench_plan_sweep`).", "",
             "| workload | req/s | plan: prefill + decode | plan: predicted / simulated "
             "attainment | sweep's cheapest | plan cost / sweep cost |",
             "|---|---|---|---|---|---|"]
    for kind in KINDS:
        for asked in RATES[kind]:
            lines.append(_row(kind, _trace(kind, asked)))
            print(lines[-1], flush=True)
    lines += ["", f"({time.time() - started:.0f} s)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
