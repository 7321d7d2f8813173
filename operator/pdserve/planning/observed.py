"""The workload an LLMService serves, as Prometheus saw it: the planner's inputs (the mean
prompt and answer, the prefix-cache hits, the arrival rate and its recent peak) turned into a
`Workload` that `pdserve plan` and `status.recommendation` plan for.

Prometheus gives means, not distributions: the lengths are taken as lognormal around the
observed means with the spread of the built-in profiles (sigma 0.5), and the arrivals as
bursty by the ratio of the 30-second peak to the mean rate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pdserve.planning.shapes import PlanInputError
from pdserve.planning.workload import Priority, Workload, lognormal

LENGTH_SIGMA = 0.5
MAX_PREFIX_HIT = 0.95


@dataclass(frozen=True)
class Observed:
    workload: Workload
    rate: float
    mean_input_tokens: float
    mean_output_tokens: float


def _profile(mean_input: float, mean_output: float, prefix_hit: float) -> str:
    if prefix_hit >= 0.5:
        return "agentic"
    if mean_input >= 8 * mean_output:
        return "input-heavy"
    return "output-heavy" if mean_output >= mean_input else "balanced"


def observed_workload(values: Mapping[str, float], name: str) -> Observed:
    """From the planner's named inputs (`autoscaler.prometheus_source.queries`); PlanInputError
    when the window saw no traffic."""
    rate = values["arrival_rate"]
    requests = values["decode_request_rate"]
    prompt = values["decode_prompt_rate"]
    generated = values["decode_generation_rate"]
    if not all(math.isfinite(v) and v > 0 for v in (rate, requests, prompt, generated)):
        raise PlanInputError(f"{name}: no traffic in Prometheus' window (arrivals {rate:g}/s, "
                             f"finished requests {requests:g}/s, prompt tokens {prompt:g}/s, "
                             f"generated tokens {generated:g}/s)")
    hits = values["worker_cache_hit_rate"]
    prefix_hit = min(MAX_PREFIX_HIT, hits / prompt) if math.isfinite(hits) else 0.0
    peak = values["peak_arrival_rate"]
    burst = max(1.0, peak / rate) if math.isfinite(peak) else 1.0
    mean_input, mean_output = prompt / requests, generated / requests
    workload = Workload(
        name, lognormal(mean_input, LENGTH_SIGMA, 1, 8 * mean_input),
        lognormal(mean_output, LENGTH_SIGMA, 1, 8 * mean_output), prefix_hit, burst,
        (Priority("default", 1.0),), _profile(mean_input, mean_output, prefix_hit))
    return Observed(workload, rate, mean_input, mean_output)
