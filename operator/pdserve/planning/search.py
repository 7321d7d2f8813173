"""The search: every pod shape (kind x chips) that holds the model, aggregated or disaggregated
(any prefill shape with any decode shape, with or without short prompts kept on decode), each
sized to the fewest replicas meeting the targets; the cheapest first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from pdserve.planning.catalog import Accelerator
from pdserve.planning.perf import ReplicaPerf, replica_perf
from pdserve.planning.predict import Deployment, Prediction, predict
from pdserve.planning.shapes import ModelShape, PlanInputError
from pdserve.planning.workload import Workload

MAX_REPLICAS_PER_ROLE = 4096
Mode = Literal["auto", "disaggregated", "aggregated"]


@dataclass(frozen=True)
class Targets:
    ttft_seconds: float
    tpot_seconds: float
    attainment: float


@dataclass(frozen=True)
class PodShape:
    accelerator: Accelerator
    perf: ReplicaPerf

    @property
    def cost_per_hour(self) -> float:
        return self.accelerator.price_per_chip_hour * self.perf.chips


@dataclass(frozen=True)
class Candidate:
    deployment: Deployment
    prefill_shape: PodShape | None
    decode_shape: PodShape
    prediction: Prediction

    @property
    def cost_per_hour(self) -> float:
        prefill = (self.prefill_shape.cost_per_hour * self.deployment.prefill_replicas
                   if self.prefill_shape else 0.0)
        return prefill + self.decode_shape.cost_per_hour * self.deployment.decode_replicas


def pod_shapes(catalog: dict[str, Accelerator], shape: ModelShape, dtype: str,
               workload: Workload) -> list[PodShape]:
    """Every kind x chip count whose pods hold the weights and the longest request's KV."""
    longest = workload.input_tokens.maximum + workload.output_tokens.maximum
    shapes = []
    for accelerator in catalog.values():
        if accelerator.flops(dtype) is None and accelerator.family != "cpu":
            continue
        for chips in accelerator.chip_counts:
            perf = replica_perf(accelerator, shape, dtype, chips)
            if perf.kv_capacity_tokens() >= longest:
                shapes.append(PodShape(accelerator, perf))
    if not shapes:
        raise PlanInputError(
            f"{shape.name} in {dtype} (with a {longest:.0f}-token request's KV) fits no pod of "
            f"the catalogue ({', '.join(catalog)}); the largest pod holds "
            f"{_largest_pod_gb(catalog):.0f} GB, the weights need "
            f"{shape.weight_bytes(_weight_dtype(dtype)) / 1e9:.0f} GB")
    return shapes


def _weight_dtype(dtype: str) -> str:
    return dtype


def _largest_pod_gb(catalog: dict[str, Accelerator]) -> float:
    return max(a.memory_gb * max(a.chip_counts) for a in catalog.values())


def _smallest(meets: Callable[[int], bool], low: int = 1) -> int | None:
    """The smallest n >= low with meets(n), assuming monotone: doubling, then bisection."""
    high = low
    while not meets(high):
        if high >= MAX_REPLICAS_PER_ROLE:
            return None
        low, high = high + 1, min(MAX_REPLICAS_PER_ROLE, high * 2)
    while low < high:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _meets(deployment: Deployment, workload: Workload, rate: float, targets: Targets) -> bool:
    prediction = predict(deployment, workload, rate, targets.ttft_seconds, targets.tpot_seconds,
                         quantiles=False)
    return prediction.feasible and prediction.attainment >= targets.attainment


def size_aggregated(shape: PodShape, workload: Workload, rate: float,
                    targets: Targets) -> Deployment | None:
    def meets(n: int) -> bool:
        return _meets(Deployment(None, 0, shape.perf, n), workload, rate, targets)

    replicas = _smallest(meets)
    return None if replicas is None else Deployment(None, 0, shape.perf, replicas)


def short_prompt_threshold(decode: PodShape) -> int:
    """Prompts a decode step absorbs at no more than one step's cost: those whose prefill on
    the decode pod takes less than that pod's step at batch 1 (rounded down to 64 tokens)."""
    perf = decode.perf
    step = perf.decode_step_seconds(1, 0)
    per_token = (perf.prefill_seconds(1024, 1024 * 512) - perf.prefill_seconds(0, 0)) / 1024
    return int(step / per_token) // 64 * 64


def _thresholds(decode: PodShape, workload: Workload) -> list[int]:
    """0, and the absorbed-prompt threshold where some prompts fall under it."""
    shortest = min(tokens for tokens, _ in workload.input_tokens.points)
    threshold = short_prompt_threshold(decode)
    return [0, threshold] if threshold > shortest else [0]


