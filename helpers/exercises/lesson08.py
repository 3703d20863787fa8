"""Checks for lesson 08, ``08_large_checkpoints``. In the notebook: ``from helpers.exercises import lesson08 as ex``.

- q1: load a checkpoint without a second copy (model on ``meta``, ``torch.load(mmap=True)``,
  ``load_state_dict(assign=True)``). The check builds its own checkpoint and asks where each
  loaded tensor lives: in memory mapped from the file (``/proc/self/maps`` on Linux), or in an
  ordinary allocation (a copy). It also checks the value returned (the model, every entry equal
  to the file's) and what is left behind (the default device, and mmap switched on for the
  whole process, must be as before).
- q2: find the newest *complete* sharded checkpoint (``torch.distributed.checkpoint`` writes
  ``.metadata`` last). The check builds folders in a temporary directory: numbered past 9, one
  unfinished, one touched last; the function must return a path inside the folder (or None) and
  leave the folder as it was.
- q3: keep the weights forever: from a full training checkpoint, write only the model's weights
  as safetensors, at ``out_path`` and nowhere else, leaving the checkpoint unchanged.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from helpers.checks import ExerciseSet, Wrong

exercises = ExerciseSet("08_large_checkpoints")


def _small_model() -> nn.Module:
    """A model with parameters and buffers (BatchNorm), small enough for a check."""
    return nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))


def _seeded_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = _small_model()
    with torch.no_grad():  # buffers that differ from a fresh model's, so a lost buffer shows
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(7)
    return model


def _file_mappings(path: Path) -> list[tuple[int, int]] | None:
    """Address ranges of this process mapped from ``path``; ``None`` where ``/proc`` is missing."""
    try:
        with open("/proc/self/maps") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == target:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


def _mmap_by_default() -> bool:
    """Whether ``torch.load`` memory-maps without being asked (a process-wide setting).

    ``torch.utils.serialization.config.load.mmap``; on a torch without that module it is ``False``.
    """
    try:
        from torch.utils.serialization import config
    except ImportError:  # an older torch: no process-wide setting to look at
        return False
    return bool(config.load.mmap)


def _restore_defaults(mmap_default: bool) -> None:
    """Put back what a wrong answer may have changed for the whole process."""
    if torch.empty(0).device.type != "cpu":
        try:
            torch.set_default_device(None)
        except (TypeError, RuntimeError):  # a torch that wants a device here
            torch.set_default_device("cpu")
    try:
        from torch.utils.serialization import config
    except ImportError:
        return
    config.load.mmap = mmap_default


def _short(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@exercises.exercise(
    "q1",
    "Load a checkpoint without a second copy",
    hints=[
        "Three steps: build the model inside `with torch.device('meta'):`, then "
        "torch.load(path, mmap=True, weights_only=True), then model.load_state_dict(state, assign=True).",
        "Call build_model() inside the `with torch.device('meta'):` block, so no memory is allocated and "
        "no random initialisation runs.",
        "Without assign=True, load_state_dict copies into the meta tensors, which hold nothing: the model "
        "stays on meta. With assign=True the model takes the loaded tensors themselves.",
    ],
)
def q1(load_lean: Callable[[Callable[[], nn.Module], Path], nn.Module]) -> str:
    """``load_lean(build_model, path)`` returns the model with the file's weights, memory-mapped."""
    reference = _seeded_model(seed=81)
    with tempfile.TemporaryDirectory(prefix="lesson08-q1-", ignore_cleanup_errors=True) as folder:
        path = Path(folder) / "weights.pt"
        torch.save(reference.state_dict(), path)
        built_on: list[str] = []

        def build_model() -> nn.Module:
            built_on.append(torch.empty(0).device.type)
            return _small_model()

        mmap_requested: list[bool] = []
        original_load = torch.load

        def spying_load(*args, **kwargs):  # notes whether torch.load was asked to memory-map
            mmap_requested.append(bool(kwargs.get("mmap")) or _mmap_by_default())
            return original_load(*args, **kwargs)

        mmap_default_before = _mmap_by_default()
        torch.load = spying_load
        try:
            model = load_lean(build_model, path)
        finally:
            torch.load = original_load
            device_after = torch.empty(0).device.type
            mmap_default_after = _mmap_by_default()
            _restore_defaults(mmap_default_before)
        if device_after != "cpu":
            raise Wrong(
                f"After your function, new tensors are created on '{device_after}': the default device was "
                "changed for the whole program (torch.set_default_device?) and never put back. Use "
                "`with torch.device('meta'):` around build_model() only; it restores the default when the "
                "block ends."
            )
        if mmap_default_after and not mmap_default_before:
            raise Wrong(
                "Your function switched memory-mapping on for every later torch.load in this program "
                "(torch.utils.serialization.config.load.mmap) and left it on. Pass mmap=True to this one "
                "torch.load call instead."
            )
        if model is None:
            raise Wrong("Your function returned None: return the model.")
        if isinstance(model, dict):
            raise Wrong("Your function returned a dict (the state dict?): return the model, with the weights in it.")
        if not isinstance(model, nn.Module):
            raise Wrong(f"Return the model (an nn.Module), not a {type(model).__name__}.")
        if not built_on:
            raise Wrong("build_model() was never called: build the model with it, inside `with torch.device('meta'):`.")
        if len(built_on) > 1:
            raise Wrong(f"build_model() was called {len(built_on)} times: once is enough, on the meta device.")
        if built_on[0] != "meta":
            raise Wrong(
                f"The model was built on '{built_on[0]}': that allocates every weight and initialises it "
                "randomly, only to throw it away. Call build_model() inside `with torch.device('meta'):`."
            )
        state = model.state_dict()
        on_meta = [name for name, tensor in state.items() if tensor.device.type == "meta"]
        if len(on_meta) == len(state):
            raise Wrong(
                "Every weight is still on the meta device (no data): load_state_dict copied into tensors "
                "that hold nothing. Pass assign=True so the model takes the loaded tensors."
            )
        if on_meta:
            raise Wrong(f"Some tensors are still on the meta device ({_short(on_meta)}): load every entry of the file.")
        expected = reference.state_dict()
        if set(state) != set(expected):
            raise Wrong("The model's entries differ from the file's: return the model that build_model() made.")
        for name, tensor in expected.items():
            if state[name].dtype != tensor.dtype or not torch.equal(state[name], tensor):
                raise Wrong(f"{name} differs from the file: load the file at `path` into the model, unchanged.")
        ranges = _file_mappings(path)
        if mmap_requested and not any(mmap_requested):
            raise Wrong(
                "The weights are right, but torch.load read the whole file into memory (a full copy). "
                "Pass mmap=True to torch.load."
            )
        if ranges is not None:
            copied = [
                name for name, tensor in state.items()
                if not any(start <= tensor.data_ptr() < end for start, end in ranges)
            ]
            if copied:
                raise Wrong(
                    f"The weights are right, but {_short(copied)} live in ordinary memory, not in the "
                    "memory-mapped file: they were copied. Build the model on the meta device and use "
                    "load_state_dict(state, assign=True) (not to_empty() and a copy)."
                )
        del model, state
    return (
        "Correct: built on the meta device (no memory, no random init), memory-mapped, assigned. The weights "
        "are read from the disk only when first used."
    )


