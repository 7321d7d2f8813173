"""Workloads for `pdserve plan`: token-length distributions, the prefix-cache hit fraction,
the arrival pattern and the priority mix; the built-in profiles and the file format.

A file (YAML or JSON):

    input_tokens:  {samples: [812, 1500, ...]}              # or
                   {buckets: [{le: 512, weight: 3}, ...]}     # histogram, or
                   {lognormal: {mean: 3000, sigma: 0.5, min: 500, max: 8000}}
    output_tokens: {...}
    prefix_hit: 0.0              # share of prompt tokens found in the prefix cache
    arrival: {pattern: poisson}  # or {pattern: bursty, burst_factor: 4}
    priorities: [{name: interactive, share: 0.2}, {name: batch, share: 0.8}]  # highest first
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pdserve.planning.shapes import PlanInputError, read_input_file

QUANTILE_POINTS = 48


@dataclass(frozen=True)
class Lengths:
    """A token-length distribution as weighted points (weights sum to 1)."""

    points: tuple[tuple[float, float], ...]

    @property
    def mean(self) -> float:
        return sum(v * w for v, w in self.points)

    def quantile(self, q: float) -> float:
        total = 0.0
        for value, weight in sorted(self.points):
            total += weight
            if total >= q - 1e-9:
                return value
        return max(v for v, _ in self.points)

    @property
    def maximum(self) -> float:
        return max(v for v, _ in self.points)


def _weighted(pairs: list[tuple[float, float]]) -> Lengths:
    total = sum(w for _, w in pairs)
    return Lengths(tuple((v, w / total) for v, w in pairs if w > 0))


def lognormal(mean: float, sigma: float, low: float, high: float) -> Lengths:
    """Clipped lognormal with the given mean, as equal-weight quantile points."""
    mu = math.log(mean) - sigma * sigma / 2
    normal = NormalDist()
    values = [min(high, max(low, math.exp(mu + sigma * normal.inv_cdf((i + 0.5)
                                                                         / QUANTILE_POINTS))))
              for i in range(QUANTILE_POINTS)]
    return _weighted([(round(v), 1.0) for v in values])


def mixture(parts: list[tuple[Lengths, float]]) -> Lengths:
    return _weighted([(v, w * share) for lengths, share in parts for v, w in lengths.points])


@dataclass(frozen=True)
class Priority:
    name: str
    share: float


@dataclass(frozen=True)
class Workload:
    name: str
    input_tokens: Lengths
    output_tokens: Lengths
    prefix_hit: float
    # Squared coefficient of variation of inter-arrival times: 1 for Poisson, the burst factor
    # for bursty arrivals (Allen-Cunneen's c_a^2).
    arrival_scv: float
    priorities: tuple[Priority, ...]
    # The LLMService profile the plan's manifest names.
    profile: str


def _builtin() -> dict[str, Workload]:
    normal = (Priority("default", 1.0),)
    summarization = (lognormal(3000, 0.5, 500, 8000), lognormal(120, 0.5, 16, 400))
    story = (lognormal(250, 0.5, 32, 1000), lognormal(700, 0.4, 150, 2000))
    # Multi-turn sessions: each turn resends the growing history (about two-thirds of its
    # tokens were the previous turn's) and answers briefly.
    agentic = (lognormal(2500, 0.5, 300, 12000), lognormal(150, 0.5, 16, 600))
    parts = (summarization, story, agentic)
    return {
        "summarization": Workload("summarization", *summarization, 0.0, 1.0, normal,
                                  "input-heavy"),
        "story": Workload("story", *story, 0.0, 1.0, normal, "output-heavy"),
        "agentic": Workload("agentic", *agentic, 0.65, 1.0, normal, "agentic"),
        "balanced": Workload(
            "balanced", mixture([(p[0], 1 / 3) for p in parts]),
            mixture([(p[1], 1 / 3) for p in parts]), 0.65 / 3, 1.0, normal, "balanced"),
    }


BUILTIN_WORKLOADS = _builtin()


class _Bucket(BaseModel):
    model_config = ConfigDict(extra="forbid")
    le: float = Field(gt=0)
    weight: float = Field(ge=0)


class _Lognormal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: float = Field(gt=0)
    sigma: float = Field(ge=0, le=3)
    min: float = Field(default=1, ge=1)
    max: float = Field(default=1_048_576, ge=1)


class _LengthsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: list[float] | None = Field(default=None, min_length=1)
    buckets: list[_Bucket] | None = Field(default=None, min_length=1)
    lognormal: _Lognormal | None = None

    @model_validator(mode="after")
    def _one_form(self) -> _LengthsFile:
        given = [f for f in ("samples", "buckets", "lognormal") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of samples, buckets or lognormal")
        if self.samples is not None and min(self.samples) < 1:
            raise ValueError("samples must be token counts >= 1")
        if self.buckets is not None and sum(b.weight for b in self.buckets) <= 0:
            raise ValueError("bucket weights must not all be 0")
        return self

    def lengths(self) -> Lengths:
        if self.samples is not None:
            return _weighted([(v, 1.0) for v in self.samples])
        if self.buckets is not None:
            # Each bucket's tokens at its midpoint (the first from 1).
            ordered = sorted(self.buckets, key=lambda b: b.le)
            lows = [1.0] + [b.le for b in ordered[:-1]]
            return _weighted([((low + b.le) / 2, b.weight) for low, b in zip(lows, ordered,
                                                                             strict=True)])
        assert self.lognormal is not None
        spec = self.lognormal
        return lognormal(spec.mean, spec.sigma, spec.min, spec.max)


class _Arrival(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: Literal["poisson", "bursty"] = "poisson"
    burst_factor: float = Field(default=1.0, ge=1.0, le=100.0)


class _PriorityFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    share: float = Field(gt=0)


class _WorkloadFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: _LengthsFile
    output_tokens: _LengthsFile
    prefix_hit: float = Field(default=0.0, ge=0.0, lt=1.0)
    arrival: _Arrival = Field(default_factory=_Arrival)
    priorities: list[_PriorityFile] = Field(default_factory=list)


def load_workload(spec: str) -> Workload:
    """A built-in profile name, or a YAML/JSON workload file."""
    builtin = BUILTIN_WORKLOADS.get(spec)
    if builtin is not None:
        return builtin
    path = Path(spec)
    if not path.is_file():
        raise PlanInputError(f"unknown workload {spec!r}: give a file or one of "
                             f"{', '.join(BUILTIN_WORKLOADS)}")
    raw = read_input_file(path)
    try:
        parsed = _WorkloadFile.model_validate(raw)
    except ValidationError as bad:
        first = bad.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise PlanInputError(f"{path}: {where}: {first['msg']}") from None
    arrival_scv = parsed.arrival.burst_factor if parsed.arrival.pattern == "bursty" else 1.0
    total = sum(p.share for p in parsed.priorities)
    priorities = tuple(Priority(p.name, p.share / total) for p in parsed.priorities) or (
        Priority("default", 1.0),)
    return Workload(path.stem, parsed.input_tokens.lengths(), parsed.output_tokens.lengths(),
                    parsed.prefix_hit, arrival_scv, priorities, "balanced")
