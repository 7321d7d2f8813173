"""The runtime's model against Hugging Face transformers on the same weights (CPU, float32)."""

from __future__ import annotations

import json

import pytest
import torch
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture
from transformers import AutoModelForCausalLM

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.weights import INDEX_NAME, checkpoint_files
from pdserve.runtime.engine.config import EngineConfig, build_components
from pdserve.runtime.engine.sequence import Sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "Hello world, this is a test of the engine.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Return a list of the elements in sorted order. " * 12,
    "x",
]
VARIANTS = [
    ("llama", False),  # Llama 3 RoPE scaling, untied
    ("llama", True),
    ("qwen2", True),  # q/k/v bias
    ("qwen3", True),  # QK-norm
    ("qwen3", False),
]


class _Chunk:
    def __init__(self, seq: Sequence, start: int, num_new_tokens: int):
        self.seq, self.start, self.num_new_tokens = seq, start, num_new_tokens
        self.needs_sample = start + num_new_tokens == seq.num_tokens


def _our_logits(parts, token_ids: list[int], chunk: int) -> torch.Tensor:
    """Logits for every position, computing the prompt in chunks of `chunk` tokens."""
    bs = parts.kv_cache.layout.block_size
    seq = Sequence("r", token_ids)
    seq.block_table = list(range(-(-len(token_ids) // bs)))
    rows = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), chunk):
            n = min(chunk, len(token_ids) - start)
            ids, pos, meta, _, _ = parts.runner.prepare([_Chunk(seq, start, n)])
            rows.append(parts.model.compute_logits(parts.model(ids, pos, meta)))
    return torch.cat(rows)


@pytest.fixture(
    scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{'tied' if v[1] else 'untied'}"
)
def model_pair(request, tmp_path_factory):
    family, tied = request.param
    path = init_model(tmp_path_factory.mktemp(family), "tiny", family, tie_word_embeddings=tied)
    parts = build_components(EngineConfig(model=str(path), device="cpu", dtype="float32",
                                          num_kv_blocks=64, block_size=16))  # fmt: skip
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return parts, hf


def test_prefill_logits_match_transformers(model_pair):
    parts, hf = model_pair
    for text in PROMPTS:
        ids = parts.tokenizer.encode(text)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0].float()
        ours = _our_logits(parts, ids, chunk=len(ids))
        assert ours.shape == expected.shape
        assert torch.allclose(ours, expected, atol=1e-4, rtol=0), (
            text,
            (ours - expected).abs().max(),
        )


def test_chunked_prefill_logits_match_unchunked(model_pair):
    parts, _ = model_pair
    ids = parts.tokenizer.encode(PROMPTS[2])
    whole = _our_logits(parts, ids, chunk=len(ids))
    for chunk in (5, 16, 33):
        assert torch.allclose(_our_logits(parts, ids, chunk), whole, atol=1e-4, rtol=0), chunk


def test_llama_config_carries_rope_scaling(tmp_path):
    path = init_model(tmp_path, "tiny", "llama")
    scaling = json.loads((path / "config.json").read_text())["rope_scaling"]
    assert scaling["rope_type"] == "llama3"


def test_sharded_checkpoint_loads_the_same_weights(tmp_path):
    single = init_model(tmp_path / "single", "tiny", "qwen2")
    sharded = init_model(tmp_path / "sharded", "tiny", "qwen2", max_shard_bytes=200_000)
    assert (sharded / INDEX_NAME).is_file()
    assert len(checkpoint_files(sharded)) >= 2
    config = dict(device="cpu", dtype="float32", num_kv_blocks=16)
    a = build_components(EngineConfig(model=str(single), **config)).model.state_dict()
    b = build_components(EngineConfig(model=str(sharded), **config)).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    hf = AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32)
    assert torch.equal(hf.model.embed_tokens.weight, a["embed_tokens.weight"])


def test_missing_and_misshaped_weights_are_clear_errors(tmp_path):
    path = init_model(tmp_path, "tiny", "llama")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(ValueError, match="has shape"):
        build_components(EngineConfig(model=str(path), device="cpu", num_kv_blocks=8))
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type"):
        build_components(EngineConfig(model=str(path), device="cpu", num_kv_blocks=8))
