"""What a KV cache means: the model that computed it. Two workers may exchange KV blocks only
when they run the same weights, tokenizer, dtype and block size; the KV layout alone (layers,
heads, head dim) matches between any two checkpoints of one architecture, e.g. during a
rolling update from one fine-tune to the next.

The weights' part hashes `config.json`, the safetensors index, and of every shard its size,
header (names, dtypes, shapes, offsets) and the first and last `SAMPLE_BYTES` of its data:
two checkpoints of one shape trained apart differ there, and reading it costs milliseconds
however large the model. The tensor-parallel degree is not part of it: the handoff moves every
KV head whatever the degree on either side (parallel/kv_shards.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pdserve.runtime.checkpoints.weights import INDEX_NAME, checkpoint_files

SAMPLE_BYTES = 64 * 1024
CONFIG_FILES = ("config.json", INDEX_NAME)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "chat_template.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json")
_DIGEST_CHARS = 16


@dataclass(frozen=True)
class ModelIdentity:
    weights: str
    tokenizer: str
    dtype: str
    block_size: int

    @property
    def digest(self) -> str:
        """One short hash of every part: what the router pairs workers by."""
        text = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(text).hexdigest()[:_DIGEST_CHARS]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> ModelIdentity | None:
        """The identity a peer sent, or None when it sent none or a malformed one."""
        if not isinstance(obj, dict):
            return None
        try:
            return cls(str(obj["weights"]), str(obj["tokenizer"]), str(obj["dtype"]),
                       int(obj["block_size"]))
        except (KeyError, TypeError, ValueError):
            return None


def differences(local: ModelIdentity, remote: ModelIdentity | None,
                names: tuple[str, str] = ("here", "peer")) -> list[str]:
    """What differs, one 'part: <here> X, <peer> Y' each (empty when the two are one model)."""
    if remote is None:
        return [f"model identity: the {names[1]} sent none (an older pdserve?)"]
    return [f"{f.name}: {names[0]} {getattr(local, f.name)!r}, "
            f"{names[1]} {getattr(remote, f.name)!r}"
            for f in fields(ModelIdentity) if getattr(local, f.name) != getattr(remote, f.name)]


def _shard_summary(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        digest.update(handle.read(header_len))
        data_start = 8 + header_len
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(data_start, size - SAMPLE_BYTES))
        digest.update(handle.read(SAMPLE_BYTES))


def _files_digest(root: Path, names: tuple[str, ...], digest: Any) -> None:
    for name in names:
        path = root / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")


def model_identity(model_dir: str | Path, dtype: str, block_size: int) -> ModelIdentity:
    """The identity of the model in `model_dir` served in `dtype` with `block_size` blocks."""
    root = Path(model_dir)
    weights = hashlib.sha256()
    _files_digest(root, CONFIG_FILES, weights)
    for shard in checkpoint_files(root):
        _shard_summary(shard, weights)
    tokenizer = hashlib.sha256()
    _files_digest(root, TOKENIZER_FILES, tokenizer)
    return ModelIdentity(weights.hexdigest()[:_DIGEST_CHARS],
                         tokenizer.hexdigest()[:_DIGEST_CHARS], dtype, block_size)
