"""The pod sandbox ("pause") image, made here: with no registry, containerd gets it as an OCI
archive of one static binary compiled from the Kubernetes module's own pause.c."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from e2e.cluster.build import go_env
from e2e.cluster.node.configs import PAUSE_IMAGE
from e2e.cluster.versions import KUBERNETES_VERSION, cache_root

PAUSE_VERSION = PAUSE_IMAGE.rsplit(":", 1)[1]


class PauseImageError(RuntimeError):
    pass


def archive_path() -> Path:
    return cache_root() / "node" / f"pause-{PAUSE_VERSION}-{KUBERNETES_VERSION}.oci.tar"


def _pause_source() -> Path:
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        capture_output=True, text=True, env=go_env(), cwd="/", check=False,
    )
    if proc.returncode != 0:
        raise PauseImageError(f"cannot download the Kubernetes module: {proc.stderr.strip()}")
    source = Path(json.loads(proc.stdout)["Dir"]) / "build/pause/linux/pause.c"
    if not source.exists():
        raise PauseImageError(f"{source} is missing from the Kubernetes module")
    return source


def _compile(source: Path, out: Path) -> None:
    proc = subprocess.run(
        ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-pdserve",
         "-o", str(out), str(source)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise PauseImageError(f"compiling {source} failed: {proc.stderr.strip()}")
    subprocess.run(["strip", str(out)], check=False)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _layer(binary: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
    return buf.getvalue()


def oci_archive(binary: bytes) -> bytes:
    """An OCI image layout (one layer, uid 65535 as upstream's image) in a tar."""
    layer_digest, layer = _blob(_layer(binary))
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode()
    config_digest, _ = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }).encode()
    manifest_digest, _ = _blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest),
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                            "org.opencontainers.image.ref.name": PAUSE_VERSION},
        }],
    }).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for digest, data in ((layer_digest, layer), (config_digest, config),
                         (manifest_digest, manifest)):
        files[f"blobs/sha256/{digest.split(':', 1)[1]}"] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_archive() -> Path:
    """The pause image's OCI archive, built once into the cache."""
    target = archive_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    binary = target.with_suffix(".bin")
    _compile(_pause_source(), binary)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(oci_archive(binary.read_bytes()))
    tmp.replace(target)
    binary.unlink()
    return target
