"""The router's Prometheus metrics: latencies as the client sees them (role="router")."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

ROLE = "router"
# (path, reason) of pdserve_router_disaggregation_total: how a request's prompt reached decode.
Disaggregation = tuple[str, str]
PREFILL_DECODE: Disaggregation = ("prefill_decode", "handoff")
SHORT_PROMPT: Disaggregation = ("decode_only", "short_prompt")
LOCAL_CHEAPER: Disaggregation = ("decode_only", "local_cheaper")
NO_PREFILL_PEER: Disaggregation = ("decode_only", "no_prefill_peer")
NO_KV_TARGET: Disaggregation = ("decode_only", "no_kv_target")
PREFILL_FAILED: Disaggregation = ("fallback", "prefill_failed")
DECODE_FULL: Disaggregation = ("fallback", "decode_full")
DISAGGREGATIONS = (PREFILL_DECODE, SHORT_PROMPT, LOCAL_CHEAPER, NO_PREFILL_PEER, NO_KV_TARGET,
                   PREFILL_FAILED, DECODE_FULL)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouterMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        labels = ["role", "model"]
        self.ttft = Histogram("pdserve_time_to_first_token_seconds", "Time to first token",
                              labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("pdserve_inter_token_latency_seconds", "Time between streamed tokens",
                             labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e = Histogram("pdserve_e2e_request_latency_seconds", "Request latency",
                             labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("pdserve_router_requests", "Requests by path and outcome",
                                ["path", "outcome"], registry=self.registry)
        self.prefill_retries = Counter("pdserve_router_prefill_retries",
                                       "Prefill attempts retried on another worker",
                                       registry=self.registry)
        self.kv_redirects = Counter(
            "pdserve_router_kv_redirects",
            "Prefilled KV that a decode worker without free blocks passed on to another decode "
            "worker (instead of a second prefill)", registry=self.registry)
        self.disaggregation = Counter(
            "pdserve_router_disaggregation",
            "Requests by how their prompt reached decode: prefill_decode (its KV handed over), "
            "decode_only (short_prompt; local_cheaper: a local prefill adds less latency than "
            "the handoff, router/disagg_policy.py; no_prefill_peer: no ready prefill worker of "
            "the decode worker's model; no_kv_target: no prefill tier or a decode worker "
            "without a KV port) or fallback (prefill_failed: every prefill attempt failed; "
            "decode_full: no decode worker had KV room for the prefilled prompt within "
            "--kv-timeout; decode follows its --kv-fallback)", ["path", "reason"],
            registry=self.registry)
        self.priority_shed = Counter(
            "pdserve_router_priority_shed",
            "Requests answered 429 by the router's priority queues, by class and reason "
            "(queue_full, ttft_target, evicted: a queued lowest-class request shed for a more "
            "urgent one)", ["priority_class", "reason"], registry=self.registry)
        self.class_ttft = Histogram(
            "pdserve_router_class_time_to_first_token_seconds",
            "Time to first token by priority class (routers with --priority-classes): the "
            "planner scales for the class furthest from its ttftTargetSeconds",
            ["role", "model", "priority_class"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.priority_admitted = Counter(
            "pdserve_router_priority_admitted", "Requests given a slot, by priority class",
            ["priority_class"], registry=self.registry)
        for decision in DISAGGREGATIONS:  # exported at 0 from the start: increase() sees the
            self.disaggregation.labels(*decision)  # first request of each kind too

    def count_disaggregation(self, decision: Disaggregation) -> None:
        self.disaggregation.labels(*decision).inc()

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.labels(ROLE, self.model).observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self.itl.labels(ROLE, self.model).observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.labels(ROLE, self.model).observe(seconds)


class StreamTimer:
    """Times server-sent events as they pass through: first event -> TTFT, later ones -> ITL."""

    def __init__(self, metrics: RouterMetrics, start: float,
                 priority_class: str | None = None) -> None:
        self.metrics = metrics
        self.priority_class = priority_class
        self.start = start  # when the router received the request: TTFT includes prefill
        self.last: float | None = None
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        events = data.split(b"\n\n")
        self._partial = events.pop()
        for event in events:
            if event.startswith(b"data:") and event.strip() != b"data: [DONE]":
                self._tick()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.observe_ttft(now - self.start)
            if self.priority_class is not None:
                self.metrics.class_ttft.labels(ROLE, self.metrics.model,
                                               self.priority_class).observe(now - self.start)
        else:
            self.metrics.observe_itl(now - self.last)
        self.last = now

    def done(self) -> None:
        self.metrics.observe_e2e(time.perf_counter() - self.start)
