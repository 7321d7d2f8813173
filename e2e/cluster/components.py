"""Command lines of the control-plane components: flags for a loopback-only, RBAC-enabled,
disposable cluster whose nodes are simulated by KWOK."""

from __future__ import annotations

from pathlib import Path

from e2e.cluster import audit, lws, nodepools
from e2e.cluster.build import KWOK_STAGE_FILES, stages_dir
from e2e.cluster.node import identity as node_identity

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


def command_lines(bins: Path, state_dir: Path, ports: dict[str, int]) -> dict[str, list[str]]:
    """The command line of each component, by name; `ports` holds the free ports picked."""
    pki = state_dir / "pki"
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
    return {
        "etcd": [
            str(bins / "etcd"),
            "--name=default",
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--listen-metrics-urls=",
            # Test clusters are disposable: skipping fsync makes them much faster.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            # Pods and the real node's kubelet reach the API over the node's link, which
            # only exists while the node runs: listen on every address, advertise the link's.
            "--bind-address=0.0.0.0",
            f"--advertise-address={node_identity.HOST_IP}",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            # OwnerReferencesPermissionEnforcement (as OpenShift runs): a child with
            # blockOwnerDeletion needs `update` on its owner's finalizers, which RBAC must grant.
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # A node's hostname may resolve to loopback (this machine's does).
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--profiling=false",
            *audit.flags(state_dir),
        ],
        "kube-controller-manager": [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            f"--cert-dir={state_dir / 'controller-manager-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            str(bins / "kube-scheduler"),
            f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            f"--cert-dir={state_dir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            str(bins / "kwok"),
            f"--kubeconfig={state_dir / 'kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector="
            f"{nodepools.KWOK_ANNOTATION[0]}={nodepools.KWOK_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.0.0.1",
            "--node-lease-duration-seconds=40",
            *[f"--config={stages_dir() / Path(rel).name}" for rel in KWOK_STAGE_FILES],
        ],
        lws.BINARY: lws.command_line(bins, state_dir, ports),
    }
