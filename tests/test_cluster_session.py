"""Which cluster the e2e session uses: an external kubeconfig is used as is."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster import session


@pytest.mark.parametrize("variable", ["PDSERVE_E2E_KUBECONFIG", "KUBECONFIG"])
def test_an_external_kubeconfig_is_used_without_starting_anything(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kind.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.delenv("PDSERVE_E2E_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv(variable, str(kubeconfig))
    monkeypatch.setattr(session.controlplane, "up", pytest.fail)

    with session.session_cluster() as cluster:
        assert cluster.kubeconfig == kubeconfig
        assert not cluster.local
        assert cluster.env["KUBECONFIG"] == str(kubeconfig)


def test_built_binaries_come_first_on_path(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "kubectl").write_text("#!/bin/sh\n")
    (bins / "kubectl").chmod(0o755)

    cluster = session.Cluster(tmp_path / "kubeconfig", bins, local=True)

    assert cluster.env["PATH"].split(":")[0] == str(bins)
    assert cluster.kubectl_path == str(bins / "kubectl")
