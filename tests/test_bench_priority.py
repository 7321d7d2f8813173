"""bench/bench_priority.py without processes: the key directory it hands the router (the layout
`pdserve router --api-keys-dir` reads) and the figures it draws from two guidellm runs."""

from __future__ import annotations

import math

import pytest

from bench.bench_priority import KEYS, ClassRun, key_directory, poisson_count, summary
from bench.load_tool import Figures, Outcomes
from pdserve.router.priority import PriorityConfig, read_api_keys


def figures(ttft_p50_ms: float, ttft_p99_ms: float) -> Figures:
    nan = math.nan
    return Figures("poisson@1", nan, nan, ttft_p50_ms, nan, ttft_p99_ms, nan, nan, nan,
                   0, 0, 0, nan, nan)


def test_key_directory_is_what_the_router_reads(tmp_path):
    config = PriorityConfig.from_json(
        '{"classes": [{"name": "high", "priority": 0}, {"name": "low", "priority": 10}]}')
    config.api_keys.replace(read_api_keys(key_directory(tmp_path), config))
    for cls, key in KEYS.items():
        assert config.class_of({"Authorization": f"Bearer {key}"}, {}).name == cls


def test_summary_per_class_and_in_total():
    def run(high_start: float, low_start: float) -> dict[str, ClassRun]:
        return {"high": ClassRun(figures(30, 200), Outcomes(10, 240, {}, 0, 0, high_start,
                                                             high_start + 8)),
                "low": ClassRun(figures(1000, 3000), Outcomes(30, 720, {429: 9, 503: 1}, 1, 0,
                                                             low_start, low_start + 10))}

    out = summary([run(0.0, 0.5), run(100.0, 100.0)])
    assert out["high_sent"] == 20 and out["high_shed"] == 0 and out["high_shed_rate"] == 0
    assert out["low_sent"] == 82 and out["low_answered"] == 60 and out["low_shed"] == 18
    assert out["low_shed_rate"] == pytest.approx(18 / 82) and out["low_errors"] == 4
    assert out["high_ttft_p99"] == pytest.approx(0.2) and out["low_ttft_p50"] == 1.0
    assert out["seconds"] == pytest.approx(10.5 + 10) and out["skew"] == 0.5
    assert out["req_per_s"] == pytest.approx(80 / 20.5)
    assert out["tok_per_s"] == pytest.approx(2 * 960 / 20.5)


def test_poisson_count_is_seeded():
    assert poisson_count(50, 20, 11) == poisson_count(50, 20, 11)
    assert 850 < poisson_count(50, 20, 11) < 1150
