"""Per-request sampling parameters (pure Python: shared by the scheduler, sampler and server)."""

from __future__ import annotations

from dataclasses import dataclass, field

# OpenAI caps `top_logprobs` at 20; more would only cost time in the sampler.
MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """How one request samples and when it stops.

    `temperature == 0` means greedy. `top_k == 0` and `top_p == 1.0` switch those filters off.
    `logprobs` is the number of top alternatives to return per token (None: no logprobs).
    `allow_kv_compression=False` opts the request out of the worker's KV compression.
    `grammar` is what the output must match (a runtime/grammar/spec.py string; None: anything).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    allow_kv_compression: bool = True
    grammar: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; the server turns it into HTTP 400."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens must be an integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not isinstance(self.temperature, int | float) or isinstance(self.temperature, bool):
            raise ValueError(f"temperature must be a number, got {self.temperature!r}")
        if not 0.0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if not isinstance(self.top_p, int | float) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise ValueError(
                f"stop_token_ids must be a list of integers >= 0, got {self.stop_token_ids!r}"
            )
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError(f"grammar must be a string or null, got {self.grammar!r}")
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise ValueError(
                f"logprobs must be an integer between 0 and {MAX_LOGPROBS}, got {self.logprobs!r}"
            )
