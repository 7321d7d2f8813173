"""The real node's configuration files: containerd, CNI, kubelet, kube-proxy and CoreDNS, plus
the cluster objects that make CoreDNS the cluster's DNS. Pure: text in, text out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.node import identity
from e2e.cluster.node.paths import NodePaths

RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
# Built here from the Kubernetes module's pause.c (see pause.py): there is no registry.
PAUSE_IMAGE = "localhost/pdserve/pause:3.10.2"
COREDNS_HEALTH_PORT = 8080
COREDNS_READY_PORT = 8181
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256


def containerd_toml(paths: NodePaths) -> str:
    """containerd 2.x (config version 4): CRI with runc, cgroupfs, overlayfs, CNI from Debian."""
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{cri_runtime}.containerd.runtimes.runc"
    return f"""version = 4
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
# Nothing from the host's /etc/containerd; no NRI socket or plugin directories on the host.
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = "{paths.containerd_socket}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{paths.containerd_root / 'opt'}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[{cri_runtime}]
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: a sandbox's oom_score_adj below containerd's own is
  # refused ("can't get final child's PID from pipe"), so keep it at or above containerd's.
  restrict_oom_score_adj = true
  # Pod network namespaces under containerd's state: nothing of a pod left in the host's /run.
  netns_mounts_under_state_dir = true
  [{cri_runtime}.containerd]
    default_runtime_name = "runc"
  [{runc}]
    runtime_type = "io.containerd.runc.v2"
  [{runc}.options]
    BinaryName = "{RUNC}"
    Root = "{paths.runc_root}"
    SystemdCgroup = false
  [{cri_runtime}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{paths.cni_conf}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"""


def cni_conflist(paths: NodePaths) -> str:
    """One bridge for the node's pods, addresses from host-local, hairpin for a pod that
    reaches itself through its own Service."""
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": "pdserve-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": identity.POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.state / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def kubelet_config(paths: NodePaths, pki: Path) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The machine's cgroups are a v1/v2 hybrid (runc copes, crun does not).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "clusterDNS": [identity.DNS_SERVICE_IP],
        "clusterDomain": identity.CLUSTER_DOMAIN,
        # Pods resolve cluster names only: nothing outside this machine is reachable anyway.
        "resolvConf": str(paths.config / "resolv.conf"),
        "podLogsDir": str(paths.pod_logs),
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "readOnlyPort": 0,
        "registerWithTaints": [identity.TAINT],
        "serializeImagePulls": False,
        "failSwapOn": False,
        "maxPods": 40,
        # A busy CI disk must not evict the test's pods; real nodes keep the defaults.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "shutdownGracePeriod": "0s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_args(bins: Path, paths: NodePaths, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in (identity.LABEL, identity.POOL_LABEL))
    return [
        str(bins / "kubelet"),
        f"--config={paths.config / 'kubelet.yaml'}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={paths.kubelet_root}",
        f"--cert-dir={paths.state / 'kubelet-pki'}",
        f"--hostname-override={identity.NODE_NAME}",
        f"--node-ip={identity.NODE_IP}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def kube_proxy_config(kubeconfig: Path) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": identity.NODE_NAME,
        "clusterCIDR": identity.POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the machine-wide conntrack limits and timeouts as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_args(bins: Path, paths: NodePaths) -> list[str]:
    return [str(bins / "kube-proxy"), f"--config={paths.config / 'kube-proxy.yaml'}", "--v=1"]


def corefile(kubeconfig: Path) -> str:
    """Cluster names only (no upstream to forward to), served on the node's address."""
    return f""".:53 {{
    bind {identity.NODE_IP}
    errors
    health {identity.NODE_IP}:{COREDNS_HEALTH_PORT}
    ready {identity.NODE_IP}:{COREDNS_READY_PORT}
    kubernetes {identity.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
    loop
}}
"""


def coredns_args(bins: Path, paths: NodePaths) -> list[str]:
    return [str(bins / "coredns"), "-conf", str(paths.config / "Corefile")]


def dns_objects() -> list[dict[str, Any]]:
    """kube-dns as the pods' resolver: a Service on the cluster DNS address whose endpoint is
    CoreDNS on the node's address, and the read access CoreDNS's kubernetes plugin needs."""
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "pdserve:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "pdserve:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "pdserve:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "pdserve:coredns"}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": identity.DNS_SERVICE_IP, "ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {"kubernetes.io/service-name": "kube-dns",
                           "endpointslice.kubernetes.io/managed-by": "pdserve-e2e"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [identity.NODE_IP], "conditions": {"ready": True}}],
            "ports": ports,
        },
    ]
