"""A real Llama-format model whose greedy output is a chosen text, for end-to-end tests of what
the server does with model output (tool calls). Not a test module.

One layer does all the work. A "previous token" attention head (constant query and key; RoPE
phases that peak at distance 1) copies the previous token's code into the residual stream next
to the current token's code; the MLP is off. The LM head scores each next token by the match of
(previous, current) with the bigram that precedes it in the script. So the model continues any
prompt that ends with the script's two context tokens with the script, then EOS.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from pdserve.runtime.checkpoints.tokenizer import Tokenizer

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, CODE = 128, 4, 2, 32, 63
CONST = CODE  # hidden dim holding a constant 1: the attention's query and key read it
PREV = CODE + 1  # hidden dims [PREV, PREV + CODE) receive the previous token's code
ROPE_THETA = 10000.0
LOGIT_SCALE = 5.0


def _rope_gains(max_len: int) -> torch.Tensor:
    """Per-pair squared amplitudes so that distance 1 beats every other distance by >= 25."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    offsets = torch.arange(-1, max_len, dtype=torch.float64)  # distance - 1
    deficit = (1 - torch.cos(offsets[:, None] * inv_freq[None, :])).sum(dim=1)
    worst = deficit[offsets != 0].min().item()
    return torch.full_like(inv_freq, 25.0 / (HEAD_DIM**-0.5 * worst))


def _codes(vocab: int, script_tokens: list[int]) -> torch.Tensor:
    """Unit codes per token; the script's own tokens get orthonormal ones (no crosstalk)."""
    if len(script_tokens) > CODE:
        raise ValueError(f"the script uses {len(script_tokens)} distinct tokens; at most {CODE}")
    gen = torch.Generator().manual_seed(0)
    codes = torch.nn.functional.normalize(torch.randn(vocab, CODE, generator=gen), dim=1)
    basis, _ = torch.linalg.qr(torch.randn(CODE, CODE, generator=gen))
    codes[script_tokens] = basis[: len(script_tokens)]
    return codes


def _check_unambiguous(codes: torch.Tensor, lm_head: torch.Tensor,
                       chain: list[tuple[int, int, int]]) -> None:
    for prev, cur, nxt in chain:
        scores = lm_head[:, :CODE] @ codes[cur] + lm_head[:, PREV:PREV + CODE] @ codes[prev]
        top2 = scores.topk(2)
        if top2.indices[0] != nxt or top2.values[0] - top2.values[1] < 0.5 * LOGIT_SCALE:
            raise ValueError(f"the script is ambiguous after bigram {(prev, cur)}")


def _weights(vocab: int, max_len: int, chain: list[tuple[int, int, int]]) -> dict:
    codes = _codes(vocab, sorted({token for step in chain for token in step}))
    scale = math.sqrt(HIDDEN / 2)  # what the input RMSNorm multiplies a unit code by
    embed = torch.zeros(vocab, HIDDEN)
    embed[:, :CODE] = codes
    embed[:, CONST] = 1.0

    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    amplitude = _rope_gains(max_len).sqrt()
    half = HEAD_DIM // 2
    q_proj = torch.zeros(HEADS * HEAD_DIM, HIDDEN)
    k_proj = torch.zeros(KV_HEADS * HEAD_DIM, HIDDEN)
    for head in range(HEADS):
        for j in range(half):  # query a*e^{-i theta}, key a: the score peaks at distance 1
            q_proj[head * HEAD_DIM + j, CONST] = amplitude[j] * math.cos(inv_freq[j]) / scale
            q_proj[head * HEAD_DIM + half + j, CONST] = (-amplitude[j] * math.sin(inv_freq[j])
                                                         / scale)
    for kv in range(KV_HEADS):
        for j in range(half):
            k_proj[kv * HEAD_DIM + j, CONST] = amplitude[j] / scale
    v_proj = torch.zeros(KV_HEADS * HEAD_DIM, HIDDEN)
    o_proj = torch.zeros(HIDDEN, HEADS * HEAD_DIM)
    split = [(0, 0, HEAD_DIM), (2, HEAD_DIM, CODE - HEAD_DIM)]  # (q head, code offset, width)
    for head, offset, width in split:
        kv = head // (HEADS // KV_HEADS)
        for i in range(width):
            v_proj[kv * HEAD_DIM + i, offset + i] = 1.0
            o_proj[PREV + offset + i, head * HEAD_DIM + i] = 1.0 / scale

    lm_head = torch.zeros(vocab, HIDDEN)
    for prev, cur, nxt in chain:
        lm_head[nxt, :CODE] += LOGIT_SCALE * codes[cur]
        lm_head[nxt, PREV:PREV + CODE] += LOGIT_SCALE * codes[prev]
    _check_unambiguous(codes, lm_head, chain)
    intermediate = 16
    return {
        "model.embed_tokens.weight": embed, "lm_head.weight": lm_head,
        "model.norm.weight": torch.ones(HIDDEN),
        "model.layers.0.input_layernorm.weight": torch.ones(HIDDEN),
        "model.layers.0.post_attention_layernorm.weight": torch.ones(HIDDEN),
        "model.layers.0.self_attn.q_proj.weight": q_proj,
        "model.layers.0.self_attn.k_proj.weight": k_proj,
        "model.layers.0.self_attn.v_proj.weight": v_proj,
        "model.layers.0.self_attn.o_proj.weight": o_proj,
        "model.layers.0.mlp.gate_proj.weight": torch.zeros(intermediate, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": torch.zeros(intermediate, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": torch.zeros(HIDDEN, intermediate),
    }


def write_scripted_model(tokenizer_dir: Path, out_dir: Path, context: str,
                         script: list[int]) -> Path:
    """Write a model that continues a prompt ending in `context` with the tokens `script`.

    `script` should end with an EOS id. ValueError when a bigram of the script repeats with a
    different continuation (this model cannot tell such positions apart).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, out_dir / name)
    tokenizer = Tokenizer(out_dir)
    start = tokenizer.encode(context)[-2:]
    tokens = start + script
    chain = [(tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(len(tokens) - 2)]
    following: dict[tuple[int, int], int] = {}
    for prev, cur, nxt in chain:
        if following.setdefault((prev, cur), nxt) != nxt:
            raise ValueError(f"bigram {(prev, cur)} repeats with another continuation")
    source = json.loads((tokenizer_dir / "config.json").read_text())
    max_len = 1024
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": source["vocab_size"], "hidden_size": HIDDEN, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "hidden_act": "silu", "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-6, "rope_theta": ROPE_THETA, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": source.get("bos_token_id"),
        "eos_token_id": source.get("eos_token_id"), "torch_dtype": "float32",
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_weights(source["vocab_size"], max_len, chain), str(out_dir / "model.safetensors"))
    return out_dir