def _make_dcp_like(folder: Path, name: str, complete: bool, mtime: float) -> None:
    """A folder shaped like a torch.distributed.checkpoint save: shards, plus .metadata if complete."""
    step = folder / name
    step.mkdir()
    for rank in range(2):
        (step / f"__{rank}_0.distcp").write_bytes(b"shard")
    if complete:
        (step / ".metadata").write_bytes(b"metadata")
    os.utime(step, (mtime, mtime))


def _scenario(folder: Path, layout: list[tuple[str, bool, float]]) -> None:
    """Checkpoint-like folders (name, complete, seconds ago) plus things that are not checkpoints."""
    now = time.time()
    for name, complete, age in layout:
        _make_dcp_like(folder, name, complete, now - age)
    (folder / "step-99.log").write_text("not a checkpoint")
    (folder / "notes").mkdir()
    (folder / "notes" / ".metadata").write_text("not a checkpoint either")


def _listing_of(folder: Path) -> set[str]:
    """Every file and folder below ``folder``, as relative paths."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _name_of(answer, folder: Path) -> str | None:
    if answer is None:
        return None
    if not isinstance(answer, (str, os.PathLike)):
        raise Wrong(f"Return the checkpoint folder's path (a Path or a str) or None, not a value of type {type(answer).__name__}.")
    path = Path(answer)
    if path.resolve() == folder.resolve():
        raise Wrong(
            "You returned `folder` itself: return the path of a step-<N> folder inside it, or "
            "return None when no checkpoint is complete."
        )
    if path.parent.resolve() != folder.resolve():
        raise Wrong(
            f"You returned {str(answer)!r}, which is not a path to a folder inside `folder`: return the full "
            "path, folder / name (a bare name only works from inside that folder)."
        )
    return path.name


@exercises.exercise(
    "q2",
    "Find the newest complete sharded checkpoint",
    hints=[
        "Go through folder.iterdir(): keep the folders whose name matches step-<number> and that contain "
        "a .metadata file.",
        "Compare step numbers as numbers: int(name.split('-')[1]). As text, 'step-9' > 'step-10'.",
        "Not by modification time: copying or touching a folder changes it. Return None when no folder is complete.",
    ],
)
def q2(latest_complete: Callable[[Path], Path | None]) -> str:
    """``latest_complete(folder)`` returns the ``step-<N>`` folder with the highest N that has ``.metadata``."""
    cases = [
        # layout (name, complete, seconds ago), the expected answer
        ([("step-2", True, 300), ("step-9", True, 200), ("step-10", True, 100)], "step-10"),
        ([("step-9", True, 300), ("step-10", True, 200), ("step-11", False, 100)], "step-10"),
        ([("step-3", True, 300), ("step-12", True, 200), ("step-10", True, 10)], "step-12"),
        ([("step-4", False, 100)], None),
    ]
    for layout, expected in cases:
        with tempfile.TemporaryDirectory(prefix="lesson08-q2-") as tmp:
            folder = Path(tmp)
            _scenario(folder, layout)
            before = _listing_of(folder)
            answer = latest_complete(folder)
            after = _listing_of(folder)
            if after != before:
                gone, new = sorted(before - after), sorted(after - before)
                raise Wrong(
                    "latest_complete changed the folder (" + ", ".join(
                        [f"removed {_short(gone)}"] * bool(gone) + [f"added {_short(new)}"] * bool(new))
                    + "). It must only look: an unfinished save may still be being written, and deleting "
                    "checkpoints is the rotation's job."
                )
            got = _name_of(answer, folder)
        listing = ", ".join(f"{name}{'' if complete else ' (no .metadata)'}" for name, complete, _ in layout)
        if got == expected:
            continue
        if expected is None:
            raise Wrong(
                f"With only {listing} in the folder you returned {got}: no checkpoint is complete, "
                "so return None (the caller then starts from scratch)."
            )
        complete = {name for name, done, _ in layout if done}
        if got is None:
            raise Wrong(f"With {listing} you returned None, but {expected} is complete: look for folders with a .metadata file.")
        if got in {name for name, done, _ in layout if not done}:
            raise Wrong(
                f"With {listing} you returned {got}, which has no .metadata: that save never finished "
                "(torch.distributed.checkpoint writes .metadata last). Skip folders without it."
            )
        if got in complete and sorted(complete)[-1] == got:
            raise Wrong(
                f"With {listing} you returned {got}: step numbers were compared as text ('step-9' > 'step-10'). "
                "Compare int(step number)."
            )
        if got in complete and layout[-1][0] == got:
            raise Wrong(
                f"With {listing} you returned {got}, the folder touched last: modification times change when "
                "a folder is copied or touched. Go by the step number."
            )
        raise Wrong(f"With {listing} you returned {got}; the newest complete checkpoint is {expected}.")
    return "Correct: highest step number, complete folders only, None when there is none."


def _training_checkpoint(path: Path) -> dict:
    """A full training checkpoint like lesson 03's (model, Adam state, step, RNG) written to ``path``."""
    torch.manual_seed(82)
    model = _small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 32)).sum().backward()
    optimizer.step()
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 1,
        "epoch": 0,
        "rng_state": {"torch": torch.get_rng_state()},
    }
    torch.save(checkpoint, path)
    return checkpoint


