"""e2e/image.py without building: what the content key covers, the commands it runs, and the
containerd import against a fake `ctr`."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from e2e import image

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A checkout in miniature: the real Dockerfile, .dockerignore and pyproject.toml, sources
    the context keeps and files it leaves out."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy(ROOT / name, root / name)
    files = {
        "README.md": "# pdserve\n",
        "operator/pdserve/__init__.py": "",
        "operator/pdserve/runtime/kernel.c": "int f(void) { return 1; }\n",
        "operator/pdserve/__pycache__/__init__.cpython-311.pyc": "bytecode",
        "operator/pdserve.egg-info/PKG-INFO": "Name: pdserve\n",
        "tests/test_x.py": "",
        "e2e/image.py": "",
        ".venv/lib/site.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_context_holds_only_what_dockerignore_lets_in(source_tree: Path) -> None:
    assert image.context_files(source_tree) == [
        "README.md", "operator/pdserve/__init__.py", "operator/pdserve/runtime/kernel.c",
        "pyproject.toml"]


def test_context_of_this_repository() -> None:
    files = image.context_files(ROOT)
    assert {"pyproject.toml", "README.md", "operator/pdserve/cli.py"} <= set(files)
    assert all(f in ("pyproject.toml", "README.md") or f.startswith("operator/") for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


@pytest.mark.parametrize("changed", ["operator/pdserve/runtime/kernel.c", "README.md",
                                     "pyproject.toml", "Dockerfile", ".dockerignore"])
def test_content_key_changes_with_what_the_image_is_made_from(source_tree: Path,
                                                              changed: str) -> None:
    before = image.content_key(source_tree)
    with (source_tree / changed).open("a") as f:
        f.write("\n# changed\n")
    assert image.content_key(source_tree) != before


def test_content_key_changes_with_a_new_source_file(source_tree: Path) -> None:
    before = image.content_key(source_tree)
    (source_tree / "operator/pdserve/new.py").write_text("")
    assert image.content_key(source_tree) != before


@pytest.mark.parametrize("changed", ["operator/pdserve/__pycache__/__init__.cpython-311.pyc",
                                     "operator/pdserve.egg-info/PKG-INFO", "tests/test_x.py",
                                     "e2e/image.py", ".venv/lib/site.py", "tests/new.py"])
def test_content_key_ignores_files_left_out_of_the_context(source_tree: Path,
                                                          changed: str) -> None:
    before = image.content_key(source_tree)
    (source_tree / changed).write_text("changed")
    assert image.content_key(source_tree) == before


def test_content_key_changes_with_the_base_recipe(source_tree: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.content_key(source_tree)
    monkeypatch.setattr(image, "BASE_PACKAGES", (*image.BASE_PACKAGES, "curl"))
    assert image.content_key(source_tree) != before


def test_dockerfile_takes_the_base_image_as_a_build_argument() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    first_from = next(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    assert "ARG BASE_IMAGE=python:3.11-slim" in instructions[:first_from]
    assert instructions[first_from] == "FROM ${BASE_IMAGE}"


def test_reference_is_the_one_a_chart_pod_asks_for() -> None:
    chart = yaml.safe_load((ROOT / "charts/pdserve/Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts/pdserve/values.yaml").read_text())
    rendered = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    # containerd (like docker) puts a bare repository name under docker.io/library/.
    assert rendered == "pdserve:" + chart["appVersion"]
    assert image.reference() == f"docker.io/library/{rendered}"


def test_archive_is_kept_under_the_cache_dir(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    tag = image.reference().rsplit(":", 1)[1]
    path = image.archive_path("0123456789abcdef" * 4)
    assert path == tmp_path / "images" / f"pdserve-{tag}-0123456789abcdef.oci.tar"


def test_base_is_mmdebstrap_minbase_bookworm_with_python() -> None:
    command = image.base_command(Path("/cache/base.tar"))
    assert command[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "--include=python3,python3-venv,ca-certificates" in command
    assert command[command.index("bookworm") + 1] == "/cache/base.tar"
    imported = image.import_base_command(Path("/cache/base.tar"))
    assert imported[:2] == ["podman", "import"]
    assert f"LABEL {image.BASE_RECIPE_LABEL}={image.base_recipe_key()}" in imported
    assert imported[-2:] == ["/cache/base.tar", image.BASE_IMAGE]


def test_build_command_shares_the_host_ca_and_uv_cache() -> None:
    command = image.build_command(ROOT, Path("/etc/ca.crt"), Path("/root/.cache/uv"))
    joined = " ".join(command)
    assert command[:4] == ["podman", "--runtime", image.BUILD_RUNTIME, "build"]
    assert command[-1] == str(ROOT)
    assert f"--tag {image.reference()}" in joined
    assert f"--build-arg BASE_IMAGE={image.BASE_IMAGE}" in joined
    assert "--network host" in joined and "--pull=never" in joined
    assert re.search(r"--ulimit nofile=\d+:\d+", joined)
    assert f"--volume /etc/ca.crt:{image.BUILD_CA_BUNDLE}:ro" in joined
    assert f"--build-arg PIP_CERT={image.BUILD_CA_BUNDLE}" in joined
    assert f"--build-arg SSL_CERT_FILE={image.BUILD_CA_BUNDLE}" in joined
    assert f"--volume /root/.cache/uv:{image.BUILD_UV_CACHE}" in joined
    assert f"--build-arg UV_CACHE_DIR={image.BUILD_UV_CACHE}" in joined


def test_build_command_without_ca_or_host_cache_mounts_nothing() -> None:
    assert "--volume" not in image.build_command(ROOT, None, None)


def test_save_writes_an_uncompressed_oci_archive() -> None:
    assert image.save_command("docker.io/library/pdserve:0.1.0", Path("/c/x.tar")) == [
        "podman", "save", "--format", "oci-archive", "--uncompressed", "--output", "/c/x.tar",
        "docker.io/library/pdserve:0.1.0"]


def test_missing_build_tools_are_exit_code_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert image.main(["build"]) == 2
    err = capsys.readouterr().err
    assert "missing podman" in err and "no apt-get to install them" in err


# --- containerd, against a fake ctr ---------------------------------------------------------


def oci_archive(path: Path, reference: str, digest: str) -> Path:
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
        "size": 1, "annotations": {"org.opencontainers.image.ref.name": reference}}]}
    data = json.dumps(index).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


FAKE_CTR = """#!{python}
# Records its arguments; `images ls` shows the image at the digest in ./held, `import` sets it.
import sys
from pathlib import Path
here = Path(__file__).parent
with (here / "calls").open("a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
held = here / "held"
if "ls" in sys.argv:
    print("REF TYPE DIGEST SIZE PLATFORMS LABELS")
    if held.exists():
        print("{reference} application/vnd.oci.image.manifest.v1+json " + held.read_text()
              + " 5.1 GiB linux/amd64 -")
elif "import" in sys.argv:
    held.write_text("{digest}")
"""


@pytest.fixture
def fake_ctr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path / "cache"))
    ctr = tmp_path / "ctr"
    ctr.write_text(FAKE_CTR.format(python=sys.executable, reference=image.reference(),
                                   digest=DIGEST_A))
    ctr.chmod(0o755)
    return ctr


def calls(ctr: Path) -> list[str]:
    return (ctr.parent / "calls").read_text().splitlines()


def test_ctr_import_command() -> None:
    command = image.ctr_import_command(Path("/bin/ctr"), Path("/run/c.sock"), "k8s.io",
                                       Path("/c/p.tar"), "docker.io/library/pdserve:0.1.0")
    assert command == ["/bin/ctr", "--address", "/run/c.sock", "--namespace", "k8s.io",
                       "images", "import", "--base-name", "docker.io/library/pdserve",
                       "/c/p.tar"]


def test_import_into_containerd_imports_a_missing_image(fake_ctr: Path, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "p.tar", image.reference(), DIGEST_A)
    image.import_into_containerd(archive, fake_ctr, tmp_path / "c.sock")
    prefix = f"--address {tmp_path / 'c.sock'} --namespace k8s.io images"
    assert calls(fake_ctr) == [
        f"{prefix} ls name=={image.reference()}",
        f"{prefix} import --base-name docker.io/library/pdserve {archive}",
        f"{prefix} ls name=={image.reference()}"]


def test_import_into_containerd_skips_the_same_digest(fake_ctr: Path, tmp_path: Path) -> None:
    (fake_ctr.parent / "held").write_text(DIGEST_A)
    archive = oci_archive(tmp_path / "p.tar", image.reference(), DIGEST_A)
    image.import_into_containerd(archive, fake_ctr, tmp_path / "c.sock", namespace="other")
    assert [c.split()[5] for c in calls(fake_ctr)] == ["ls"]
    assert "--namespace other" in calls(fake_ctr)[0]


def test_import_into_containerd_replaces_another_digest(fake_ctr: Path, tmp_path: Path) -> None:
    (fake_ctr.parent / "held").write_text(DIGEST_B)
    archive = oci_archive(tmp_path / "p.tar", image.reference(), DIGEST_A)
    image.import_into_containerd(archive, fake_ctr, tmp_path / "c.sock")
    assert [c.split()[5] for c in calls(fake_ctr)] == ["ls", "import", "ls"]


def test_import_that_leaves_another_digest_fails(fake_ctr: Path, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "p.tar", image.reference(), DIGEST_B)
    with pytest.raises(image.ImageError, match="after the import"):
        image.import_into_containerd(archive, fake_ctr, tmp_path / "c.sock")
