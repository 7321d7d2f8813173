"""Helm installs CRDs only from the chart's crds/ directory: it must hold exactly crds/."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "manifests_generate", ROOT / "manifests" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(10)
def test_chart_crds_are_a_copy_of_the_generated_crds() -> None:
    gen = generator()
    assert gen.crd_files(gen.CRDS), "crds/ is empty: run `make crds`"
    assert gen.stale_chart_crds() == [], "run python manifests/generate.py"


@pytest.mark.timeout(10)
def test_chart_crds_hold_the_llmservice_crd() -> None:
    texts = generator().crd_files(ROOT / "charts" / "pdserve" / "crds").values()
    assert any("name: llmservices.pdserve.dev" in text for text in texts)
