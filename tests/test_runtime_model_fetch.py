"""`pdserve model fetch`, the init container's command for source.uri (offline schemes only)."""

import pytest

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.cli import main
from pdserve.runtime.checkpoints.fetch import FetchError, fetch_model


def test_file_uri_copies_the_model_files(tmp_path):
    source = init_model(tmp_path / "src", "tiny", "llama", None, None)
    (source / "notes.txt").write_text("not a model file")
    out = fetch_model(f"file://{source}", tmp_path / "out")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert list(out.glob("*.safetensors")) and not (out / "notes.txt").exists()


def test_a_directory_without_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="no model in Hugging Face layout"):
        fetch_model(f"file://{tmp_path / 'empty'}", tmp_path / "out")


def test_unknown_scheme_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["fetch", "ftp://example/model", str(tmp_path / "out")]) == 1
    assert "unsupported model URI" in capsys.readouterr().err


def test_hub_unreachable_is_a_clear_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch", "hf://pdserve/no-such-model", str(tmp_path / "out")]) == 1
    assert "cannot download hf://pdserve/no-such-model" in capsys.readouterr().err
