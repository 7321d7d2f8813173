"""The LeaderWorkerSet controller in the local cluster, as its release installs it, save where
it runs: a process of this machine, so its webhooks are called by URL on loopback with a
certificate from the cluster's own CA (instead of a Service and its self-managed certificate).
Its pod webhook injects the rendezvous environment (LWS_LEADER_ADDRESS, ...) that
multi-node worker pods read."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.versions import component, module_files_dir

BINARY = "lws-controller"
CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
CRD_FILE = "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
# The pod webhooks see only pods of a LeaderWorkerSet (as in the release's manifests).
_LWS_PODS = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name",
                                   "operator": "Exists"}]}
_WEBHOOKS: dict[str, list[tuple[str, str, str, list[str]]]] = {
    # kind -> (name, path, resource group/resource, operations)
    "MutatingWebhookConfiguration": [
        ("mleaderworkerset.kb.io", "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
         "leaderworkerset.x-k8s.io/leaderworkersets", ["CREATE", "UPDATE"]),
        ("mpod.kb.io", "/mutate--v1-pod", "/pods", ["CREATE"]),
    ],
    "ValidatingWebhookConfiguration": [
        ("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
         "leaderworkerset.x-k8s.io/leaderworkersets", ["CREATE", "UPDATE"]),
        ("vpod.kb.io", "/validate--v1-pod", "/pods", ["CREATE", "UPDATE"]),
    ],
}


def crd_path() -> Path:
    return module_files_dir(component("lws")) / CRD_FILE


def write_config(state_dir: Path, webhook_port: int, health_port: int) -> Path:
    """The controller's Configuration; its webhook serves the certificate in lws-certs/."""
    pki = state_dir / "pki"
    certs = state_dir / "lws-certs"
    certs.mkdir(exist_ok=True)
    (certs / "tls.crt").write_bytes((pki / "lws-webhook.crt").read_bytes())
    (certs / "tls.key").write_bytes((pki / "lws-webhook.key").read_bytes())
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
    }
    path = state_dir / "lws-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command_line(bins: Path, state_dir: Path, ports: dict[str, int]) -> list[str]:
    config = write_config(state_dir, ports["lws-webhook"], ports["lws-health"])
    return [str(bins / BINARY), f"--config={config}",
            f"--kubeconfig={state_dir / 'kubeconfig'}", "--zap-log-level=info"]


def webhook_objects(ca_cert: Path, webhook_port: int) -> list[dict[str, Any]]:
    bundle = base64.b64encode(ca_cert.read_bytes()).decode()
    objects = []
    for kind, hooks in _WEBHOOKS.items():
        webhooks = []
        for name, path, resource, operations in hooks:
            group, _, plural = resource.partition("/")
            hook: dict[str, Any] = {
                "name": name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}{path}",
                                 "caBundle": bundle},
                "rules": [{"apiGroups": [group], "apiVersions": ["v1"],
                           "operations": operations, "resources": [plural]}],
            }
            if plural == "pods":
                hook["objectSelector"] = _LWS_PODS
            webhooks.append(hook)
        objects.append({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                        "metadata": {"name": f"lws-{kind.removesuffix('Configuration').lower()}"},
                        "webhooks": webhooks})
    return objects
