"""The operator at 200 LLMServices: children latency, batch convergence and memory (the README's
figures). Runs `e2e/test_operator_scale.py` with $PDSERVE_SCALE_LLMSERVICES (make test runs it
with 40) on the cluster the e2e tests use (a private local one unless $KUBECONFIG names one).

    .venv/bin/python -m bench.bench_operator_scale [--llmservices 200]

Prints the figures and keeps them in bench/out/operator_scale.json.
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llmservices", type=int, default=200)
    args = parser.parse_args(argv)
    if args.llmservices < 2:
        parser.error("--llmservices must be at least 2")
    os.environ["PDSERVE_SCALE_LLMSERVICES"] = str(args.llmservices)
    return int(pytest.main(["-q", "-p", "no:cacheprovider", "e2e/test_operator_scale.py"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
