"""What makes the Dockerfile correct, checked without building it (e2e/image.py builds it)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UID = 10001


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def last(keyword: str) -> str:
    values = [rest for kw, rest in instructions() if kw == keyword]
    assert values, f"Dockerfile has no {keyword}"
    return values[-1]


@pytest.mark.timeout(10)
def test_base_image_is_python_311_slim() -> None:
    # The base is a build argument (e2e/image.py builds on a local Debian); users get this one.
    froms = [rest for kw, rest in instructions() if kw == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instructions()


@pytest.mark.timeout(10)
def test_runs_as_numeric_non_root_user() -> None:
    user = last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == UID, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # Nothing after USER switches back to root.
    keywords = [kw for kw, _ in instructions()]
    assert "USER" in keywords[-6:], "USER must come after every RUN"
    assert "RUN" not in keywords[keywords.index("USER") :]


@pytest.mark.timeout(10)
def test_entrypoint_is_the_pdserve_command() -> None:
    assert json.loads(last("ENTRYPOINT")) == ["pdserve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pdserve"] == "pdserve.cli:main"


@pytest.mark.timeout(10)
def test_installs_the_project_with_the_runtime_extra_or_the_tpu_one() -> None:
    runs = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert re.search(r"pip install \"?/tmp/pdserve-src\[\$\{EXTRA\}\]", runs), runs
    args = [rest for kw, rest in instructions() if kw == "ARG"]
    assert "EXTRA=runtime" in args  # the default image; --build-arg EXTRA=tpu for TPU pods
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "torch_xla[tpu]==2.9.0" in extras["tpu"] and "torch==2.9.0" in extras["tpu"]
    for kw, rest in instructions():
        if kw == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} missing"


@pytest.mark.timeout(10)
def test_dockerignore_keeps_the_context_small() -> None:
    text = (ROOT / ".dockerignore").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "*", "allow-list style: ignore everything, then re-include"
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(lines)


@pytest.mark.timeout(10)
def test_chart_runs_the_operator_as_the_image_user() -> None:
    deployment = (ROOT / "charts/pdserve/templates/deployment.yaml").read_text()
    assert f"runAsUser: {UID}" in deployment and f"runAsGroup: {UID}" in deployment
    values = yaml.safe_load((ROOT / "charts/pdserve/values.yaml").read_text())
    assert values["image"]["repository"] == "pdserve"
