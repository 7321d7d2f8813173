"""Demand trend: a least-squares slope over recent demand, so a ramp is provisioned for the load
expected when new replicas become ready (start-up takes a minute or more), not for the past."""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_POINTS = 3


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value); 0 with too few points or no spread in time."""
    if len(points) < MIN_POINTS:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread <= 0.0:
        return 0.0
    value = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return value if math.isfinite(value) else 0.0


def forecast(current: float, points: Sequence[tuple[float, float]], horizon: float) -> float:
    """Demand expected `horizon` seconds ahead; only rising trends count (falling load is left
    to the scale-down stabilization window)."""
    return current + max(0.0, slope(points)) * horizon
