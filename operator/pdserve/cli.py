"""The `pdserve` command: a thin dispatcher to each layer's own command module.

Subcommands are imported lazily so that `pdserve operator` never imports torch and
`pdserve worker` never imports kopf. Each module exposes `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
import sys

from pdserve import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("pdserve.runtime.cli", "run an inference worker (role prefill, decode or both)"),
    "model": ("pdserve.runtime.checkpoints.cli",
              "model tools: `model init DIR` writes a tiny model"),
    "router": ("pdserve.router.cli", "run the OpenAI-compatible router"),
    "operator": ("pdserve.controller.cli", "run the LLMService operator (kopf)"),
    "crds": ("pdserve.api.cli", "write the CRD YAML generated from the API models"),
    "plan": ("pdserve.planning.cli",
             "choose accelerators, chips per pod and the P/D split for a workload, with cost"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: pdserve COMMAND [ARGS...]   (pdserve {__version__})", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"pdserve: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    result: int = module.main(args[1:])
    return result
