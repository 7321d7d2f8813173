"""The local cluster's PKI: identities RBAC relies on and a serving cert clients accept."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e.cluster import certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_issues_the_identities_and_names_the_control_plane_needs(tmp_path: Path) -> None:
    certs.make_pki(tmp_path)

    ca = load(tmp_path / "ca.crt")
    for name in ("apiserver", "admin", "controller-manager", "scheduler"):
        load(tmp_path / f"{name}.crt").verify_directly_issued_by(ca)
    admin = load(tmp_path / "admin.crt").subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    scheduler = load(tmp_path / "scheduler.crt").subject
    assert scheduler.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:kube-scheduler"
    )
    serving = load(tmp_path / "apiserver.crt")
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert (tmp_path / "sa.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_kubeconfig_embeds_the_client_identity(tmp_path: Path) -> None:
    certs.make_pki(tmp_path)

    config = yaml.safe_load(certs.kubeconfig("https://127.0.0.1:6443", tmp_path, "admin"))

    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key-data"]
    assert config["current-context"] == config["contexts"][0]["name"]
