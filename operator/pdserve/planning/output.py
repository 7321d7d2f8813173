"""A plan as users read it: a table, JSON with a stable schema, or the winning LLMService.

JSON schema (`schema: pdserve.dev/plan/v1`):
  model, dtype, workload, rate_rps, targets {ttft_ms, tpot_ms, attainment},
  observed (--from-prometheus, else null) {rate_rps, mean_input_tokens, mean_output_tokens,
            prefix_hit, burst_factor},
  candidates: [{rank, disaggregated, short_prompt_threshold,
                prefill {accelerator, count, replicas}, decode {accelerator, count, replicas},
                predicted {ttft_p50_ms, ttft_p90_ms, tpot_p50_ms, tpot_p90_ms, goodput_rps,
                           attainment, simulated_attainment},
                cost_per_hour, cost_per_million_output_tokens, binding}],
  simulation (null with --no-simulate) {seed, requests, seconds, prefix_hit},
  growth: [{multiple, rate_rps, prefill {...}, decode {...}, chips, cost_per_hour} | null-sized]
An aggregated candidate's prefill names the decode pods' accelerator with 0 replicas, as its
LLMService does. `attainment` is the model's; `simulated_attainment` the simulator's on the
`simulation` trace, null where the candidate was not simulated (planning/validate.py). The
candidates run cheapest first, except that those whose simulated attainment misses the target
come last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from pdserve.api.accelerators import ACCELERATORS, TPU_SINGLE_HOST_TOPOLOGIES
from pdserve.api.resource import API_VERSION, KIND, LLMService
from pdserve.planning.observed import Observed
from pdserve.planning.search import Candidate, Targets
from pdserve.planning.shapes import ModelShape, PlanInputError
from pdserve.planning.validate import SimulatedTrace
from pdserve.planning.workload import Workload

SCHEMA = "pdserve.dev/plan/v1"


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    goodput_rps: float
    simulated_attainment: float | None = None


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    dtype: str
    workload: Workload
    rate: float
    targets: Targets
    ranked: list[Ranked]
    growth: list[tuple[float, Candidate | None]]
    observed: Observed | None = None
    simulation: SimulatedTrace | None = None


def _role(candidate: Candidate, role: str) -> dict[str, Any]:
    d = candidate.deployment
    if role == "prefill" and candidate.prefill_shape is not None:
        shape, replicas = candidate.prefill_shape, d.prefill_replicas
    else:
        shape = candidate.decode_shape
        replicas = d.decode_replicas if role == "decode" else 0
    return {"accelerator": shape.accelerator.kind, "count": shape.perf.chips,
            "replicas": replicas}


def _ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) or math.isnan(seconds) else round(seconds * 1e3, 2)


def _per_million_output(plan: Plan, cost_per_hour: float) -> float:
    tokens_per_hour = plan.rate * plan.workload.output_tokens.mean * 3600
    return cost_per_hour / tokens_per_hour * 1e6


def to_json(plan: Plan) -> dict[str, Any]:
    candidates = []
    for rank, item in enumerate(plan.ranked, 1):
        c, p = item.candidate, item.candidate.prediction
        candidates.append({
            "rank": rank, "disaggregated": c.deployment.disaggregated,
            "short_prompt_threshold": c.deployment.short_prompt_threshold,
            "prefill": _role(c, "prefill"), "decode": _role(c, "decode"),
            "predicted": {"ttft_p50_ms": _ms(p.ttft_p50), "ttft_p90_ms": _ms(p.ttft_p90),
                          "tpot_p50_ms": _ms(p.tpot_p50), "tpot_p90_ms": _ms(p.tpot_p90),
                          "goodput_rps": round(item.goodput_rps, 3),
                          "attainment": round(p.attainment, 4),
                          "simulated_attainment": None if item.simulated_attainment is None
                          else round(item.simulated_attainment, 4)},
            "cost_per_hour": round(c.cost_per_hour, 2),
            "cost_per_million_output_tokens": round(_per_million_output(plan, c.cost_per_hour),
                                                    3),
            "binding": p.binding,
        })
    growth = [{"multiple": multiple, "rate_rps": plan.rate * multiple,
               **({"prefill": _role(c, "prefill"), "decode": _role(c, "decode"),
                   "chips": c.deployment.chips, "cost_per_hour": round(c.cost_per_hour, 2)}
                  if c is not None else {"prefill": None, "decode": None, "chips": None,
                                         "cost_per_hour": None})}
              for multiple, c in plan.growth]
    observed = None if plan.observed is None else {
        "rate_rps": round(plan.observed.rate, 4),
        "mean_input_tokens": round(plan.observed.mean_input_tokens, 1),
        "mean_output_tokens": round(plan.observed.mean_output_tokens, 1),
        "prefix_hit": round(plan.workload.prefix_hit, 3),
        "burst_factor": round(plan.workload.arrival_scv, 2)}
    simulation = None if plan.simulation is None else {
        "seed": plan.simulation.seed, "requests": plan.simulation.requests,
        "seconds": round(plan.simulation.seconds, 1),
        "prefix_hit": round(plan.simulation.prefix_hit, 3)}
    return {"schema": SCHEMA, "model": plan.shape.name, "dtype": plan.dtype,
            "workload": plan.workload.name, "observed": observed, "rate_rps": plan.rate,
            "targets": {"ttft_ms": plan.targets.ttft_seconds * 1e3,
                        "tpot_ms": plan.targets.tpot_seconds * 1e3,
                        "attainment": plan.targets.attainment},
            "candidates": candidates, "simulation": simulation, "growth": growth}


def _pods(role: dict[str, Any]) -> str:
    return f"{role['replicas']} x {role['accelerator']} x{role['count']}"


def to_table(plan: Plan) -> str:
    data = to_json(plan)
    t = plan.targets
    lines = [f"pdserve plan: {plan.shape.name} ({plan.dtype}), workload {plan.workload.name} at "
             f"{plan.rate:g} req/s; targets TTFT {t.ttft_seconds * 1e3:g} ms and TPOT "
             f"{t.tpot_seconds * 1e3:g} ms for {t.attainment:.0%} of requests"]
    if data["observed"] is not None:
        o = data["observed"]
        lines.append(f"observed: {o['rate_rps']:g} req/s (peak x{o['burst_factor']:g}), "
                     f"{o['mean_input_tokens']:g} prompt tokens ({o['prefix_hit']:.0%} from the "
                     f"prefix cache), {o['mean_output_tokens']:g} generated, a request")
    lines.append("")
    header = ("#", "mode", "prefill pods", "decode pods", "TTFT p50/p90 ms", "TPOT p50/p90 ms",
              "goodput req/s", "sim attain", "$/hour", "$/M out tok", "binds")
    rows: list[tuple[str, ...]] = [header]
    for c in data["candidates"]:
        p = c["predicted"]
        mode = (f"P/D (<{c['short_prompt_threshold']} tok on decode)"
                if c["short_prompt_threshold"] else "P/D") if c["disaggregated"] else "aggregated"
        rows.append((str(c["rank"]), mode, _pods(c["prefill"]) if c["disaggregated"] else "-",
                     _pods(c["decode"]), f"{p['ttft_p50_ms']:.0f}/{p['ttft_p90_ms']:.0f}",
                     f"{p['tpot_p50_ms']:.1f}/{p['tpot_p90_ms']:.1f}",
                     f"{p['goodput_rps']:.1f}", _share(p["simulated_attainment"]),
                     f"{c['cost_per_hour']:.2f}",
                     f"{c['cost_per_million_output_tokens']:.2f}", c["binding"]))
    simulated = data["simulation"] is not None
    if not simulated:  # --no-simulate: no simulated figures, so no column for them
        column = header.index("sim attain")
        rows = [row[:column] + row[column + 1:] for row in rows]
    lines += _columns(rows)
    if simulated:
        sim = data["simulation"]
        lines += [f"sim attain: the simulator's share of requests meeting both targets on a "
                  f"{sim['requests']}-request trace of the workload (seed {sim['seed']});",
                  "  '-': not simulated (aggregated, short prompts on decode, or past the "
                  "cheapest checked); below the target: ranked last"]
    if data["growth"]:
        lines += ["", "growth (the winner's pod shapes, sized for each rate):"]
        growth_rows = [("rate x", "req/s", "prefill pods", "decode pods", "chips", "$/hour")]
        for g in data["growth"]:
            if g["chips"] is None:
                growth_rows.append((f"{g['multiple']:g}", f"{g['rate_rps']:g}", "-", "-",
                                    "-", "not reachable"))
                continue
            prefill = _pods(g["prefill"]) if g["prefill"]["replicas"] else "-"
            growth_rows.append((f"{g['multiple']:g}", f"{g['rate_rps']:g}",
                                prefill, _pods(g["decode"]), str(g["chips"]),
                                f"{g['cost_per_hour']:.2f}"))
        lines += _columns(growth_rows)
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _accelerator(kind: str, count: int) -> dict[str, Any]:
    facts = ACCELERATORS.get(kind)
    if facts is None:
        raise PlanInputError(f"--output yaml: {kind} is a catalogue kind the LLMService API "
                             f"does not schedule ({', '.join(ACCELERATORS)})")
    spec: dict[str, Any] = {"kind": kind}
    if facts.family == "tpu":
        spec["topology"] = next(t for t, chips in TPU_SINGLE_HOST_TOPOLOGIES.items()
                                if chips == count)
    if facts.family != "cpu":
        spec["count"] = count
    return spec


def _source(shape: ModelShape) -> dict[str, str]:
    if shape.hf_repo is not None:
        return {"uri": f"hf://{shape.hf_repo}"}
    # A directory given to --model: the manifest expects it at the same path in the image.
    return {"path": shape.name}


def to_manifest(plan: Plan, name: str) -> str:
    """The winner as an LLMService (validated by the API models before it is printed)."""
    if plan.dtype == "float8":
        raise PlanInputError("--output yaml: the LLMService API serves bfloat16, float16 or "
                             "float32 weights, not float8; plan with --dtype bfloat16")
    winner = plan.ranked[0].candidate
    data = to_json(plan)["candidates"][0]
    kinds = {data["prefill"]["accelerator"], data["decode"]["accelerator"]}
    on_cpu = any(ACCELERATORS[k].family == "cpu" for k in kinds if k in ACCELERATORS)
    spec: dict[str, Any] = {
        "model": {"servedName": name, "source": _source(plan.shape),
                  "dtype": "auto" if on_cpu else "bfloat16"},
        "profile": plan.workload.profile,
    }
    for role in ("prefill", "decode"):
        spec[role] = {"replicas": data[role]["replicas"],
                      "accelerator": _accelerator(data[role]["accelerator"],
                                                  data[role]["count"])}
    if winner.deployment.short_prompt_threshold:
        spec["router"] = {"shortPromptThreshold": winner.deployment.short_prompt_threshold}
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
                "spec": spec}
    try:
        LLMService.model_validate(manifest)
    except ValidationError as bad:  # a bug here, not the user's input
        raise AssertionError(f"pdserve plan built an invalid LLMService: {bad}") from bad
    p = winner.prediction
    header = (f"# pdserve plan: {plan.shape.name}, workload {plan.workload.name} at "
              f"{plan.rate:g} req/s; predicted TTFT p90 {_ms(p.ttft_p90)} ms, TPOT p90 "
              f"{_ms(p.tpot_p90)} ms, ${winner.cost_per_hour:.2f}/hour\n")
    if not winner.deployment.disaggregated:
        header += ("# aggregated: no prefill pods; the decode pods prefill their own "
                   "prompts\n")
    return header + yaml.safe_dump(manifest, sort_keys=False)


def render(plan: Plan, output: str, name: str) -> str:
    if output == "json":
        return json.dumps(to_json(plan), indent=2) + "\n"
    if output == "yaml":
        return to_manifest(plan, name)
    return to_table(plan)
