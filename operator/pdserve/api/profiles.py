"""Workload profiles: the initial prefill:decode split and engine defaults, in one table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Profile = Literal["balanced", "input-heavy", "output-heavy", "agentic"]


@dataclass(frozen=True)
class EngineDefaults:
    max_num_batched_tokens: int
    chunk_size: int
    max_num_seqs: int
    enable_prefix_caching: bool
    block_size: int


@dataclass(frozen=True)
class ProfileDefaults:
    prefill_replicas: int
    decode_replicas: int
    prefill: EngineDefaults
    decode: EngineDefaults


# Why these shapes: long prompts (input-heavy) want big prefill steps and more prefill pods;
# long generations (output-heavy) want many concurrent decode sequences and more decode pods;
# agentic multi-turn chats resend a growing history, so prefix caching pays on both sides.
PROFILES: dict[str, ProfileDefaults] = {
    "balanced": ProfileDefaults(
        prefill_replicas=1, decode_replicas=1,
        prefill=EngineDefaults(8192, 2048, 64, True, 16),
        decode=EngineDefaults(2048, 512, 128, True, 16),
    ),
    "input-heavy": ProfileDefaults(
        prefill_replicas=2, decode_replicas=1,
        prefill=EngineDefaults(16384, 8192, 32, False, 16),
        decode=EngineDefaults(2048, 512, 64, False, 16),
    ),
    "output-heavy": ProfileDefaults(
        prefill_replicas=1, decode_replicas=3,
        prefill=EngineDefaults(4096, 2048, 64, True, 16),
        decode=EngineDefaults(1024, 256, 256, True, 16),
    ),
    "agentic": ProfileDefaults(
        prefill_replicas=1, decode_replicas=2,
        prefill=EngineDefaults(8192, 4096, 64, True, 16),
        decode=EngineDefaults(2048, 512, 128, True, 16),
    ),
}
