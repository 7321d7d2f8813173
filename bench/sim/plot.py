"""The README figure: load and mix of the shifting trace, the planner's accelerators over time
against the best static split, and attainment vs accelerator-hours for every policy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.sim.experiment import RunResult
from pdserve.planning.sim.traces import KINDS, Trace

BIN = 30.0


def plot(path: Path, trace: Trace, planner: RunResult, best_static: RunResult | None,
         results: list[RunResult], budget: int) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(9, 11))
    bins = int(trace.duration // BIN) + 1
    counts = {k: [0.0] * bins for k in KINDS}
    for request in trace.requests:
        counts[request.kind][int(request.arrival // BIN)] += 1 / BIN
    xs = [i * BIN / 60 for i in range(bins)]
    axes[0].stackplot(xs, *[counts[k] for k in KINDS], labels=KINDS, alpha=0.8)
    axes[0].set_ylabel("requests/s")
    axes[0].set_title(f"{trace.name} trace: load and mix")
    axes[0].legend(loc="upper left")

    times = [t / 60 for t, *_ in planner.timeline]
    prefill = [row[1] for row in planner.timeline]
    decode = [row[2] for row in planner.timeline]
    axes[1].stackplot(times, prefill, decode, labels=["planner prefill", "planner decode"],
                      alpha=0.7, step="post")
    axes[1].axhline(budget, color="black", linestyle="--", label=f"budget {budget}")
    if best_static is not None:
        split = best_static.spec.policy.split(":")[1]
        axes[1].axhline(int(split), color="tab:red", linestyle=":",
                        label=f"best static prefill ({best_static.report.policy})")
    axes[1].set_xlabel("minutes")
    axes[1].set_ylabel("allocated accelerators")
    axes[1].set_title("planner: accelerators per role (starting, ready and draining)")
    axes[1].legend(loc="upper left", fontsize=8)

    for result in results:
        r = result.report
        marker = "o" if r.policy.startswith("static") else "*"
        axes[2].scatter(r.accelerator_hours, 100 * r.attainment, marker=marker,
                        s=120 if marker == "*" else 30)
        axes[2].annotate(r.policy, (r.accelerator_hours, 100 * r.attainment), fontsize=7,
                         xytext=(3, 3), textcoords="offset points")
    axes[2].axhline(95, color="grey", linestyle="--")
    axes[2].set_xlabel("accelerator-hours")
    axes[2].set_ylabel("joint SLO attainment (%)")
    axes[2].set_ylim(0, 101)
    axes[2].set_title("every policy on the same trace and budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