def size_disaggregated(prefill: PodShape, decode: PodShape, threshold: int, workload: Workload,
                       rate: float, targets: Targets, budget: float) -> Deployment | None:
    """The cheapest prefill x decode replica counts meeting the targets (cost under `budget`):
    for each decode count from the least that keeps TPOT, the least prefill count."""
    best: Deployment | None = None
    best_cost = budget

    def cost(d: Deployment) -> float:
        return (d.prefill_replicas * prefill.cost_per_hour
                + d.decode_replicas * decode.cost_per_hour)

    def decode_keeps_up(n: int) -> bool:
        # With ample prefill, only decode (and its share of short prompts) can fail.
        return _meets(Deployment(prefill.perf, MAX_REPLICAS_PER_ROLE, decode.perf, n,
                                 threshold), workload, rate, targets)

    first = _smallest(decode_keeps_up)
    if first is None:
        return None
    for n_decode in range(first, MAX_REPLICAS_PER_ROLE + 1):
        if n_decode * decode.cost_per_hour + prefill.cost_per_hour >= best_cost:
            break
        def prefill_keeps_up(n: int, n_decode: int = n_decode) -> bool:
            return _meets(Deployment(prefill.perf, n, decode.perf, n_decode, threshold),
                          workload, rate, targets)

        n_prefill = _smallest(prefill_keeps_up)
        if n_prefill is None:
            continue
        found = Deployment(prefill.perf, n_prefill, decode.perf, n_decode, threshold)
        if cost(found) < best_cost:
            best, best_cost = found, cost(found)
        if n_prefill == 1:
            break  # more decode replicas only cost more
    return best


def candidates(shapes: list[PodShape], workload: Workload, rate: float, targets: Targets,
               mode: Mode, max_cost_per_hour: float | None) -> list[Candidate]:
    """One candidate per configuration that meets the targets, cheapest first."""
    found: list[Candidate] = []
    budget = max_cost_per_hour if max_cost_per_hour is not None else float("inf")
    if mode in ("auto", "aggregated"):
        for shape in shapes:
            deployment = size_aggregated(shape, workload, rate, targets)
            if deployment is not None:
                found.append(_candidate(deployment, None, shape, workload, rate, targets))
    if mode in ("auto", "disaggregated"):
        for prefill in shapes:
            for decode in shapes:
                for threshold in _thresholds(decode, workload):
                    deployment = size_disaggregated(prefill, decode, threshold, workload, rate,
                                                    targets, budget)
                    if deployment is not None:
                        found.append(_candidate(deployment, prefill, decode, workload, rate,
                                                targets))
    found = [c for c in found if c.cost_per_hour <= budget]
    found.sort(key=lambda c: (c.cost_per_hour, c.deployment.chips,
                              c.prediction.ttft_p90 + c.prediction.tpot_p90))
    return found


def _candidate(deployment: Deployment, prefill: PodShape | None, decode: PodShape,
               workload: Workload, rate: float, targets: Targets) -> Candidate:
    prediction = predict(deployment, workload, rate, targets.ttft_seconds, targets.tpot_seconds)
    return Candidate(deployment, prefill, decode, prediction)


def resize(candidate: Candidate, workload: Workload, rate: float,
           targets: Targets) -> Candidate | None:
    """The same pod shapes and mode sized for another rate (the growth table)."""
    deployment = candidate.deployment
    if candidate.prefill_shape is None:
        sized = size_aggregated(candidate.decode_shape, workload, rate, targets)
    else:
        sized = size_disaggregated(candidate.prefill_shape, candidate.decode_shape,
                                   deployment.short_prompt_threshold, workload, rate, targets,
                                   float("inf"))
    if sized is None:
        return None
    return replace(candidate, deployment=sized, prediction=predict(
        sized, workload, rate, targets.ttft_seconds, targets.tpot_seconds))


def goodput(deployment: Deployment, workload: Workload, targets: Targets) -> float:
    """The highest rate (requests/s) at which the deployment still meets the targets."""
    def meets(rate: float) -> bool:
        return _meets(deployment, workload, rate, targets)

    low, high = 0.0, 0.125
    while meets(high):
        low, high = high, high * 2
        if high > 1e6:
            return low
    while high - low > max(1e-3, high * 1e-3):
        middle = (low + high) / 2
        if meets(middle):
            low = middle
        else:
            high = middle
    return low


def best_floor(shapes: Iterable[PodShape], workload: Workload, rate: float,
               targets: Targets) -> str:
    """Why no candidate meets the targets: the best TTFT and TPOT any shape reaches with
    ample replicas, and what binds them."""
    floors = []
    for shape in shapes:
        for deployment in (Deployment(None, 0, shape.perf, MAX_REPLICAS_PER_ROLE),
                           Deployment(shape.perf, MAX_REPLICAS_PER_ROLE, shape.perf,
                                      MAX_REPLICAS_PER_ROLE)):
            prediction = predict(deployment, workload, rate, targets.ttft_seconds,
                                 targets.tpot_seconds)
            floors.append((prediction, shape))
    ttft, ttft_shape = min(floors, key=lambda f: f[0].ttft_p90)
    tpot, tpot_shape = min(floors, key=lambda f: f[0].tpot_p90)
    return (f"the best achievable p90 TTFT is {ttft.ttft_p90 * 1e3:.0f} ms "
            f"({ttft_shape.perf.name}) and p90 TPOT {tpot.tpot_p90 * 1e3:.1f} ms "
            f"({tpot_shape.perf.name}) against targets of {targets.ttft_seconds * 1e3:.0f} ms "
            f"and {targets.tpot_seconds * 1e3:.1f} ms at {targets.attainment:.0%}; "
            f"TTFT is bound by {_ttft_bound(ttft)}, TPOT by decode bandwidth")


def _ttft_bound(prediction: Prediction) -> str:
    usage = dict(prediction.usage)
    usage.pop("decode bandwidth", None)
    if usage.get("KV link", 0) >= 0.5:
        return "the KV link"
    return "prefill compute (the longest prompts' prefill alone)"
