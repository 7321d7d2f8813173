"""One decoder-only transformer for the Llama, Qwen2 and Qwen3 families.

Differences are config flags (see config.py): bias on q/k/v (Qwen2), RMSNorm on q and k per head
(Qwen3), RoPE scaling (Llama 3), tied embeddings. q/k/v and gate/up projections are fused into one
matmul each (bigger matmuls run faster); `load_weights` maps the Hugging Face names onto them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pdserve.runtime.models.attention import AttentionMetadata
from pdserve.runtime.models.bucketed_attention import BucketedBatch
from pdserve.runtime.models.config import ModelConfig
from pdserve.runtime.models.ops import add_rms_norm, rotate, silu_mul
from pdserve.runtime.models.rope import RotaryEmbedding
from pdserve.runtime.parallel.sharding import (
    SINGLE,
    Parallel,
    Shard,
    check_divisible,
    shard_of,
)

if TYPE_CHECKING:
    from pdserve.runtime.checkpoints.safetensors_reader import StoredTensor


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise x after adding `pending` (the last sublayer's output) to it in place."""
        return add_rms_norm(x, pending, self.weight, self.eps)


# The batch size oneDNN tunes a packed weight's layout for; any batch size stays correct.
PACKED_WEIGHT_BATCH_HINT = 64


class Linear(nn.Linear):
    """nn.Linear whose weight can be repacked into oneDNN's blocked layout on CPU: on the
    decode steps' small batches that runs ~1.5x faster than MKL on the row-major weight, and
    its large products are faster too."""

    packed_weight: torch.Tensor | None = None

    def pack_weight(self) -> None:
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(
            self.weight.detach(), PACKED_WEIGHT_BATCH_HINT
        )
        self.weight = None  # the packed copy replaces it: weights are never held twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


class Attention(nn.Module):
    """This rank's heads: q/k/v column-parallel, o_proj row-parallel and summed over ranks."""

    def __init__(self, cfg: ModelConfig, parallel: Parallel):
        super().__init__()
        self.num_heads = cfg.num_attention_heads // parallel.size
        self.num_kv_heads = cfg.num_key_value_heads // parallel.size
        self.head_dim = cfg.head_dim
        self.all_reduce = parallel.all_reduce
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.qkv_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, cfg.o_bias)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.scale = self.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata | BucketedBatch,
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, *rope), rotate(k, *rope)
        out = meta.attend(q, k, v, kv[0], kv[1], self.scale)
        return self.all_reduce(self.o_proj(out.view(t, self.q_size)))


class MLP(nn.Module):
    """This rank's share of the intermediate size: gate/up column-, down row-parallel."""

    def __init__(self, cfg: ModelConfig, parallel: Parallel):
        super().__init__()
        intermediate = cfg.intermediate_size // parallel.size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * intermediate, cfg.mlp_bias)
        self.down_proj = Linear(intermediate, cfg.hidden_size, cfg.mlp_bias)
        self.all_reduce = parallel.all_reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(self.down_proj(silu_mul(self.gate_up_proj(x))))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, parallel: Parallel):
        super().__init__()
        self.self_attn = Attention(cfg, parallel)
        self.mlp = MLP(cfg, parallel)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        pending: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata | BucketedBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the residual stream; the previous layer's MLP output is still `pending` (added
        by this layer's first norm, so each add is fused with the norm that follows it)."""
        attn = self.self_attn(self.input_layernorm(x, pending), rope, kv, meta)
        return x, self.mlp(self.post_attention_layernorm(x, attn))


