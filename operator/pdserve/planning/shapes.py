"""Model shapes: what the cost model needs of a transformer (dense, grouped-query attention),
read from a Hugging Face `config.json` or named from the table of known shapes. And the error
of any bad input to `pdserve plan`, with the reader of its YAML/JSON files that raises it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pdserve.runtime.checkpoints.presets import PRESETS, VOCAB_SIZE

PlanDtype = Literal["bfloat16", "float8"]
# float32: what the runtime computes in on CPU pools.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float8": 1}


class PlanInputError(ValueError):
    """Bad input to `pdserve plan` (model, workload, catalogue, targets): one clear message."""


def read_input_file(path: Path) -> Any:
    """A YAML or JSON file (workload, catalogue) parsed; PlanInputError in one line if not."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as bad:
        raise PlanInputError(f"{path}: not a readable YAML or JSON file ({bad})") from None
    except yaml.YAMLError as bad:
        raise PlanInputError(f"{path}: not a readable YAML or JSON file "
                             f"({_yaml_problem(bad)})") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    # PyYAML's own message spans lines: it quotes the source under each position it names.
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    # The Hugging Face repository the shape is published as (the LLMService's hf:// source).
    hf_repo: str | None = None

    @property
    def layer_params(self) -> float:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return float(attention + 3 * self.hidden * self.intermediate)

    @property
    def non_embedding_params(self) -> float:
        return self.layers * self.layer_params

    @property
    def params(self) -> float:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.non_embedding_params + embeddings

    def weight_bytes(self, dtype: str) -> float:
        return self.params * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> float:
        return float(2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype])

    def linear_flops_per_token(self) -> float:
        """Matmul FLOPs of one token through every layer (the LM head runs only for the one
        token a prompt samples: not counted)."""
        return 2.0 * self.non_embedding_params

    def decode_flops_per_token(self) -> float:
        """Matmul FLOPs of one decoded token: every layer and the LM head."""
        return 2.0 * (self.non_embedding_params + self.vocab * self.hidden)

    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query token, context token) pair: QK^T and PV in every layer."""
        return 4.0 * self.layers * self.heads * self.head_dim


def _shape(name: str, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
           intermediate: int, vocab: int, tied: bool, repo: str) -> ModelShape:
    return ModelShape(name, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab,
                      tied, repo)


# From each model's published config.json.
KNOWN_SHAPES: dict[str, ModelShape] = {shape.name: shape for shape in (
    _shape("qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, True, "Qwen/Qwen2.5-0.5B-Instruct"),
    _shape("qwen3-0.6b", 28, 1024, 16, 8, 128, 3072, 151936, True, "Qwen/Qwen3-0.6B"),
    _shape("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, True,
           "meta-llama/Llama-3.2-1B-Instruct"),
    _shape("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, False,
           "meta-llama/Llama-3.1-8B-Instruct"),
    _shape("qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, False, "Qwen/Qwen3-32B"),
    _shape("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, False,
           "meta-llama/Llama-3.1-70B-Instruct"),
)}


def shape_from_config(raw: dict[str, Any], name: str) -> ModelShape:
    """The shape of a parsed `config.json` (PlanInputError naming what is missing)."""
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        return ModelShape(
            name=name, layers=int(raw["num_hidden_layers"]), hidden=hidden, heads=heads,
            kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            intermediate=int(raw["intermediate_size"]), vocab=int(raw["vocab_size"]),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )
    except KeyError as missing:
        raise PlanInputError(f"{name}: config.json lacks {missing.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as bad:
        raise PlanInputError(f"{name}: config.json has a malformed field ({bad})") from None


def resolve_shape(model: str) -> ModelShape:
    """A known shape name, or a directory holding a Hugging Face config.json."""
    known = KNOWN_SHAPES.get(model.lower())
    if known is not None:
        return known
    config = Path(model) / "config.json"
    if not config.is_file():
        raise PlanInputError(
            f"unknown model {model!r}: give a directory with a config.json or one of "
            f"{', '.join(KNOWN_SHAPES)}")
    try:
        raw = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as bad:
        raise PlanInputError(f"{config}: not readable JSON ({bad})") from None
    if not isinstance(raw, dict):
        raise PlanInputError(f"{config}: not a JSON object")
    return shape_from_config(raw, str(Path(model).resolve()))


def builtin_shape(preset: str) -> ModelShape:
    """The shape of a built-in model (`builtin: tiny`), as the runtime generates it (Llama,
    untied embeddings)."""
    raw: dict[str, Any] = {"vocab_size": VOCAB_SIZE, "tie_word_embeddings": False,
                           **PRESETS[preset]}
    return shape_from_config(raw, f"builtin:{preset}")


def shape_of_uri(uri: str) -> ModelShape | None:
    """The known shape an `hf://ORG/NAME` source names, if any."""
    repo = uri.removeprefix("hf://").strip("/").lower()
    return next((s for s in KNOWN_SHAPES.values()
                 if s.hf_repo is not None and s.hf_repo.lower() == repo), None)
