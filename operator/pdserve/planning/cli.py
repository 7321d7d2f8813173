"""`pdserve plan`: which accelerators, how many chips a pod, which prefill:decode split, and
what it costs, for a model and a workload at a rate and latency targets."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pdserve.planning.catalog import load_catalog
from pdserve.planning.observed import Observed, observed_workload
from pdserve.planning.output import Plan, Ranked, render
from pdserve.planning.search import (
    Candidate,
    Targets,
    best_floor,
    candidates,
    goodput,
    pod_shapes,
    resize,
)
from pdserve.planning.shapes import PlanInputError, resolve_shape
from pdserve.planning.validate import Checked, SimulatedTrace, validate
from pdserve.planning.workload import BUILTIN_WORKLOADS, Workload, load_workload

SHOWN_CANDIDATES = 8
DEFAULT_WINDOW_SECONDS = 120


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise PlanInputError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pdserve plan", description=__doc__)
    p.add_argument("--model", required=True,
                   help="a Hugging Face model directory (its config.json) or a known shape name")
    p.add_argument("--dtype", choices=("bfloat16", "float8"), default="bfloat16")
    p.add_argument("--workload",
                   help=f"{'|'.join(BUILTIN_WORKLOADS)} or a YAML/JSON workload file")
    p.add_argument("--rate", type=float,
                   help="requests per second (with --from-prometheus: the observed rate)")
    p.add_argument("--from-prometheus", metavar="URL",
                   help="plan for the workload an LLMService serves, as this Prometheus saw it "
                   "(the planner's inputs over --window-seconds)")
    p.add_argument("--llmservice", metavar="NAMESPACE/NAME",
                   help="the LLMService whose workload --from-prometheus reads")
    p.add_argument("--window-seconds", type=int, default=DEFAULT_WINDOW_SECONDS,
                   help="the rate window --from-prometheus reads "
                   f"(default {DEFAULT_WINDOW_SECONDS})")
    p.add_argument("--ttft-ms", type=float, required=True, help="time-to-first-token target")
    p.add_argument("--tpot-ms", type=float, required=True, help="time-per-output-token target")
    p.add_argument("--attainment", type=float, default=0.9,
                   help="share of requests that must meet both targets (default 0.9)")
    p.add_argument("--catalog", type=Path, help="YAML/JSON accelerator catalogue file")
    p.add_argument("--growth", default="1,2,5",
                   help="rate multiples for the growth table (default 1,2,5)")
    p.add_argument("--max-cost-per-hour", type=float, help="only candidates at most this")
    p.add_argument("--disaggregation", choices=("auto", "disaggregated", "aggregated"),
                   default="auto", help="consider P/D, aggregated or both (default)")
    p.add_argument("--no-simulate", action="store_true",
                   help="rank by the model alone: skip replaying the workload through the "
                   "cheapest candidates in the simulator")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulator's synthetic trace (default 0)")
    p.add_argument("--output", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--name", default=None,
                   help="the LLMService's name for --output yaml (default: the workload's)")
    return p


def _positive(value: float, flag: str) -> float:
    if not value > 0 or value != value or value == float("inf"):
        raise PlanInputError(f"{flag} must be a positive number, not {value}")
    return value


def _growth(text: str) -> list[float]:
    try:
        multiples = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PlanInputError(f"--growth: expected numbers separated by commas, not {text!r}"
                             ) from None
    for multiple in multiples:
        _positive(multiple, "--growth")
    return multiples


def _name(given: str | None, workload: str) -> str:
    name = given or re.sub(r"[^a-z0-9-]+", "-", workload.lower()).strip("-")[:63] or "llm"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        raise PlanInputError(f"--name {name!r} is not a DNS label (lower case, digits, '-')")
    return name


def _observed(url: str, service: str | None, window_seconds: int) -> Observed:
    # The planner's own queries and client: one table of PromQL (the command, above both).
    from pdserve.autoscaler.prometheus_source import (
        PrometheusSource,
        PrometheusUnavailable,
        Selector,
    )

    namespace, _, name = (service or "").partition("/")
    if not namespace or not name or "/" in name:
        raise PlanInputError("--from-prometheus needs --llmservice NAMESPACE/NAME")
    try:
        values = PrometheusSource(url).values(Selector(namespace, name, window_seconds))
    except PrometheusUnavailable as down:
        raise PlanInputError(f"cannot read Prometheus at {url}: {down}") from None
    return observed_workload(values, f"{namespace}/{name}")


def _workload(args: argparse.Namespace) -> tuple[Workload, float, Observed | None]:
    if args.from_prometheus is not None:
        if args.workload is not None:
            raise PlanInputError("give --workload or --from-prometheus, not both")
        if not 10 <= args.window_seconds <= 86400:
            raise PlanInputError("--window-seconds must be between 10 and 86400")
        observed = _observed(args.from_prometheus, args.llmservice, args.window_seconds)
        rate = observed.rate if args.rate is None else _positive(args.rate, "--rate")
        return observed.workload, rate, observed
    if args.workload is None or args.rate is None:
        raise PlanInputError("give --workload and --rate (or --from-prometheus)")
    rate = _positive(args.rate, "--rate")
    return load_workload(args.workload), rate, None


def plan(argv: list[str]) -> tuple[Plan, str, str]:
    args = _parser().parse_args(argv)
    targets = Targets(_positive(args.ttft_ms, "--ttft-ms") / 1e3,
                      _positive(args.tpot_ms, "--tpot-ms") / 1e3, args.attainment)
    if not 0 < args.attainment < 1:
        raise PlanInputError(f"--attainment must be in (0, 1), not {args.attainment}")
    if args.max_cost_per_hour is not None:
        _positive(args.max_cost_per_hour, "--max-cost-per-hour")
    multiples = _growth(args.growth)
    shape = resolve_shape(args.model)
    catalog = load_catalog(args.catalog)
    workload, rate, observed = _workload(args)
    shapes = pod_shapes(catalog, shape, args.dtype, workload)
    found = candidates(shapes, workload, rate, targets, args.disaggregation,
                       args.max_cost_per_hour)
    if not found:
        budget = (f" within ${args.max_cost_per_hour:g}/hour"
                  if args.max_cost_per_hour is not None else "")
        raise PlanInputError(f"no configuration meets the targets{budget}: "
                             f"{best_floor(shapes, workload, rate, targets)}")
    checked, simulation = _checked(found, workload, rate, targets, args)
    ranked = [Ranked(c.candidate, goodput(c.candidate.deployment, workload, targets),
                     c.simulated_attainment) for c in checked]
    growth = [(m, resize(ranked[0].candidate, workload, rate * m, targets)) for m in multiples]
    default_name = (args.llmservice or "").partition("/")[2] if observed else Path(
        args.workload).stem
    name = _name(args.name, default_name)
    return (Plan(shape, args.dtype, workload, rate, targets, ranked, growth, observed,
                 simulation), args.output, name)


def _checked(found: list[Candidate], workload: Workload, rate: float, targets: Targets,
             args: argparse.Namespace) -> tuple[list[Checked], SimulatedTrace | None]:
    """The candidates shown, best first: the cheapest meeting the targets, then those the
    simulator found missing them (so the reader sees why a cheaper one is not first)."""
    if args.no_simulate:
        return [Checked(c, None) for c in found[:SHOWN_CANDIDATES]], None
    validation = validate(found, workload, rate, targets, args.seed)
    if not validation.meeting:
        best = max(validation.missing, key=lambda c: c.simulated_attainment or 0.0)
        raise PlanInputError(
            f"no configuration meets the targets in the simulator: the best simulated "
            f"attainment is {best.simulated_attainment:.1%} "
            f"({best.candidate.deployment.chips} chips, ${best.candidate.cost_per_hour:.2f}/"
            f"hour) against {targets.attainment:.0%} (--no-simulate: the model's ranking)")
    return validation.meeting[:SHOWN_CANDIDATES] + validation.missing, validation.trace


def main(argv: list[str]) -> int:
    try:
        result, output, name = plan(argv)
        text = render(result, output, name)
    except PlanInputError as bad:
        print(f"pdserve plan: {bad}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
