"""Applying grammars to a step's logits: one bitmask row per constrained request.

xgrammar's own kernels serve CPU and CUDA logits; other devices (XLA) get the bitmask unpacked
with plain torch ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pdserve.runtime.grammar.compiler import GrammarState, load_xgrammar

_BITS = torch.arange(32, dtype=torch.int32)


@torch.inference_mode()  # the logits are inference tensors
def apply_grammars(logits: torch.Tensor, states: Sequence[GrammarState | None]) -> None:
    """Set to -inf (in place) every logit a row's grammar does not allow next."""
    rows = [i for i, state in enumerate(states) if state is not None]
    if not rows:
        return
    xgr = load_xgrammar()
    vocab = logits.shape[-1]
    bitmask = xgr.allocate_token_bitmask(len(states), vocab)
    for i in rows:  # xgrammar's BatchGrammarMatcher (threads) measured slower here: 0.82x
        states[i].matcher.fill_next_token_bitmask(bitmask, i)  # type: ignore[union-attr]
    if logits.device.type in ("cpu", "cuda"):
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=vocab,
                                        indices=rows)
    else:
        mask_with_torch(logits, bitmask, rows)
    for i in rows:
        banned = states[i].banned_next()  # type: ignore[union-attr]
        if banned:
            logits[i, torch.tensor(banned, device=logits.device)] = float("-inf")


def mask_with_torch(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """What xgrammar's kernels do, in plain torch ops (any device): bit j of word w of a row
    allows token 32 * w + j."""
    vocab = logits.shape[-1]
    allowed = ((bitmask[rows][:, :, None] >> _BITS) & 1).bool().reshape(len(rows), -1)[:, :vocab]
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))
