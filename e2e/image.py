"""`python -m e2e.image build`: the project's container image, built here with no registry.

The base is Debian bookworm made by mmdebstrap and imported into podman's (rootful) storage;
podman builds the Dockerfile on it and saves the image as an OCI archive with uncompressed
layers (compressing GBs on few cores is slow) under the cache, from where a node's containerd
imports it. Both steps are cached by content: an unchanged checkout costs a hash of its sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

from e2e import debian_packages
from e2e.cluster.versions import cache_root

REPO_ROOT = Path(__file__).resolve().parents[1]
# What containerd resolves the chart's image (`pdserve:<appVersion>`) to.
REPOSITORY = "docker.io/library/pdserve"
BASE_IMAGE = "localhost/pdserve-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# A tarball has no image config: the Dockerfile's `PATH=/opt/pdserve/bin:$PATH` needs one.
# The tools the build runs, by Debian package (installed when missing, as CI starts bare).
BUILD_TOOLS = {"podman": "podman", "mmdebstrap": "mmdebstrap", "runc": "/usr/sbin/runc"}
# crun refuses this machine's v1/v2 hybrid cgroups ("drop all controllers from cgroupv2").
BUILD_RUNTIME = "/usr/sbin/runc"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_RECIPE_LABEL = "dev.pdserve.base-recipe"
# Where a build's RUN steps see the host's CA bundle and uv cache: beside the Dockerfile's cache
# mount, so the empty mount points left in the image are in root's cache, unseen by uid 10001.
BUILD_CA_BUNDLE = "/root/.cache/pdserve-build-ca.crt"
BUILD_UV_CACHE = "/root/.cache/host-uv"
PROGRESS_EVERY_S = 15.0


class ImageError(RuntimeError):
    """A step of the image build failed; the message names the step and its log."""


def reference(root: Path = REPO_ROOT) -> str:
    """The image reference pods ask for: the chart's repository, tagged with the version."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return f"{REPOSITORY}:{project['version']}"


def images_dir() -> Path:
    return cache_root() / "images"


def archive_path(key: str, root: Path = REPO_ROOT) -> Path:
    """Where the archive of the image built from sources with content key `key` is kept."""
    tag = reference(root).rsplit(":", 1)[1]
    return images_dir() / f"pdserve-{tag}-{key[:16]}.oci.tar"


# --- the build context, as .dockerignore selects it ---------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**` spans directories, `*` and `?` stay within one."""
    parts = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        parts.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)))
    return re.compile("".join(parts))


