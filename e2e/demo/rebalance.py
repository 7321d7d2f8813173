"""Section 4: the real planner (pdserve.autoscaler.plan) decides how to split an accelerator
budget between prefill and decode, from what the running processes' metrics show while the
load is all summaries (long prompts, short answers) and then all stories (short prompts, long
answers).

The planner's inputs come from a real Prometheus (Debian's package, e2e/prometheus.py) scraping
the router and workers under the labels a pod would carry, through the operator's own queries
(pdserve.autoscaler.prometheus_source); without Prometheus, from two scrapes of every /metrics
(e2e/demo/scrape.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from e2e.demo import report
from e2e.demo.scrape import ScrapeWindow
from e2e.demo.serving import STORY_TOKENS, SUMMARY_TOKENS, Stack
from e2e.demo.workloads import story_messages, summary_messages, timed_chat
from e2e.prometheus import Target, running_prometheus
from pdserve.api.spec import LLMServiceSpec
from pdserve.autoscaler import (
    Decision,
    MetricsSnapshot,
    PlannerState,
    Replicas,
    RoleReplicas,
    plan,
)
from pdserve.autoscaler.prometheus_source import PrometheusSource, Selector
from pdserve.controller.planner_inputs import planner_config

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "agentic-chat.yaml"
# The sample the local processes stand for (CPU pods, builtin tiny model), with the planner on:
# 2 prefill + 2 decode pods now, at most 5 CPU pods in all (one spare, so a rebalance can start
# a pod before the one it replaces has drained). Latency targets: the API's defaults (TTFT 2 s,
# 100 ms per output token).
AUTOSCALING: dict[str, Any] = {
    "enabled": True,
    "prometheusUrl": "http://prometheus.monitoring:9090",
    "prefill": {"minReplicas": 1, "maxReplicas": 3},
    "decode": {"minReplicas": 1, "maxReplicas": 3},
    "acceleratorBudget": 5,
}
CONCURRENCY = 8
# What the local processes stand for, as Prometheus labels (what pod relabeling gives in-cluster).
NAMESPACE, SERVICE = "pdserve-demo", "agentic-chat"
SCRAPE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Phase:
    name: str
    send: Callable[[Any, str, int], Any]  # (client, model, seed)


PHASES = (
    Phase("summaries", lambda client, model, seed: timed_chat(
        client, summary_messages(1000 + seed), SUMMARY_TOKENS, model)),
    Phase("stories", lambda client, model, seed: timed_chat(
        client, story_messages(seed), STORY_TOKENS, model)),
)


def demo_spec(prefill: int, decode: int) -> LLMServiceSpec:
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec["prefill"]["replicas"] = prefill
    spec["decode"]["replicas"] = decode
    spec["autoscaling"] = AUTOSCALING
    return LLMServiceSpec.model_validate(spec)


class Window(Protocol):
    """Where a load window's snapshot comes from."""

    def begin(self) -> None: ...

    def end(self, now: float) -> MetricsSnapshot: ...


class PrometheusWindow:
    """The operator's queries over the last `seconds` (Prometheus computes the rates)."""

    def __init__(self, url: str, seconds: float) -> None:
        self.source = PrometheusSource(url)
        self.selector = Selector(NAMESPACE, SERVICE, max(2, math.ceil(seconds)))

    def begin(self) -> None:
        pass

    def end(self, now: float) -> MetricsSnapshot:
        return self.source.snapshot(self.selector, now)


def targets(stack: Stack) -> list[Target]:
    """Local processes as Prometheus targets, labelled as their pods would be."""
    roles = [*((p, "prefill") for p in stack.prefill), *((p, "decode") for p in stack.decode),
             (stack.router, "router")]
    found = []
    for endpoint, role in roles:
        address = urllib.parse.urlsplit(endpoint.url).netloc
        found.append(Target(address, {
            "namespace": NAMESPACE, "llmservice": SERVICE, "role": role,
            "pod": f"{SERVICE}-{role}-{address.rsplit(':', 1)[1]}"}))
    return found


