"""Faults injected for real inside Ray trial workers.

:func:`install` is a Ray ``worker_process_setup_hook``: every worker process runs it at start-up.
When ``SWEEPER_TEST_FAULTS`` names a directory, it wraps the engine's per-epoch training so
that, before training the chosen epoch of a trial whose config has the chosen value, the
worker fails the way the fault says:

- ``exception``: a plain ``RuntimeError`` from the training code;
- ``oom``: a real allocator failure — the epoch asks for a batch tensor far larger than any
  machine's memory (``RuntimeError: DefaultCPUAllocator: can't allocate memory``);
- ``cuda_oom``: ``torch.OutOfMemoryError``, what CUDA's caching allocator raises.

The faults are read from ``<directory>/faults.json`` when an epoch starts (a list of
``{"tag", "key", "value", "epoch", "kind", "attempts"}``; ``key`` is a dotted config key).
``attempts`` is how many times the fault fires (null: every time); each firing leaves a file
``<tag>.<n>`` in the directory, so the test can count them and retries see earlier attempts.
Every epoch a matching trial starts is logged to ``<tag>.epochs`` (``pid epoch``), straight
from the worker: :func:`epochs_by_process` shows whether a retry resumed or restarted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "SWEEPER_TEST_FAULTS"
SPEC_FILE = "faults.json"


def install() -> None:
    directory = os.environ.get(ENV)
    if not directory:
        return
    from sweeper import engine

    original = engine.Trainer._train_one_epoch
    if getattr(original, "_faulty", False):
        return

    def train_one_epoch(self: engine.Trainer) -> float:
        _maybe_fail(self, Path(directory))
        return original(self)

    train_one_epoch._faulty = True  # type: ignore[attr-defined]
    engine.Trainer._train_one_epoch = train_one_epoch  # type: ignore[method-assign]


def write_faults(directory: Path, faults: list[dict[str, Any]]) -> None:
    """Arm ``faults`` for the trials started from now on (replacing earlier ones)."""
    tmp = directory / f".{SPEC_FILE}.tmp"
    tmp.write_text(json.dumps(faults))
    tmp.replace(directory / SPEC_FILE)


def fired(directory: Path, tag: str) -> int:
    """How many times the fault ``tag`` fired."""
    return len(list(directory.glob(f"{tag}.[0-9]*")))


def epochs_by_process(directory: Path, tag: str) -> list[list[int]]:
    """The epochs each worker process started for the trials matching ``tag``, in order."""
    log = directory / f"{tag}.epochs"
    runs: dict[str, list[int]] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        pid, epoch = line.split()
        runs.setdefault(pid, []).append(int(epoch))
    return list(runs.values())


def _maybe_fail(trainer: Any, directory: Path) -> None:
    spec = directory / SPEC_FILE
    if not spec.is_file():
        return
    config = trainer.config.to_dict()
    for fault in json.loads(spec.read_text()):
        if _lookup(config, fault["key"]) != fault["value"]:
            continue
        with (directory / f"{fault['tag']}.epochs").open("a") as log:
            log.write(f"{os.getpid()} {trainer.epoch + 1}\n")
        if trainer.epoch + 1 != fault["epoch"]:
            continue
        count = fired(directory, fault["tag"])
        if fault.get("attempts") is not None and count >= fault["attempts"]:
            continue
        (directory / f"{fault['tag']}.{count}").write_text(str(os.getpid()))
        _fail(trainer, fault["kind"])


def _fail(trainer: Any, kind: str) -> None:
    import torch

    if kind == "exception":
        raise RuntimeError(f"injected fault before epoch {trainer.epoch + 1}")
    if kind == "oom":  # a batch of 2**40 images on the trial's device: the allocator refuses it for real
        torch.empty((1 << 40, 3, 32, 32), device=trainer.device)
        raise AssertionError("the impossible allocation succeeded")
    if kind == "cuda_oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    raise ValueError(f"unknown fault kind {kind!r}")


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
