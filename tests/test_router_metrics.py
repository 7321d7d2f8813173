"""The router's stream timer: the first streamed event is the request's TTFT, counted per
priority class too when the request came through a class."""

from __future__ import annotations

import time

from pdserve.router.metrics import RouterMetrics, StreamTimer


def sample_count(metrics: RouterMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_count", labels)
    return 0.0 if value is None else value


def test_first_event_is_ttft_per_class_too():
    metrics = RouterMetrics("tiny")
    timer = StreamTimer(metrics, time.perf_counter(), "high")
    timer.feed(b'data: {"a": 1}\n\nda')
    timer.feed(b'ta: {"a": 2}\n\ndata: [DONE]\n\n')
    timer.done()
    StreamTimer(metrics, time.perf_counter()).feed(b"data: {}\n\n")  # no class: not per class
    assert sample_count(metrics, "pdserve_time_to_first_token_seconds",
                        role="router", model="tiny") == 2
    assert sample_count(metrics, "pdserve_router_class_time_to_first_token_seconds",
                        role="router", model="tiny", priority_class="high") == 1
    assert sample_count(metrics, "pdserve_inter_token_latency_seconds",
                        role="router", model="tiny") == 1
