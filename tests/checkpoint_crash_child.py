"""The child process of tests/test_checkpoint_crash.py: saves checkpoints in a loop until killed.

Each checkpoint holds its step in every tensor (and as ``"step"``), so the parent can tell a
complete, self-consistent checkpoint from a mixed or half-written one. The child resumes from
``CheckpointManager.load_latest()``, like a real training job restarted after a crash.

Children are forked from a fork server that has imported torch once (:func:`forkserver`), so
starting one takes milliseconds instead of seconds; tests/test_checkpointing.py uses the same
server to resume training in another process.
"""

from __future__ import annotations

import multiprocessing
import warnings

import torch

from helpers.checkpointing import CheckpointManager, CheckpointWarning

TENSORS = 4
SHAPE = (256, 1024)  # 1 MiB of float32 per tensor: 4 MiB per checkpoint
KEEP_LAST = 2


PRELOAD = ["torch", "torch.optim", "helpers.checkpointing", "checkpoint_crash_child"]


def forkserver():
    """The ``forkserver`` multiprocessing context, with torch imported once in the server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def make_checkpoint(step: int) -> dict:
    """A checkpoint whose every tensor is filled with ``step``."""
    return {
        "step": step,
        "weights": {f"w{i}": torch.full(SHAPE, float(step)) for i in range(TENSORS)},
        "steps": torch.full((TENSORS,), step, dtype=torch.int64),
    }


def check_checkpoint(checkpoint: dict, step: int) -> None:
    """Raise AssertionError unless ``checkpoint`` is complete and every part says ``step``."""
    assert checkpoint["step"] == step, (checkpoint["step"], step)
    assert sorted(checkpoint["weights"]) == [f"w{i}" for i in range(TENSORS)]
    for name, tensor in checkpoint["weights"].items():
        assert tensor.shape == SHAPE, name
        assert bool((tensor == step).all()), f"{name} mixes steps"
    assert bool((checkpoint["steps"] == step).all())


def save_forever(folder: str, started) -> None:
    """Resume from the newest complete checkpoint in ``folder`` and save step after step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)  # stale temp files: expected here
        manager = CheckpointManager(folder, keep_last=KEEP_LAST)
        resumed = manager.load_latest()
    step = 0 if resumed is None else resumed["step"] + 1
    started.set()
    while True:
        manager.save(make_checkpoint(step), step=step)
        step += 1
