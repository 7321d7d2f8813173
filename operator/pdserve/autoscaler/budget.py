"""Splitting a binding accelerator budget between prefill and decode.

The split minimises the worst pressure (need per replica, a stand-in for observed or predicted
latency over target) of the two roles; among equally good splits it takes the cheapest, then the
one closest to the current replicas."""

from __future__ import annotations

import math

from pdserve.autoscaler.config import PlannerConfig
from pdserve.autoscaler.need import RoleNeed


def accelerators(cfg: PlannerConfig, prefill: int, decode: int) -> int:
    return (prefill * cfg.prefill.accelerators_per_replica
            + decode * cfg.decode.accelerators_per_replica)


def fits(cfg: PlannerConfig, prefill: int, decode: int, allowance: int | None) -> bool:
    return allowance is None or accelerators(cfg, prefill, decode) <= allowance


def best_split(cfg: PlannerConfig, prefill_need: RoleNeed, decode_need: RoleNeed,
               allowance: int, current: tuple[int, int]) -> tuple[int, int]:
    """The (prefill, decode) within bounds and `allowance` accelerators with the lowest worst
    pressure. The configuration guarantees the minimums fit."""
    a_p = cfg.prefill.accelerators_per_replica
    a_d = cfg.decode.accelerators_per_replica
    best: tuple[tuple[float, int, int], tuple[int, int]] | None = None
    for p in range(cfg.prefill.min_replicas, cfg.prefill.max_replicas + 1):
        left = allowance - p * a_p
        d_high = cfg.decode.max_replicas if a_d == 0 else min(cfg.decode.max_replicas, left // a_d)
        if d_high < cfg.decode.min_replicas:
            break
        level = max(1.0, prefill_need.pressure(p))
        d = cfg.decode.clamp(math.ceil(decode_need.replicas / level - 1e-9))
        d = min(d, d_high)
        worst = max(1.0, prefill_need.pressure(p), decode_need.pressure(d))
        key = (round(worst, 6), accelerators(cfg, p, d),
               abs(p - current[0]) + abs(d - current[1]))
        if best is None or key < best[0]:
            best = (key, (p, d))
    if best is None:  # minimums exceed the allowance: the caller validated this cannot happen
        return cfg.prefill.min_replicas, cfg.decode.min_replicas
    return best[1]


def worst_pressure(prefill_need: RoleNeed, decode_need: RoleNeed, split: tuple[int, int]) -> float:
    return max(prefill_need.pressure(split[0]), decode_need.pressure(split[1]))
