"""Checks for lesson 03, ``03_checkpoints_and_resume``. In the notebook: ``from helpers.exercises import lesson03 as ex``.

q1 and q2 train a small run like the lesson's (``DigitsMLP`` with dropout, Adam, a one-cycle
schedule, a shuffling loader with its own generator, and an augmentation that draws from Python's,
NumPy's and PyTorch's random generators), interrupt it, and compare the learner's checkpoint or
resume with the run that was not interrupted, bit for bit.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.checkpointing import capture_rng_state
from helpers.checks import ExerciseSet, Wrong, watch_torch_load
from helpers.data import make_loaders
from helpers.environment import seed_everything
from helpers.models import DigitsMLP

exercises = ExerciseSet("03_checkpoints_and_resume")

EPOCHS = 3
"""Epochs in a full run of the checks' training."""

RNG_STREAMS = ("python", "numpy", "torch", "cuda")
ENTRIES = ("model", "optimizer", "scheduler", "epoch", "step", "rng_state", "data_generator_state")
WHY = {
    "model": "the weights",
    "optimizer": "without it Adam restarts with empty running averages",
    "scheduler": "without it the learning-rate schedule starts over",
    "epoch": "where to continue",
    "step": "where to continue (the global step)",
    "rng_state": "without it dropout and augmentation draw other random numbers",
    "data_generator_state": "without it the next epoch shuffles the data in another order",
}
GENERATOR_NAME = {"python": "Python's", "numpy": "NumPy's", "torch": "PyTorch's (CPU)", "cuda": "A CUDA device's"}
STREAM_CODE = {
    "python": "random.getstate()",
    "numpy": "np.random.get_state(), with its array turned into a list",
    "torch": "torch.get_rng_state()",
    "cuda": "torch.cuda.get_rng_state_all() when CUDA is available, else []",
}
_USE_CAPTURE = " (capture_rng_state() from helpers.checkpointing does all four, as in the recipe)"


_UNSAFE_LOAD = (
    "You loaded with torch.load(..., weights_only=False). A checkpoint of plain tensors and numbers "
    "loads with weights_only=True (the default), and weights_only=False would run any code a "
    "tampered file holds. Leave weights_only=True."
)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (recursively), by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# A small training run, like the lesson's


def _augment(x: torch.Tensor) -> torch.Tensor:
    shift = random.choice([-1, 0, 1])
    contrast = float(np.random.uniform(0.8, 1.2))
    return torch.roll(x, shifts=shift, dims=3) * contrast + 0.05 * torch.randn_like(x)


