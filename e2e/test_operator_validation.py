"""What the apiserver refuses: the CRD's schema and CEL rules reject each kind of invalid
LLMService with a message naming the field (server-side dry run), and the operator's pydantic
models refuse the same specs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from e2e.cluster.session import Cluster
from e2e.operator_harness import install_manifests, llmservice_manifest
from pdserve.api.spec import LLMServiceSpec

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    install_manifests(cluster)
    return cluster


VALID: dict[str, Any] = {"model": {"source": {"builtin": "tiny"}}}


def invalid(path: str, value: Any) -> dict[str, Any]:
    """VALID with one field (dotted path) set to `value` (None: removed)."""
    spec = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


TPU_2X2 = {"kind": "tpu-v5e", "topology": "2x2", "count": 4}
INVALID_SPECS = {
    "no-model": (invalid("model", None), "spec.model: Required value"),
    "two-sources": (
        invalid("model.source", {"builtin": "tiny", "uri": "hf://org/model"}),
        "exactly one model source must be set",
    ),
    "no-source": (invalid("model.source", {}), "exactly one model source must be set"),
    "bad-uri-scheme": (
        invalid("model.source", {"uri": "ftp://example.com/model"}),
        "spec.model.source.uri",
    ),
    "unknown-field": (invalid("replicas", 3), 'unknown field "spec.replicas"'),
    "unknown-profile": (invalid("profile", "fast"), 'Unsupported value: "fast"'),
    "unknown-accelerator": (
        invalid("prefill.accelerator", {"kind": "nvidia-b300"}),
        'Unsupported value: "nvidia-b300"',
    ),
    "negative-replicas": (invalid("decode.replicas", -1), "spec.decode.replicas"),
    "tpu-without-topology": (
        invalid("prefill.accelerator", {"kind": "tpu-v5e", "count": 4}),
        "TPU accelerators need a topology",
    ),
    "topology-on-gpu": (
        invalid("prefill.accelerator", {"kind": "nvidia-h100", "topology": "2x2", "count": 4}),
        "topology applies only to TPU accelerators",
    ),
    "topology-chip-mismatch": (
        invalid("prefill.accelerator", {**TPU_2X2, "count": 8}),
        "count must equal the chips of the TPU topology",
    ),
    "cpu-count": (
        invalid("decode.accelerator", {"kind": "cpu", "count": 2}),
        "count must be 1 for cpu",
    ),
    "nodes-on-tpu": (
        invalid("prefill.accelerator", {**TPU_2X2, "nodes": 2}),
        "nodes must be 1 on TPU",
    ),
    "too-many-nodes": (
        invalid("decode.accelerator", {"kind": "nvidia-h100", "count": 8, "nodes": 17}),
        "spec.decode.accelerator.nodes",
    ),
    "gpu-in-resources": (
        invalid("decode.resources", {"limits": {"nvidia.com/gpu": 1}}),
        "accelerators are requested with accelerator.kind",
    ),
    "chunk-above-step": (
        invalid("prefill.engine", {"chunkSize": 4096, "maxNumBatchedTokens": 1024}),
        "chunkSize must not exceed maxNumBatchedTokens",
    ),
    "kv-port-clash": (invalid("kvTransfer", {"port": 8000}), "pick another KV port"),
    "snapkv-without-budget": (
        invalid("prefill.engine", {"kvCompression": {"method": "snapkv"}}),
        "snapkv needs exactly one of ratio and budgetTokens",
    ),
    "snapkv-budget-inside-window": (
        invalid("prefill.engine", {"kvCompression": {"method": "snapkv", "budgetTokens": 16,
                                                     "windowTokens": 64}}),
        "budgetTokens must exceed windowTokens",
    ),
    "streaming-with-ratio": (
        invalid("decode.engine", {"kvCompression": {"method": "streaming", "ratio": 0.5}}),
        "ratio and budgetTokens apply only to method snapkv",
    ),
    "compression-ratio-out-of-range": (
        invalid("prefill.engine", {"kvCompression": {"method": "snapkv", "ratio": 1.5}}),
        "spec.prefill.engine.kvCompression.ratio",
    ),
    "cuda-ipc-is-no-transport": (
        invalid("kvTransfer", {"transport": "cuda-ipc"}),
        'Unsupported value: "cuda-ipc"',
    ),
    "nixl-on-tpu": (
        {**VALID, "kvTransfer": {"transport": "nixl"}, "prefill": {"accelerator": TPU_2X2}},
        "kvTransfer.transport nixl needs prefill and decode on GPU or CPU pools",
    ),
    "nixl-with-tensor-parallel-decode": (
        {**VALID, "kvTransfer": {"transport": "nixl"},
         "decode": {"accelerator": {"kind": "nvidia-h100", "count": 2}}},
        "one device per replica",
    ),
    "autoscaling-min-above-max": (
        invalid("autoscaling", {"prefill": {"minReplicas": 5, "maxReplicas": 2}}),
        "minReplicas must not exceed maxReplicas",
    ),
    "autoscaling-without-prometheus": (
        invalid("autoscaling", {"enabled": True}),
        "prometheusUrl is required",
    ),
    "budget-below-minimums": (
        {
            **invalid(
                "autoscaling",
                {
                    "acceleratorBudget": 3,
                    "prefill": {"minReplicas": 2},
                    "decode": {"minReplicas": 2},
                },
            ),
            "prefill": {"accelerator": {"kind": "nvidia-h100"}},
            "decode": {"accelerator": {"kind": "nvidia-h100"}},
        },
        "acceleratorBudget is below",
    ),
    "router-zero-replicas": (invalid("router.replicas", 0), "spec.router.replicas"),
    "metrics-peer-selecting-nothing": (
        invalid("networkPolicy.metricsPeers", [{}]),
        "a metrics peer needs a namespaceSelector, a podSelector or both",
    ),
    "selector-in-without-values": (
        invalid(
            "networkPolicy.metricsPeers",
            [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}],
        ),
        "values must be non-empty for In and NotIn",
    ),
}

@pytest.fixture(scope="module")
def dry_run_namespace(installed: Cluster) -> Iterator[str]:
    with installed.namespace("invalid-specs") as namespace:
        yield namespace


@pytest.mark.timeout(120)
def test_a_valid_spec_passes_the_same_check(installed: Cluster, dry_run_namespace: str) -> None:
    manifest = yaml.safe_dump(llmservice_manifest("valid", VALID))
    installed.kubectl(
        "create", "--dry-run=server", "-n", dry_run_namespace, "-f", "-", input=manifest
    )


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
@pytest.mark.timeout(120)
def test_invalid_spec_is_rejected_by_the_apiserver(
    installed: Cluster, dry_run_namespace: str, case: str
) -> None:
    spec, message = INVALID_SPECS[case]
    manifest = yaml.safe_dump(llmservice_manifest(case, spec))
    done = installed.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        dry_run_namespace,
        "-f",
        "-",
        input=manifest,
        check=False,
    )
    assert done.returncode != 0, f"{case} was accepted"
    assert message in done.stderr, done.stderr
    # The operator's own models refuse it too: the CRD and the models agree.
    with pytest.raises(ValidationError):
        LLMServiceSpec.model_validate(spec)


