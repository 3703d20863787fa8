"""Checks for lesson 06, ``06_gradient_accumulation``. In the notebook: ``from helpers.exercises import lesson06 as ex``.

Each check runs the learner's function on a small ``DigitsMLP`` without dropout (so that the
expected gradients are exact) and random 8x8 inputs, and compares what reached the optimizer with
what a full batch gives. Wrong answers are recognised by the gradient they produce: four times too
large (the loss was not divided), a quarter (divided twice), only the last micro-batch's (the
gradients were zeroed inside the loop), and so on.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from helpers.checks import ExerciseSet, Wrong
from helpers.models import DigitsMLP

exercises = ExerciseSet("06_gradient_accumulation")

MicroBatches = Sequence[tuple[torch.Tensor, torch.Tensor]]


# ---- building blocks ---------------------------------------------------------------------------


def _model(seed: int) -> DigitsMLP:
    torch.manual_seed(seed)  # Exercise.evaluate restores the learner's random state afterwards
    return DigitsMLP(dropout=0.0)


def _micro_batches(sizes: Sequence[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    x = torch.rand(total, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (total,), generator=generator)
    return list(zip(x.split(list(sizes)), y.split(list(sizes))))


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _grads(parameters) -> torch.Tensor:
    return _flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters)


def _has_gradients(model: nn.Module) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def _copy_of(model: nn.Module) -> DigitsMLP:
    """A fresh DigitsMLP with ``model``'s weights (no hooks, no gradients)."""
    copy = DigitsMLP(dropout=0.0)
    copy.load_state_dict(model.state_dict())
    return copy


def _gradient(model: nn.Module, micro_batches: MicroBatches, weight: Callable[[int, int], float] | None = None) -> torch.Tensor:
    """Flat gradient of sum(weight(len(batch), total) * mean loss of batch) at ``model``'s weights.

    The default weight, size / total, gives the mean loss over all samples: the full-batch gradient.
    """
    copy = _copy_of(model)
    total = sum(len(y) for _, y in micro_batches)
    weight = weight or (lambda size, total: size / total)
    loss = sum(weight(len(y), total) * F.cross_entropy(copy(x), y) for x, y in micro_batches)
    loss.backward()
    return _grads(copy.parameters())


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> bool:
    return bool((got - want).norm() <= rtol * want.norm() + 1e-7)



def _relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


@contextlib.contextmanager
def _batch_sizes_seen(model: nn.Module):
    """Records the batch size of every forward pass of ``model`` while the block runs."""
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        yield sizes
    finally:
        handle.remove()


@contextlib.contextmanager
def _forward_backward_order(model: nn.Module):
    """Records, in order, each forward pass of ``model`` ("F") and when backward reached its output ("B")."""
    events: list[tuple[str, int]] = []

    def after_forward(module, args, output):
        index = sum(1 for kind, _ in events if kind == "F")
        events.append(("F", index))
        if isinstance(output, torch.Tensor) and output.requires_grad:
            def on_backward(grad):
                events.append(("B", index))
                if torch.is_autocast_enabled("cpu"):  # CPU backward runs on the caller's thread
                    events.append(("backward under autocast", index))

            output.register_hook(on_backward)

    handle = model.register_forward_hook(after_forward)
    try:
        yield events
    finally:
        handle.remove()


def _require_backward_per_micro_batch(events: list[tuple[str, int]]) -> None:
    """Wrong when a forward pass started before the previous micro-batch's backward: all graphs held at once."""
    position = {event: i for i, event in enumerate(events)}
    forwards = [index for kind, index in events if kind == "F"]
    for index in forwards[:-1]:
        backward = position.get(("B", index))
        if backward is not None and backward > position[("F", index + 1)]:
            raise Wrong(
                "You ran the next micro-batch's forward pass before the backward of the previous one (for example "
                "by adding up the losses and calling backward() once). The gradient is the same, but every "
                "micro-batch's activations stay in memory together: no saving at all. Call backward() on each "
                "micro-batch's loss right after its forward pass."
            )


def _require_parameters(fn: Callable, names: Sequence[str]) -> None:
    """Wrong when ``fn`` cannot be called with the task's arguments (say what they are)."""
    try:
        inspect.signature(fn).bind(*names)
    except TypeError:
        raise Wrong(
            f"Your function should take ({', '.join(names)}), in that order; "
            f"it takes {inspect.signature(fn)}."
        ) from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass


