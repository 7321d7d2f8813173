"""The model identity two KV peers compare: equal for the same checkpoint wherever it lies,
different for another checkpoint of the same shape (same KV layout), another tokenizer, dtype
or block size; a difference is named."""

from __future__ import annotations

import shutil

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.identity import ModelIdentity, differences, model_identity


def test_the_same_checkpoint_anywhere_is_one_identity(tmp_path):
    first = init_model(tmp_path / "a")
    copy = shutil.copytree(first, tmp_path / "copy")
    assert model_identity(first, "float32", 16) == model_identity(copy, "float32", 16)
    assert model_identity(first, "float32", 16).digest == model_identity(copy, "float32", 16).digest


def test_another_checkpoint_of_the_same_shape_differs_in_its_weights(tmp_path):
    untied = model_identity(init_model(tmp_path / "untied", tie_word_embeddings=False),
                            "float32", 16)
    tied = model_identity(init_model(tmp_path / "tied", tie_word_embeddings=True), "float32", 16)
    assert untied.weights != tied.weights and untied.tokenizer == tied.tokenizer
    assert [line.split(":")[0] for line in differences(untied, tied)] == ["weights"]


def test_changed_weight_bytes_change_the_identity(tmp_path):
    model = init_model(tmp_path / "m")
    before = model_identity(model, "float32", 16)
    shard = model / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor
    shard.write_bytes(bytes(data))
    assert model_identity(model, "float32", 16).weights != before.weights


def test_tokenizer_dtype_and_block_size_are_parts(tmp_path):
    model = init_model(tmp_path / "m")
    base = model_identity(model, "float32", 16)
    (model / "chat_template.jinja").write_text("{{ messages }}")
    changed = model_identity(model, "bfloat16", 32)
    assert {line.split(":")[0] for line in differences(base, changed)} == {
        "tokenizer", "dtype", "block_size"}


def test_a_peer_without_a_valid_identity_is_a_difference():
    local = ModelIdentity("w", "t", "float32", 16)
    assert ModelIdentity.from_json({"weights": "w"}) is None
    assert ModelIdentity.from_json(local.to_json()) == local
    assert differences(local, None) == ["model identity: the peer sent none (an older pdserve?)"]
    assert differences(local, ModelIdentity("v", "t", "float32", 16), ("decode", "prefill")) == [
        "weights: decode 'w', prefill 'v'"]
