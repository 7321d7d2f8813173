"""`pdserve model ...`: model tools. `pdserve model init DIR [--preset tiny|small]
[--family llama|qwen2|qwen3]` writes a deterministic model in Hugging Face layout;
`pdserve model fetch URI DIR` downloads one (the operator's init container for source.uri)."""

from __future__ import annotations

import argparse
import sys

from pdserve.runtime.checkpoints.builtin import FAMILIES, PRESETS, init_model
from pdserve.runtime.checkpoints.fetch import FetchError, fetch_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdserve model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a deterministic model (weights + tokenizer) to DIR")
    init.add_argument("dir", help="output directory (created if missing)")
    init.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    init.add_argument("--family", choices=FAMILIES, default="llama")
    tie = init.add_mutually_exclusive_group()
    tie.add_argument(
        "--tie-word-embeddings",
        dest="tie",
        action="store_true",
        default=None,
        help="share embedding and LM head (default: untied for llama, tied for qwen)",
    )
    tie.add_argument("--no-tie-word-embeddings", dest="tie", action="store_false")
    init.add_argument(
        "--max-shard-mb",
        type=float,
        default=None,
        help="split the weights into shards of at most this size, with an index",
    )
    fetch = sub.add_parser("fetch", help="download a model (hf://, s3://, gs://, file://) to DIR")
    fetch.add_argument("uri")
    fetch.add_argument("dir", help="output directory (created if missing)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fetch":
        try:
            path = fetch_model(args.uri, args.dir)
        except (FetchError, OSError) as exc:
            print(f"pdserve model fetch: {exc}", file=sys.stderr)
            return 1
        print(f"fetched {args.uri} to {path}")
        return 0
    shard_bytes = None if args.max_shard_mb is None else int(args.max_shard_mb * 1024 * 1024)
    if shard_bytes is not None and shard_bytes <= 0:
        print("pdserve model init: --max-shard-mb must be positive", file=sys.stderr)
        return 2
    try:
        path = init_model(args.dir, args.preset, args.family, args.tie, shard_bytes)
    except (OSError, ValueError) as exc:
        print(f"pdserve model init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.preset} {args.family} model to {path}")
    return 0