# Hugging Face parameter suffix -> (fused parameter suffix, shard index) for fused projections.
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class CausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head over a paged KV cache."""

    def __init__(self, cfg: ModelConfig, device: torch.device, parallel: Parallel = SINGLE):
        """Build with `empty`: parameters come uninitialised, for load_weights to fill.
        Embeddings, norms and the LM head are replicated on every tensor-parallel rank."""
        super().__init__()
        check_divisible(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
                        parallel.size)
        self.config = cfg
        self.parallel = parallel
        # Given its weight, Embedding skips its random init: on the meta device that init alone
        # imports ~150 MB of torch (dynamo, sympy), and load_weights overwrites it anyway.
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg, parallel)
                                    for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._tie_embeddings()
        self.rope = RotaryEmbedding(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, device
        )
        self.kv_layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def empty(cls, cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
              parallel: Parallel = SINGLE) -> CausalLM:
        """The model (this rank's shard) with its parameters allocated, uninitialised, in
        `dtype` on `device`, for load_weights to fill: no random init, no float32 copy first."""
        with torch.device("meta"):
            model = cls(cfg, device, parallel)
        model.to(dtype=dtype).to_empty(device=device)
        model._tie_embeddings()  # to_empty gives every parameter its own storage
        return model.eval()

    def _tie_embeddings(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def bind_kv_cache(self, kv_layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per layer, (k, v) cache views shaped [num_blocks, block_size, num_kv_heads, head_dim]."""
        if len(kv_layers) != len(self.layers):
            raise ValueError("one (k, v) cache pair per layer is required")
        self.kv_layers = kv_layers

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor,
        meta: AttentionMetadata | BucketedBatch,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm for flat tokens [T]."""
        x = self.embed_tokens(input_ids)
        rope = self.rope(positions, x.dtype)
        pending = None
        for layer, kv in zip(self.layers, self.kv_layers, strict=True):
            x, pending = layer(x, pending, rope, kv, meta)
        return self.norm(x, pending)

    def pack_linear_weights(self) -> bool:
        """Repack every projection and the LM head for oneDNN (CPU only); False where this
        torch build has no oneDNN or this CPU cannot pack the dtype, and the plain weights
        stay."""
        if not torch.backends.mkldnn.is_available():
            return False
        linears = [module for module in self.modules() if isinstance(module, Linear)]
        try:
            linears[0].pack_weight()
        except RuntimeError:  # e.g. bfloat16 on a CPU without AVX512-BF16 or AVX-NE-CONVERT
            return False
        for module in linears[1:]:
            module.pack_weight()
        return True

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, StoredTensor]]) -> None:
        """Copy Hugging Face named tensors into the (fused) parameters; every one must be set."""
        params = dict(self.named_parameters(remove_duplicate=False))
        # Parameters start uninitialised (see `empty`): every fused shard must be read too.
        shards = {fused: [names for names, (target, _) in _FUSED.items() if target == fused]
                  for fused, _ in _FUSED.values()}
        missing = set()
        for name in dict(self.named_parameters()):
            prefix, fused_name, kind = [*name.rsplit(".", 2), "", ""][:3]
            if fused_name in shards:
                missing.update(f"{prefix}.{part}.{kind}" for part in shards[fused_name])
            else:
                missing.add(name)
        if self.config.tie_word_embeddings:
            missing.discard("lm_head.weight")
        local = self._local_sizes()
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            if self.config.tie_word_embeddings and name == "lm_head.weight":
                continue
            parts = name.rsplit(".", 2)
            fused = _FUSED.get(parts[-2]) if len(parts) == 3 else None
            shard = shard_of(name, local, self.parallel.rank)
            if fused is None:
                if name not in params:
                    raise ValueError(f"unexpected weight {hf_name!r} in checkpoint")
                _copy(params[name], tensor, hf_name, shard, self.parallel.size)
                missing.discard(name)
                continue
            target = f"{parts[0]}.{fused[0]}.{parts[2]}"
            _copy(self._shard(params[target], *fused), tensor, hf_name, shard,
                  self.parallel.size)
            missing.discard(name)
        if missing:
            raise ValueError(f"checkpoint lacks weights for: {', '.join(sorted(missing))}")

    def _local_sizes(self) -> dict[str, int]:
        """Per projection, this rank's share of its split dimension."""
        cfg, size = self.config, self.parallel.size
        q = cfg.num_attention_heads * cfg.head_dim // size
        kv = cfg.num_key_value_heads * cfg.head_dim // size
        intermediate = cfg.intermediate_size // size
        return {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": q, "gate_proj": intermediate,
                "up_proj": intermediate, "down_proj": intermediate}

    def _shard(self, param: torch.Tensor, fused_name: str, index: int) -> torch.Tensor:
        local = self._local_sizes()
        names = ("gate_proj", "up_proj") if fused_name == "gate_up_proj" else \
            ("q_proj", "k_proj", "v_proj")
        sizes = [local[n] for n in names]
        return param.data.narrow(0, sum(sizes[:index]), sizes[index])


def _copy(param: torch.Tensor, stored: StoredTensor, name: str, shard: Shard,
          size: int) -> None:
    expected = list(param.shape)
    if shard.dim is not None:
        expected[shard.dim] *= size
    if tuple(expected) != stored.shape:
        raise ValueError(f"weight {name!r} has shape {stored.shape}, expected {tuple(expected)}")
    with torch.no_grad():
        if shard.zero:
            param.data.zero_()
        else:
            stored.copy_into(param.data, shard.dim, shard.start)
