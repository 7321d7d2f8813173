"""Where the real node keeps things: sockets and namespaces under /run (short paths: unix
sockets are limited to 108 bytes), per-cluster state beside the control plane's, and images in
the cache so that a warm start imports nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.versions import cache_root

RUN_DIR = Path("/run/pdserve-node")


@dataclass(frozen=True)
class NodePaths:
    state: Path

    @property
    def run(self) -> Path:
        return RUN_DIR

    @property
    def mount_ns(self) -> Path:
        return RUN_DIR / "mnt"

    @property
    def containerd_socket(self) -> Path:
        return RUN_DIR / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        return RUN_DIR / "containerd"

    @property
    def runc_root(self) -> Path:
        return RUN_DIR / "runc"

    @property
    def containerd_root(self) -> Path:
        return cache_root() / "node" / "containerd"

    @property
    def config(self) -> Path:
        return self.state / "config"

    @property
    def cni_conf(self) -> Path:
        return self.state / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.state / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.state / "pod-logs"

    @property
    def sysctls(self) -> Path:
        return self.state / "sysctls"

    @property
    def logs(self) -> Path:
        return self.state / "logs"


def for_cluster(cluster_state_dir: Path) -> NodePaths:
    return NodePaths(cluster_state_dir / "node")
