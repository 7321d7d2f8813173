"""The worker's Prometheus metrics (the shared `pdserve_*` names, labels `role` and `model`).

Per-request series (tokens, latencies, finish reasons) are recorded by a `RequestTracker` as a
request's outputs arrive; engine-wide series (queue lengths, KV usage, prefix-cache counters) are
read from the engine's latest stats snapshot at scrape time, so they are never stale or double
counted. Each worker owns its registry, so several servers can live in one test process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

LABELS = ("role", "model")
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
KV_TRANSFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0, 10.0)


class EngineStatsLike(Protocol):
    num_waiting: int
    num_running: int
    kv_usage: float
    prefix_queries: int
    prefix_hits: int
    num_free_blocks: int
    num_blocks: int
    kv_tokens_pruned: int
    kv_bytes_saved: int


class StepOutputLike(Protocol):
    token_ids: list[int]
    num_prompt_tokens: int


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStatsLike | None], labels: list[str]) -> None:
        self._stats = stats
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        gauges: list[tuple[str, str, float]] = [
            ("pdserve_requests_waiting", "Requests waiting to be scheduled", stats.num_waiting),
            ("pdserve_requests_running", "Requests being processed", stats.num_running),
            ("pdserve_kv_usage_ratio", "Fraction of KV blocks in use (0..1)", stats.kv_usage),
            ("pdserve_kv_blocks_free", "KV blocks free or evictable", stats.num_free_blocks),
            ("pdserve_kv_blocks_total", "KV blocks in the cache", stats.num_blocks),
        ]
        for name, help_, value in gauges:
            gauge = GaugeMetricFamily(name, help_, labels=LABELS)
            gauge.add_metric(self._labels, float(value))
            yield gauge
        counters: list[tuple[str, str, float]] = [
            ("pdserve_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
             stats.prefix_queries),
            ("pdserve_prefix_cache_hits", "Prompt tokens served from the prefix cache",
             stats.prefix_hits),
            ("pdserve_kv_compression_pruned_tokens", "Tokens whose KV compression pruned",
             stats.kv_tokens_pruned),
            ("pdserve_kv_compression_saved_bytes", "KV bytes freed by compression",
             stats.kv_bytes_saved),
        ]
        for name, help_, value in counters:
            counter = CounterMetricFamily(name, help_, labels=LABELS)
            counter.add_metric(self._labels, float(value))
            yield counter


# The causes pdserve_kv_transfer_failures_total counts: the KV transfer errors' `reason`s, and
# `kv_not_arrived` (a decode worker with kv-fallback: fail whose transfer never completed).
KV_TRANSFER_FAILURE_REASONS = ("transfer_error", "decode_full", "model_mismatch",
                               "layout_mismatch", "unauthenticated", "kv_not_arrived")


class WorkerMetrics:
    def __init__(self, role: str, model: str,
                 engine_stats: Callable[[], EngineStatsLike | None]) -> None:
        self.registry = CollectorRegistry()
        labels = {"role": role, "model": model}
        self._labels = labels

        def counter(name: str, help_: str) -> Any:
            return Counter(name, help_, LABELS, registry=self.registry).labels(**labels)

        def histogram(name: str, help_: str, buckets: tuple[float, ...]) -> Any:
            metric = Histogram(name, help_, LABELS, buckets=buckets, registry=self.registry)
            return metric.labels(**labels)

        self.prompt_tokens = counter("pdserve_prompt_tokens", "Prompt tokens processed")
        self.generation_tokens = counter("pdserve_generation_tokens", "Tokens generated")
        self._requests = Counter("pdserve_requests", "Finished requests by finish reason",
                                 [*LABELS, "finish_reason"], registry=self.registry)
        self.ttft = histogram("pdserve_time_to_first_token_seconds",
                              "Time from arrival to the first generated token", TTFT_BUCKETS)
        self.inter_token = histogram("pdserve_inter_token_latency_seconds",
                                     "Time between consecutive generated tokens", ITL_BUCKETS)
        self.e2e = histogram("pdserve_e2e_request_latency_seconds",
                             "Time from arrival to the end of the request", E2E_BUCKETS)
        self.kv_transfer_bytes = counter("pdserve_kv_transfer_bytes", "KV cache bytes moved")
        self.kv_transfer_seconds = histogram("pdserve_kv_transfer_seconds",
                                             "Duration of one request's KV transfer",
                                             KV_TRANSFER_BUCKETS)
        self._kv_transfer_failures = Counter(
            "pdserve_kv_transfer_failures", "KV transfers that failed, by cause",
            [*LABELS, "reason"], registry=self.registry)
        for reason in KV_TRANSFER_FAILURE_REASONS:  # every series exists from the start, at 0
            self._kv_transfer_failures.labels(**labels, reason=reason)
        self.kv_compressed_handoffs = counter("pdserve_kv_compressed_handoffs",
                                              "KV transfers of compressed prompts")
        self.kv_transfer_fallbacks = counter("pdserve_kv_transfer_fallbacks",
                                             "Requests whose prompt KV was recomputed locally")
        self.kv_wasted_prefill_tokens = counter(
            "pdserve_kv_wasted_prefill_tokens",
            "Prompt tokens a prefill worker computed whose KV no decode worker took")
        self.registry.register(_EngineCollector(engine_stats, [role, model]))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def track(self, arrival: float | None = None) -> RequestTracker:
        """A tracker for one request; latencies count from `arrival` (perf_counter), or now."""
        return RequestTracker(self, arrival)

    def count_request(self, finish_reason: str) -> None:
        self._requests.labels(**self._labels, finish_reason=finish_reason).inc()

    def count_transfer_failure(self, reason: str) -> None:
        if reason not in KV_TRANSFER_FAILURE_REASONS:
            raise ValueError(f"unknown KV transfer failure reason {reason!r}")
        self._kv_transfer_failures.labels(**self._labels, reason=reason).inc()


class RequestTracker:
    """Records one request's latencies and token counts from its stream of outputs."""

    def __init__(self, metrics: WorkerMetrics, arrival: float | None = None) -> None:
        self._metrics = metrics
        self._start = time.perf_counter() if arrival is None else arrival
        self._last_token_at: float | None = None
        self._done = False

    def on_output(self, output: StepOutputLike) -> None:
        if not output.token_ids:
            return
        now = time.perf_counter()
        if self._last_token_at is None:
            self._metrics.ttft.observe(now - self._start)
            self._metrics.prompt_tokens.inc(output.num_prompt_tokens)
        else:
            self._metrics.inter_token.observe(now - self._last_token_at)
        self._last_token_at = now
        self._metrics.generation_tokens.inc(len(output.token_ids))

    def finish(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self._metrics.count_request(reason)
        self._metrics.e2e.observe(time.perf_counter() - self._start)
