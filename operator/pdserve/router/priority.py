"""Priority classes at the router: one bounded queue per class, strict priority, a starvation
guard for the lowest class, and load shedding (HTTP 429 + Retry-After). Configured by
`pdserve router --priority-classes JSON` (the operator renders spec.router.priorityClasses into
it); without it the router admits every request at once, as before. API keys that pick a class
come from `--api-keys-dir DIR`, one subdirectory per class holding one key per file: the
operator mounts each class's `apiKeysSecretRef` Secret there, so keys never appear in the
LLMService, the command line or the operator's reach (`ApiKeyTable`, `read_api_keys`, and
`watch_api_keys`, which follows the kubelet's updates of the mounted Secrets).
"""


from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLASS_HEADER = "x-pdserve-priority-class"
CLASS_BODY_FIELD = "priority_class"
DEFAULT_MAX_QUEUE = 256
DEFAULT_STARVATION_GUARD_EVERY = 10
# Seconds between two reads of --api-keys-dir: the kubelet itself refreshes a mounted Secret
# within about a minute of its change, so polling adds little to that delay.
API_KEYS_POLL_SECONDS = 5.0


class PriorityConfigError(ValueError):
    """A --priority-classes value that does not hold together."""


class UnknownClass(ValueError):
    """A request named a class that is not configured (HTTP 400)."""


@dataclass(frozen=True)
class PriorityClass:
    name: str
    priority: int  # passed to the workers; smaller is more urgent
    max_queue: int = DEFAULT_MAX_QUEUE
    ttft_target_seconds: float | None = None


class ApiKeyTable:
    """API keys -> class names, held as SHA-256 digests (a memory dump or a log line shows no
    key). Replaced whole when the key files change: the handlers read it in the same event
    loop, so a request sees the old table or the new one, never half of each."""

    def __init__(self, digests: dict[str, str] | None = None) -> None:
        self.digests = dict(digests or {})

    @classmethod
    def of(cls, keys: dict[str, str]) -> ApiKeyTable:
        """From plain keys -> class names."""
        return cls({key_digest(k): v for k, v in keys.items()})

    def class_name(self, key: str) -> str | None:
        return self.digests.get(key_digest(key)) if self.digests else None

    def replace(self, digests: dict[str, str]) -> None:
        self.digests = dict(digests)

    def counts(self) -> dict[str, int]:
        """Keys per class (what the log may say about them)."""
        out: dict[str, int] = {}
        for name in self.digests.values():
            out[name] = out.get(name, 0) + 1
        return out


