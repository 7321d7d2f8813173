"""`pdserve model fetch URI DIR`: what the operator's init container runs for `source.uri`.

Copies a model in Hugging Face layout into DIR: `hf://org/name[@revision]` through
huggingface_hub, `s3://bucket/prefix` through boto3 and `gs://bucket/prefix` through
google-cloud-storage (each imported only for its scheme, so an image without them fails with a
clear message), and `file:///path` for a directory already reachable. Only the files a worker
loads are fetched: configs, tokenizer files and safetensors weights.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

WANTED = ("*.json", "*.safetensors", "*.jinja", "tokenizer*")


class FetchError(Exception):
    """A model that cannot be fetched, with the reason in words."""


def _wanted(name: str) -> bool:
    return any(fnmatch.fnmatch(Path(name).name, pattern) for pattern in WANTED)


def _from_hf(repo: str, dest: Path) -> None:
    repo_id, _, revision = repo.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise FetchError("hf:// needs the huggingface_hub package in the image") from exc
    try:
        snapshot_download(repo_id, revision=revision or None, local_dir=dest,
                          allow_patterns=list(WANTED))
    except Exception as exc:  # the hub's errors are many; each is a fetch failure
        raise FetchError(f"cannot download hf://{repo}: {exc}") from exc


def _from_s3(bucket: str, prefix: str, dest: Path) -> None:
    try:
        import boto3
    except ImportError as exc:
        raise FetchError("s3:// needs the boto3 package in the image "
                         "(or mount the bucket and use source.pvc)") from exc
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if _wanted(key):
                target = dest / Path(key).relative_to(prefix or ".")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))


def _from_gs(bucket: str, prefix: str, dest: Path) -> None:
    try:
        from google.cloud import storage
    except ImportError as exc:
        raise FetchError("gs:// needs the google-cloud-storage package in the image "
                         "(or mount the bucket and use source.pvc)") from exc
    for blob in storage.Client().list_blobs(bucket, prefix=prefix):
        if _wanted(blob.name):
            target = dest / Path(blob.name).relative_to(prefix or ".")
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))


def _from_dir(source: Path, dest: Path) -> None:
    if not source.is_dir():
        raise FetchError(f"{source} is not a directory")
    for path in source.rglob("*"):
        if path.is_file() and _wanted(path.name):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def fetch_model(uri: str, dest: str | Path) -> Path:
    """Fetch `uri` into `dest` and check that the result looks like a loadable model."""
    parsed = urlparse(uri)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    fetchers: dict[str, Callable[[], None]] = {
        "hf": lambda: _from_hf(parsed.netloc + parsed.path, out),
        "s3": lambda: _from_s3(parsed.netloc, parsed.path.lstrip("/"), out),
        "gs": lambda: _from_gs(parsed.netloc, parsed.path.lstrip("/"), out),
        "file": lambda: _from_dir(Path(parsed.path), out),
    }
    fetcher = fetchers.get(parsed.scheme)
    if fetcher is None:
        raise FetchError(f"unsupported model URI {uri!r}: use hf://, s3://, gs:// or file://")
    fetcher()
    missing = [name for name in ("config.json",) if not (out / name).is_file()]
    if missing or not any(out.rglob("*.safetensors")):
        raise FetchError(f"{uri} holds no model in Hugging Face layout "
                         "(config.json and *.safetensors expected)")
    return out
