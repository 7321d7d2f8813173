"""How one `pdserve router` is configured (router/cli.py builds it from its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.router.priority import PriorityConfig


@dataclass
class RouterConfig:
    served_model_name: str
    short_prompt_threshold: int = 32
    routing_policy: str = "prefix-affinity"
    decode_admission: bool = True  # False: the behaviour before admission (a benchmark baseline)
    priority: PriorityConfig | None = None  # None: no priority queues, every request admitted
    disaggregation: str = "conditional"  # or "always": the threshold alone (disagg_policy.py)
