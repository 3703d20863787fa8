"""The small training run that lesson 03 interrupts, resumes and crashes, and the tools that show it.

Lesson 03 teaches a save / resume recipe and proves each of its lines. The machinery for those
proofs lives here, so that the lesson shows the idea and the result:

- :data:`CONFIG`, :func:`build`, :func:`augment` and :func:`fit`: the lesson's training run
  (``DigitsMLP`` with dropout, Adam, a one-cycle schedule stepped every batch, a shuffling
  ``DataLoader`` with its own ``torch.Generator``, and an augmentation that draws from Python's,
  NumPy's and PyTorch's random generators).
- :func:`finish_in_fresh_process`: a new Python process resumes a checkpoint with the lesson's
  recipe file and trains to the end (``python -m helpers.resume_demo finish ...``).
- :func:`full_state` and :func:`compare_states`: everything a run's next step depends on, and a
  bit-for-bit comparison of two such states.
- :func:`resume_leaving_out` and :func:`plot_resumes`: resumes that forget one piece.
- :func:`describe` and :func:`saved_bytes_of`: one line per entry of a checkpoint, and its bytes.
- :func:`kill_during_save`: a child process saves 200 MB onto a path and is killed with SIGKILL
  part-way (``python -m helpers.resume_demo slow-save ...``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from helpers.checkpointing import atomic_save, capture_rng_state, restore_rng_state
from helpers.data import make_loaders
from helpers.environment import seed_everything
from helpers.models import DigitsMLP

__all__ = [
    "CONFIG",
    "PIECES",
    "KillResult",
    "augment",
    "build",
    "accuracy",
    "fit",
    "full_state",
    "compare_states",
    "saved_bytes_of",
    "describe",
    "load_recipe",
    "finish_in_fresh_process",
    "resume_leaving_out",
    "plot_resumes",
    "kill_during_save",
]

CONFIG = {"seed": 0, "epochs": 6, "batch_size": 64, "max_lr": 0.01, "hidden": 64, "dropout": 0.2}
"""The lesson's run: 6 epochs of 23 batches."""

PIECES = ("optimizer state", "scheduler state", "random state", "data order")
"""What :func:`resume_leaving_out` can leave out."""


# ---------------------------------------------------------------------------------------------
# The training run


def augment(x: torch.Tensor) -> torch.Tensor:
    """Shift, contrast and noise, drawn from Python's, NumPy's and PyTorch's random generators."""
    shift = random.choice([-1, 0, 1])  # Python's random
    contrast = float(np.random.uniform(0.8, 1.2))  # NumPy
    noise = 0.05 * torch.randn_like(x)  # PyTorch
    return torch.roll(x, shifts=shift, dims=3) * contrast + noise


