"""Loading model weights from a Hugging Face directory of safetensors files.

Handles a single `model.safetensors`, a sharded checkpoint described by
`model.safetensors.index.json`, and (failing both) any `*.safetensors` files in the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from pdserve.runtime.checkpoints.safetensors_reader import StoredTensor, read_index

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files holding the checkpoint, in a stable order."""
    root = Path(model_dir)
    index = root / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = [root / name for name in sorted(set(weight_map.values()))]
    elif (root / SINGLE_NAME).is_file():
        files = [root / SINGLE_NAME]
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors weights found in {str(root)!r}")
    for path in files:
        if not path.is_file():
            raise ValueError(f"checkpoint shard {path.name!r} is missing from {str(root)!r}")
    return files


def iter_weights(model_dir: str | Path) -> Iterator[tuple[str, StoredTensor]]:
    """Yield (name, stored tensor) for every tensor of the checkpoint, read when copied."""
    for path in checkpoint_files(model_dir):
        yield from read_index(path).items()


def save_weights(
    tensors: dict[str, torch.Tensor], model_dir: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write tensors as one file, or as shards plus an index when they exceed max_shard_bytes."""
    root = Path(model_dir)
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        path = root / SINGLE_NAME
        save_file(tensors, str(path), metadata=metadata)
        return [path]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = root / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=metadata)
        paths.append(path)
        weight_map.update(dict.fromkeys(shard, path.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths
