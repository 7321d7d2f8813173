"""A throwaway PKI (via `openssl`) and kubeconfigs for the local control plane."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# Names the API server's serving certificate must cover (clients on loopback, in-cluster DNS).
SERVING_SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:10.96.0.1",
)


@dataclass(frozen=True)
class ClientCert:
    """A client identity: the CN is the user name, O the group (RBAC reads both)."""

    name: str
    user: str
    group: str | None = None


CLIENTS = (
    ClientCert("admin", "pdserve-admin", "system:masters"),
    ClientCert("controller-manager", "system:kube-controller-manager"),
    ClientCert("scheduler", "system:kube-scheduler"),
)


class PKIError(RuntimeError):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise PKIError("`openssl` is not on PATH: install it (apt-get install openssl)")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PKIError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _new_key(name: str, pki: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        f"{name}.key",
        cwd=pki,
    )


def _signed_cert(name: str, subject: str, extensions: str, pki: Path) -> None:
    _new_key(name, pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def make_pki(pki: Path) -> None:
    """Writes ca, apiserver serving cert, one client cert per CLIENTS entry, and the
    service-account signing key pair (sa.key / sa.pub) into `pki`."""
    pki.mkdir(parents=True, exist_ok=True)
    _new_key("ca", pki)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=pdserve-local-ca",
        "-days",
        "3650",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    _signed_cert(
        "apiserver",
        "/CN=kube-apiserver",
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(SERVING_SANS)}\n",
        pki,
    )
    for client in CLIENTS:
        subject = (f"/O={client.group}" if client.group else "") + f"/CN={client.user}"
        _signed_cert(
            client.name,
            subject,
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
            pki,
        )
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.key",
        cwd=pki,
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(server: str, pki: Path, client: str, context: str = "pdserve-local") -> str:
    """A self-contained kubeconfig (certificates embedded) for the client cert `client`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate-data": _b64(pki / f"{client}.crt"),
                    "client-key-data": _b64(pki / f"{client}.key"),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": client}}],
        "current-context": context,
    }
    return yaml.safe_dump(config, sort_keys=False)
