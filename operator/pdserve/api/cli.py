"""`pdserve crds`: write (or check) the CRD YAML generated from the API models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdserve.api.crd import CRD_FILENAME, crd_yaml


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pdserve crds", description="Write the LLMService CRD generated from the API models.",
    )
    parser.add_argument("--output", "-o", default="crds",
                        help=f"directory to write {CRD_FILENAME} into, or - for stdout")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file there is stale")
    args = parser.parse_args(argv)
    text = crd_yaml()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output) / CRD_FILENAME
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target} is stale: run `pdserve crds --output {args.output}`", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0
