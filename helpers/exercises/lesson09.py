"""Checks for lesson 09, ``09_resuming_real_runs``. In the notebook: ``from helpers.exercises import lesson09 as ex``.

q1 sends real ``SIGTERM`` / ``SIGUSR1`` signals to this process while the learner's loop runs
(with a safety handler of its own underneath, so an unhandled signal never kills the kernel).
q2 interrupts a run with a ``StatefulDataLoader`` in the middle of an epoch and compares the
learner's resume with the uninterrupted run, bit for bit. q3 restores a warm-up + cosine
``SequentialLR``; q4 checkpoints and exports EMA weights (``AveragedModel``).
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import TensorDataset

from helpers.checkpointing import atomic_save, training_checkpoint
from helpers.checks import EnvironmentProblem, ExerciseSet, Wrong
from helpers.data import digits_datasets
from helpers.environment import seed_everything
from helpers.models import DigitsCNN, DigitsMLP

exercises = ExerciseSet("09_resuming_real_runs")


def _same_tensors(a: Mapping, b: Mapping) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def _same_optimizer_state(a: Mapping, b: Mapping) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[p].keys() == b[p].keys() and all(torch.equal(torch.as_tensor(a[p][k]), torch.as_tensor(b[p][k]))
                                                  for k in a[p]) for p in a)


def _load(path: Path, what: str) -> Mapping:
    try:
        loaded = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise Wrong(f"{what} is refused by torch.load(..., weights_only=True): store state_dicts, not objects.") from None
    except Exception as error:
        raise Wrong(f"{what} does not load ({type(error).__name__}: {error}).") from None
    if not isinstance(loaded, Mapping):
        raise Wrong(f"{what} should hold a dict (from training_checkpoint); it holds a {type(loaded).__name__}.")
    return loaded


def _digits_batches(count: int, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train, _ = digits_datasets()
    x, y = train.tensors
    return [(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# q1: a loop that stops cleanly when it is preempted

_Q1_BATCHES = 12


def _q1_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    seed_everything(90)
    model = DigitsMLP(hidden=16, dropout=0.0)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _q1_reference(steps: int) -> tuple[dict, dict]:
    model, optimizer = _q1_model()
    for x, y in _digits_batches(_Q1_BATCHES)[:steps]:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.state_dict(), optimizer.state_dict()["state"]


class _Signaller:
    """The batches; just before handing out batch ``at`` it sends ``signum`` to this process."""

    def __init__(self, signum: int | None, at: int):
        self.signum, self.at, self.handed_out = signum, at, 0

    def __iter__(self):
        for index, batch in enumerate(_digits_batches(_Q1_BATCHES)):
            if self.signum is not None and index == self.at:
                os.kill(os.getpid(), self.signum)
            self.handed_out += 1
            yield batch


def _q1_case(train_until_preempted: Callable, signum: int | None, at: int, total_steps: int, folder: Path) -> None:
    name = signal.Signals(signum).name if signum is not None else None
    expected_steps = at + 1 if signum is not None else total_steps
    expected_code = 128 + signum if signum is not None else 0
    unhandled: list[int] = []

    def safety(number, frame):  # underneath the learner's handler: an unhandled signal lands here
        unhandled.append(number)

    path = folder / f"case-{name or 'none'}" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None]
    original = {s: signal.signal(s, safety) for s in signals}
    try:
        model, optimizer = _q1_model()
        batches = _Signaller(signum, at)
        try:
            code = train_until_preempted(model, optimizer, batches, path, total_steps)
        except (SystemExit, KeyboardInterrupt) as error:
            raise Wrong(
                f"Your code raised {type(error).__name__} when {name} arrived: the handler must only set a flag. "
                "Exiting inside the handler loses the step in progress and saves nothing; let the loop finish the "
                "step, save, and return the exit code."
            ) from None
        left_behind = [s for s in signals if signal.getsignal(s) is not safety]
    finally:
        for s, handler in original.items():
            signal.signal(s, handler)

    if unhandled:
        got = signal.Signals(unhandled[0]).name
        raise Wrong(
            f"{got} reached the handler that was there before your function ran: your loop does not handle it. "
            + ("SLURM sends SIGUSR1 before the time limit (sbatch --signal=USR1@120); " if got == "SIGUSR1" else "")
            + "install a handler for both SIGTERM and SIGUSR1 (StopFlag() does) while the loop runs."
        )
    if left_behind:
        raise Wrong(
            f"After your function returned, {signal.Signals(left_behind[0]).name} still goes to your handler: put the "
            "previous handlers back when the loop ends (use `with StopFlag() as stop:`, or save what signal.signal "
            "returns and set it again). A handler left behind swallows the next SIGTERM of this process."
        )
    if isinstance(code, bool) or not isinstance(code, int):
        raise Wrong(f"Return the exit code as an int (0, or 128 + the signal number); you returned {code!r}.")
    if signum is not None and code == 0:
        raise Wrong(
            f"You returned 0 after {name} stopped the loop. Exit code 0 tells the scheduler the job is finished, "
            f"so it is never run again: return 128 + signal number ({expected_code}, exit_code_for(stop.signal))."
        )
    if code != expected_code:
        raise Wrong(
            f"{'With ' + name if name else 'With no signal'} the exit code should be {expected_code}"
            + (" (128 + the signal number)" if name else " (finished)") + f"; you returned {code}."
        )
    if not path.is_file():
        raise Wrong(f"No file was saved at `path` ({'after ' + name if name else 'at the end'}): save the checkpoint there.")
    strays = sorted(p.name for p in path.parent.iterdir() if p != path)
    if strays:
        raise Wrong(f"Besides `path`, your function left {strays[0]} in the folder: save with atomic_save(checkpoint, path) only.")
    saved = _load(path, "The file at `path`")
    for key in ("model", "optimizer", "step"):
        if key not in saved:
            raise Wrong(f"The checkpoint has no {key!r} entry: save training_checkpoint(model=..., optimizer=..., epoch=0, step=...).")
    if saved["step"] != expected_steps:
        when = (f"the signal arrived while batch {at + 1} was being fetched, so {expected_steps} steps were done when "
                "the loop checked the flag after that step") if name else f"total_steps is {total_steps}"
        hint = " Did you stop before training on that batch, or check the flag before the step?" if name and saved["step"] == at else ""
        hint = hint or (" Did you check the flag at all?" if name and saved["step"] >= total_steps else "")
        raise Wrong(f"The checkpoint says step {saved['step']!r}, but {when}.{hint}")
    weights, state = _q1_reference(expected_steps)
    if not _same_tensors(saved["model"], weights):
        raise Wrong(
            f"The saved weights are not the weights after {expected_steps} steps of the loop: save after "
            "optimizer.step(), and train with F.cross_entropy(model(x), y), one step per batch."
        )
    if not _same_optimizer_state(saved["optimizer"].get("state", {}), state):
        raise Wrong("The saved optimizer state is not the optimizer's state after those steps: save optimizer.state_dict().")
    if batches.handed_out > expected_steps + 1:
        raise Wrong(f"Your loop fetched {batches.handed_out} batches for {expected_steps} steps: stop fetching once it stops.")


@exercises.exercise(
    "q1",
    "A loop that stops cleanly when it is preempted",
    hints=[
        "Wrap the loop in `with StopFlag() as stop:`; after each optimizer step, `if stop.requested or step == total_steps: break`.",
        "After the loop: atomic_save(training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=step), path).",
        "Return exit_code_for(stop.signal): 0 when no signal came, 128 + the signal number when one did.",
    ],
)
def q1(train_until_preempted: Callable) -> str:
    """``train_until_preempted(model, optimizer, batches, path, total_steps)`` returns the exit code."""
    if not hasattr(signal, "SIGUSR1"):
        raise EnvironmentProblem("This check sends SIGTERM and SIGUSR1, which this operating system (Windows) lacks; run it on Linux, macOS or Colab.")
    if not callable(train_until_preempted):
        raise Wrong(f"Pass your function itself, train_until_preempted, not a {type(train_until_preempted).__name__}.")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        _q1_case(train_until_preempted, signal.SIGTERM, at=4, total_steps=10, folder=folder)
        _q1_case(train_until_preempted, signal.SIGUSR1, at=2, total_steps=10, folder=folder)
        _q1_case(train_until_preempted, None, at=0, total_steps=8, folder=folder)
    return ("SIGTERM and SIGUSR1 stop the loop after the step in progress, the checkpoint is saved atomically, the "
            "exit code is 143 / 138 (0 when finished), and the handlers are put back.")


# ---------------------------------------------------------------------------------------------
# q2: resume in the middle of an epoch

_Q2_TOTAL, _Q2_STOP = 20, 13


def _q2_build(seed: int = 0):
    """Model (with dropout), Adam and a StatefulDataLoader of 10 batches an epoch, seeded."""
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        raise EnvironmentProblem(
            "torchdata is not installed, and this exercise needs its StatefulDataLoader: "
            "pip install -r requirements.txt (or pip install torchdata)."
        ) from None
    train, _ = digits_datasets()
    x, y = train.tensors
    seed_everything(seed)
    model = DigitsMLP(hidden=16, dropout=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = StatefulDataLoader(TensorDataset(x[:320], y[:320]), batch_size=32, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
    return model, optimizer, loader


def _q2_train(model, optimizer, loader, step: int, until: int) -> int:
    model.train()
    while step < until:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == until:
                break
    return step


def _batches_yielded(state: Mapping) -> int | None:
    """How many batches of the epoch a StatefulDataLoader state says are done (with or without workers)."""
    if "_snapshot" in state:
        return state["_snapshot"].get("_snapshot_step")
    return state.get("_num_yielded")


@exercises.exercise(
    "q2",
    "Resume in the middle of an epoch",
    hints=[
        "rest = restore_training_checkpoint(load_checkpoint(path), model=model, optimizer=optimizer) restores "
        "the weights, the optimizer and, last, the random state.",
        "The loader's position is the extra entry: loader.load_state_dict(rest['loader']).",
        "Return rest['step'], the number of steps done (not the epoch).",
    ],
)
def q2(resume_mid_epoch: Callable) -> str:
    """``resume_mid_epoch(path, model, optimizer, loader)`` restores everything and returns the step."""
    import warnings

    if not callable(resume_mid_epoch):
        raise Wrong(f"Pass your function itself, resume_mid_epoch, not a {type(resume_mid_epoch).__name__}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchdata's set_vital warning on new PyTorch (the lesson shows it)
        model, optimizer, loader = _q2_build()
        _q2_train(model, optimizer, loader, 0, _Q2_TOTAL)
        straight = {k: v.clone() for k, v in model.state_dict().items()}

        model, optimizer, loader = _q2_build()
        step = _q2_train(model, optimizer, loader, 0, _Q2_STOP)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "checkpoint.pt"
            atomic_save(training_checkpoint(model=model, optimizer=optimizer, epoch=1, step=step,
                                            loader=loader.state_dict()), path)
            saved = torch.load(path, weights_only=True)
            expected_rng = torch.get_rng_state()
            fresh_model, fresh_optimizer, fresh_loader = _q2_build(seed=5)   # other weights, other random state
            answer = resume_mid_epoch(path, fresh_model, fresh_optimizer, fresh_loader)

        if answer is None:
            raise Wrong("resume_mid_epoch returned None: return the number of steps done, checkpoint['step'].")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise Wrong(f"Return the step as an int; you returned a {type(answer).__name__} ({answer!r}).")
        if not _same_tensors(fresh_model.state_dict(), saved["model"]):
            raise Wrong("The model does not hold the checkpoint's weights.")
        if not _same_optimizer_state(fresh_optimizer.state_dict()["state"], saved["optimizer"]["state"]):
            raise Wrong("The optimizer's state was not restored, so Adam would restart its running averages.")
        if answer != _Q2_STOP:
            also = " (that is the epoch)" if answer == 1 else ""
            raise Wrong(f"You returned {answer}{also}; the checkpoint was saved after {_Q2_STOP} steps: return checkpoint['step'].")
        if not torch.equal(torch.get_rng_state(), expected_rng):
            raise Wrong(
                "PyTorch's random state is not the one saved, so dropout would draw other masks: restore the random "
                "state (restore_training_checkpoint does it, last)."
            )
        if _batches_yielded(fresh_loader.state_dict()) != _batches_yielded(saved["loader"]):
            raise Wrong(
                "The loader would start the epoch again from its first batch: restore its position with "
                "loader.load_state_dict(checkpoint['loader'])."
            )
        _q2_train(fresh_model, fresh_optimizer, fresh_loader, answer, _Q2_TOTAL)
    if not _same_tensors(fresh_model.state_dict(), straight):
        raise Wrong("Training on after your resume does not end with the weights of the run that was never interrupted.")
    return f"Resumed after {_Q2_STOP} of {_Q2_TOTAL} steps, mid-epoch: the run ends bit for bit like the uninterrupted one."


# ---------------------------------------------------------------------------------------------
# q3: restore a learning-rate schedule

_Q3_TOTAL, _Q3_WARMUP, _Q3_STOP = 30, 4, 9


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of exercise 3's run: SGD with momentum, learning rate 0.2."""
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)


