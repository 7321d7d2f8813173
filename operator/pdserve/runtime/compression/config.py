"""What KV compression a worker applies, and how many tokens it keeps (pure Python).

Two methods, both opt-in per role and skippable per request:

- `snapkv`: after a prompt's prefill, keep per KV head the prompt positions that the prompt's
  last `window_tokens` queries attend to most, plus those last positions themselves, down to
  `ratio` of the prompt or `budget_tokens`. Applied where prompts are prefilled, so a prefill
  worker hands decode only the kept KV.
- `streaming`: attention sinks plus a recent window. Whole blocks between the first
  `sink_tokens` (rounded up to a block) and the last `window_tokens` are evicted as a sequence
  grows, so its KV stays bounded however long it generates.

Kept K keeps the rotary position it was computed at (K is cached after RoPE), so a compressed
sequence needs only its number of kept slots, not the kept positions, to go on decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

METHODS = ("none", "snapkv", "streaming")
DEFAULT_SNAPKV_WINDOW_TOKENS = 32
DEFAULT_STREAMING_WINDOW_TOKENS = 1024
DEFAULT_SINK_TOKENS = 4
# SnapKV pools each position's score with its neighbours' (max over this many positions) before
# choosing, so that a chosen token keeps the few around it (a key's value, a word's pieces).
POOL_KERNEL = 7
# The per-request opt-out, as the router and the workers read it.
OPT_OUT_HEADER = "x-pdserve-kv-compression"


@dataclass(frozen=True)
class KVCompression:
    method: str = "none"
    ratio: float | None = None  # snapkv: fraction of the prompt's KV to keep
    budget_tokens: int | None = None  # snapkv: tokens to keep (instead of ratio)
    window_tokens: int | None = None  # snapkv: observation window; streaming: recent window
    sink_tokens: int | None = None  # streaming: leading tokens always kept

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (a worker flag or the CRD's rules)."""
        if self.method not in METHODS:
            raise ValueError(f"kv compression method must be one of {', '.join(METHODS)}, "
                             f"got {self.method!r}")
        given = {name for name, value in asdict(self).items()
                 if value is not None and name != "method"}
        allowed = {"none": set(), "snapkv": {"ratio", "budget_tokens", "window_tokens"},
                   "streaming": {"window_tokens", "sink_tokens"}}[self.method]
        if given - allowed:
            raise ValueError(f"kv compression {self.method} takes no "
                             f"{', '.join(sorted(given - allowed))}")
        if self.method == "snapkv":
            if (self.ratio is None) == (self.budget_tokens is None):
                raise ValueError("kv compression snapkv needs exactly one of ratio and "
                                 "budget_tokens")
            if self.ratio is not None and not 0.0 < self.ratio < 1.0:
                raise ValueError(f"kv compression ratio must be in (0, 1), got {self.ratio}")
            if self.budget_tokens is not None and self.budget_tokens <= self.window:
                raise ValueError(f"kv compression budget_tokens ({self.budget_tokens}) must "
                                 f"exceed window_tokens ({self.window})")
        if self.window_tokens is not None and self.window_tokens < 1:
            raise ValueError(f"kv compression window_tokens must be at least 1, got "
                             f"{self.window_tokens}")
        if self.sink_tokens is not None and self.sink_tokens < 0:
            raise ValueError(f"kv compression sink_tokens must be >= 0, got {self.sink_tokens}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def window(self) -> int:
        default = DEFAULT_SNAPKV_WINDOW_TOKENS if self.method == "snapkv" \
            else DEFAULT_STREAMING_WINDOW_TOKENS
        return self.window_tokens if self.window_tokens is not None else default

    @property
    def sinks(self) -> int:
        return self.sink_tokens if self.sink_tokens is not None else DEFAULT_SINK_TOKENS

    def snapkv_kept(self, num_prompt_tokens: int) -> int:
        """Prompt tokens snapkv keeps (all of them when the prompt is within budget)."""
        if self.ratio is not None:
            budget = max(self.window, round(self.ratio * num_prompt_tokens))
        else:
            assert self.budget_tokens is not None
            budget = self.budget_tokens
        return min(num_prompt_tokens, budget)

    def streaming_evictable(self, num_kv_tokens: int, num_blocks: int, block_size: int
                            ) -> list[int]:
        """Indices into a block table of `num_blocks` holding `num_kv_tokens` whose blocks
        streaming evicts: whole blocks after the sink blocks that end before the window."""
        sink_blocks = -(-self.sinks // block_size)
        last = (num_kv_tokens - self.window) // block_size  # blocks [0, last) end before it
        return list(range(sink_blocks, min(last, num_blocks)))

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


NO_COMPRESSION = KVCompression()