class _Run:
    """Model, optimizer, scheduler and training loader, seeded; ``Exercise.evaluate`` restores the RNGs after."""

    def __init__(self, seed: int):
        seed_everything(seed)
        self.model = DigitsMLP(hidden=32, dropout=0.2)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.loader, _ = make_loaders(batch_size=64)  # always the same split of the data
        self.loader.generator.manual_seed(seed)  # but the shuffling depends on the seed
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=0.01, total_steps=EPOCHS * len(self.loader)
        )
        self.steps = 0

    def train_epoch(self) -> None:
        self.model.train()
        for x, y in self.loader:
            loss = F.cross_entropy(self.model(_augment(x)), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.steps += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _same_tensors(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optimizer_state(a: Mapping, b: Mapping) -> bool:
    """Two ``optimizer.state_dict()["state"]`` dicts hold equal tensors."""
    if a.keys() != b.keys():
        return False
    return all(
        a[p].keys() == b[p].keys() and all(torch.equal(torch.as_tensor(a[p][k]), torch.as_tensor(b[p][k])) for k in a[p])
        for p in a
    )


def lesson_checkpoint(run: _Run, epoch: int) -> dict:
    """A checkpoint laid out like exercise 1's (the recipe's, plus ``step``), at the end of an epoch."""
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "step": run.steps,
        "rng_state": capture_rng_state(),
        "data_generator_state": run.loader.generator.get_state(),
    }


def _restore_rng(state: Mapping) -> None:
    """Restore RNG state laid out like the lesson's, or like ``capture_rng_state()``."""
    if isinstance(state.get("python"), Mapping):  # helpers.checkpointing.capture_rng_state()
        from helpers.checkpointing import restore_rng_state

        restore_rng_state(state)
        return
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda = list(state["cuda"])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _restore(run: _Run, checkpoint: Mapping) -> None:
    """Load ``checkpoint`` into a freshly built ``run``: the states first, the RNG last."""
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.loader.generator.set_state(torch.as_tensor(checkpoint["data_generator_state"], dtype=torch.uint8))
    _restore_rng(checkpoint["rng_state"])
    run.steps = int(checkpoint["step"])


def _rng_now() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _rng_differences(expected: Mapping) -> list[str]:
    """The RNG streams whose state now differs from ``expected`` (from :func:`_rng_now`)."""
    now = _rng_now()
    differ = []
    if now["python"] != expected["python"]:
        differ.append("python")
    a, b = now["numpy"], expected["numpy"]
    if a[0] != b[0] or not np.array_equal(a[1], b[1]) or tuple(a[2:]) != tuple(b[2:]):
        differ.append("numpy")
    if not torch.equal(now["torch"], expected["torch"]):
        differ.append("torch")
    if len(now["cuda"]) != len(expected["cuda"]) or any(not torch.equal(x, y) for x, y in zip(now["cuda"], expected["cuda"])):
        differ.append("cuda")
    return differ


def _roundtrip(obj) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------------------------------
# q1: make_checkpoint


@exercises.exercise(
    "q1",
    "Build a complete training checkpoint",
    hints=[
        "Store state, not objects: model.state_dict(), optimizer.state_dict(), scheduler.state_dict().",
        "rng_state is capture_rng_state(), as in the recipe: Python's, NumPy's, PyTorch's and the CUDA "
        "generators' states, stored as plain values.",
        "The data order is train_loader.generator.get_state(): a tensor, not the generator itself.",
    ],
)
def q1(make_checkpoint: Callable) -> str:
    """``make_checkpoint(model, optimizer, scheduler, train_loader, epoch, step)`` returns a complete dict."""
    straight = _Run(seed=31)
    for _ in range(2):
        straight.train_epoch()

    run = _Run(seed=31)
    run.train_epoch()
    expected_rng = _rng_now()
    expected_order = run.loader.generator.get_state()
    weights_before = run.weights()
    result = make_checkpoint(run.model, run.optimizer, run.scheduler, run.loader, 1, run.steps)
    moved = _rng_differences(expected_rng)  # what the call left behind
    order_moved = not torch.equal(run.loader.generator.get_state(), expected_order)
    mode_changed = not run.model.training
    weights_changed = not _same_tensors(run.weights(), weights_before)

    if result is None:
        raise Wrong("make_checkpoint returned None: return the dict.")
    if not isinstance(result, Mapping):
        raise Wrong(f"Return a dict, not a {type(result).__name__}.")
    for key, kind, fix in (
        ("model", nn.Module, "model.state_dict()"),
        ("optimizer", torch.optim.Optimizer, "optimizer.state_dict()"),
        ("scheduler", torch.optim.lr_scheduler.LRScheduler, "scheduler.state_dict()"),
    ):
        if isinstance(result.get(key), kind):
            raise Wrong(
                f"checkpoint['{key}'] holds the {key} object itself. Store {fix}: plain tensors and "
                "numbers, which torch.load(weights_only=True) can load back."
            )
    missing = [key for key in ENTRIES if key not in result]
    if missing:
        raise Wrong(f"The checkpoint has no {missing[0]!r} entry: {WHY[missing[0]]}." + (
            f" (Also missing: {', '.join(repr(m) for m in missing[1:])}.)" if len(missing) > 1 else ""))
    for key, fix in (("model", "model.state_dict()"), ("optimizer", "optimizer.state_dict()"),
                     ("scheduler", "scheduler.state_dict()")):
        if not isinstance(result[key], Mapping):
            raise Wrong(
                f"checkpoint['{key}'] should be a dict, {fix}; it is a {type(result[key]).__name__}."
            )
    if not {"state", "param_groups"} <= set(result["optimizer"]):
        raise Wrong("checkpoint['optimizer'] should be optimizer.state_dict(), a dict with 'state' and 'param_groups'.")
    for key in ("epoch", "step"):
        if isinstance(result[key], bool) or not isinstance(result[key], (int, np.integer)):
            raise Wrong(f"checkpoint['{key}'] should be an int (the number you are given); it is a {type(result[key]).__name__}.")
    if result["epoch"] != 1 or result["step"] != run.steps:
        raise Wrong(
            f"epoch and step should be the numbers you are given (1 and {run.steps}); "
            f"you stored {result['epoch']!r} and {result['step']!r}."
        )
    rng = result["rng_state"]
    if not isinstance(rng, Mapping):
        raise Wrong(f"rng_state should be a dict with {', '.join(RNG_STREAMS)}; it is a {type(rng).__name__}.")
    absent = [stream for stream in RNG_STREAMS if stream not in rng]
    if absent:
        raise Wrong(
            f"rng_state has no {absent[0]!r} entry: store {STREAM_CODE[absent[0]]}{_USE_CAPTURE}. Every "
            "generator the training draws from must continue where it was."
        )
    order = result["data_generator_state"]
    if isinstance(order, torch.Generator):
        raise Wrong("data_generator_state holds the generator itself: store train_loader.generator.get_state().")
    if not isinstance(order, torch.Tensor) or not torch.equal(order, expected_order):
        raise Wrong("data_generator_state should be train_loader.generator.get_state(): the shuffling generator's state now.")

    try:
        loaded = _roundtrip(result)
    except pickle.UnpicklingError as error:
        if "numpy" in str(error):
            raise Wrong(
                "torch.load(..., weights_only=True) refuses your checkpoint because it holds a NumPy array: "
                "np.random.get_state() has one inside. Use capture_rng_state(), as the recipe does: it "
                "stores that array as a list."
            ) from None
        detail = next((line for line in str(error).splitlines() if "Unsupported global" in line), "")
        raise Wrong(
            "torch.load(..., weights_only=True) refuses your checkpoint: it holds a Python object "
            f"that is not plain data. {detail.strip()}"
        ) from None
    except Exception as error:
        raise Wrong(f"torch.save could not save your checkpoint ({type(error).__name__}: {error}).") from None

    if not all(isinstance(v, torch.Tensor) for v in loaded["model"].values()) or not _same_tensors(
            loaded["model"], run.model.state_dict()):
        raise Wrong("checkpoint['model'] does not hold the model's current weights.")
    if not isinstance(loaded["optimizer"]["state"], Mapping) or not _same_optimizer_state(
            loaded["optimizer"]["state"], run.optimizer.state_dict()["state"]):
        raise Wrong("checkpoint['optimizer'] does not hold the optimizer's current state.")

    fresh = _Run(seed=77)  # other weights, other random state
    try:
        _restore_rng(loaded["rng_state"])
    except Exception as error:
        raise Wrong(
            f"Restoring your rng_state failed ({type(error).__name__}: {error}). Store "
            "capture_rng_state(), as the recipe does."
        ) from None
    differ = _rng_differences(expected_rng)
    if differ:
        raise Wrong(
            f"rng_state[{differ[0]!r}] is not the generator's state at the moment of the checkpoint: "
            f"store {STREAM_CODE[differ[0]]}{_USE_CAPTURE}, and don't draw random numbers before capturing it."
        )
    if moved:
        raise Wrong(
            f"Your function left {GENERATOR_NAME[moved[0]]} random generator moved on: it drew random numbers "
            "after capturing the state. The run that goes on after saving then differs from one resumed "
            "from the checkpoint. Capture the state and draw nothing."
        )
    if order_moved:
        raise Wrong(
            "Your function moved the training loader's generator (iterating over train_loader draws from it): "
            "the next epoch would shuffle differently from a resumed one. Only read its state: get_state()."
        )
    if mode_changed:
        raise Wrong("Your function left the model in eval mode: leave the model as it was (call nothing but state_dict()).")
    if weights_changed:
        raise Wrong("Your function changed the model's weights: a checkpoint only reads the state.")
    _restore(fresh, loaded)
    fresh.train_epoch()
    if not _same_tensors(fresh.weights(), straight.weights()):
        raise Wrong("Resuming from your checkpoint does not continue the run exactly. Is every entry the current state?")
    return "Complete: resuming from it continues the run bit for bit, and weights_only=True loads it."


# ---------------------------------------------------------------------------------------------
# q2: resume


@exercises.exercise(
    "q2",
    "Resume exactly from a checkpoint",
    hints=[
        "Load with torch.load(path, weights_only=True), then call load_state_dict on the model, the "
        "optimizer and the scheduler you are given.",
        "The data order: train_loader.generator.set_state(...). The random generators: "
        "restore_rng_state(checkpoint['rng_state']), last.",
        "model.train() before you return: loading does not change the mode. checkpoint['epoch'] counts "
        "the finished epochs, which is also the index of the next one.",
    ],
)
def q2(resume: Callable) -> str:
    """``resume_run(path, model, optimizer, scheduler, train_loader)`` restores everything; returns the next epoch."""
    straight = _Run(seed=41)
    for _ in range(EPOCHS):
        straight.train_epoch()

    run = _Run(seed=41)
    for _ in range(2):
        run.train_epoch()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        torch.save(lesson_checkpoint(run, epoch=2), path)
        saved = torch.load(path, weights_only=True)
        file_before = path.read_bytes()
        fresh = _Run(seed=78)
        fresh.model.eval()  # "just evaluated", as the task says
        rng_before = _rng_now()
        with watch_torch_load() as unsafe:
            start = resume(path, fresh.model, fresh.optimizer, fresh.scheduler, fresh.loader)
        if not path.is_file() or path.read_bytes() != file_before:
            raise Wrong("Your function changed or removed the checkpoint file: resuming only reads it.")
    if any(unsafe):
        raise Wrong(_UNSAFE_LOAD)
    if start is None:
        raise Wrong("resume returned None: return the epoch to continue from (checkpoint['epoch']).")

    if not _same_tensors(fresh.model.state_dict(), saved["model"]):
        raise Wrong("The model does not hold the checkpoint's weights: model.load_state_dict(checkpoint['model']).")
    if not _same_optimizer_state(fresh.optimizer.state_dict()["state"], saved["optimizer"]["state"]):
        raise Wrong(
            "The optimizer's state was not restored, so Adam would start again with empty running "
            "averages: optimizer.load_state_dict(checkpoint['optimizer'])."
        )
    if fresh.scheduler.last_epoch != saved["scheduler"]["last_epoch"]:
        raise Wrong(
            "The scheduler you were given was not restored, so the learning-rate schedule would start "
            "over: scheduler.load_state_dict(checkpoint['scheduler'])."
        )
    if not torch.equal(fresh.loader.generator.get_state(), saved["data_generator_state"]):
        raise Wrong(
            "The data order was not restored: the next epoch would shuffle differently. "
            "train_loader.generator.set_state(checkpoint['data_generator_state'])."
        )
    py, npy = saved["rng_state"]["python"], saved["rng_state"]["numpy"]
    expected = {
        "python": (py["version"], tuple(py["state"]), py["gauss_next"]),
        "numpy": (npy["bit_generator"], np.asarray(npy["state"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                  npy["cached_gaussian"]),
        "torch": saved["rng_state"]["torch"],
        "cuda": saved["rng_state"]["cuda"],
    }
    differ = _rng_differences(expected)
    if differ:
        changed = _rng_differences(rng_before)  # the streams your function moved at all
        raise Wrong(
            f"{GENERATOR_NAME[differ[0]]} random generator is not at the checkpoint's state"
            + (" (it was not restored)" if differ[0] not in changed else
               " (restored, then moved on by something that drew random numbers: restore the random state last)")
            + ". Use restore_rng_state(checkpoint['rng_state']) as the last step."
        )
    if not fresh.model.training:
        raise Wrong(
            "The model is still in eval mode: load_state_dict does not change the mode, so training would "
            "go on without dropout. Call model.train() before you return."
        )
    if isinstance(start, torch.Tensor) and start.numel() == 1 and not start.is_floating_point():
        start = start.item()
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise Wrong(
            f"Return the epoch to continue from, an int (checkpoint['epoch']); you returned a {type(start).__name__}"
            + (f" ({start!r})" if isinstance(start, (str, float)) else "")
            + ", which range(start, epochs) can't use."
        )
    start = int(start)
    if start != 2:
        if start == 3:
            raise Wrong(
                "Off by one: the checkpoint was saved after 2 finished epochs (checkpoint['epoch'] == 2), so "
                "the next epoch is number 2 in range(start, epochs). Return checkpoint['epoch'] as it is."
            )
        raise Wrong(f"The checkpoint says 2 epochs are finished, so continue from epoch 2; you returned {start}.")
    for _ in range(start, EPOCHS):
        fresh.train_epoch()
    if not _same_tensors(fresh.weights(), straight.weights()):
        raise Wrong("Everything looked restored, but the continued run differs from the uninterrupted one.")
    return "Everything restored: the resumed run ends bit for bit where the uninterrupted one does."


# ---------------------------------------------------------------------------------------------
# q3: to_delete

_CKPT = re.compile(r"ckpt-step(\d+)\.pt")

_Q3_CASES = [
    # (names in the folder, keep_last, best)
    (["ckpt-step20.pt", "notes.md", "ckpt-step9.pt", "ckpt-step1000.pt", "ckpt-latest.txt", "ckpt-step10.pt",
      ".ckpt-step1100.pt.tmp-4242", "ckpt-step95.pt", "ckpt-step7.pt.bak", "best-ckpt-step3.pt", "ckpt-step100.pt"],
     3, "ckpt-step10.pt"),
    (["ckpt-step500.pt", "ckpt-step5.pt", "ckpt-step50.pt"], 1, None),
    (["ckpt-step4.pt", "ckpt-step1.pt", "ckpt-step3.pt", "ckpt-step2.pt"], 3, "ckpt-step4.pt"),
    (["ckpt-step8.pt", "ckpt-step7.pt", "ckpt-latest.txt"], 5, "ckpt-step7.pt"),
    (["ckpt-step30.pt", "ckpt-step2.pt", "ckpt-step300.pt", "ckpt-step3.pt"], 2, "ckpt-step2.pt"),
]


def _steps(names: Iterable[str]) -> dict[str, int]:
    return {name: int(m.group(1)) for name in names if (m := _CKPT.fullmatch(name))}


def expected_deletions(names: list[str], keep_last: int, best: str | None) -> set[str]:
    """The names a correct ``to_delete`` returns (the reference answer for exercise 3)."""
    steps = _steps(names)
    newest = sorted(steps, key=steps.get)[-keep_last:]
    return set(steps) - set(newest) - {best}


@exercises.exercise(
    "q3",
    "Choose the old checkpoints to delete",
    hints=[
        "Only names that match ckpt-step<N>.pt exactly count: re.fullmatch(r'ckpt-step(\\d+)\\.pt', name).",
        "Sort by the number, int(match.group(1)), not by the name: as text, 'ckpt-step10.pt' < 'ckpt-step9.pt'.",
        "Keep the last keep_last of that sorted list, and the best one; delete the other checkpoints.",
    ],
)
def q3(to_delete: Callable) -> str:
    """``to_delete(filenames, keep_last, best)`` returns the names to delete."""
    for names, keep_last, best in _Q3_CASES:
        given_names = list(names)
        answer = to_delete(given_names, keep_last, best)
        if given_names != list(names):
            raise Wrong(
                "Your function changed the list of names it was given (sorted it or removed items in place). "
                "Return a new list and leave the caller's list alone: sorted(...) instead of .sort()."
            )
        if answer is None:
            raise Wrong("to_delete returned None: return a list of the names to delete (empty if none).")
        if isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable):
            raise Wrong(f"Return a list of file names, not a {type(answer).__name__}.")
        answer = list(answer)
        if not all(isinstance(a, str) for a in answer):
            raise Wrong("Return the file names as strings, as they are given to you.")
        given = set(answer)
        expected = expected_deletions(names, keep_last, best)
        if given == expected:
            continue
        steps = _steps(names)
        case = f"(folder {sorted(names)}, keep_last={keep_last}, best={best!r})"
        if given and given == set(steps) - expected:
            raise Wrong(f"You returned the checkpoints to keep; return the ones to delete. {case}")
        foreign = sorted(given - set(steps))
        if foreign:
            raise Wrong(
                f"You would delete {foreign[0]}, which is not a ckpt-step<N>.pt checkpoint: touch only files "
                f"that match the pattern exactly (a pointer file, a temporary file or notes are not yours to delete). {case}"
            )
        if best in given:
            raise Wrong(f"You would delete the best checkpoint, {best}: keep it even when it is old. {case}")
        as_text = sorted(steps)[-keep_last:]
        if given == set(steps) - set(as_text) - {best}:
            raise Wrong(
                "You sorted the names as text: 'ckpt-step10.pt' comes before 'ckpt-step9.pt' that way, so the "
                f"newest files get deleted. Sort by the step number. {case}"
            )
        newest = sorted(steps, key=steps.get)[-keep_last:]
        lost = sorted(given & set(newest), key=steps.get)
        if lost:
            raise Wrong(f"You would delete {lost[0]}, one of the {keep_last} newest checkpoints. {case}")
        kept = sorted(expected - given, key=steps.get)
        extra = len(set(steps) - given) - len(set(steps) - expected)
        raise Wrong(
            f"You keep {kept[0]}, which is neither among the {keep_last} newest nor the best"
            + (" (off by one: keep exactly keep_last)" if extra == 1 else "") + f". {case}"
        )
    return f"Right in all {len(_Q3_CASES)} folders: numeric order, the best kept, other files untouched."


# ---------------------------------------------------------------------------------------------
# q4: latest_complete


def _write_checkpoint(path: Path, step: int) -> None:
    torch.save({"step": step, "weights": torch.full((64,), float(step))}, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_crashed_folder(folder: Path) -> Path:
    """A folder like a crashed run's; the newest complete checkpoint is ``ckpt-step20.pt``.

    Holds complete ``ckpt-step9``, ``10`` and ``20`` (``10`` modified last), a truncated
    ``ckpt-step100.pt``, an empty ``ckpt-step200.pt``, a pointer file naming the empty one, a
    complete leftover temporary file and a complete ``.bak`` copy with higher steps.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for step in (9, 20, 10, 100):
        _write_checkpoint(folder / f"ckpt-step{step}.pt", step)
    _truncate(folder / "ckpt-step100.pt")
    (folder / "ckpt-step200.pt").write_bytes(b"")
    (folder / "ckpt-latest.txt").write_text("ckpt-step200.pt\n")
    _write_checkpoint(folder / ".ckpt-step300.pt.tmp", 300)
    _write_checkpoint(folder / "ckpt-step500.pt.bak", 500)
    now = os.stat(folder / "ckpt-step20.pt").st_mtime
    for step, age in ((9, 300), (20, 200), (100, 100), (200, 50), (10, -100)):
        os.utime(folder / f"ckpt-step{step}.pt", (now - age, now - age))
    return folder / "ckpt-step20.pt"


@exercises.exercise(
    "q4",
    "Find the newest complete checkpoint",
    hints=[
        "List the folder, keep the names that match ckpt-step<N>.pt exactly, and sort them by int(N), newest first.",
        "Try torch.load(path, weights_only=True) on each, and return the first that loads.",
        "An empty file raises EOFError and a truncated one RuntimeError: catch both and try the next file.",
    ],
)
def q4(latest_complete: Callable) -> str:
    """``latest_complete(folder)`` returns the path of the newest complete ``ckpt-step<N>.pt``, or None."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        expected = make_crashed_folder(tmp / "crashed")
        before = _snapshot(expected.parent)
        try:
            with watch_torch_load() as unsafe:
                answer = latest_complete(expected.parent)
        except NotImplementedError:  # the placeholder (a RuntimeError too): not attempted
            raise
        except EOFError:
            raise Wrong(
                "Your function raised EOFError: that is what torch.load says about an empty file (a save "
                "killed before it wrote anything). Catch it, like the RuntimeError of a truncated file, and try the next one."
            ) from None
        except RuntimeError as error:
            raise Wrong(
                f"Your function raised RuntimeError ({str(error).splitlines()[0][:80]}): a truncated file does "
                "that. Catch it and try the next checkpoint."
            ) from None
        after = _snapshot(expected.parent)
        if after != before:
            gone = sorted(set(before) - set(after))
            changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
            raise Wrong(
                "Your function changed the folder ("
                + (f"deleted {', '.join(gone)}" if gone else f"changed {', '.join(changed) or 'its files'}")
                + "). Finding the latest checkpoint must only read: a damaged file is evidence of a crash, "
                "and deleting is the rotation's job."
            )
        if any(unsafe):
            raise Wrong(_UNSAFE_LOAD)
        if answer is None:
            raise Wrong(f"You returned None, but {expected.name} is complete.")
        if not isinstance(answer, (str, os.PathLike)):
            raise Wrong(f"Return the path of the file (a Path or a str), not a {type(answer).__name__}.")
        answer = Path(answer)
        if answer.name != expected.name:
            why = {
                "ckpt-step9.pt": "you compared the names as text ('ckpt-step9.pt' > 'ckpt-step20.pt'): compare the step numbers",
                "ckpt-step10.pt": "it is the most recently modified file, not the highest step: go by the step number",
                "ckpt-step100.pt": "it is truncated: check that a file loads before you pick it",
                "ckpt-step200.pt": "it is empty (and the pointer file names it): check that a file loads before you pick it",
                ".ckpt-step300.pt.tmp": "it is a leftover temporary file: only ckpt-step<N>.pt names count",
                "ckpt-step500.pt.bak": "it is a backup copy, not a ckpt-step<N>.pt file",
                "ckpt-latest.txt": "it is the pointer file, which names a damaged checkpoint",
            }.get(answer.name, "it is not the complete checkpoint with the highest step")
            raise Wrong(f"You returned {answer.name}, but {why}. The answer is {expected.name}.")
        if answer.parent.resolve() != expected.parent.resolve():
            raise Wrong("Return the full path of the file (the folder joined with its name), not just its name.")

        damaged = tmp / "all_damaged"
        damaged.mkdir()
        _write_checkpoint(damaged / "ckpt-step5.pt", 5)
        _truncate(damaged / "ckpt-step5.pt")
        (damaged / "ckpt-step6.pt").write_bytes(b"")
        _write_checkpoint(damaged / ".ckpt-step7.pt.tmp", 7)
        answer = latest_complete(damaged)
        if answer is not None:
            raise Wrong(f"In a folder with no complete checkpoint you returned {Path(answer).name}: return None.")

        fine = tmp / "fine"
        fine.mkdir()
        for step in (1, 2):
            _write_checkpoint(fine / f"ckpt-step{step}.pt", step)
        answer = latest_complete(fine)
        if answer is None or Path(answer).name != "ckpt-step2.pt":
            raise Wrong("In a folder with ckpt-step1.pt and ckpt-step2.pt, both complete, return ckpt-step2.pt.")
    return "Damaged files, leftovers and misleading dates skipped: the newest complete checkpoint found."
