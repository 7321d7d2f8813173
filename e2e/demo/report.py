"""How the demo prints: numbered section headings, indented command output, aligned tables."""

from __future__ import annotations

import time
from collections.abc import Sequence

WIDTH = 100
_started = time.monotonic()


def section(number: int, title: str) -> None:
    elapsed = time.monotonic() - _started
    print(f"\n{'=' * WIDTH}\n{number}. {title}   [{elapsed:.0f}s]\n{'=' * WIDTH}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def command(line: str, output: str) -> None:
    """A command as a user would type it, then its output indented."""
    print(f"$ {line}", flush=True)
    for row in output.rstrip().splitlines():
        print(f"  {row}", flush=True)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if index and _numeric(c) else c.ljust(w)
                               for c, w in zip(row, widths, strict=True)).rstrip(), flush=True)
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths), flush=True)


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace(",", "").replace("-", "", 1).isdigit()


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