@exercises.exercise(
    "q3",
    "Keep only the weights, as safetensors",
    hints=[
        "Load the checkpoint (torch.load(checkpoint_path, mmap=True, weights_only=True)) and take "
        "checkpoint['model']: that is the model's state dict.",
        "from safetensors.torch import save_file; save_file(state_dict, out_path) writes it.",
        "Keep the tensors as they are (float32): a file you keep forever should load back exactly.",
    ],
)
def q3(export_weights: Callable[[Path, Path], object]) -> str:
    """``export_weights(checkpoint_path, out_path)`` writes ``checkpoint['model']`` to ``out_path`` as safetensors."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="lesson08-q3-", ignore_cleanup_errors=True) as folder:
        source = Path(folder) / "checkpoint-step000001.pt"
        checkpoint = _training_checkpoint(source)
        out = Path(folder) / "final-weights.safetensors"
        source_bytes = source.read_bytes()
        export_weights(source, out)
        if source.read_bytes() != source_bytes:
            raise Wrong(
                "Your function changed the training checkpoint at checkpoint_path. Leave it as it is (you may "
                "still resume from it): write the weights to out_path only."
            )
        if out.is_dir():
            raise Wrong(
                "out_path is a folder now: write one file there, safetensors.torch.save_file(weights, out_path) "
                "(not a folder like save_pretrained makes)."
            )
        if not out.exists():
            others = sorted(p.name for p in Path(folder).iterdir() if p != source)
            where = f" (it wrote {_short(others)} instead)" if others else ""
            raise Wrong(
                f"export_weights wrote no file at out_path{where}. Write the weights to exactly that path: "
                "safetensors.torch.save_file(weights, out_path)."
            )
        head = out.read_bytes()[:4]
        try:
            weights = load_file(str(out))
        except Exception as error:  # safetensors' SafetensorError, or anything a broken file raises
            if head == b"PK\x03\x04":
                raise Wrong(
                    "out_path holds a torch.save file (a zip), not safetensors: write it with "
                    "safetensors.torch.save_file."
                ) from None
            raise Wrong(f"out_path is not a safetensors file ({error}): write it with safetensors.torch.save_file.") from None
        expected = checkpoint["model"]
        extra = sorted(set(weights) - set(expected))
        missing = sorted(set(expected) - set(weights))
        if extra:
            raise Wrong(
                f"The file holds more than the weights ({_short(extra)}): the optimizer's state is for "
                "resuming, not for keeping. Save checkpoint['model'] only."
            )
        if missing:
            raise Wrong(f"Some weights are missing ({_short(missing)}): save every entry of checkpoint['model'].")
        for name, tensor in expected.items():
            if weights[name].dtype != tensor.dtype:
                raise Wrong(
                    f"{name} was saved as {weights[name].dtype}, not {tensor.dtype}: keep the weights exactly "
                    "as trained (a smaller dtype is a separate, lossy decision)."
                )
            if not torch.equal(weights[name], tensor):
                raise Wrong(f"{name} differs from the checkpoint's: save checkpoint['model'] unchanged.")
        ratio = source.stat().st_size / out.stat().st_size
    return f"Correct: the weights only, as safetensors, {ratio:.1f}x smaller than the full training checkpoint."
