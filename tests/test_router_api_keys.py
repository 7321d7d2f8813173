"""API keys of the priority classes from a directory (`pdserve router --api-keys-dir`), laid out
as the kubelet mounts a Secret: read at startup (bad input: exit 2 with a message), and re-read
while the router runs so a Secret's update reaches the key table."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdserve.router.priority import (
    PriorityClass,
    PriorityConfig,
    PriorityConfigError,
    build_config,
    key_digest,
    read_api_keys,
    watch_api_keys,
)

CLASSES = '{"classes": [{"name": "high", "priority": 0}, {"name": "low", "priority": 10}]}'


def config() -> PriorityConfig:
    return build_config([PriorityClass("high", 0), PriorityClass("low", 10)])


def mount_secret(directory: Path, data: dict[str, str], version: int = 0) -> None:
    """Writes `data` as the kubelet's atomic writer does: the files in a timestamped directory,
    `..data` a link to it (swapped by a rename), each key a link through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamped = directory / f"..2026_12_07_23_00_00.{version}"
    stamped.mkdir()
    for name, value in data.items():
        (stamped / name).write_text(value)
    (directory / "..data_tmp").symlink_to(stamped.name)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(directory / "..data_tmp", directory / "..data")
    for link in directory.iterdir():
        if not link.name.startswith("..") and link.name not in data:
            link.unlink()
    for name in data:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old is not None:
        for f in (directory / old).iterdir():
            f.unlink()
        (directory / old).rmdir()


def test_reads_one_key_per_file_per_class_directory(tmp_path):
    mount_secret(tmp_path / "high", {"team-a": "sk-a\n", "team-b": "  sk-b"})
    mount_secret(tmp_path / "low", {"free": "sk-free"})
    digests = read_api_keys(tmp_path, config())
    assert digests == {key_digest("sk-a"): "high", key_digest("sk-b"): "high",
                       key_digest("sk-free"): "low"}
    assert not any("sk-" in d for d in digests)  # held as digests only


@pytest.mark.parametrize(("layout", "message"), [
    ({"gold/k": "sk-1"}, "gold' is not the directory of a configured priority class"),
    ({"high/k": " \n"}, "is empty"),
    ({"high/k": "sk-1", "low/k": "sk-1"}, "also a key of class 'high'"),
    ({"high": "a file, not a directory"}, "not the directory of a configured"),
])
def test_bad_directories_are_clear_errors(tmp_path, layout, message):
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(PriorityConfigError, match=message):
        read_api_keys(tmp_path, config())


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PriorityConfigError, match="does not exist"):
        read_api_keys(tmp_path / "absent", config())


async def test_the_table_follows_the_mounted_secrets(tmp_path, caplog):
    classes = config()
    mount_secret(tmp_path / "high", {"team-a": "sk-a"})
    classes.api_keys.replace(read_api_keys(tmp_path, classes))
    bearer = {"Authorization": "Bearer sk-a"}
    assert classes.class_of(bearer, {}).name == "high"
    watcher = asyncio.create_task(watch_api_keys(tmp_path, classes, interval=0.01))

    async def until(condition) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the key table did not follow the files")

    try:
        # rotated: sk-a removed, sk-a2 added (a Secret update)
        mount_secret(tmp_path / "high", {"team-a": "sk-a2"}, version=1)
        await until(lambda: classes.class_of({"Authorization": "Bearer sk-a2"}, {}).name
                    == "high")
        assert classes.class_of(bearer, {}).name == "low"  # the default class now
        # a class's Secret appears
        mount_secret(tmp_path / "low", {"free": "sk-free"})
        await until(lambda: classes.api_keys.counts() == {"high": 1, "low": 1})
        # a bad update (the same key in two classes) keeps the keys in use
        mount_secret(tmp_path / "low", {"free": "sk-a2"}, version=2)
        await until(lambda: "also a key of class 'high'" in caplog.text)
        assert "API keys not reloaded" in caplog.text
        assert classes.api_keys.counts() == {"high": 1, "low": 1}
        assert classes.class_of({"Authorization": "Bearer sk-free"}, {}).name == "low"
    finally:
        watcher.cancel()


def test_from_json_rejects_keys_in_the_classes_json():
    with pytest.raises(PriorityConfigError, match=r"unknown fields \['apiKeys'\]"):
        PriorityConfig.from_json('{"classes": [{"name": "a", "priority": 0}], '
                                 '"apiKeys": {"sk-1": "a"}}')


def router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdserve", "router", "--served-model-name", "m",
         "--decode-endpoints", "127.0.0.1:1", *args],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("layout", "extra", "message"), [
    ({"gold/k": "sk-1"}, ["--priority-classes", CLASSES],
     "is not the directory of a configured priority class"),
    ({"high/k": "sk-1"}, [], "--api-keys-dir needs --priority-classes"),
])
def test_router_exits_2_with_a_message_on_bad_keys(tmp_path, layout, extra, message):
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    done = router("--api-keys-dir", str(tmp_path), *extra)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