def build(config: Mapping[str, Any] = CONFIG):
    """A fresh ``(model, optimizer, scheduler, train_loader, val_loader)``, seeded from ``config``."""
    seed_everything(config["seed"])
    model = DigitsMLP(hidden=config["hidden"], dropout=config["dropout"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["max_lr"])
    train_loader, val_loader = make_loaders(batch_size=config["batch_size"], seed=config["seed"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["max_lr"], total_steps=config["epochs"] * len(train_loader)
    )
    return model, optimizer, scheduler, train_loader, val_loader


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    """The fraction of ``loader``'s examples that ``model`` (switched to eval mode) gets right."""
    model.eval()
    return sum((model(x).argmax(1) == y).sum().item() for x, y in loader) / len(loader.dataset)


def fit(model, optimizer, scheduler, train_loader, val_loader, config: Mapping[str, Any] = CONFIG, *,
        start: Mapping[str, Any] | None = None, every: int | None = None,
        on_checkpoint: Callable[[dict], None] | None = None, stop_after: int | None = None,
        history: list | None = None) -> dict:
    """Train to the end of the schedule: from the beginning, or from where ``start`` says.

    ``start`` holds ``epoch`` (the next epoch to run) and may hold ``batches_done`` (batches of
    that epoch already done: they are drawn and skipped, so the order stays the same), ``step``
    and ``best_metric``. At the end of every epoch (and every ``every`` steps) it measures the
    validation accuracy, then calls ``on_checkpoint(progress)``; at the end of an epoch
    ``progress["epoch"]`` already counts it as finished. ``progress["data_order"]`` is the
    loader generator's state when the current epoch's order was drawn. It stops after step
    ``stop_after``, if given. ``history`` (a list) gets ``(loss, learning rate, all weights as
    one vector)`` for every step. Returns the final ``progress`` dict.
    """
    progress = {"epoch": 0, "batches_done": 0, "step": 0, "best_metric": 0.0, **(start or {})}
    for epoch in range(progress["epoch"], config["epochs"]):
        progress["data_order"] = train_loader.generator.get_state()  # this epoch's order is drawn from it
        for i, (x, y) in enumerate(train_loader):
            if i < progress["batches_done"]:  # done before the checkpoint we resumed from
                continue
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            loss = F.cross_entropy(model(augment(x)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress["step"] += 1
            progress["batches_done"] = i + 1
            if history is not None:
                history.append((loss.item(), lr, parameters_to_vector(model.parameters()).detach()))
            end_of_epoch = i + 1 == len(train_loader)
            if end_of_epoch:  # "next epoch, nothing done yet" rather than "this epoch, all done"
                progress.update(epoch=epoch + 1, batches_done=0, data_order=train_loader.generator.get_state())
            if end_of_epoch or (every and progress["step"] % every == 0):
                progress["metric"] = accuracy(model, val_loader)
                progress["best_metric"] = max(progress["best_metric"], progress["metric"])
                if on_checkpoint is not None:
                    on_checkpoint(progress)
            if progress["step"] == stop_after:
                return progress
    return progress


# ---------------------------------------------------------------------------------------------
# Comparing runs


def full_state(model, optimizer, scheduler, train_loader, epoch: int) -> dict:
    """Everything the next training step depends on: the states, every random generator, the data order."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_state": capture_rng_state(),
        "data_generator_state": train_loader.generator.get_state(),
        "epoch": int(epoch),
    }


def _leaves(value: Any, path: str = ""):
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    else:
        yield path, value


def compare_states(a: Mapping, b: Mapping) -> tuple[int, list[str]]:
    """``(tensors compared, differences)`` between two nested dicts of tensors and numbers.

    Every tensor must have the same dtype and be equal bit for bit (``torch.equal``), and every
    other value must be equal with ``==``. ``differences`` names each path (such as
    ``/optimizer/state/0/exp_avg``) that is missing on one side or differs; empty means equal.
    """
    mine, theirs = dict(_leaves(a)), dict(_leaves(b))
    differences = sorted(f"{path} (only in {'the first' if path in mine else 'the second'})"
                         for path in mine.keys() ^ theirs.keys())
    compared = 0
    for path in mine.keys() & theirs.keys():
        x, y = mine[path], theirs[path]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            compared += 1
            same = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        else:
            same = x == y
        if not same:
            differences.append(path)
    return compared, sorted(differences)


def saved_bytes_of(obj: Any) -> bytes:
    """What ``torch.save(obj, ...)`` writes, as bytes (saved into memory, not to a file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def describe(checkpoint: Mapping) -> list[str]:
    """One line per entry of ``checkpoint`` (and of its ``rng_state``): what kind of value it holds."""

    def summary(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"tensor of {value.numel()} {value.dtype}"
        if isinstance(value, Mapping):
            text = "dict of " + ", ".join(map(str, value))
            return text if len(text) < 80 else text[:76] + " ..."
        if isinstance(value, (list, tuple)):
            return f"{type(value).__name__} of {len(value)}"
        return repr(value)

    lines = [f"{key:21} {summary(value)}" for key, value in checkpoint.items()]
    for key, value in (checkpoint.get("rng_state") or {}).items():
        lines.append(f"    rng_state[{key!r}]: {summary(value)}")
    return lines


# ---------------------------------------------------------------------------------------------
# Resuming in a fresh process, with the lesson's recipe


def load_recipe(path: str | os.PathLike):
    """Import the Python file at ``path`` (the lesson's ``recipe.py``) as a module, afresh."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the lesson's recipe cell (the one with %%writefile) first.")
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finish(recipe_path: str, checkpoint_path: str, final_path: str) -> int:
    """In this process: build the run, ``recipe.resume`` from the checkpoint, train to the end, save the state."""
    torch.set_num_threads(1)  # like the notebook: the same arithmetic in both processes
    recipe = load_recipe(recipe_path)
    model, optimizer, scheduler, train_loader, val_loader = build(CONFIG)
    start = recipe.resume(checkpoint_path, model, optimizer, scheduler, train_loader)
    print(f"resumed at epoch {start}", flush=True)
    progress = fit(model, optimizer, scheduler, train_loader, val_loader, CONFIG,
                   start={"epoch": start, "step": start * len(train_loader)})
    atomic_save(full_state(model, optimizer, scheduler, train_loader, progress["epoch"]), final_path)
    print(f"finished at step {progress['step']}; saved {final_path}", flush=True)
    return progress["step"]


def finish_in_fresh_process(recipe: str | os.PathLike, checkpoint: str | os.PathLike,
                            final: str | os.PathLike, timeout: float = 300) -> tuple[float, str]:
    """Run a new Python process that resumes ``checkpoint`` with ``recipe``'s ``resume`` and trains to the end.

    The process knows only the recipe file, the checkpoint and this module's :func:`build` and
    :func:`fit`. It saves :func:`full_state` at the end to ``final``. Returns ``(seconds, what it
    printed)``; raises ``RuntimeError`` with the end of its error output if it fails.
    """
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "helpers.resume_demo", "finish", str(recipe), str(checkpoint), str(final)],
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"The fresh process failed (exit code {result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout.strip()


def resume_leaving_out(checkpoint_path: str | os.PathLike, piece: str | None, config: Mapping[str, Any] = CONFIG):
    """Resume like the recipe, but without restoring ``piece`` (one of :data:`PIECES`; ``None``: all).

    Trains to the end and returns ``(history, progress, optimizer)`` (see :func:`fit`).
    """
    if piece is not None and piece not in PIECES:
        raise ValueError(f"piece must be None or one of {PIECES}, got {piece!r}")
    model, optimizer, scheduler, train_loader, val_loader = build(config)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    if piece != "optimizer state":
        optimizer.load_state_dict(checkpoint["optimizer"])
    if piece != "scheduler state":
        scheduler.load_state_dict(checkpoint["scheduler"])
    if piece != "data order":
        train_loader.generator.set_state(checkpoint["data_generator_state"])
    if piece != "random state":
        restore_rng_state(checkpoint["rng_state"])
    model.train()
    history: list = []
    start = {"epoch": checkpoint["epoch"], "step": checkpoint["epoch"] * len(train_loader)}
    progress = fit(model, optimizer, scheduler, train_loader, val_loader, config, start=start, history=history)
    return history, progress, optimizer


def plot_resumes(straight_history: list, runs: Mapping[str, tuple], resumed_at: int):
    """Three panels: training loss, learning rate, and distance from the uninterrupted run's weights.

    ``straight_history`` is the uninterrupted run's :func:`fit` history; ``runs`` maps a name to
    :func:`resume_leaving_out`'s result; ``resumed_at`` is the step of the checkpoint. Returns the figure.
    """
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(straight_history) + 1)
    after = straight_history[resumed_at:]
    width = 8

    def smooth(values):
        return np.convolve(values, np.ones(width) / width, mode="valid")

    fig, (ax_loss, ax_lr, ax_dist) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(steps[width - 1:], smooth([h[0] for h in straight_history]), color="black", lw=3, alpha=0.3,
                 label="uninterrupted")
    ax_lr.plot(steps, [h[1] for h in straight_history], color="black", lw=3, alpha=0.3, label="uninterrupted")
    for name, (history, _, _) in runs.items():
        style = dict(ls="--", color="black", lw=1) if name == "exact resume" else dict(lw=1.5)
        ax_loss.plot(steps[resumed_at + width - 1:], smooth([h[0] for h in history]), label=name, **style)
        ax_lr.plot(steps[resumed_at:], [h[1] for h in history], label=name, **style)
        ax_dist.plot(steps[resumed_at:], [(h[2] - ref[2]).norm().item() for h, ref in zip(history, after)],
                     label=name, **style)
    for ax, title in ((ax_loss, f"training loss (mean of {width} steps): all look plausible"),
                      (ax_lr, "learning rate"), (ax_dist, "distance from the uninterrupted run's weights")):
        ax.axvline(resumed_at, color="grey", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("step (the checkpoint is at the grey line)")
    ax_lr.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Killing a process in the middle of a save


@dataclass(frozen=True)
class KillResult:
    """What :func:`kill_during_save` did: seconds from "go" to the kill, and the attempt it took."""

    seconds: float
    attempts: int


def _slow_save(how: str, path: str, megabytes: int) -> None:
    """In this process: wait for "go" on stdin, then save ``megabytes`` MB onto ``path`` with ``how``."""
    big = {f"layer{i}.weight": torch.empty(250_000) for i in range(megabytes)}  # 1 MB of float32 each
    print("ready", flush=True)
    sys.stdin.readline()
    if how == "torch.save":
        torch.save(big, path)
    else:
        atomic_save(big, path)
    print("done", flush=True)


def kill_during_save(how: str, path: str | os.PathLike, *, megabytes: int = 200, grown_past: int = 20_000_000,
                     attempts: int = 5) -> KillResult:
    """Start a child process saving ``megabytes`` MB onto ``path`` and kill it with SIGKILL mid-save.

    ``how`` is ``"torch.save"`` or ``"atomic_save"``. The child is killed (``Popen.kill()``:
    SIGKILL on Linux and macOS, so no ``finally:`` and no clean-up runs in it) as soon as any
    file in ``path``'s folder is larger than ``grown_past`` bytes. If the save finished before
    the kill, it tries again, up to ``attempts`` times, then raises ``RuntimeError``.
    """
    if how not in ("torch.save", "atomic_save"):
        raise ValueError(f"how must be 'torch.save' or 'atomic_save', got {how!r}")
    path = Path(path)
    for attempt in range(1, attempts + 1):
        child = subprocess.Popen(
            [sys.executable, "-m", "helpers.resume_demo", "slow-save", how, str(path), str(megabytes)],
            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        if child.stdout.readline().strip() != "ready":
            child.kill()
            raise RuntimeError(f"The saving process did not start:\n{child.communicate()[1][-2000:]}")
        child.stdin.write("go\n")
        child.stdin.flush()
        started = time.perf_counter()
        while child.poll() is None:
            sizes = []
            for entry in path.parent.iterdir():
                try:
                    sizes.append(entry.stat().st_size)
                except FileNotFoundError:  # renamed or removed while we looked
                    pass
            if max(sizes, default=0) > grown_past:
                break
            time.sleep(0.001)
        exited_by_itself = child.poll() is not None
        child.kill()
        output, errors = child.communicate()
        if "done" not in output:
            if exited_by_itself:
                raise RuntimeError(f"The saving process failed:\n{errors[-2000:]}")
            return KillResult(time.perf_counter() - started, attempt)
    raise RuntimeError(f"The save always finished before it could be killed: try a larger megabytes than {megabytes}.")


def main(argv: list[str] | None = None) -> None:
    """``python -m helpers.resume_demo finish RECIPE CHECKPOINT FINAL`` or ``slow-save HOW PATH MEGABYTES``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.resume_demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    finish = commands.add_parser("finish", help="resume a checkpoint with the recipe and train to the end")
    finish.add_argument("recipe")
    finish.add_argument("checkpoint")
    finish.add_argument("final")
    slow = commands.add_parser("slow-save", help="wait for a line on stdin, then save MEGABYTES MB onto PATH")
    slow.add_argument("how", choices=("torch.save", "atomic_save"))
    slow.add_argument("path")
    slow.add_argument("megabytes", type=int)
    args = parser.parse_args(argv)
    if args.command == "finish":
        _finish(args.recipe, args.checkpoint, args.final)
    else:
        _slow_save(args.how, args.path, args.megabytes)


if __name__ == "__main__":
    main()
