"""Pinned versions of the control-plane components and where their binaries are cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
# The staging modules (k8s.io/api, k8s.io/kubectl, ...) are published with the same minor/patch.
KUBERNETES_STAGING_VERSION = "v0.37.2"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
# The real node: container runtime and cluster DNS (kubelet and kube-proxy come with Kubernetes).
CONTAINERD_VERSION = "v2.4.2"
COREDNS_VERSION = "v1.15.0"
# Upstream Prometheus (module v0.316.0 is release 3.16.0): Debian's package is built without
# Kubernetes service discovery, which is how Prometheus finds pods in a cluster.
PROMETHEUS_VERSION = "v0.316.0"
# LeaderWorkerSet: one model replica over several pods (multi-node tensor parallelism).
LWS_VERSION = "v0.8.0"


@dataclass(frozen=True)
class Component:
    """One Go main module to build and the binaries it yields (binary name -> package)."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # Files of the module kept beside the binaries (manifests the cluster applies), flat in
    # `module_files_dir(self)`, whose name holds the version: a component added after the
    # cache key below was fixed is rebuilt when its version changes, the others are not.
    files: tuple[str, ...] = ()


def _k8s_version_ldflags() -> tuple[str, ...]:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=ETCD_VERSION,
        binaries={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    Component(
        name="kwok",
        module="sigs.k8s.io/kwok",
        version=KWOK_VERSION,
        binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}",),
    ),
    Component(
        name="helm",
        module="helm.sh/helm/v3",
        version=HELM_VERSION,
        binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
    ),
    Component(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=KUBERNETES_VERSION,
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        ldflags=_k8s_version_ldflags(),
    ),
    Component(
        name="containerd",
        module="github.com/containerd/containerd/v2",
        version=CONTAINERD_VERSION,
        binaries={
            name: f"github.com/containerd/containerd/v2/cmd/{name}"
            for name in ("containerd", "containerd-shim-runc-v2", "ctr")
        },
        ldflags=(f"-X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}",),
        # btrfs snapshots need cgo headers; the node uses overlayfs.
        tags=("no_btrfs",),
    ),
    Component(
        name="coredns",
        module="github.com/coredns/coredns",
        version=COREDNS_VERSION,
        binaries={"coredns": "github.com/coredns/coredns"},
    ),
    Component(
        name="prometheus",
        module="github.com/prometheus/prometheus",
        version=PROMETHEUS_VERSION,
        binaries={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
        ldflags=("-X github.com/prometheus/common/version.Version=3.16.0",),
    ),
    Component(
        name="lws",
        module="sigs.k8s.io/lws",
        version=LWS_VERSION,
        binaries={"lws-controller": "sigs.k8s.io/lws/cmd"},
        files=("config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml",),
    ),
)


def cache_root() -> Path:
    override = os.environ.get("PDSERVE_CACHE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "pdserve"


def version_key() -> str:
    return (
        f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"
        f"_containerd-{CONTAINERD_VERSION}_coredns-{COREDNS_VERSION}"
        f"_prometheus-{PROMETHEUS_VERSION}"
    )


def bin_dir() -> Path:
    return cache_root() / "k8s" / version_key() / "bin"


def module_files_dir(component: Component) -> Path:
    return bin_dir().parent / f"{component.name}-{component.version}-files"


def component(name: str) -> Component:
    return next(c for c in COMPONENTS if c.name == name)