@dataclass(frozen=True)
class PriorityConfig:
    """The classes, most urgent first, and how a request picks one."""

    classes: tuple[PriorityClass, ...]
    default_class: str
    api_keys: ApiKeyTable = field(default_factory=ApiKeyTable, compare=False)
    starvation_guard_every: int = DEFAULT_STARVATION_GUARD_EVERY
    max_in_flight_per_worker: int | None = None

    @property
    def lowest(self) -> PriorityClass:
        return self.classes[-1]

    def by_name(self, name: str) -> PriorityClass:
        for cls in self.classes:
            if cls.name == name:
                return cls
        known = ", ".join(c.name for c in self.classes)
        raise UnknownClass(f"unknown priority class {name!r} (configured: {known})")

    def class_of(self, headers: Any, body: dict[str, Any]) -> PriorityClass:
        """The request's class: its API key's mapped class (a client cannot raise its key's
        class), else the `x-pdserve-priority-class` header, else the body's `priority_class`,
        else the default class."""
        auth = str(headers.get("Authorization", ""))
        if auth[:7].lower() == "bearer ":
            mapped = self.api_keys.class_name(auth[7:].strip())
            if mapped is not None:
                return self.by_name(mapped)
        name = headers.get(CLASS_HEADER)
        if name is None:
            name = body.get(CLASS_BODY_FIELD)
        if name is None:
            return self.by_name(self.default_class)
        if not isinstance(name, str):
            raise UnknownClass(f"{CLASS_BODY_FIELD} must be a string, got {name!r}")
        return self.by_name(name.strip())

    @classmethod
    def from_json(cls, text: str) -> PriorityConfig:
        """`{"classes": [{"name", "priority", "maxQueue", "ttftTargetSeconds"}, ...],
        "defaultClass", "starvationGuardEvery", "maxInFlightPerWorker"}`, as the operator
        renders spec.router (API keys come from files: `read_api_keys`)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PriorityConfigError(f"priority classes are not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list):
            raise PriorityConfigError("priority classes must be an object with a 'classes' list")
        try:
            classes = tuple(PriorityClass(
                name=str(c["name"]), priority=int(c["priority"]),
                max_queue=int(c.get("maxQueue", DEFAULT_MAX_QUEUE)),
                ttft_target_seconds=(None if c.get("ttftTargetSeconds") is None
                                     else float(c["ttftTargetSeconds"])))
                for c in raw["classes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorityConfigError(f"bad priority class: {exc}") from None
        every = raw.get("starvationGuardEvery", DEFAULT_STARVATION_GUARD_EVERY)
        per_worker = raw.get("maxInFlightPerWorker")
        unknown = sorted(set(raw) - {"classes", "defaultClass", "starvationGuardEvery",
                                     "maxInFlightPerWorker"})
        if unknown:  # e.g. the apiKeys of earlier versions: keys come from --api-keys-dir
            raise PriorityConfigError(f"priority classes: unknown fields {unknown}")
        return build_config(list(classes), raw.get("defaultClass"), int(every),
                            None if per_worker is None else int(per_worker))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def build_config(classes: list[PriorityClass], default_class: str | None = None,
                 starvation_guard_every: int = DEFAULT_STARVATION_GUARD_EVERY,
                 max_in_flight_per_worker: int | None = None) -> PriorityConfig:
    """Checks and orders the classes (most urgent first)."""
    if not classes:
        raise PriorityConfigError("at least one priority class is needed")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise PriorityConfigError(f"priority class names must be unique: {names}")
    priorities = [c.priority for c in classes]
    if len(set(priorities)) != len(priorities):
        raise PriorityConfigError(f"priority class priorities must be unique: {priorities}")
    for c in classes:
        if c.max_queue < 0:
            raise PriorityConfigError(f"class {c.name!r}: maxQueue must be >= 0")
        if c.ttft_target_seconds is not None and c.ttft_target_seconds <= 0:
            raise PriorityConfigError(f"class {c.name!r}: ttftTargetSeconds must be > 0")
    ordered = tuple(sorted(classes, key=lambda c: c.priority))
    default = default_class or ordered[-1].name
    if default not in names:
        raise PriorityConfigError(f"default priority class {default!r} is not one of {names}")
    if starvation_guard_every < 2:
        raise PriorityConfigError("starvationGuardEvery must be >= 2")
    if max_in_flight_per_worker is not None and max_in_flight_per_worker < 1:
        raise PriorityConfigError("maxInFlightPerWorker must be >= 1")
    return PriorityConfig(ordered, default, ApiKeyTable(), starvation_guard_every,
                          max_in_flight_per_worker)


def read_api_keys(directory: Path, config: PriorityConfig) -> dict[str, str]:
    """SHA-256 digests of the keys under `directory` -> class names: `directory/<class>/<any
    name>` holds one key (surrounding whitespace dropped: `kubectl create secret
    --from-file` keeps a trailing newline). Names starting with `..` are the kubelet's own
    (the atomic-update links of a mounted Secret) and skipped. Raises PriorityConfigError for
    a subdirectory that is not a configured class, an empty key, or a key in two classes."""
    if not directory.is_dir():
        raise PriorityConfigError(f"API key directory {str(directory)!r} does not exist")
    names = [c.name for c in config.classes]
    digests: dict[str, str] = {}
    for class_dir in sorted(directory.iterdir()):
        if class_dir.name.startswith(".."):
            continue
        if class_dir.name not in names or not class_dir.is_dir():
            raise PriorityConfigError(
                f"API keys: {str(class_dir)!r} is not the directory of a configured priority "
                f"class (one subdirectory per class: {', '.join(names)})")
        for key_file in sorted(class_dir.iterdir()):
            if key_file.name.startswith("..") or key_file.is_dir():
                continue
            key = key_file.read_text(encoding="utf-8").strip()
            if not key:
                raise PriorityConfigError(f"API keys: {str(key_file)!r} is empty")
            digest = key_digest(key)
            other = digests.setdefault(digest, class_dir.name)
            if other != class_dir.name:
                raise PriorityConfigError(
                    f"API keys: the key in {str(key_file)!r} is also a key of class {other!r} "
                    "(a key belongs to one class)")
    return digests


async def watch_api_keys(directory: Path, config: PriorityConfig,
                         interval: float = API_KEYS_POLL_SECONDS) -> None:
    """Re-reads `directory` every `interval` seconds and swaps `config.api_keys` when the keys
    changed (a mounted Secret updated by the kubelet). A read that fails keeps the keys in
    use and logs why: a serving router must not lose every key to one bad file."""
    while True:
        await asyncio.sleep(interval)
        try:
            digests = await asyncio.to_thread(read_api_keys, directory, config)
        except (PriorityConfigError, OSError, UnicodeDecodeError) as exc:
            log.error("API keys not reloaded, the previous ones stay in use: %s", exc)
            continue
        if digests != config.api_keys.digests:
            config.api_keys.replace(digests)
            log.info("API keys reloaded from %s: keys per class %s", directory,
                     config.api_keys.counts())
