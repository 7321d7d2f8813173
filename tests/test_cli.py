import importlib
import subprocess
import sys

from pdserve.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_works():
    done = subprocess.run([sys.executable, "-m", "pdserve", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip()


def test_operator_dir_does_not_shadow_stdlib_operator():
    mod = importlib.import_module("operator")
    assert hasattr(mod, "itemgetter")
    assert "site-packages" not in (mod.__file__ or "") and "/operator/" not in (mod.__file__ or "")