@contextlib.contextmanager
def prometheus(stack: Stack) -> Iterator[str | None]:
    """A Prometheus scraping the stack (its URL), or None when none can run here."""
    with contextlib.ExitStack() as resources:
        url = None
        try:
            url = resources.enter_context(running_prometheus(targets(stack),
                                                             SCRAPE_INTERVAL_S)).url
        except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
            report.say(f"no Prometheus here ({exc}); the planner's inputs come from two scrapes "
                       f"of every /metrics instead.")
        else:
            report.say(f"Prometheus {url} scrapes the router and workers every "
                       f"{SCRAPE_INTERVAL_S:g} s, labelled namespace={NAMESPACE}, "
                       f"llmservice={SERVICE}, role=..., as pods would be.")
        yield url


async def load_window(stack: Stack, phase: Phase, seconds: float,
                      window: Window) -> MetricsSnapshot:
    """`CONCURRENCY` clients send `phase` requests back to back; the snapshot covers `seconds`
    of that load after a short warm-up, and is taken while the load still runs."""
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def client_loop(index: int) -> None:
        seed = index
        while not stop.is_set():
            try:
                await phase.send(client, stack.model, seed)
            except Exception as exc:  # reported below: the demo must not hide failures
                errors.append(exc)
                return
            seed += CONCURRENCY

    async with stack.client() as client:
        tasks = [asyncio.create_task(client_loop(i)) for i in range(CONCURRENCY)]
        await asyncio.sleep(3.0)
        window.begin()
        await asyncio.sleep(seconds)
        snap = window.end(time.time())
        stop.set()
        await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{phase.name}: {len(errors)} request(s) failed: {errors[0]!r}")
    return snap


def decide(snap: MetricsSnapshot, spec: LLMServiceSpec) -> Decision:
    """The planner's first decision for the deployment as it runs now (ready == desired)."""
    current = Replicas(RoleReplicas(spec.prefill.replicas or 1, spec.prefill.replicas or 1),
                       RoleReplicas(spec.decode.replicas or 1, spec.decode.replicas or 1))
    return plan(snap, current, planner_config(spec), PlannerState(), snap.time)


def snapshot_row(name: str, snap: MetricsSnapshot) -> list[object]:
    p, d = snap.prefill, snap.decode
    return [name, f"{snap.arrival_rate:.1f}", f"{p.token_rate:.0f}", _ms(p.latency_seconds),
            f"{d.token_rate:.0f}", _ms(d.latency_seconds), f"{d.running:.0f}",
            f"{d.kv_usage:.2f}"]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def show(spec: LLMServiceSpec, results: list[tuple[str, MetricsSnapshot, Decision]]) -> None:
    report.table(["load", "req/s", "prefill tok/s", "TTFT ms", "decode tok/s", "ITL ms",
                  "decode running", "KV usage"],
                 [snapshot_row(name, snap) for name, snap, _ in results])
    budget = spec.autoscaling.accelerator_budget
    report.say(f"\n  planner: pdserve.autoscaler.plan, targets TTFT "
               f"{spec.autoscaling.slo.ttft_milliseconds} ms / ITL "
               f"{spec.autoscaling.slo.tpot_milliseconds} ms, budget {budget} CPU pods, now "
               f"{spec.prefill.replicas} prefill + {spec.decode.replicas} decode")
    report.table(["load", "prefill", "decode", "reason", "why"],
                 [[name, d.prefill_replicas, d.decode_replicas, d.reason, d.message]
                  for name, _, d in results])
    for name, _, d in results:
        if d.limited:
            report.say(f"  {name}: ScalingLimited: {d.limited}")


async def run(stack: Stack, seconds: float, prometheus_url: str | None
              ) -> list[tuple[str, MetricsSnapshot, Decision]]:
    spec = demo_spec(len(stack.prefill), len(stack.decode))
    source = "Prometheus" if prometheus_url else "two scrapes of every /metrics"
    report.say(f"{CONCURRENCY} clients send summaries back to back, then stories; each window's "
               f"rates and means cover {seconds:.0f} s of that load ({source}), read while the "
               f"load runs.\n")
    results = []
    for phase in PHASES:
        window: Window = (PrometheusWindow(prometheus_url, seconds) if prometheus_url
                          else ScrapeWindow(stack))
        snap = await load_window(stack, phase, seconds, window)
        results.append((phase.name, snap, decide(snap, spec)))
    show(spec, results)
    return results
