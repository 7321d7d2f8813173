"""How fast the operator creates children and how much memory it holds with many LLMServices.

`make test` converges 40 (a few minutes on a busy 2-core machine); `bench/bench_operator_scale.py`
runs the same test with 200 for the README's figures ($PDSERVE_SCALE_LLMSERVICES). Prints the
figures (and writes them to bench/out/operator_scale.json); asserts only that every LLMService
converged, never a timing.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster.session import Cluster
from e2e.operator_harness import (
    OPERATOR,
    ROOT,
    SYSTEM_NAMESPACE,
    Api,
    OperatorProcess,
    delete_llmservices,
    install_manifests,
    running_operator,
    service_account_kubeconfig,
    wait_until,
)
from pdserve.api.spec import LLMServiceSpec
from pdserve.controller.context import Owner
from pdserve.controller.names import LABEL_MANAGED_BY, MANAGED_BY
from pdserve.controller.render import render_children

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = int(os.environ.get("PDSERVE_SCALE_LLMSERVICES", "40"))
TIMED = min(20, SERVICES // 2)  # applied one by one and timed; the rest in one batch
RESYNC_S = 30
# Workers at 0 replicas and a tiny router: the operator's work per LLMService is the same, and
# 200 router pods still fit the local CPU pool.
SPEC: dict[str, Any] = {
    "model": {"source": {"builtin": "tiny"}},
    "prefill": {"replicas": 0},
    "decode": {"replicas": 0},
    "router": {"replicas": 1, "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
}


def manifest(names: list[str]) -> str:
    return yaml.safe_dump_all(
        [
            {
                "apiVersion": "pdserve.dev/v1alpha1",
                "kind": "LLMService",
                "metadata": {"name": name},
                "spec": SPEC,
            }
            for name in names
        ]
    )


def children_per_service() -> set[tuple[str, str]]:
    spec = LLMServiceSpec.model_validate(SPEC)
    rendered = render_children(spec, Owner("x", "ns", "uid"), "pdserve:e2e")
    return {(child["kind"], child["metadata"]["name"].removeprefix("x")) for child in rendered}


def count_children(api: Api, namespace: str) -> int:
    """Children in the namespace; raw JSON, as building client models of thousands of objects
    would take CPU from the operator being measured."""
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    return sum(
        len(
            json.loads(lister(namespace, label_selector=selector, _preload_content=False).data)[
                "items"
            ]
        )
        for lister in (
            api.core.list_namespaced_config_map,
            api.core.list_namespaced_service,
            api.apps.list_namespaced_deployment,
            api.policy.list_namespaced_pod_disruption_budget,
            api.networking.list_namespaced_network_policy,
        )
    )


def has_children(api: Api, namespace: str, name: str, suffixes: set[tuple[str, str]]) -> bool:
    return set(api.children(namespace, name)) == {(kind, name + rest) for kind, rest in suffixes}


@pytest.fixture(scope="module")
def scale_setup(
    cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, OperatorProcess, Api]]:
    install_manifests(cluster)
    api = Api(cluster)
    workdir = tmp_path_factory.mktemp("operator-scale")
    kubeconfig = service_account_kubeconfig(
        cluster, SYSTEM_NAMESPACE, OPERATOR, workdir / "kubeconfig"
    )
    with (
        cluster.namespace("scale") as namespace,
        running_operator(
            kubeconfig, [f"--namespace={namespace}"], workdir / "operator.log"
        ) as operator,
    ):
        yield namespace, operator, api
        delete_llmservices(api, namespace, operator)


@pytest.mark.timeout(1200)
def test_children_latency_and_memory_with_many_llmservices(
    cluster: Cluster,
    scale_setup: tuple[str, OperatorProcess, Api],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace, operator, api = scale_setup
    suffixes = children_per_service()
    names = [f"svc-{index:03d}" for index in range(SERVICES)]
    rss_idle = operator.rss_bytes()

    latencies = []
    for name in names[:TIMED]:
        started = time.monotonic()
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest([name]))
        wait_until(
            lambda name=name: has_children(api, namespace, name, suffixes),
            60,
            f"children of {name}",
            operator,
        )
        latencies.append(time.monotonic() - started)

    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(names[TIMED:]), timeout=300)
    total = SERVICES * len(suffixes)
    wait_until(
        lambda: count_children(api, namespace) == total,
        600,
        f"{total} children of {SERVICES} LLMServices",
        operator,
        interval_s=2,
    )
    batch_s = time.monotonic() - started

    def all_observed() -> bool:
        return all(
            (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]
            for item in api.llmservices(namespace)
        )

    wait_until(all_observed, 600, "every status to be written", operator, interval_s=2)
    rss_converged = operator.rss_bytes()
    # One more period, so every LLMService's re-check timer has fired at least once.
    time.sleep(RESYNC_S + 5)
    rss_steady = operator.rss_bytes()
    assert count_children(api, namespace) == total

    figures = {
        "llmservices": SERVICES,
        "children_per_llmservice": len(suffixes),
        "apply_to_children_p50_s": round(statistics.median(latencies), 3),
        "apply_to_children_p90_s": round(statistics.quantiles(latencies, n=10)[-1], 3),
        "apply_to_children_max_s": round(max(latencies), 3),
        "batch_llmservices": SERVICES - TIMED,
        "batch_apply_to_all_children_s": round(batch_s, 1),
        "operator_rss_idle_mib": round(rss_idle / 2**20, 1),
        "operator_rss_converged_mib": round(rss_converged / 2**20, 1),
        "operator_rss_steady_mib": round(rss_steady / 2**20, 1),
        "reconciles": operator.metric("pdserve_operator_reconciles_total"),
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "operator_scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print("\noperator scale figures (timings of this machine, not asserted):")
        for key, value in figures.items():
            print(f"  {key}: {value}")
