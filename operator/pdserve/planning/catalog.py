"""The accelerator catalogue `pdserve plan` chooses from: by default the accelerator table of
the API (`api/accelerators.py`, with its list prices), replaced or extended by a file.

A catalogue file is YAML or JSON: `{accelerators: [{kind, ...}]}`. An entry for a kind of the
table overrides the fields it gives; an entry for a new kind gives every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pdserve.api.accelerators import ACCELERATORS, XLA_MAX_CHIPS_PER_REPLICA, AcceleratorFacts
from pdserve.planning.shapes import PlanInputError, read_input_file

_TERA = 1e12
_GB = 1e9
GPU_CHIP_COUNTS = (1, 2, 4, 8)


class Accelerator(BaseModel):
    """One kind, in the units vendors print (TFLOP/s, TB/s, GB, GB/s one way)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=63)
    family: Literal["gpu", "tpu", "cpu"]
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float | None = Field(default=None, gt=0)
    memory_tb_per_s: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    link_gb_per_s: float = Field(gt=0, description="chip to chip within a node")
    network_gb_per_s: float = Field(gt=0, description="per chip, between nodes")
    chip_counts: tuple[int, ...] = Field(min_length=1, description="chips one pod may hold")
    price_per_chip_hour: float = Field(ge=0)

    def flops(self, dtype: str) -> float | None:
        if dtype == "float8":
            return None if self.fp8_tflops is None else self.fp8_tflops * _TERA
        return self.bf16_tflops * _TERA

    @property
    def bandwidth(self) -> float:
        return self.memory_tb_per_s * _TERA

    @property
    def memory(self) -> float:
        return self.memory_gb * _GB

    @property
    def link(self) -> float:
        return self.link_gb_per_s * _GB

    @property
    def network(self) -> float:
        return self.network_gb_per_s * _GB


def _from_facts(facts: AcceleratorFacts) -> Accelerator:
    if facts.device == "xla":
        # Only what the runtime serves (a catalogue file may offer more, for what-ifs).
        counts = tuple(sorted(c for c in set(facts.topologies.values())
                              if c <= XLA_MAX_CHIPS_PER_REPLICA))
    elif facts.family == "cpu":
        counts = (1,)
    else:
        counts = tuple(c for c in GPU_CHIP_COUNTS if c <= facts.chips_per_node)
    return Accelerator(
        kind=facts.kind, family=facts.family, bf16_tflops=facts.peak_bf16_flops / _TERA,
        fp8_tflops=None if facts.peak_fp8_flops is None else facts.peak_fp8_flops / _TERA,
        memory_tb_per_s=facts.memory_bandwidth_bytes_per_s / _TERA,
        memory_gb=facts.memory_bytes / _GB, link_gb_per_s=facts.link_bytes_per_s / _GB,
        network_gb_per_s=facts.network_bytes_per_s / _GB, chip_counts=counts,
        price_per_chip_hour=facts.price_per_chip_hour,
    )


def default_catalog() -> dict[str, Accelerator]:
    return {kind: _from_facts(facts) for kind, facts in ACCELERATORS.items()}


def _entries(raw: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(raw, dict) or set(raw) - {"accelerators", "replace"}:
        raise PlanInputError(f"{source}: expected a mapping with `accelerators` (and optional "
                             "`replace: true`)")
    entries = raw.get("accelerators")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PlanInputError(f"{source}: `accelerators` must be a list of mappings")
    return entries


def load_catalog(path: Path | None) -> dict[str, Accelerator]:
    """The default catalogue, or it with a file's entries (`replace: true`: only the file's)."""
    catalog = default_catalog()
    if path is None:
        return catalog
    raw = read_input_file(path)
    entries = _entries(raw, str(path))
    merged: dict[str, Accelerator] = {} if raw.get("replace") else catalog
    for index, entry in enumerate(entries):
        kind = entry.get("kind")
        base = catalog.get(kind) if isinstance(kind, str) else None
        try:
            accelerator = Accelerator.model_validate({**(base.model_dump() if base else {}),
                                                      **entry})
        except ValidationError as bad:
            raise PlanInputError(f"{path}: accelerators[{index}] ({kind or 'no kind'}): "
                                 f"{_fault(bad, kind, catalog)}") from None
        merged[accelerator.kind] = accelerator
    if not merged:
        raise PlanInputError(f"{path}: the catalogue holds no accelerators")
    return merged


def _fault(error: ValidationError, kind: Any, defaults: dict[str, Accelerator]) -> str:
    """The entry's fault in words: a new kind lacking fields names them all (it may be a
    misspelt kind of the table: those are listed too)."""
    missing = [str(e["loc"][0]) for e in error.errors() if e["type"] == "missing"]
    if isinstance(kind, str) and missing:
        return (f"an unknown kind (not one of {', '.join(defaults)}), so the entry must give "
                f"every field; it lacks {', '.join(missing)}")
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
