"""Failures the engine does not survive (free of torch: the async wrapper imports it too)."""

from __future__ import annotations


class RunnerBrokenError(RuntimeError):
    """A step failed in a way no later step recovers from (a tensor-parallel peer is gone or
    out of step): the engine thread stops, so the worker reports unhealthy and is restarted."""
