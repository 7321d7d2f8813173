"""Markdown tables of run reports and the goal check."""

from __future__ import annotations

import math

from bench.sim.experiment import RunResult

HEADER = ("| policy | attain | p90 ratio | p99 ratio | goodput req/s | goodput/acc | acc-h | "
          "actions | reversals | recovery | aborted | over budget | NaN actions |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _ratio(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _recovery(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "never" if math.isinf(value) else f"{value:.0f}s"


def table(results: list[RunResult]) -> str:
    rows = [HEADER]
    for result in results:
        r = result.report
        rows.append(
            f"| {r.policy} | {100 * r.attainment:.1f}% | {_ratio(r.p90_ratio)} | "
            f"{_ratio(r.p99_ratio)} | {r.goodput:.2f} | {r.goodput_per_accelerator:.2f} | "
            f"{r.accelerator_hours:.2f} | {r.actions} | {r.reversals} | "
            f"{_recovery(r.recovery_seconds)} | {r.aborted} | "
            f"{r.over_budget_accelerator_seconds:.0f} | {r.actions_on_nan} |")
    return "\n".join(rows)


def best_static(results: list[RunResult], attainment: float) -> RunResult | None:
    """The static split with the fewest accelerator-hours reaching `attainment` (all statics
    spend the same hours, so: the best attainment among those that reach it)."""
    reaching = [r for r in results if r.spec.policy.startswith("static:")
                and r.report.attainment >= attainment]
    if not reaching:
        return None
    return min(reaching, key=lambda r: (r.report.accelerator_hours, -r.report.attainment))


def goal_check(results: list[RunResult]) -> str:
    planner = next(r for r in results if r.spec.policy == "planner"
                   and r.spec.capacity_error == 1.0 and not r.spec.cold)
    p = planner.report
    target = min(p.attainment, 0.95)
    static = best_static(results, target)
    if static is None:
        best = max((r for r in results if r.spec.policy.startswith("static:")),
                   key=lambda r: r.report.attainment)
        return (f"planner: {100 * p.attainment:.1f}% at {p.accelerator_hours:.2f} acc-h; no "
                f"static split reaches {100 * target:.0f}% (best {best.report.policy}: "
                f"{100 * best.report.attainment:.1f}% at {best.report.accelerator_hours:.2f} "
                f"acc-h). Goal (>=95% at <=0.85x): "
                f"{'met' if p.attainment >= 0.95 else 'NOT met'}")
    ratio = p.accelerator_hours / static.report.accelerator_hours
    met = p.attainment >= 0.95 and ratio <= 0.85
    return (f"planner: {100 * p.attainment:.1f}% at {p.accelerator_hours:.2f} acc-h = "
            f"{ratio:.2f}x the {static.report.accelerator_hours:.2f} acc-h of "
            f"{static.report.policy}"
            f" ({100 * static.report.attainment:.1f}%). Goal (>=95% at <=0.85x): "
            f"{'met' if met else 'NOT met'}")


def attainment_goal(results: list[RunResult], goal: float) -> str:
    """The burst trace's goal: attainment alone (the issue's >= 90%), with goodput."""
    planner = next(r for r in results if r.spec.policy == "planner"
                   and r.spec.capacity_error == 1.0 and not r.spec.cold)
    p = planner.report
    return (f"planner: {100 * p.attainment:.1f}% attainment, {p.goodput:.2f} req/s goodput. "
            f"Goal (>={100 * goal:.0f}%): {'met' if p.attainment >= goal else 'NOT met'}")
