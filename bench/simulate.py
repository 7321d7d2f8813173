"""Reproduce the planner comparison: `python bench/simulate.py` (or `python -m bench.simulate`).

Writes bench/results/planner.md (tables) and bench/results/planner.png, and prints the tables.
`--tune` searches planner and HPA settings on the tuning traces (the frozen values live in
bench/sim/scenarios.py and bench/sim/experiment.py); `--quick` runs only the main trace."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/simulate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sim.experiment import RunSpec, run_all, statics, trace_for
from bench.sim.plot import plot
from bench.sim.scenarios import DEPLOYMENTS, FROZEN_SETTINGS
from bench.sim.tables import attainment_goal, best_static, goal_check, table
from bench.sim.tuning import tune

MAIN = "h100-llama8b"
EVALUATION = (("shifting", 11), ("shifting-bursty", 12), ("step", 13))
# NVIDIA Dynamo issue #10528's load (its own deployment: targets and budget differ).
BURSTS = ("h100-llama8b-10528", "dynamo-10528", 14)
OTHERS = ("l4-llama1b", "tpu-v5e-llama8b", "cpu-tiny")


def specs_for(deployment: str, trace: str, seed: int, robustness: bool) -> list[RunSpec]:
    dep = DEPLOYMENTS[deployment]
    specs = [RunSpec(deployment, trace, seed, "planner", keep_timeline=True)]
    if robustness:
        specs += [RunSpec(deployment, trace, seed, "planner", capacity_error=0.7),
                  RunSpec(deployment, trace, seed, "planner", capacity_error=1.3),
                  RunSpec(deployment, trace, seed, "planner", cold=True)]
    specs.append(RunSpec(deployment, trace, seed, "hpa"))
    specs.append(RunSpec(deployment, trace, seed, "clamp"))
    specs += [RunSpec(deployment, trace, seed, s) for s in statics(dep)]
    return specs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="main trace and profile only")
    parser.add_argument("--tune", action="store_true", help="search settings on tuning traces")
    parser.add_argument("--no-hpa", action="store_true", help="with --tune: planner only")
    args = parser.parse_args(argv)
    if args.tune:
        print(tune(MAIN, args.processes, hpa=not args.no_hpa))
        return 0
    started = time.time()
    groups: list[tuple[str, str, int]] = [(MAIN, t, s) for t, s in EVALUATION]
    if args.quick:
        groups = groups[:1]
    else:
        groups += [BURSTS] + [(d, "shifting", 11) for d in OTHERS]
    specs = [s for d, t, seed in groups for s in specs_for(d, t, seed, robustness=d == MAIN)]
    results = run_all(specs, args.processes)
    sections = [
        "# Planner simulator results",
        "",
        f"Command: `python bench/simulate.py` ({len(specs)} runs, "
        f"{time.time() - started:.0f} s on {args.processes} processes). Frozen planner settings: "
        + ", ".join(f"{k}={v}" for k, v in FROZEN_SETTINGS.items()) + ".",
    ]
    for deployment, trace, _ in groups:
        dep = DEPLOYMENTS[deployment]
        group = [r for r in results if r.spec.deployment == deployment and r.spec.trace == trace]
        sections += ["", f"## {deployment}, trace `{trace}` (budget {dep.budget} accelerators, "
                     f"TTFT {dep.ttft_target:g} s, ITL {1000 * dep.itl_target:g} ms, "
                     f"{group[0].report.offered} requests)", "", table(group), "",
                     goal_check(group)]
        if (deployment, trace) == BURSTS[:2]:
            sections.append(attainment_goal(group, 0.9))
    sections += ["", "The per-replica model is `pdserve plan`'s; its error against the runtime "
                 "measured on this machine's CPU is in bench/results/plan.md."]
    text = "\n".join(sections) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "planner.md").write_text(text)
    main_group = [r for r in results if r.spec.deployment == MAIN and r.spec.trace == "shifting"]
    planner = next(r for r in main_group if r.spec.label == "planner")
    plot(args.out / "planner.png", trace_for(MAIN, "shifting", 11), planner,
         best_static(main_group, min(planner.report.attainment, 0.95)), main_group,
         DEPLOYMENTS[MAIN].budget)
    print(text)
    print(f"wrote {args.out / 'planner.md'} and {args.out / 'planner.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