def make_schedule(optimizer: torch.optim.Optimizer):
    """The schedule of exercise 3's run: 4 steps of linear warm-up, then cosine decay to step 30."""
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=_Q3_WARMUP),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=_Q3_TOTAL - _Q3_WARMUP),
    ], milestones=[_Q3_WARMUP])


def _q3_steps(model, optimizer, scheduler, batches) -> list[float]:
    lrs = []
    for x, y in batches:
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return lrs


def _q3_model() -> torch.nn.Module:
    seed_everything(93)
    return DigitsMLP(hidden=16, dropout=0.0)


@exercises.exercise(
    "q3",
    "Restore a learning-rate schedule",
    hints=[
        "Build first: optimizer = make_optimizer(model), then scheduler = make_schedule(optimizer).",
        "Then load: optimizer.load_state_dict(checkpoint['optimizer']), then scheduler.load_state_dict(checkpoint['scheduler']). "
        "A scheduler built after loading the optimizer overwrites its learning rate.",
        "Don't pass last_epoch=: load the scheduler's state instead. Load the weights with model.load_state_dict(checkpoint['model']).",
    ],
)
def q3(resume_schedule: Callable) -> str:
    """``resume_schedule(model, checkpoint, make_optimizer, make_schedule)`` returns ``(optimizer, scheduler)``."""
    import warnings

    batches = _digits_batches(_Q3_TOTAL, batch_size=16)
    model = _q3_model()
    optimizer = make_optimizer(model)
    straight_lrs = _q3_steps(model, optimizer, make_schedule(optimizer), batches)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model = _q3_model()
    optimizer = make_optimizer(model)
    scheduler = make_schedule(optimizer)
    _q3_steps(model, optimizer, scheduler, batches[:_Q3_STOP])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": _Q3_STOP}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    saved_lr = checkpoint["optimizer"]["param_groups"][0]["lr"]

    fresh = _q3_model()
    torch.nn.init.zeros_(fresh.output.weight)  # other weights, so that a forgotten load shows
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answer = resume_schedule(fresh, checkpoint, make_optimizer, make_schedule)
    except KeyError as error:
        if "initial_lr" in str(error):
            raise Wrong(
                "KeyError 'initial_lr': a scheduler built with last_epoch= on a fresh optimizer looks for the "
                "initial_lr a previous run would have stored. Build it normally and load its state_dict instead."
            ) from None
        raise
    if not isinstance(answer, tuple) or len(answer) != 2:
        got = type(answer).__name__ + (f" of {len(answer)}" if isinstance(answer, (tuple, list)) else "")
        raise Wrong(f"Return a tuple (optimizer, scheduler); you returned a {got}.")
    new_optimizer, new_scheduler = answer
    if not isinstance(new_optimizer, torch.optim.Optimizer) or not isinstance(new_scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise Wrong(
            f"Return (optimizer, scheduler), in that order; you returned ({type(new_optimizer).__name__}, "
            f"{type(new_scheduler).__name__})."
        )
    if not _same_tensors(fresh.state_dict(), checkpoint["model"]):
        raise Wrong("The model does not hold the checkpoint's weights: model.load_state_dict(checkpoint['model']).")
    if new_optimizer.param_groups[0]["params"][0] is not next(fresh.parameters()):
        raise Wrong("The optimizer does not optimize the model you were given: build it with make_optimizer(model).")
    if not _same_optimizer_state(new_optimizer.state_dict()["state"], checkpoint["optimizer"]["state"]):
        raise Wrong("The optimizer's state (SGD's momentum) was not restored: optimizer.load_state_dict(checkpoint['optimizer']).")
    if new_scheduler.last_epoch != checkpoint["scheduler"]["last_epoch"]:
        raise Wrong(
            f"The scheduler is at step {new_scheduler.last_epoch}, the checkpoint's at {checkpoint['scheduler']['last_epoch']}: "
            "the schedule would start its warm-up again. scheduler.load_state_dict(checkpoint['scheduler'])."
        )
    lr_now = new_optimizer.param_groups[0]["lr"]
    if lr_now != saved_lr:
        raise Wrong(
            f"The optimizer's learning rate is {lr_now:.4g}, the checkpoint's {saved_lr:.4g}: building a scheduler sets "
            "the learning rate to the schedule's start. Build the optimizer and the scheduler first, then load the "
            "optimizer's state, then the scheduler's."
        )
    lrs = _q3_steps(fresh, new_optimizer, new_scheduler, batches[_Q3_STOP:])
    if lrs != straight_lrs[_Q3_STOP:]:
        raise Wrong("The learning rates after your resume are not the ones the uninterrupted run used.")
    if not _same_tensors(fresh.state_dict(), straight):
        raise Wrong("Training on after your resume does not end with the weights of the uninterrupted run.")
    return "Built, then loaded in the right order: the schedule and the weights continue exactly."


# ---------------------------------------------------------------------------------------------
# q4: EMA weights

_Q4_TOTAL, _Q4_STOP = 10, 6


def _q4_build():
    seed_everything(94)
    model = DigitsCNN(width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    return model, optimizer, ema


def _q4_steps(model, optimizer, ema, batches) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)


def _everything(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@exercises.exercise(
    "q4",
    "A checkpoint with EMA weights, and the file to export",
    hints=[
        "The checkpoint: model.state_dict(), ema.state_dict() (it holds n_averaged too), optimizer.state_dict() and step.",
        "ema.module.state_dict() is the average as a plain model's state_dict; ema.state_dict() has 'module.' keys.",
        "Export the average, not the raw weights: exported_weights returns ema.module.state_dict().",
    ],
)
def q4(ema_checkpoint: Callable, exported_weights: Callable) -> str:
    """``ema_checkpoint(model, ema, optimizer, step)`` returns the dict; ``exported_weights(ema)`` the state_dict to ship."""
    torch.manual_seed(0)  # dropout draws below; Exercise.evaluate restores the caller's random state
    batches = _digits_batches(_Q4_TOTAL, batch_size=32)
    rng = torch.get_rng_state()
    model, optimizer, ema = _q4_build()
    torch.set_rng_state(rng)
    _q4_steps(model, optimizer, ema, batches)
    straight = _everything(ema)

    model, optimizer, ema = _q4_build()
    torch.set_rng_state(rng)
    _q4_steps(model, optimizer, ema, batches[:_Q4_STOP])
    rng_at_stop = torch.get_rng_state()
    result = ema_checkpoint(model, ema, optimizer, _Q4_STOP)
    if not isinstance(result, Mapping):
        raise Wrong(f"ema_checkpoint should return a dict; it returned a {type(result).__name__}.")
    missing = [k for k in ("model", "ema", "optimizer", "step") if k not in result]
    if missing:
        raise Wrong(f"The checkpoint has no {missing[0]!r} entry: it needs 'model', 'ema', 'optimizer' and 'step'.")
    if isinstance(result["ema"], torch.nn.Module) or isinstance(result["model"], torch.nn.Module):
        raise Wrong("The checkpoint holds a module object: store ema.state_dict() and model.state_dict().")
    buffer = io.BytesIO()
    torch.save(dict(result), buffer)
    buffer.seek(0)
    try:
        saved = torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError:
        raise Wrong("torch.load(..., weights_only=True) refuses your checkpoint: store state_dicts, not objects.") from None
    if "n_averaged" not in saved["ema"]:
        raise Wrong(
            "checkpoint['ema'] has no 'n_averaged': it looks like ema.module.state_dict(). Without n_averaged the "
            "restored average counts as empty and its next update copies the raw weights: save ema.state_dict()."
        )
    if not _same_tensors(saved["model"], model.state_dict()):
        if _same_tensors(saved["model"], ema.module.state_dict()):
            raise Wrong("checkpoint['model'] holds the EMA weights: store the raw model's model.state_dict() there.")
        raise Wrong("checkpoint['model'] is not the model's current state_dict().")

    resumed_model, resumed_optimizer, resumed_ema = _q4_build()
    try:
        resumed_model.load_state_dict(saved["model"])
        resumed_ema.load_state_dict(saved["ema"])
        resumed_optimizer.load_state_dict(saved["optimizer"])
    except Exception as error:
        raise Wrong(f"Restoring your checkpoint failed ({type(error).__name__}: {str(error)[:160]}).") from None
    torch.set_rng_state(rng_at_stop)
    _q4_steps(resumed_model, resumed_optimizer, resumed_ema, batches[_Q4_STOP:])
    if not _same_tensors(_everything(resumed_ema), straight):
        raise Wrong("After restoring your checkpoint and training on, the EMA differs from the uninterrupted run's.")

    exported = exported_weights(resumed_ema)
    if isinstance(exported, torch.nn.Module):
        raise Wrong("exported_weights returned a module: return its state_dict, ema.module.state_dict().")
    if not isinstance(exported, Mapping):
        raise Wrong(f"exported_weights should return a state_dict (a dict of tensors); it returned a {type(exported).__name__}.")
    if any(str(k).startswith("module.") for k in exported) or "n_averaged" in exported:
        raise Wrong("That is ema.state_dict(), for resuming: its keys start with 'module.' and it holds n_averaged. "
                    "Export ema.module.state_dict().")
    if _same_tensors(exported, resumed_model.state_dict()):
        raise Wrong("exported_weights returned the raw model's weights, not the average: ema.module.state_dict().")
    plain = DigitsCNN(width=4)
    try:
        plain.load_state_dict(exported)
    except Exception as error:
        raise Wrong(f"The exported state_dict does not load into a plain DigitsCNN ({str(error).splitlines()[0][:160]}).") from None
    if not _same_tensors(plain.state_dict(), resumed_ema.module.state_dict()):
        raise Wrong("The exported weights are not the EMA's (parameters and BatchNorm buffers).")
    return "The EMA (with n_averaged) resumes exactly, and the export is the average as a plain state_dict."
