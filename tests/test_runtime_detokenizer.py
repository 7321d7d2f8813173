"""Incremental detokenization: complete characters only, stop strings never leak."""

from __future__ import annotations

import pytest

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.tokenizer import Tokenizer
from pdserve.runtime.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer(init_model(tmp_path_factory.mktemp("tok"), "tiny", "llama"))


def _stream(tokenizer, text: str, stop: list[str]) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Prompt:"), stop)
    ids = tokenizer.encode(text)
    chunks = [detok.add_tokens([t], finished=i == len(ids) - 1) for i, t in enumerate(ids)]
    return chunks, detok


def test_streamed_text_equals_decoded_text_without_broken_characters(tokenizer):
    text = "naïve café ✓ 日本語 emoji 🙂 done"
    chunks, _ = _stream(tokenizer, text, [])
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)


def test_stop_string_is_cut_and_never_emitted_even_partially(tokenizer):
    chunks, detok = _stream(tokenizer, "Hello there, General Kenobi. More text", ["General K"])
    assert detok.stopped
    assert "".join(chunks) == "Hello there, "
    assert not any("Gen" in c for c in chunks)


def test_earliest_of_several_stop_strings_wins(tokenizer):
    chunks, detok = _stream(tokenizer, "one two three four", ["four", "two"])
    assert detok.stopped and "".join(chunks) == "one "
