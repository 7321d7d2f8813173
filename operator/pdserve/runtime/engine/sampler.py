"""Choosing the next token for a batch of sequences: greedy, temperature, top-k, top-p, a
per-request seed, and optional logprobs (of the model's distribution, before temperature and
filtering, as OpenAI reports them).

Sampling uses the exponential-race trick (argmax of p / Exp(1) noise is a draw from p), so a
seeded request only needs its own generator for its noise row and the batch stays vectorized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pdserve.runtime.engine.sampling_params import SamplingParams


@dataclass
class TokenLogprobs:
    """The chosen token's logprob and the top-n alternatives (n = params.logprobs)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> None:
    """Mask (in place, to -inf) tokens outside each row's top-k and nucleus top-p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    remove = ranks >= k
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # Keep a token while the mass of the tokens before it is still below top_p.
    remove |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    remove[:, 0] = False
    logits.scatter_(1, order, sorted_logits.masked_fill(remove, float("-inf")))


def skip_sampled_token(generator: torch.Generator, vocab_size: int, device: torch.device) -> None:
    """Advance a seeded request's generator past one sampled token (one noise row, as `sample`
    draws it): a decode worker continuing after the prefill worker's first token then samples
    what a single worker would have."""
    torch.empty(vocab_size, dtype=torch.float32, device=device).exponential_(generator=generator)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> SamplerOutput:
    """logits [N, vocab] float32; one SamplingParams and optional seeded generator per row."""
    n = logits.shape[0]
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if p.temperature != 0.0]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        scaled = (
            logits[rows]
            / torch.tensor([params[i].temperature for i in random_rows], device=logits.device)[
                :, None
            ]
        )
        top_k = torch.tensor([params[i].top_k for i in random_rows], device=logits.device)
        top_p = torch.tensor([params[i].top_p for i in random_rows], device=logits.device)
        if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
            _filter_top_k_top_p(scaled, top_k, top_p)
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for j, i in enumerate(random_rows):
            if generators[i] is not None:
                noise[j].exponential_(generator=generators[i])
        tokens[rows] = (probs / noise).argmax(dim=-1)
    token_list = tokens.tolist()
    logprobs: list[TokenLogprobs | None] = [None] * n
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    if wanted:
        rows = torch.tensor(wanted, device=logits.device)
        all_logprobs = logits[rows].log_softmax(dim=-1)
        chosen = all_logprobs.gather(1, tokens[rows][:, None])[:, 0].tolist()
        width = max(params[i].logprobs or 0 for i in wanted)
        top_values, top_ids = all_logprobs.topk(width, dim=-1) if width else (None, None)
        for j, i in enumerate(wanted):
            top: list[tuple[int, float]] = []
            count = params[i].logprobs or 0
            if count and top_values is not None and top_ids is not None:
                top = list(zip(top_ids[j, :count].tolist(), top_values[j, :count].tolist(),
                               strict=True))  # fmt: skip
            logprobs[i] = TokenLogprobs(token_list[i], chosen[j], top)
    return SamplerOutput(token_list, logprobs)
