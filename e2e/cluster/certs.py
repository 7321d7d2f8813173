"""A throwaway PKI (with `cryptography`) and kubeconfigs for the local control plane."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e.cluster.node import identity as node_identity

# Names the API server's serving certificate must cover (clients on loopback, in-cluster DNS).
SERVING_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# HOST_IP: the host's end of the real node's link, where its kubelet and pods reach the API.
SERVING_IPS = ("127.0.0.1", "10.96.0.1", node_identity.HOST_IP)
VALIDITY = datetime.timedelta(days=365)


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
    # The real node's components, each with the identity the apiserver's authorizers expect:
    # the Node authorizer and NodeRestriction read system:node:<name> in system:nodes, the
    # default system:node-proxier binding names system:kube-proxy.
    ClientCert("kubelet", f"system:node:{node_identity.NODE_NAME}", "system:nodes"),
    ClientCert("kube-proxy", "system:kube-proxy"),
    ClientCert("coredns", "pdserve:coredns"),
    # The apiserver's client identity towards the kubelet (logs, exec, port-forward).
    ClientCert("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
)
# The kubelet's serving certificate covers the node's address, so the apiserver verifies it.
KUBELET_SERVING_IPS = (node_identity.NODE_IP,)


class PKIError(RuntimeError):
    pass


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, group: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if group:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, group))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_pki(pki: Path) -> None:
    """Writes ca, apiserver serving cert, one client cert per CLIENTS entry, and the
    service-account signing key pair (sa.key / sa.pub) into `pki`."""
    try:
        _make_pki(pki)
    except OSError as err:
        raise PKIError(f"cannot write the cluster certificates to {pki}: {err}") from err


def _make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pdserve-local-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(ca_key, pki / "ca.key")
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        name: str, subject: x509.Name, server: bool, ips: tuple[str, ...] = SERVING_IPS
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(subject, ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in SERVING_DNS]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key, pki / f"{name}.key")
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    issue("apiserver", _name("kube-apiserver"), server=True)
    # The LeaderWorkerSet controller's webhooks, which the apiserver calls on loopback.
    issue("lws-webhook", _name("lws-webhook"), server=True, ips=("127.0.0.1",))
    issue("kubelet-serving", _name(node_identity.NODE_NAME), server=True, ips=KUBELET_SERVING_IPS)
    for client in CLIENTS:
        issue(client.name, _name(client.user, client.group), server=False)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(sa_key, pki / "sa.key")
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


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
