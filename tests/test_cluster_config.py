"""Pure parts of the local cluster tooling: wrapper go.mod generation and node pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster import nodepools
from e2e.cluster.build import local_replacements, wrapper_gomod
from e2e.cluster.versions import COMPONENTS

KUBERNETES = next(c for c in COMPONENTS if c.name == "kubernetes")
ETCD = next(c for c in COMPONENTS if c.name == "etcd")

UPSTREAM_K8S = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tgithub.com/spf13/cobra v1.10.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/kubectl => ./staging/src/k8s.io/kubectl // the CLI
)
"""

UPSTREAM_ETCD = """module go.etcd.io/etcd/server/v3

go 1.26.0

toolchain go1.26.10

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/pkg/v3 => ../pkg
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace example.com/pinned => example.com/pinned v1.2.3
"""


def test_local_replacements_keep_only_local_paths() -> None:
    assert local_replacements(UPSTREAM_K8S) == ["k8s.io/api", "k8s.io/kubectl"]
    assert local_replacements(UPSTREAM_ETCD) == ["go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/pkg/v3"]


def test_kubernetes_wrapper_points_staging_modules_at_published_versions() -> None:
    gomod = wrapper_gomod(KUBERNETES, UPSTREAM_K8S)

    assert "require k8s.io/kubernetes v1.37.2" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in gomod
    assert "\tk8s.io/kubectl => k8s.io/kubectl v0.37.2" in gomod
    assert "godebug default=go1.26" in gomod
    assert "go 1.26.0" in gomod
    assert "./staging" not in gomod


def test_etcd_wrapper_uses_the_etcd_version_for_its_siblings() -> None:
    gomod = wrapper_gomod(ETCD, UPSTREAM_ETCD)

    assert "\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16" in gomod
    assert "FORBIDDEN" not in gomod
    assert "toolchain" not in gomod


def test_default_pools_match_the_documented_accelerators() -> None:
    nodes = nodepools.node_manifests(nodepools.load())
    by_pool: dict[str, list[dict]] = {}
    for node in nodes:
        by_pool.setdefault(node["metadata"]["labels"]["pdserve.dev/pool"], []).append(node)

    assert {pool: len(members) for pool, members in by_pool.items()} == {
        "gpu": 4,
        "tpu": 4,
        "cpu": 2,
    }
    gpu = by_pool["gpu"][0]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
    assert gpu["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    tpu = by_pool["tpu"][0]
    assert tpu["status"]["capacity"]["google.com/tpu"] == "4"
    assert tpu["metadata"]["labels"]["cloud.google.com/gke-tpu-topology"] == "2x2"
    for node in nodes:
        assert node["metadata"]["labels"]["type"] == "kwok"
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert not by_pool["cpu"][0]["spec"]["taints"]


def test_pool_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  - name: gpu\n    count: 2\n    gpus: 8\n")

    with pytest.raises(nodepools.NodePoolConfigError, match="gpus"):
        nodepools.load(bad)
    with pytest.raises(nodepools.NodePoolConfigError, match="cannot read"):
        nodepools.load(tmp_path / "missing.yaml")


def test_pool_config_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = tmp_path / "pools.yaml"
    custom.write_text("pools:\n  - name: l4\n    count: 1\n    resources: {nvidia.com/gpu: '1'}\n")
    monkeypatch.setenv("PDSERVE_NODE_POOLS", str(custom))

    (node,) = nodepools.node_manifests(nodepools.load())

    assert node["metadata"]["name"] == "l4-0"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
