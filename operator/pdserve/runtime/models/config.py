"""Reading a Hugging Face `config.json` into the flags the runtime's model needs.

One model class covers the supported families; the differences are flags:
Llama (optional attention bias, Llama 3 RoPE scaling), Qwen2 (bias on q/k/v), Qwen3 (RMSNorm on
q and k per head). Both the transformers 4.x keys (`rope_theta`, `rope_scaling`) and the 5.x
`rope_parameters` dict are understood.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_theta: float
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def num_query_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw.get("rope_scaling") or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, {}
    scaling["rope_type"] = rope_type
    return theta, scaling


def config_from_dict(raw: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the parsed config.json; ValueError for unsupported models."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        theta, scaling = _rope(raw)
        attention_bias = bool(raw.get("attention_bias", False))
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            eos_token_ids=_as_ids(raw.get("eos_token_id")),
            bos_token_id=raw.get("bos_token_id"),
        )
    except KeyError as exc:
        raise ValueError(f"config.json is missing the required key {exc.args[0]!r}") from exc


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Read `<model_dir>/config.json`."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json in model directory {str(model_dir)!r}")
    raw = json.loads(path.read_text())
    if raw.get("num_attention_heads", 1) % raw.get("num_key_value_heads", 1):
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return config_from_dict(raw)
