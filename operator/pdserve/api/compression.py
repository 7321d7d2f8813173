"""A role's KV compression (token pruning): opt-in, off unless a method is named.

The rules are the runtime's (runtime/compression/config.py, which holds the methods and the
default windows); here they are the CRD's CEL and the same checks in pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from pdserve.api.base import ApiModel, cel
from pdserve.runtime.compression.config import DEFAULT_SNAPKV_WINDOW_TOKENS

MAX_TOKENS = 1_048_576


class KVCompressionSpec(ApiModel):
    """Prune KV: `snapkv` keeps the prompt positions its last tokens attend to most (applied
    after prefill: a prefill worker hands decode only those); `streaming` keeps attention sinks
    and a recent window as a sequence grows. A request opts out with the header
    `x-pdserve-kv-compression: none` or the body field `kv_compression: "none"`."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.method != 'snapkv' || has(self.ratio) != has(self.budgetTokens)",
            "snapkv needs exactly one of ratio and budgetTokens"),
        cel("self.method == 'snapkv' || (!has(self.ratio) && !has(self.budgetTokens))",
            "ratio and budgetTokens apply only to method snapkv"),
        cel("self.method == 'streaming' || !has(self.sinkTokens)",
            "sinkTokens applies only to method streaming"),
        cel("self.method != 'none' || !has(self.windowTokens)",
            "windowTokens needs method snapkv or streaming"),
        cel("!has(self.budgetTokens) || self.budgetTokens > (has(self.windowTokens) ? "
            f"self.windowTokens : {DEFAULT_SNAPKV_WINDOW_TOKENS})",
            "budgetTokens must exceed windowTokens (the window is always kept)"),
    ]})

    method: Literal["none", "snapkv", "streaming"] = Field(
        default="none", description="none (default), snapkv or streaming.")
    ratio: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="snapkv: fraction of each prompt's KV to keep (e.g. 0.5).")
    budget_tokens: int | None = Field(
        default=None, ge=2, le=MAX_TOKENS,
        description="snapkv: prompt tokens to keep, instead of a ratio.")
    window_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS,
        description=f"snapkv: the observation window, always kept (default "
        f"{DEFAULT_SNAPKV_WINDOW_TOKENS}); streaming: the recent tokens kept (default 1024).")
    sink_tokens: int | None = Field(
        default=None, ge=0, le=MAX_TOKENS,
        description="streaming: leading tokens always kept, rounded up to a KV block "
        "(default 4).")

    @model_validator(mode="after")
    def _consistent(self) -> KVCompressionSpec:
        snapkv, streaming = self.method == "snapkv", self.method == "streaming"
        if snapkv and (self.ratio is None) == (self.budget_tokens is None):
            raise ValueError("snapkv needs exactly one of ratio and budgetTokens")
        if not snapkv and (self.ratio is not None or self.budget_tokens is not None):
            raise ValueError("ratio and budgetTokens apply only to method snapkv")
        if not streaming and self.sink_tokens is not None:
            raise ValueError("sinkTokens applies only to method streaming")
        if self.method == "none" and self.window_tokens is not None:
            raise ValueError("windowTokens needs method snapkv or streaming")
        window = self.window_tokens or DEFAULT_SNAPKV_WINDOW_TOKENS
        if self.budget_tokens is not None and self.budget_tokens <= window:
            raise ValueError("budgetTokens must exceed windowTokens (the window is always kept)")
        return self

    def worker_settings(self) -> dict[str, object]:
        """The worker's --kv-compression-* settings (its config file's keys)."""
        return {"kv_compression_method": self.method, "kv_compression_ratio": self.ratio,
                "kv_compression_budget_tokens": self.budget_tokens,
                "kv_compression_window_tokens": self.window_tokens,
                "kv_compression_sink_tokens": self.sink_tokens}
