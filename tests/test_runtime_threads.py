"""How many torch threads a worker runs: its flag, else the container's CPU limit."""

from __future__ import annotations

import pytest
import torch

from pdserve.runtime.cli import parse_settings
from pdserve.runtime.devices import resolve as device


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000\n", None), ("400000 100000\n", 4), ("150000 100000", 2), ("1000 100000", 1)],
)
def test_cpus_from_cgroup_quota(cpu_max, cpus):
    assert device.cpus_from_cgroup_quota(cpu_max) == cpus


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_flag_wins_and_quota_caps_the_default(monkeypatch, tmp_path, restore_threads):
    assert parse_settings(["--model", "m", "--threads", "3"])["threads"] == 3
    assert device.torch_threads(1) == 1
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # a 1-CPU container
    monkeypatch.setattr(device, "CGROUP_CPU_MAX", cpu_max)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert device.torch_threads(None) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the operator of the box decided: left alone
    torch.set_num_threads(2)
    assert device.torch_threads(None) == 2


def test_bad_threads_flag_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--threads", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
