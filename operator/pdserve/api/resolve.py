"""Effective settings of an LLMService: its spec with the profile's defaults filled in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pdserve.api.profiles import PROFILES, EngineDefaults
from pdserve.api.spec import LLMServiceSpec

WorkerRole = Literal["prefill", "decode"]


@dataclass(frozen=True)
class EngineSettings:
    """Every engine knob of one role, none left unset (except KV blocks: runtime-sized)."""

    max_num_batched_tokens: int
    chunk_size: int
    max_num_seqs: int
    enable_prefix_caching: bool
    block_size: int
    num_kv_blocks: int | None


def engine_settings(spec: LLMServiceSpec, role: WorkerRole) -> EngineSettings:
    """The role's engine knobs: explicit spec values over the profile's defaults."""
    defaults: EngineDefaults = getattr(PROFILES[spec.profile], role)
    engine = getattr(spec, role).engine
    batched = engine.max_num_batched_tokens or defaults.max_num_batched_tokens
    chunk = engine.chunk_size or min(defaults.chunk_size, batched)
    return EngineSettings(
        max_num_batched_tokens=batched,
        chunk_size=chunk,
        max_num_seqs=engine.max_num_seqs or defaults.max_num_seqs,
        enable_prefix_caching=(defaults.enable_prefix_caching
                               if engine.enable_prefix_caching is None
                               else engine.enable_prefix_caching),
        block_size=engine.block_size or defaults.block_size,
        num_kv_blocks=engine.num_kv_blocks,
    )


def initial_replicas(spec: LLMServiceSpec, role: WorkerRole) -> int:
    """Replicas of a role before any planner decision: spec.<role>.replicas, else the profile's
    split; with autoscaling on, clamped into the role's [minReplicas, maxReplicas]."""
    explicit = getattr(spec, role).replicas
    replicas: int = (explicit if explicit is not None
                     else getattr(PROFILES[spec.profile], f"{role}_replicas"))
    if spec.autoscaling.enabled:
        bounds = getattr(spec.autoscaling, role)
        replicas = max(bounds.min_replicas, min(bounds.max_replicas, replicas))
    return replicas


def served_model_name(spec: LLMServiceSpec, service_name: str) -> str:
    """The model name clients ask for: spec.model.servedName, else the LLMService's name."""
    return spec.model.served_name or service_name