def ignore_patterns(root: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(negated, regex, cleaned pattern) for each line of root/.dockerignore, in order."""
    path = root / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(cleaned), cleaned))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex, _ in rules:
        if negated != ignored:
            continue  # only a `!` pattern can bring back, only a plain one can leave out
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def context_files(root: Path) -> list[str]:
    """Relative paths of the files the build context holds, sorted."""
    rules = ignore_patterns(root)
    found = []
    for directory, subdirs, files in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # Like Docker: an ignored directory is skipped unless a `!` pattern names a path in it.
        subdirs[:] = sorted(
            d for d in subdirs
            if not is_ignored(prefix + d, rules)
            or any(neg and (p + "/").startswith(prefix + d + "/") for neg, _, p in rules)
        )
        found += [prefix + f for f in files if not is_ignored(prefix + f, rules)]
    return sorted(found)


# --- content keys --------------------------------------------------------------------------


def base_command(tarball: Path) -> list[str]:
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            "--format=tar", "bookworm", str(tarball), *BASE_SOURCES]


def base_recipe_key() -> str:
    recipe = {"mmdebstrap": base_command(Path("OUT")), "path": BASE_PATH}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def content_key(root: Path = REPO_ROOT) -> str:
    """A hash of everything the image is made from: the Dockerfile, .dockerignore, every file
    of the build context, the base's recipe and the reference it is tagged with."""
    digest = hashlib.sha256()
    for part in (base_recipe_key(), reference(root)):
        digest.update(part.encode() + b"\0")
    for name in ("Dockerfile", ".dockerignore", *context_files(root)):
        path = root / name
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(name.encode() + b"\0" + executable + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- commands ------------------------------------------------------------------------------


def import_base_command(tarball: Path) -> list[str]:
    return ["podman", "import", "--change", f"ENV PATH={BASE_PATH}",
            "--change", f"LABEL {BASE_RECIPE_LABEL}={base_recipe_key()}",
            str(tarball), BASE_IMAGE]


def build_command(root: Path, ca_bundle: Path | None, uv_cache: Path | None) -> list[str]:
    # Root here may lack CAP_SYS_RESOURCE: RUN steps keep this process's open-file limits
    # rather than raise them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    command = ["podman", "--runtime", BUILD_RUNTIME, "build", "--file", str(root / "Dockerfile"),
               "--tag", reference(root), "--layers", "--pull=never", "--network", "host",
               "--ulimit", f"nofile={soft}:{hard}", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    if ca_bundle is not None:
        command += ["--volume", f"{ca_bundle}:{BUILD_CA_BUNDLE}:ro",
                    "--build-arg", f"PIP_CERT={BUILD_CA_BUNDLE}",
                    "--build-arg", f"SSL_CERT_FILE={BUILD_CA_BUNDLE}"]
    if uv_cache is not None:
        command += ["--volume", f"{uv_cache}:{BUILD_UV_CACHE}",
                    "--build-arg", f"UV_CACHE_DIR={BUILD_UV_CACHE}"]
    return [*command, str(root)]


def save_command(image: str, archive: Path) -> list[str]:
    return ["podman", "save", "--format", "oci-archive", "--uncompressed",
            "--output", str(archive), image]


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's Python tools are told to trust (a TLS-inspecting proxy's)."""
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def host_uv_cache() -> Path | None:
    """The host's uv cache (`make venv` filled it with torch): the build shares it."""
    uv = shutil.which("uv")
    if uv is None:
        return None
    found = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=False)
    path = Path(found.stdout.strip())
    return path if found.returncode == 0 and path.is_dir() else None


# --- steps ---------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[image] {message}", flush=True)


def _last_line(log: Path) -> str:
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:110] if lines else ""


def run_step(name: str, command: list[str], log: Path) -> None:
    """Runs one long step with its output in `log`, saying every few seconds how it goes."""
    log.parent.mkdir(parents=True, exist_ok=True)
    _say(f"{name}: {' '.join(command[:2])} ... (log: {log})")
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        while True:
            try:
                code = proc.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                _say(f"{name}: {time.monotonic() - start:.0f} s  {_last_line(log)}")
    if code != 0:
        raise ImageError(f"{name} failed (exit {code}); log: {log}\n  {_last_line(log)}")
    _say(f"{name}: done in {time.monotonic() - start:.0f} s")


def base_is_current() -> bool:
    found = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{BASE_RECIPE_LABEL}"}}}}',
         BASE_IMAGE], capture_output=True, text=True, check=False)
    return found.returncode == 0 and found.stdout.strip() == base_recipe_key()


def image_id(image: str) -> str | None:
    """The id of the image a reference names in podman's storage, or None."""
    found = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                           capture_output=True, text=True, check=False)
    return found.stdout.strip() or None if found.returncode == 0 else None


