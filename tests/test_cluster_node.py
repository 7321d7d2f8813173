"""The real node's pure parts: its configuration files, the pause image archive, the DNS
readiness probe's wire format, the node identity in the PKI, and pod placement."""

from __future__ import annotations

import io
import json
import socket
import struct
import tarfile
import threading
import tomllib
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from e2e.cluster import certs
from e2e.cluster.node import configs, dns, identity, pause
from e2e.cluster.node.paths import NodePaths
from e2e.real_node import Placement


def test_containerd_config_is_cri_with_runc_cgroupfs_and_the_local_pause_image(
        tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    config = tomllib.loads(configs.containerd_toml(paths))
    assert config["version"] == 4 and config["imports"] == []
    plugins = config["plugins"]
    assert plugins["io.containerd.server.v1.grpc"]["address"] == str(paths.containerd_socket)
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == (
        configs.PAUSE_IMAGE)
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"] == {"BinaryName": configs.RUNC, "Root": str(paths.runc_root),
                               "SystemdCgroup": False}
    assert runtime["cni"]["conf_dir"] == str(paths.cni_conf)
    # Unix sockets are limited to 108 bytes, shim sockets sit under the state directory.
    assert len(str(paths.containerd_state)) < 40


def test_kubelet_accepts_the_hybrid_cgroups_and_registers_tainted(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    config = yaml.safe_load(configs.kubelet_config(paths, tmp_path / "pki"))
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["registerWithTaints"] == [identity.TAINT]
    assert config["clusterDNS"] == [identity.DNS_SERVICE_IP]
    assert config["authorization"]["mode"] == "Webhook"
    args = configs.kubelet_args(Path("/bin"), paths, tmp_path / "kubeconfig")
    assert f"--node-ip={identity.NODE_IP}" in args
    labels = next(a for a in args if a.startswith("--node-labels=")).split("=", 1)[1]
    assert f"{identity.LABEL[0]}={identity.LABEL[1]}" in labels.split(",")


def test_kube_proxy_leaves_machine_wide_conntrack_settings_alone(tmp_path: Path) -> None:
    config = yaml.safe_load(configs.kube_proxy_config(tmp_path / "kubeconfig"))
    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["clusterCIDR"] == identity.POD_SUBNET


def test_cni_and_dns_objects_agree_with_the_node_identity(tmp_path: Path) -> None:
    cni = json.loads(configs.cni_conflist(NodePaths(tmp_path)))
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": identity.POD_SUBNET}]]
    objects = {o["kind"]: o for o in configs.dns_objects()}
    assert objects["Service"]["spec"]["clusterIP"] == identity.DNS_SERVICE_IP
    assert objects["EndpointSlice"]["endpoints"][0]["addresses"] == [identity.NODE_IP]
    assert f"bind {identity.NODE_IP}" in configs.corefile(tmp_path / "kubeconfig")


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    found = archive.extractfile(name)
    assert found is not None, name
    return found.read()


def test_pause_archive_is_an_oci_layout_naming_the_sandbox_image() -> None:
    with tarfile.open(fileobj=io.BytesIO(pause.oci_archive(b"\x7fELF binary"))) as archive:
        assert {"oci-layout", "index.json"} <= set(archive.getnames())
        entry = json.loads(_member(archive, "index.json"))["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == configs.PAUSE_IMAGE
        manifest = json.loads(_member(archive, "blobs/sha256/" + entry["digest"][7:]))
        layer = _member(archive, "blobs/sha256/" + manifest["layers"][0]["digest"][7:])
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        assert inner.getmember("pause").mode == 0o755


def test_node_identities_are_issued_for_the_authorizers(tmp_path: Path) -> None:
    certs.make_pki(tmp_path)
    kubelet = x509.load_pem_x509_certificate((tmp_path / "kubelet.crt").read_bytes()).subject
    assert kubelet.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        f"system:node:{identity.NODE_NAME}")
    assert kubelet.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    serving = x509.load_pem_x509_certificate((tmp_path / "kubelet-serving.crt").read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [identity.NODE_IP]


def _answering_server(answer_ip: str) -> tuple[socket.socket, threading.Thread]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def serve() -> None:
        query, peer = server.recvfrom(512)
        header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(answer_ip)
        server.sendto(header + query[12:] + answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_dns_probe_reads_the_first_a_record() -> None:
    server, thread = _answering_server("10.96.0.1")
    port = server.getsockname()[1]
    found = dns.resolve("kubernetes.default.svc.cluster.local", "127.0.0.1", port=port)
    assert found == "10.96.0.1"
    thread.join(2)
    server.close()


def test_dns_probe_gives_none_without_an_answer() -> None:
    assert dns.resolve("nothing.invalid", "127.0.0.1", timeout_s=0.2) is None


def test_placement_adds_the_real_node_selector_and_toleration() -> None:
    role = {"replicas": 1, "tolerations": [{"key": "a", "operator": "Exists"}]}
    placed = Placement.real_node().apply(role)
    assert placed["nodeSelector"] == identity.node_selector()
    assert placed["tolerations"] == [{"key": "a", "operator": "Exists"},
                                     *identity.tolerations()]
    assert role == {"replicas": 1, "tolerations": [{"key": "a", "operator": "Exists"}]}
    assert Placement().apply(role) == role
