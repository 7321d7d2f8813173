"""`pdserve operator`: bad invocations fail with a clear message, before touching a cluster."""

import pytest

from pdserve.controller.cli import main


def test_missing_kubeconfig_is_a_clear_error(tmp_path, capsys):
    assert main(["--kubeconfig", str(tmp_path / "nope")]) == 2
    assert "no kubeconfig at" in capsys.readouterr().err


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--namespace", "a", "--all-namespaces"])
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_port_out_of_range(capsys):
    assert main(["--liveness", "70000"]) == 2
    assert "out of range" in capsys.readouterr().err
