"""Writing deterministic built-in models in Hugging Face layout, and resolving `builtin:NAME`.

`init_model(dir, preset, family)` writes config.json, safetensors weights (optionally sharded
with an index), tokenizer.json, tokenizer_config.json (ChatML template that renders `tools` and
hermes `<tool_call>` blocks) and generation_config.json. Weights come from a fixed seed, so the
same arguments always give the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pdserve.runtime.checkpoints.presets import PRESETS, VOCAB_SIZE
from pdserve.runtime.checkpoints.tokenizer_training import train_tokenizer_json
from pdserve.runtime.checkpoints.weights import save_weights

BUILTIN_PREFIX = "builtin:"
FAMILIES = ("llama", "qwen2", "qwen3")
SEED = 1234
INIT_STD = 0.02
_FORMAT_VERSION = 2  # bump when the generated files change, so cached builtins regenerate
_MARKER = ".pdserve-model.json"
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def model_config_dict(preset: str, family: str, tie_word_embeddings: bool | None) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    shape = PRESETS[preset]
    tied = family != "llama" if tie_word_embeddings is None else tie_word_embeddings
    eos = 2  # <|im_end|>
    config: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": VOCAB_SIZE,
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        **shape,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": eos,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if family == "llama":
        config["rope_theta"] = 500000.0
        config["mlp_bias"] = False
        config["rope_scaling"] = {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256,
        }  # fmt: skip
    else:
        config["rope_theta"] = 1000000.0
        config["use_sliding_window"] = False
        config["sliding_window"] = None
        config["max_window_layers"] = shape["num_hidden_layers"]
    return config


def _hf_parameter_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    vocab = cfg["vocab_size"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for n in range(cfg["num_hidden_layers"]):
        attn = [("q_proj.weight", (q, h)), ("k_proj.weight", (kv, h)), ("v_proj.weight", (kv, h))]
        if cfg["model_type"] == "qwen2":
            attn += [("q_proj.bias", (q,)), ("k_proj.bias", (kv,)), ("v_proj.bias", (kv,))]
        if cfg["model_type"] == "qwen3":
            attn += [("q_norm.weight", (hd,)), ("k_norm.weight", (hd,))]
        attn.append(("o_proj.weight", (h, q)))
        mlp = [("gate_proj.weight", (i, h)), ("up_proj.weight", (i, h))]
        mlp.append(("down_proj.weight", (h, i)))
        p = f"model.layers.{n}."
        shapes.append((p + "input_layernorm.weight", (h,)))
        shapes += [(p + "self_attn." + name, shape) for name, shape in attn]
        shapes.append((p + "post_attention_layernorm.weight", (h,)))
        shapes += [(p + "mlp." + name, shape) for name, shape in mlp]
    shapes.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", (vocab, h)))
    return shapes


def random_weights(cfg: dict[str, Any], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic weights: norms near 1, biases and matrices small normals."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _hf_parameter_shapes(cfg):
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        tensors[name] = 1.0 + 0.1 * noise if name.endswith("norm.weight") else INIT_STD * noise
    return tensors


def _tokenizer_config(tokenizer_json: str, chat_template: str) -> dict[str, Any]:
    added = {
        str(token_id): {"content": token.content, "lstrip": False, "normalized": False,
                        "rstrip": False, "single_word": False, "special": token.special}
        for token_id, token in Tokenizer.from_str(tokenizer_json).get_added_tokens_decoder().items()
    }  # fmt: skip
    return {
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": chat_template,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def init_model(
    model_dir: str | Path,
    preset: str = "tiny",
    family: str = "llama",
    tie_word_embeddings: bool | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the deterministic model into model_dir (created if needed) and return its path."""
    cfg = model_config_dict(preset, family, tie_word_embeddings)
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    template = (resources.files("pdserve.runtime.checkpoints")
                .joinpath("chatml_tools.j2").read_text())

    def write_json(name: str, data: dict[str, Any]) -> None:
        (root / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    write_json("config.json", cfg)
    tokenizer_json = train_tokenizer_json(VOCAB_SIZE)
    (root / "tokenizer.json").write_text(tokenizer_json)
    write_json("tokenizer_config.json", _tokenizer_config(tokenizer_json, template))
    generation = {"bos_token_id": 0, "eos_token_id": [2, 0], "pad_token_id": 0}
    write_json("generation_config.json", generation)
    save_weights(random_weights(cfg), root, max_shard_bytes)
    write_json(_MARKER, {"version": _FORMAT_VERSION, "preset": preset, "family": family})
    return root


def model_cache_dir() -> Path:
    """Where `builtin:NAME` models live: $PDSERVE_MODEL_CACHE or ~/.cache/pdserve/models."""
    env = os.environ.get("PDSERVE_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pdserve" / "models"


def _is_current(path: Path) -> bool:
    marker = path / _MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("version") == _FORMAT_VERSION


def resolve_model_path(spec: str) -> Path:
    """A model directory for `spec`: a path, or `builtin:tiny|small` generated once (cached)."""
    if not spec.startswith(BUILTIN_PREFIX):
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {spec!r} has no config.json")
        return path
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in PRESETS:
        raise ValueError(f"unknown builtin model {spec!r}; choose from " +
                         ", ".join(BUILTIN_PREFIX + p for p in PRESETS))  # fmt: skip
    target = model_cache_dir() / name
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    init_model(staging, preset=name)
    # Several workers may race here: the loser finds a complete model in place and drops its copy.
    if target.exists() and not _is_current(target):
        shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target
