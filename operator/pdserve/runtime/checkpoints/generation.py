"""A model's own sampling defaults, from `generation_config.json`: what a request that leaves
temperature, top_p, top_k or max_tokens out gets (the model card's recommended sampling, as
vLLM applies it by default).

`do_sample: false` means greedy in transformers whatever temperature says, so it makes greedy
the default here too. Settings the sampler does not have (repetition_penalty, min_p, ...) are
reported, never applied silently. EOS ids are the tokenizer's (`Tokenizer.eos_token_ids`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE = "generation_config.json"
# Sampling settings of transformers' GenerationConfig pdserve's sampler has no counterpart for,
# with the value that means "off".
UNSUPPORTED = {"repetition_penalty": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
               "eta_cutoff": 0.0, "no_repeat_ngram_size": 0, "num_beams": 1}


class GenerationConfigError(ValueError):
    """generation_config.json is not a JSON object or holds an unusable sampling value."""


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    not_applied: tuple[str, ...] = ()  # "name=value" of UNSUPPORTED settings that are on

    def sampling(self) -> dict[str, Any]:
        """The defaults that are set, as SamplingParams keyword arguments."""
        found = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {name: value for name, value in found.items() if value is not None}


def read_generation_defaults(model_dir: str | Path) -> GenerationDefaults:
    path = Path(model_dir) / FILE
    if not path.is_file():
        return GenerationDefaults()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GenerationConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise GenerationConfigError(f"{path} must hold a JSON object")
    not_applied = tuple(f"{name}={data[name]}" for name, off in UNSUPPORTED.items()
                        if data.get(name) not in (None, off))
    if data.get("do_sample") is False:
        return GenerationDefaults(temperature=0.0,
                                  max_new_tokens=_number(path, data, "max_new_tokens", int, 1),
                                  not_applied=not_applied)
    return GenerationDefaults(
        temperature=_number(path, data, "temperature", float, 0.0),
        top_p=_number(path, data, "top_p", float, 0.0, upper=1.0),
        top_k=_number(path, data, "top_k", int, 0),
        max_new_tokens=_number(path, data, "max_new_tokens", int, 1),
        not_applied=not_applied)


def _number(path: Path, data: dict[str, Any], name: str, kind: type, lower: float,
            upper: float | None = None) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            (kind is int and not float(value).is_integer()):
        raise GenerationConfigError(f"{path}: {name} must be a number, got {value!r}")
    if value < lower or (upper is not None and value > upper) or \
            (name == "top_p" and value == 0):
        raise GenerationConfigError(f"{path}: {name} {value} is out of range")
    return kind(value)
