"""Shared fixtures of the runtime engine/model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: on a shared 2-core machine an intra-op thread that is not
    scheduled stalls every small op (20x slower steps); restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