def _require_zeroed(model: nn.Module, what: str) -> None:
    if _has_gradients(model):
        raise Wrong(
            f"After your function the gradients are not zero: {what} Leave them zeroed for the next step "
            "(call optimizer.zero_grad() after the step)."
        )


def _require_micro_batches(sizes: list[int], largest: int) -> None:
    if not sizes:
        return
    if max(sizes) > largest:
        raise Wrong(
            f"Your model saw a batch of {max(sizes)} samples in one forward pass: that is the full batch, "
            "whose activations accumulation is meant to avoid. Run the model on one micro-batch at a time."
        )


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD (lr=1) that records the gradients it was given at every ``step()``."""

    def __init__(self, params, events: list[str] | None = None):
        super().__init__(params, lr=1.0)
        self.grads_at_step: list[torch.Tensor] = []
        self.events = events if events is not None else []
        self.inside_scaler_step = False

    def step(self, closure=None):
        """Record the gradients, then take the SGD step."""
        if not self.inside_scaler_step:
            self.events.append("optimizer.step")
        self.grads_at_step.append(_grads(p for group in self.param_groups for p in group["params"]))
        return super().step(closure)


def _describe(
    got: torch.Tensor, full: torch.Tensor, n: int, first: torch.Tensor, last: torch.Tensor, rtol: float = 1e-4
) -> str | None:
    """What a wrong gradient at the optimizer step looks like, or None if it is the right one."""

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        return _close(x, y, rtol)

    if close(got, full):
        return None
    if float(got.norm()) == 0.0:
        return (
            "The gradients were all zero when optimizer.step() ran, so the step did nothing: zero_grad() "
            "came between the last backward() and step(). Call zero_grad() after step() (or before the "
            "first micro-batch)."
        )
    if close(got, n * full):
        return (
            f"The step used {n} times the full-batch gradient: divide each micro-batch's loss by the "
            f"number of micro-batches ({n}) before backward()."
        )
    if close(got, full / n):
        return f"The step used 1/{n} of the full-batch gradient: you divided by {n} twice. Divide once."
    if close(got, last / n) or close(got, last):
        return (
            "Only the last micro-batch's gradient reached optimizer.step(): zero_grad() inside the loop "
            "wipes what the earlier micro-batches accumulated. Zero once per optimizer step."
        )
    if close(got, first / n) or close(got, first):
        return (
            "The step came right after the first micro-batch: the step condition is off by one. With "
            "a 0-based index i, step when (i + 1) % accumulation_steps == 0."
        )
    return (
        f"The gradient at optimizer.step() differs from the full-batch gradient by "
        f"{_relative_difference(got, full):.0%} (relative). Divide each loss by the number of "
        "micro-batches, call backward() for each, then step once."
    )


# ---- q1: one optimizer step over equal micro-batches -------------------------------------------


@exercises.exercise(
    "q1",
    "One optimizer step with gradient accumulation",
    hints=[
        "For each micro-batch: loss = loss_fn(model(x), y) / len(micro_batches), then loss.backward().",
        "backward() adds to .grad, so don't zero the gradients inside the loop.",
        "After the loop: optimizer.step(), then optimizer.zero_grad() so the next step starts from zero.",
    ],
)
def q1(train_step: Callable[[nn.Module, torch.optim.Optimizer, MicroBatches, nn.Module], object]) -> str:
    """``train_step(model, optimizer, micro_batches, loss_fn)`` takes one step with the full-batch gradient."""
    _require_parameters(train_step, ("model", "optimizer", "micro_batches", "loss_fn"))
    model = _model(seed=11)
    optimizer = _RecordingSGD(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    sizes = [8, 8, 8, 8]
    n = len(sizes)
    for call, seed in enumerate((12, 13)):
        micro_batches = _micro_batches(sizes, seed)
        full = _gradient(model, micro_batches)
        first = _gradient(model, micro_batches[:1], weight=lambda size, total: 1.0)
        last = _gradient(model, micro_batches[-1:], weight=lambda size, total: 1.0)
        previous = optimizer.grads_at_step[-1] if optimizer.grads_at_step else None
        with _batch_sizes_seen(model) as seen, _forward_backward_order(model) as order:
            train_step(model, optimizer, micro_batches, loss_fn)
        _require_micro_batches(seen, max(sizes))
        steps = len(optimizer.grads_at_step) - call
        if steps == 0:
            if call == 0 and not seen and not _has_gradients(model):
                raise Wrong("train_step ran but did nothing: it never called the model nor optimizer.step().")
            raise Wrong("optimizer.step() was never called: step once, after the last micro-batch.")
        if steps == n:
            raise Wrong(
                f"optimizer.step() ran after every micro-batch ({n} times for {n} micro-batches): that is "
                "training with small batches, not accumulation. Step once, after the last micro-batch."
            )
        if steps != 1:
            raise Wrong(f"optimizer.step() ran {steps} times in one call: step once, after the last micro-batch.")
        got = optimizer.grads_at_step[-1]
        if previous is not None and _close(got, full + previous, rtol=1e-3):
            raise Wrong(
                "The second call's step also used the first call's gradients: nothing zeroed them. "
                "Call optimizer.zero_grad() after optimizer.step() (or before the first micro-batch)."
            )
        problem = _describe(got, full, n, first, last)
        if problem:
            raise Wrong(problem)
        _require_backward_per_micro_batch(order)
        _require_zeroed(model, "the step's gradients are still in .grad.")
    return f"Two steps, each with exactly the gradient of a batch of {sum(sizes)}, one micro-batch of {sizes[0]} at a time."


# ---- q2: uneven micro-batches ------------------------------------------------------------------


@exercises.exercise(
    "q2",
    "Accumulate micro-batches of different sizes",
    hints=[
        "The full-batch loss is the mean over all samples, so every sample must weigh the same.",
        "Count the samples first: total = sum(len(y) for _, y in micro_batches).",
        "Use loss_fn = nn.CrossEntropyLoss(reduction='sum') and backward() on loss_fn(model(x), y) / total "
        "(or weight each mean loss by len(y) / total).",
    ],
)
def q2(accumulate_gradients: Callable[[nn.Module, MicroBatches], object]) -> str:
    """``accumulate_gradients(model, micro_batches)`` leaves the full-batch mean gradient in ``.grad``."""
    _require_parameters(accumulate_gradients, ("model", "micro_batches"))
    for sizes, seed in (([8, 8, 8, 6], 21), ([5, 12, 3], 22)):
        model = _model(seed=20)
        start = [p.detach().clone() for p in model.parameters()]
        micro_batches = _micro_batches(sizes, seed)
        total, n = sum(sizes), len(sizes)
        shown = ", ".join(map(str, sizes))
        with _batch_sizes_seen(model) as seen, _forward_backward_order(model) as order:
            accumulate_gradients(model, micro_batches)
        _require_micro_batches(seen, max(sizes))
        if not any(p.grad is not None for p in model.parameters()):
            if not seen:
                raise Wrong("accumulate_gradients ran but did nothing: it never called the model.")
            raise Wrong("The parameters have no .grad after your function: call backward() for each micro-batch.")
        if not all(torch.equal(a, p) for a, p in zip(start, model.parameters())):
            raise Wrong("Your function changed the weights: only accumulate the gradients in .grad, don't step.")
        _require_backward_per_micro_batch(order)
        got = _grads(model.parameters())
        full = _gradient(model, micro_batches)
        by_steps = _gradient(model, micro_batches, weight=lambda size, total: 1 / n)
        if _close(got, full):
            continue
        if _close(got, by_steps):
            raise Wrong(
                f"You divided each micro-batch's mean loss by the number of micro-batches ({n}). With sizes "
                f"{shown}, that gives each sample of the small micro-batch more weight than the others "
                f"(the gradient is {_relative_difference(got, full):.0%} off). Divide by the number of "
                f"samples instead: a sum-reduced loss / {total}, or each mean loss times len(y) / {total}."
            )
        if _close(got, n * by_steps):
            raise Wrong("You added the micro-batches' mean losses without normalising: the gradient is "
                        f"about {n} times too large. Weight each sample by 1 / {total}.")
        if _close(got, total * full):
            raise Wrong(f"You summed the per-sample losses but did not divide by the number of samples ({total}).")
        if _close(got, n * by_steps / total):
            raise Wrong(
                f"You divided each micro-batch's *mean* loss by the total number of samples ({total}): the mean "
                "already divided by the micro-batch size. Use reduction='sum' before dividing by the total."
            )
        last = micro_batches[-1:]
        if _close(got, _gradient(model, last, weight=lambda size, t: size / total)) or _close(got, _gradient(model, last)):
            raise Wrong("Only the last micro-batch's gradient is left: don't zero the gradients inside the loop.")
        raise Wrong(
            f"With micro-batches of {shown} the gradient differs from the full-batch mean gradient by "
            f"{_relative_difference(got, full):.0%} (relative): every sample should weigh 1 / {total}."
        )
    return "Every sample weighs the same, whatever the micro-batch sizes: exactly the full-batch gradient."


# ---- q3: when to step --------------------------------------------------------------------------


def _correct_should_step(batch_index: int, num_batches: int, accumulation_steps: int) -> bool:
    return (batch_index + 1) % accumulation_steps == 0 or batch_index + 1 == num_batches


@exercises.exercise(
    "q3",
    "When to call optimizer.step()",
    hints=[
        "batch_index starts at 0, so after batch_index the loop has seen batch_index + 1 batches.",
        "Step when batch_index + 1 is a multiple of accumulation_steps...",
        "...and after the very last batch, even when the last group is short: batch_index + 1 == num_batches.",
    ],
)
def q3(should_step: Callable[[int, int, int], bool]) -> str:
    """``should_step(batch_index, num_batches, accumulation_steps)``: step after this batch?"""
    _require_parameters(should_step, ("batch_index", "num_batches", "accumulation_steps"))
    example = [should_step(i, 10, 4) for i in range(10)]
    if any(not isinstance(answer, (bool, np.bool_)) for answer in example):
        answer = next(a for a in example if not isinstance(a, (bool, np.bool_)))
        raise Wrong(f"should_step returned {answer!r} (a {type(answer).__name__}): return True or False.")
    example = [bool(answer) for answer in example]
    steps_at = [i for i, step in enumerate(example) if step]
    if steps_at == [0, 4, 8] or steps_at == [0, 4, 8, 9]:
        raise Wrong(
            f"With 10 batches and accumulation_steps=4 you step after batches {steps_at}: the first step "
            "comes after a single batch. The index starts at 0, so test (batch_index + 1) % accumulation_steps == 0."
        )
    if steps_at == [3, 7]:
        raise Wrong(
            "With 10 batches and accumulation_steps=4 you step after batches 3 and 7 only: batches 8 and 9 "
            "never reach an optimizer step, so their gradients are lost (or leak into the next epoch). "
            "Also step after the last batch: batch_index + 1 == num_batches."
        )
    if steps_at == list(range(10)):
        raise Wrong("You step after every batch: that is no accumulation at all.")
    for accumulation_steps in range(1, 6):
        for num_batches in range(1, 14):
            for batch_index in range(num_batches):
                answer = should_step(batch_index, num_batches, accumulation_steps)
                if answer is None:
                    raise Wrong("should_step returned None: return True or False.")
                if not isinstance(answer, (bool, np.bool_)):
                    raise Wrong(f"should_step returned {answer!r} (a {type(answer).__name__}): return True or False.")
                expected = _correct_should_step(batch_index, num_batches, accumulation_steps)
                if bool(answer) != expected:
                    raise Wrong(
                        f"should_step({batch_index}, {num_batches}, {accumulation_steps}) returned {answer!r}; "
                        f"it should be {expected}. With {num_batches} batches and accumulation_steps="
                        f"{accumulation_steps} the steps come after batches "
                        f"{[i for i in range(num_batches) if _correct_should_step(i, num_batches, accumulation_steps)]}."
                    )
    return "Right for every combination, including the short last group (10 batches, 4 per step: 3 steps)."


# ---- q4: mixed precision and accumulation ------------------------------------------------------


class _RecordingScaler(torch.amp.GradScaler):
    """A CPU GradScaler that records which of its methods were called, in order."""

    def __init__(self, events: list[str], enabled: bool = True):
        super().__init__("cpu", enabled=enabled)
        self.events = events
        self._in_step = False

    def scale(self, outputs):
        """Record, then scale."""
        self.events.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        """Record (unless step() calls it), then unscale."""
        if not self._in_step:
            self.events.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        """Record, then step (the optimizer's own step is not recorded separately)."""
        self.events.append("step")
        self._in_step = True
        inner = getattr(optimizer, "inside_scaler_step", None)
        if inner is not None:
            optimizer.inside_scaler_step = True
        try:
            return super().step(optimizer, *args, **kwargs)
        finally:
            self._in_step = False
            if inner is not None:
                optimizer.inside_scaler_step = False

    def update(self, new_scale=None):
        """Record, then update the scale."""
        self.events.append("update")
        return super().update(new_scale)


def _reference_amp_step(model, optimizer, scaler, micro_batches, loss_fn, max_norm) -> None:
    n = len(micro_batches)
    for x, y in micro_batches:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            loss = loss_fn(model(x), y) / n
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _reference_amp_grads(model, steps, max_norm, enabled) -> list[torch.Tensor]:
    """The gradients the reference AMP step hands to the optimizer, for consecutive calls.

    ``enabled[i]`` says whether call ``i`` gets an enabled GradScaler.
    """
    copy = _copy_of(model)
    optimizer = _RecordingSGD(copy.parameters())
    for batches, on in zip(steps, enabled):
        scaler = torch.amp.GradScaler("cpu", enabled=on)
        _reference_amp_step(copy, optimizer, scaler, batches, nn.CrossEntropyLoss(), max_norm)
    return optimizer.grads_at_step


def _explain_refusal(events: list[str]) -> None:
    """Raise Wrong for the call orders that make GradScaler itself raise."""
    if "scale" not in events:
        raise Wrong(
            "scaler.scale() was never called, and GradScaler refused to unscale: call "
            "scaler.scale(loss / N).backward() for every micro-batch."
        )
    if events.count("unscale_") > 1 and "update" not in events:
        raise Wrong(
            "scaler.unscale_(optimizer) ran more than once in one step, and GradScaler refused. Call it "
            "once, after the last micro-batch, right before clipping."
        )
    if "update" in events and "step" not in events:
        raise Wrong(
            "scaler.update() ran before any scaler.step(optimizer), and GradScaler refused. Call "
            "scaler.step(optimizer), then scaler.update(), once per step after the last micro-batch."
        )


def _check_events(events: list[str], n: int) -> None:
    """Raise Wrong when the scaler and optimizer calls of one step are not in a working order."""
    counts = {name: events.count(name) for name in ("scale", "unscale_", "step", "update", "optimizer.step")}
    if counts["optimizer.step"]:
        raise Wrong(
            "You called optimizer.step() yourself. With a GradScaler call scaler.step(optimizer): it "
            "unscales the gradients if needed and skips the step when they overflowed."
        )
    if counts["scale"] == 0:
        raise Wrong(
            "scaler.scale() was never called: backward() on scaler.scale(loss / N) for every micro-batch, "
            "so small float16 gradients don't underflow."
        )
    if counts["scale"] != n:
        raise Wrong(f"scaler.scale() ran {counts['scale']} times for {n} micro-batches: once per micro-batch.")
    for name, what in (("step", "scaler.step(optimizer)"), ("update", "scaler.update()"), ("unscale_", "scaler.unscale_(optimizer)")):
        if counts[name] == n and n > 1:
            raise Wrong(
                f"{what} ran after every micro-batch. Call it once per optimizer step, after the last "
                "micro-batch: the scale must stay the same while gradients accumulate."
            )
    if counts["step"] == 0:
        raise Wrong("scaler.step(optimizer) was never called: step once, after the last micro-batch.")
    if counts["update"] == 0:
        raise Wrong("scaler.update() was never called: call it right after scaler.step(optimizer), once per step.")
    if counts["step"] != 1 or counts["update"] != 1 or counts["unscale_"] > 1:
        raise Wrong(f"In one step your function called {events}: expected scale x{n}, unscale_, step, update.")
    if events.index("update") < events.index("step"):
        raise Wrong("scaler.update() came before scaler.step(optimizer): step first, then update.")
    if events.index("step") < max(i for i, e in enumerate(events) if e == "scale"):
        raise Wrong("scaler.step() came before the last micro-batch's backward(): step after all of them.")


@exercises.exercise(
    "q4",
    "Mixed precision with gradient accumulation",
    hints=[
        "Per micro-batch: the forward pass and the loss under torch.autocast(device_type='cpu', dtype=torch.float16), "
        "then scaler.scale(loss / N).backward() outside the with block.",
        "After the last micro-batch: scaler.unscale_(optimizer), then torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).",
        "Then scaler.step(optimizer), scaler.update() and optimizer.zero_grad(), each once per step.",
    ],
)
def q4(amp_train_step: Callable[..., object]) -> str:
    """``amp_train_step(model, optimizer, scaler, micro_batches, loss_fn, max_norm)``: AMP + accumulation + clipping."""
    sizes = [8, 8, 8, 8]
    n = len(sizes)
    loss_fn = nn.CrossEntropyLoss()

    def run(model, steps, max_norm, enabled):
        events: list[str] = []
        optimizer = _RecordingSGD(model.parameters(), events)
        scalers = [_RecordingScaler(events, enabled=on) for on in enabled]
        autocast_on: list[bool] = []
        output_dtypes: list[torch.dtype] = []
        handles = [
            model.register_forward_pre_hook(lambda module, args: autocast_on.append(torch.is_autocast_enabled("cpu"))),
            model.register_forward_hook(lambda module, args, output: output_dtypes.append(output.dtype)),
        ]
        try:
            for call, batches in enumerate(steps):
                start = len(events)
                with _batch_sizes_seen(model) as seen, _forward_backward_order(model) as order:
                    try:
                        amp_train_step(model, optimizer, scalers[call], batches, loss_fn, max_norm)
                    except NotImplementedError:
                        raise
                    except (RuntimeError, AssertionError):
                        # GradScaler refuses some wrong orders: say which call was out of place.
                        _explain_refusal(events[start:])
                        raise
                if call == 0 and not events and not seen:
                    raise Wrong("amp_train_step ran but did nothing: it never called the model nor the scaler.")
                _require_micro_batches(seen, max(sizes))
                if not all(autocast_on):
                    raise Wrong(
                        "Some forward passes ran without autocast: put the forward pass and the loss inside "
                        "`with torch.autocast(device_type='cpu', dtype=torch.float16):`."
                    )
                wrong_dtype = next((d for d in output_dtypes if d != torch.float16), None)
                if wrong_dtype is not None:
                    raise Wrong(
                        f"The model's output was {wrong_dtype}, not torch.float16 (the check looks at the dtype "
                        "of the output itself): use dtype=torch.float16 in autocast. float16 is the precision "
                        "that needs the GradScaler; bfloat16 would need no scaler."
                    )
                _check_events(events[start:], n)
                _require_backward_per_micro_batch(order)
                if any(kind == "backward under autocast" for kind, _ in order):
                    raise Wrong(
                        "backward() ran inside the autocast block: end the `with torch.autocast(...)` block "
                        "after the loss, then call scaler.scale(loss / N).backward() outside it."
                    )
                _require_zeroed(model, "the step's gradients are still in .grad.")
        finally:
            for handle in handles:
                handle.remove()
        return optimizer.grads_at_step

    _require_parameters(amp_train_step, ("model", "optimizer", "scaler", "micro_batches", "loss_fn", "max_norm"))
    # 1. No clipping (a huge max_norm): the gradient at each step must be the full-batch one, and
    # the gradients zero after each call (checked on .grad itself).
    steps = [_micro_batches(sizes, 41), _micro_batches(sizes, 42)]
    enabled = (True, True)
    model = _model(seed=40)
    want = _reference_amp_grads(model, steps, 1e9, enabled)
    full = _gradient(model, steps[0])
    first = _gradient(model, steps[0][:1], weight=lambda size, total: 1.0)
    last = _gradient(model, steps[0][-1:], weight=lambda size, total: 1.0)
    got = run(model, steps, 1e9, enabled)
    if not _close(got[0], want[0], rtol=1e-2):
        problem = _describe(got[0], full, n, first, last, rtol=1e-2)
        raise Wrong(problem or f"The gradient at the step differs from the expected one by "
                               f"{_relative_difference(got[0], want[0]):.0%} (relative).")
    if not _close(got[1], want[1], rtol=1e-2):
        raise Wrong(f"The second step's gradient is {_relative_difference(got[1], want[1]):.0%} off the expected one.")

    # 2. With clipping: it must act on the unscaled gradients.
    model = _model(seed=43)
    batches = _micro_batches(sizes, 44)
    unclipped = _reference_amp_grads(model, [batches], 1e9, [True])[0]
    max_norm = 0.5 * float(unclipped.norm())
    clipped = _reference_amp_grads(model, [batches], max_norm, [True])[0]
    got = run(model, [batches], max_norm, [True])[0]
    if _close(got, clipped, rtol=1e-2):
        return "Autocast per micro-batch, scaled backward, one unscale_ / clip / step / update per step."
    if _close(got, unclipped, rtol=1e-2):
        raise Wrong(
            "The gradients were not clipped: call torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) "
            "after scaler.unscale_(optimizer) and before scaler.step(optimizer)."
        )
    if float(got.norm()) < max_norm / 100:
        raise Wrong(
            "The gradients were clipped while still scaled (thousands of times too large), so after "
            "unscaling almost nothing was left. Call scaler.unscale_(optimizer) before clip_grad_norm_."
        )
    raise Wrong(f"With clipping, the gradient at the step is {_relative_difference(got, clipped):.0%} off the expected one.")
