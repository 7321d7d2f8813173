"""Helm installs CRDs only from the chart's crds/ directory: it must hold exactly crds/."""

from __future__ import annotations

from pathlib import Path

import pytest
from manifests_generator import GENERATE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(10)
def test_chart_crds_are_a_copy_of_the_generated_crds() -> None:
    gen = GENERATE
    assert gen.crd_files(gen.CRDS), "crds/ is empty: run `make crds`"
    assert gen.stale_chart_crds() == [], "run python manifests/generate.py"


@pytest.mark.timeout(10)
def test_chart_crds_hold_the_llmservice_crd() -> None:
    texts = GENERATE.crd_files(ROOT / "charts" / "pdserve" / "crds").values()
    assert any("name: llmservices.pdserve.dev" in text for text in texts)