def image_digest(image: str) -> str:
    """The manifest digest of an image in podman's storage (what an uncompressed save keeps)."""
    found = subprocess.run(["podman", "image", "inspect", "--format", "{{.Digest}}", image],
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise ImageError(f"podman has no {image}: {found.stderr.strip()}")
    return found.stdout.strip()


def ensure_base(logs: Path) -> None:
    """The mmdebstrap base in podman's storage, rebuilt only when its recipe changed."""
    if base_is_current():
        _say(f"base: {BASE_IMAGE} is current")
        return
    tarball = images_dir() / "base-bookworm.tar"
    try:
        run_step("base (mmdebstrap)", base_command(tarball), logs / "base.log")
        run_step("base (podman import)", import_base_command(tarball), logs / "base-import.log")
    finally:
        tarball.unlink(missing_ok=True)


def build(root: Path = REPO_ROOT) -> Path:
    """The OCI archive of the image built from `root`, building it only when its sources or the
    base's recipe changed since the last build. Older archives are removed (GBs each)."""
    if os.geteuid() != 0:
        raise ImageError("the image build needs root (rootful podman storage, mmdebstrap)")
    debian_packages.ensure(BUILD_TOOLS)
    start = time.monotonic()
    key = content_key(root)
    archive = archive_path(key, root)
    if archive.is_file():
        _say(f"{reference(root)}: cached {archive} ({time.monotonic() - start:.1f} s)")
        return archive
    logs = images_dir() / "logs"
    ensure_base(logs)
    previous = image_id(reference(root))
    run_step("build (podman build)", build_command(root, host_ca_bundle(), host_uv_cache()),
             logs / "build.log")
    if previous is not None and previous != image_id(reference(root)):
        # The image the tag named before: untagged now, its own layers GBs (a dependency change
        # rebuilds the whole environment layer). Still used by a container: podman keeps it.
        subprocess.run(["podman", "rmi", previous], capture_output=True, check=False)
    older = sorted(images_dir().glob("pdserve-*.oci.tar"))
    # Sources that changed without changing the image (a Dockerfile comment, an edit during a
    # build) leave every layer cached: the archive of that image is renamed, not saved again.
    built = image_digest(reference(root))
    same = next((old for old in older if archive_image(old)[1] == built), None)
    if same is not None:
        same.rename(archive)
        _say(f"archive: the image is unchanged, {same.name} renamed")
    else:
        for old in older:  # before the save: two archives of GBs need not fit at once
            old.unlink(missing_ok=True)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run_step("archive (podman save)", save_command(reference(root), partial),
                 logs / "save.log")
        partial.rename(archive)
    for old in older:
        old.unlink(missing_ok=True)
    size_gib = archive.stat().st_size / 2**30
    _say(f"{reference(root)}: {archive} ({size_gib:.2f} GiB) in {time.monotonic() - start:.0f} s")
    return archive


# --- containerd ----------------------------------------------------------------------------


def archive_image(archive: Path) -> tuple[str, str]:
    """(reference, manifest digest) of the one image in an OCI archive, from its index.json."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageError(f"{archive} has no index.json")
        manifest = json.load(member)["manifests"][0]
    return manifest["annotations"]["org.opencontainers.image.ref.name"], manifest["digest"]


def ctr_list_command(ctr: Path, address: Path, namespace: str, image: str) -> list[str]:
    return [str(ctr), "--address", str(address), "--namespace", namespace,
            "images", "ls", f"name=={image}"]


def ctr_import_command(ctr: Path, address: Path, namespace: str, archive: Path,
                       image: str) -> list[str]:
    # --base-name: the archive names the image in full; only that name is imported.
    return [str(ctr), "--address", str(address), "--namespace", namespace,
            "images", "import", "--base-name", image.rsplit(":", 1)[0], str(archive)]


def containerd_digest(ctr: Path, address: Path, namespace: str, image: str) -> str | None:
    """The manifest digest containerd holds under `image`, or None when it has none."""
    listed = subprocess.run(ctr_list_command(ctr, address, namespace, image),
                            capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        raise ImageError(f"`ctr images ls` failed: {listed.stderr.strip()}")
    for row in listed.stdout.splitlines()[1:]:  # REF TYPE DIGEST SIZE PLATFORMS LABELS
        fields = row.split()
        if len(fields) >= 3 and fields[0] == image:
            return fields[2]
    return None


def import_into_containerd(archive: Path, ctr: Path, address: Path,
                           namespace: str = "k8s.io") -> None:
    """Imports the archive's image into the containerd at `address` (the kubelet's images live
    in namespace k8s.io), unless it holds that image with the same digest already."""
    image, digest = archive_image(archive)
    if containerd_digest(ctr, address, namespace, image) == digest:
        _say(f"containerd: {image} ({digest[:19]}) already imported")
        return
    run_step("containerd (ctr images import)",
             ctr_import_command(ctr, address, namespace, archive, image),
             images_dir() / "logs" / "ctr-import.log")
    if containerd_digest(ctr, address, namespace, image) != digest:
        raise ImageError(f"containerd has no {image} at {digest} after the import")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.image",
                                     description="the pdserve container image, built locally")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help=f"build {reference()} (cached) and print its archive's path")
    parser.parse_args(argv)
    try:
        archive = build()
    except (ImageError, debian_packages.MissingPackageError) as err:
        print(f"image: {err}", file=sys.stderr)
        return 2
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
