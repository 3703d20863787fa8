"""Checks for lesson 05, mixed precision: ``from helpers.exercises import lesson05 as ex``."""

from __future__ import annotations

import math
import pickle
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from helpers.checks import ExerciseSet, NotAttempted, Wrong
from helpers.measure import saved_tensor_bytes

exercises = ExerciseSet("05_mixed_precision")

DEFAULT_SCALE = 2.0**16
"""The scale a new ``torch.amp.GradScaler`` starts with (its ``init_scale``): 65536."""


# ---- q1: a training step with autocast and a GradScaler -----------------------------------------

def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _tiny_batches(seed: int = 1, n: int = 2, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator))
        for _ in range(n)
    ]


def _grad_norm(parameters) -> float:
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


class _RecordingScaler(torch.amp.GradScaler):
    """A real GradScaler that also notes which of its methods were called, in order, and how large
    the gradients were at each call."""

    def __init__(self, parameters):
        super().__init__("cpu")
        self._parameters = list(parameters)
        self.calls: list[tuple[str, float]] = []
        self.stale_grads_at_backward = False
        self.autocast_during_backward = False
        self._inside_step = False

    def scale(self, outputs):
        self.calls.append(("scale", 0.0))
        scaled = super().scale(outputs)
        if isinstance(scaled, torch.Tensor) and scaled.requires_grad:
            # Runs when backward starts from the scaled loss, before any parameter gradient is added.
            scaled.register_hook(self._note_stale_grads)
        return scaled

    def _note_stale_grads(self, grad):
        # On the CPU, backward runs on the caller's thread: this sees whether it was called inside autocast.
        if torch.is_autocast_enabled("cpu"):
            self.autocast_during_backward = True
        if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in self._parameters):
            self.stale_grads_at_backward = True
        return grad

    def unscale_(self, optimizer):
        if not self._inside_step:
            self.calls.append(("unscale_", _grad_norm(self._parameters)))
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append(("step", _grad_norm(self._parameters)))
        self._inside_step = True
        try:
            return super().step(optimizer, *args, **kwargs)
        finally:
            self._inside_step = False

    def update(self, new_scale=None):
        self.calls.append(("update", 0.0))
        return super().update(new_scale)


def reference_amp_step(model, optimizer, scaler, x, y, max_norm):
    """The lesson's float16 training step (the answer to q1), used to check learners' steps."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


Q1_MAX_NORM = 0.1


def _run_steps(amp_step, *, record: bool):
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = _RecordingScaler(model.parameters()) if record else torch.amp.GradScaler("cpu")
    forward_info: list[tuple[bool, torch.dtype]] = []
    model.register_forward_hook(
        lambda module, args, output: forward_info.append((torch.is_autocast_enabled("cpu"), output.dtype))
    )
    optimizer_steps = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: optimizer_steps.append(1))
    losses, calls_per_step, error = [], [], None
    for x, y in _tiny_batches():
        before = len(scaler.calls) if record else 0
        try:
            losses.append(amp_step(model, optimizer, scaler, x, y, Q1_MAX_NORM))
        except (NotImplementedError, NotAttempted):
            raise
        except Exception as e:  # noqa: BLE001 - explained below, after looking at the call order
            if not record:
                raise
            error = e
        if record:
            calls_per_step.append(scaler.calls[before:])
        if error is not None:
            break
    return model, scaler, losses, forward_info, calls_per_step, len(optimizer_steps), error


@exercises.exercise(
    "q1",
    "A float16 training step with autocast and a GradScaler, in the right order",
    hints=[
        "Forward pass and loss inside `with torch.autocast(device_type=x.device.type, dtype=torch.float16):`; "
        "everything else outside it.",
        "Order: zero_grad, forward+loss (autocast), scaler.scale(loss).backward(), scaler.unscale_(optimizer), "
        "clip_grad_norm_, scaler.step(optimizer), scaler.update().",
        "unscale_ must come before clipping: otherwise max_norm is compared with gradients that are "
        "65536 times too large.",
    ],
)
def q1(amp_step: Callable) -> str:
    """``amp_step(model, optimizer, scaler, x, y, max_norm)`` does one float16 step, returns the loss."""
    if not callable(amp_step):
        raise Wrong(f"Pass your function itself (amp_step), not {type(amp_step).__name__}.")
    model, scaler, losses, forward_info, calls, n_optimizer_steps, error = _run_steps(amp_step, record=True)
    ref_model, ref_scaler, ref_losses, *_ = _run_steps(reference_amp_step, record=False)
    names = [[name for name, _ in step] for step in calls]
    for step in names:
        if "update" in step and "step" in step[step.index("update"):]:
            raise Wrong("scaler.update() must come after scaler.step(optimizer), not before it.")
    if any("step" in step and "update" not in step for step in names[: len(names) - (error is not None)]) or (
        error is not None and len(names) > 1 and "update" not in names[0]
    ):
        raise Wrong("You never called scaler.update(): call it once per step, after scaler.step(optimizer).")
    if error is not None:
        raise error

    if not forward_info:
        raise Wrong("Your step never called the model: compute `loss = F.cross_entropy(model(x), y)`.")
    if not all(enabled for enabled, _ in forward_info):
        raise Wrong(
            "The forward pass did not run under autocast: wrap the forward pass and the loss in "
            "`with torch.autocast(device_type=x.device.type, dtype=torch.float16):`."
        )
    if any(dtype != torch.float16 for _, dtype in forward_info):
        dtype = next(d for _, d in forward_info if d != torch.float16)
        raise Wrong(
            f"The model's output was {dtype}, not torch.float16: pass dtype=torch.float16 to autocast "
            "(this exercise is about float16, the precision that needs a GradScaler)."
        )
    if not all("scale" in step for step in names):
        raise Wrong(
            "You never called scaler.scale(loss): backpropagate the scaled loss with "
            "`scaler.scale(loss).backward()`, or small float16 gradients underflow to zero."
        )
    if not all("step" in step for step in names):
        raise Wrong(
            "You never called scaler.step(optimizer): call it instead of optimizer.step(), so that "
            "steps whose gradients hold inf or nan are skipped."
        )
    if n_optimizer_steps > len(calls):
        raise Wrong(
            "The optimizer stepped more than once per call: scaler.step(optimizer) already calls "
            "optimizer.step(); don't call optimizer.step() yourself as well."
        )
    scale = ref_scaler.get_scale()
    for step, step_names in zip(calls, names):
        at_step = dict(step)["step"]
        if "unscale_" not in step_names or step_names.index("unscale_") > step_names.index("step"):
            if at_step <= Q1_MAX_NORM * 1.01:
                raise Wrong(
                    "You clipped the *scaled* gradients: call scaler.unscale_(optimizer) before "
                    "clip_grad_norm_, so that max_norm is compared with the true gradients."
                )
            raise Wrong(
                "Call scaler.unscale_(optimizer) and then clip_grad_norm_(model.parameters(), max_norm) "
                "before scaler.step(optimizer): the gradients were neither unscaled nor clipped."
            )
        at_unscale = dict(step)["unscale_"]
        if at_unscale <= Q1_MAX_NORM * 1.01 and at_step < Q1_MAX_NORM / 100:
            raise Wrong(
                "You clipped before scaler.unscale_(optimizer): clipping the scaled gradients to max_norm "
                f"and then dividing by the scale ({scale:g}) leaves them far too small. Unscale first, then clip."
            )
        if at_unscale < 100 * Q1_MAX_NORM and at_step < Q1_MAX_NORM / 100:
            raise Wrong(
                "The gradients were not scaled: call `scaler.scale(loss).backward()`, not "
                "`loss.backward()`; unscale_ then divides gradients that were never multiplied."
            )
        if at_step > Q1_MAX_NORM * 1.01:
            raise Wrong(
                f"The gradients reached scaler.step with norm {at_step:.3g} > max_norm={Q1_MAX_NORM}: "
                "clip them with torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) after unscale_."
            )
    if scaler.autocast_during_backward:
        raise Wrong(
            "backward() ran inside the autocast block: end the `with torch.autocast(...)` block after the loss, "
            "then call scaler.scale(loss).backward() outside it. Each op's backward already uses the dtype "
            "its forward used."
        )
    if scaler.stale_grads_at_backward:
        raise Wrong(
            "The second step still had the first step's gradients when it started backward: call "
            "optimizer.zero_grad() at the start of the step."
        )
    for got, want in zip(losses, ref_losses):
        try:
            value = float(got.detach() if isinstance(got, torch.Tensor) else got)
        except (TypeError, ValueError, RuntimeError):
            raise Wrong(f"Return the loss (a number or a 0-d tensor), not {type(got).__name__}.") from None
        if math.isclose(value, want * scale, rel_tol=1e-3):
            raise Wrong("You returned the scaled loss: return the loss itself (loss.item()), not scaler.scale(loss).")
        if not math.isclose(value, want, rel_tol=1e-3, abs_tol=1e-4):
            raise Wrong(f"Your step returned {value:.4g}, but the loss of that batch is {want:.4g}.")
    if not _same_parameters(model, ref_model):
        raise Wrong(
            "After two steps the parameters differ from the reference step's: check the order "
            "zero_grad, autocast forward, scale(loss).backward(), unscale_, clip, step, update."
        )
    if scaler.get_scale() != ref_scaler.get_scale():
        raise Wrong(f"The scale ended at {scaler.get_scale():g} instead of {ref_scaler.get_scale():g}.")
    return (
        "Right order: scale(loss).backward(), unscale_ before clipping, scaler.step, then update. "
        "The parameters match the reference step exactly."
    )


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(a.parameters(), b.parameters()))


# ---- q2: which dtype does each tensor have? ------------------------------------------------------

Q2_KEYS = ("linear", "relu", "cross_entropy", "weight", "after")


def q2_actual_dtypes() -> dict[str, torch.dtype]:
    """What the tensors of q2 really are, measured now on the CPU under bfloat16 autocast."""
    layer = nn.Linear(64, 10)
    x, y = torch.rand(4, 64), torch.tensor([0, 1, 2, 3])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = layer(x)
        activated = logits.relu()
        loss = F.cross_entropy(logits, y)
        weight = layer.weight
    return {
        "linear": logits.dtype,
        "relu": activated.dtype,
        "cross_entropy": loss.dtype,
        "weight": weight.dtype,
        "after": logits.dtype,  # read after the with block: nothing converts it back
    }


_Q2_WHY = {
    "linear": "Linear layers (matmul) are what autocast runs in low precision: they are where the speed is.",
    "relu": "relu is on neither autocast list, so it runs in the dtype of its input: the linear layer's output.",
    "cross_entropy": "cross_entropy is on autocast's float32 list (a loss sums many small numbers).",
    "weight": "autocast never changes parameters: it casts temporary *copies* for each op. "
    "The weight stays float32 (the optimizer updates float32 master weights).",
    "after": "Leaving the with block converts nothing: tensors computed inside keep their dtype. "
    "Only new ops outside run without autocast.",
}


@exercises.exercise(
    "q2",
    "Predict the dtypes under bfloat16 autocast on the CPU",
    hints=[
        "Matmul-like ops (linear, conv) run in the low precision; losses run in float32; ops on neither list "
        "follow their inputs.",
        "Autocast casts copies of the weights for each op; the parameter itself is untouched. And leaving the "
        "with block does not convert tensors that already exist.",
    ],
)
def q2(predicted: dict) -> str:
    """``predicted`` maps each of ``linear, relu, cross_entropy, weight, after`` to a torch dtype."""
    if not isinstance(predicted, dict):
        raise Wrong(f"Answer with a dict from names to dtypes, not a {type(predicted).__name__}.")
    missing = [k for k in Q2_KEYS if k not in predicted]
    extra = [k for k in predicted if k not in Q2_KEYS]
    if missing or extra:
        raise Wrong(f"Use exactly the keys {list(Q2_KEYS)} (missing: {missing}, unexpected: {extra}).")
    if any(v is Ellipsis for v in predicted.values()):
        raise NotAttempted("Replace every `...` in the dict with a dtype such as torch.bfloat16.")
    for key, value in predicted.items():
        if not isinstance(value, torch.dtype):
            raise Wrong(f"predicted[{key!r}] should be a dtype such as torch.float32, not {value!r}.")
    actual = q2_actual_dtypes()
    wrong = [k for k in Q2_KEYS if predicted[k] != actual[k]]
    if wrong:
        key = wrong[0]
        more = f" ({len(wrong) - 1} more wrong after this one)" if len(wrong) > 1 else ""
        raise Wrong(f"{key!r}: you said {predicted[key]}, it is {actual[key]}. {_Q2_WHY[key]}{more}")
    return "All five right: low precision for the matmul and what follows it, float32 for the loss and the weights."


# ---- q3: the scaler in the checkpoint -----------------------------------------------------------

def _trained_state(seed: int = 0):
    model = _tiny_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    # A scaler that has been running for a while: it backed off to 1024 and counted 6 good steps.
    scaler.load_state_dict(
        {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 6}
    )
    for x, y in _tiny_batches(seed=seed + 1):
        reference_amp_step(model, optimizer, scaler, x, y, max_norm=1.0)
    return model, optimizer, scaler


@exercises.exercise(
    "q3",
    "Save and restore the GradScaler with the checkpoint",
    hints=[
        "Put `scaler.state_dict()` in the checkpoint dict next to the model's and the optimizer's.",
        "Load in place: `model.load_state_dict(...)`, `optimizer.load_state_dict(...)`, "
        "`scaler.load_state_dict(checkpoint['scaler'])`; read the file with torch.load(path, weights_only=True).",
    ],
)
def q3(save_checkpoint: Callable, load_checkpoint: Callable) -> str:
    """``save_checkpoint(path, model, optimizer, scaler)``; ``load_checkpoint(path, model, optimizer, scaler)``."""
    model, optimizer, scaler = _trained_state()
    want = scaler.state_dict()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        save_checkpoint(path, model, optimizer, scaler)
        if not path.exists():
            raise Wrong("save_checkpoint wrote no file at `path`: call torch.save(checkpoint, path).")
        try:
            torch.load(path, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
            raise Wrong(
                "torch.load(path, weights_only=True) cannot read your checkpoint: save state_dicts "
                "(tensors and numbers), not the model, optimizer or scaler objects. "
                f"({str(error).splitlines()[0][:120]})"
            ) from None
        fresh_model = _tiny_model(seed=5)
        fresh_optimizer = torch.optim.SGD(fresh_model.parameters(), lr=0.1, momentum=0.9)
        fresh_scaler = torch.amp.GradScaler("cpu")
        result = load_checkpoint(path, fresh_model, fresh_optimizer, fresh_scaler)
    if isinstance(result, torch.amp.GradScaler) and result is not fresh_scaler:
        raise Wrong("Load into the scaler you are given (scaler.load_state_dict(...)) instead of returning a new one.")
    got = fresh_scaler.state_dict()
    if got["scale"] == DEFAULT_SCALE and want["scale"] != DEFAULT_SCALE:
        raise Wrong(
            f"After loading, the scaler is back at 65536 instead of {want['scale']:g}: save "
            "scaler.state_dict() in the checkpoint and restore it with scaler.load_state_dict(...)."
        )
    if got["scale"] != want["scale"]:
        raise Wrong(f"The restored scale is {got['scale']:g}, but the saved scaler's was {want['scale']:g}.")
    if got["_growth_tracker"] != want["_growth_tracker"]:
        raise Wrong(
            f"The scale is right but the growth tracker is {got['_growth_tracker']} instead of "
            f"{want['_growth_tracker']}: save and load the whole scaler.state_dict(), not just the scale."
        )
    if not _same_parameters(fresh_model, model) or not all(
        torch.equal(p, q) for p, q in zip(fresh_model.parameters(), model.parameters())
    ):
        raise Wrong("The model's weights were not restored: save model.state_dict() and load it.")
    momentum = [s.get("momentum_buffer") for s in fresh_optimizer.state.values()]
    if len(momentum) != len(optimizer.state) or any(m is None for m in momentum):
        raise Wrong("The optimizer's state (its momentum buffers) was not restored: save and load optimizer.state_dict().")
    return f"The scaler comes back at scale {want['scale']:g} with its growth tracker, next to the model and optimizer."


# ---- q4: activation memory with saved_tensors_hooks ---------------------------------------------

def _q4_cases() -> list[tuple[str, Callable[[], torch.Tensor]]]:
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    head = nn.Parameter(torch.randn(48, 10))
    x = torch.rand(16, 64)
    w = torch.randn(300, requires_grad=True)
    big = torch.randn(50, 20, requires_grad=True)

    def square():
        a = w * 1.0
        return (a * a).sum()  # saves the same tensor twice

    def view():
        a = big * 1.0
        return a[:5].sin().sum()  # sin saves its input: a view that keeps all of `a` alive

    def autocast_linear():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return layer(x).relu().sum()

    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    few = torch.rand(4, 64)

    def three_layers():
        # nn.Linear saves weight.t() here: a view of the parameter, not a leaf. Counting it counts the weights.
        return F.cross_entropy(mlp(few), torch.tensor([0, 1, 2, 3]))

    return [
        ("a linear layer", lambda: layer(x).sum()),
        ("a layer and a matmul with a parameter", lambda: (layer(x).relu() @ head).sum()),  # saves `head`
        ("a 3-layer MLP on 4 samples", three_layers),
        ("one tensor saved twice", square),
        ("a bfloat16 forward pass", autocast_linear),
        ("views of one storage", view),
    ]


@exercises.exercise(
    "q4",
    "Measure activation memory with saved_tensors_hooks",
    hints=[
        "Define pack(t) that records t and returns t, and unpack(t) that returns t; run fn() inside "
        "`with torch.autograd.graph.saved_tensors_hooks(pack, unpack):`.",
        "Skip parameters and views of parameters: `base = t._base if t._base is not None else t`, then skip "
        "when `base.is_leaf and base.requires_grad`.",
        "Identify a storage by `t.untyped_storage().data_ptr()` and count `t.untyped_storage().nbytes()` once "
        "per storage.",
    ],
)
def q4(activation_bytes: Callable) -> str:
    """``activation_bytes(fn)`` returns the bytes autograd saves while ``fn()`` runs, as defined."""
    if not callable(activation_bytes):
        raise Wrong(f"Pass your function itself, not {type(activation_bytes).__name__}.")
    for name, fn in _q4_cases():
        want = saved_tensor_bytes(fn)
        got = activation_bytes(fn)
        if not isinstance(got, int) or isinstance(got, bool):
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = int(got.item())
            elif isinstance(got, float) and got.is_integer():
                got = int(got)
            else:
                raise Wrong(f"Return a number of bytes (an int), not {type(got).__name__}.")
        if got == want:
            continue
        if got == 0:
            raise Wrong(
                f"For {name} you counted 0 bytes: call fn() *inside* the saved_tensors_hooks with-block, "
                "so that pack is called for every saved tensor."
            )
        if got > want and _differs_by_parameters(fn, got - want, views=False):
            raise Wrong(
                f"For {name} you counted {got} bytes instead of {want}: you included the parameters. "
                "Skip tensors with t.is_leaf and t.requires_grad: they exist anyway, they are not activations."
            )
        if got > want and _differs_by_parameters(fn, got - want, views=True):
            raise Wrong(
                f"For {name} you counted {got} bytes instead of {want}: you included views of the parameters "
                "(nn.Linear saves weight.t(), which is not a leaf). Skip a tensor when its base "
                "(`t._base if t._base is not None else t`) has is_leaf and requires_grad."
            )
        if got > want:
            raise Wrong(
                f"For {name} you counted {got} bytes instead of {want}: one storage was counted more than once. "
                "Keep a set of t.untyped_storage().data_ptr() and count each storage once."
            )
        if got * 4 == want or got * 2 == want:
            raise Wrong(
                f"For {name} you got {got}, which looks like a number of elements: count bytes "
                "(t.untyped_storage().nbytes(), or numel() * element_size())."
            )
        raise Wrong(
            f"For {name} you counted {got} bytes instead of {want}. A saved view keeps its whole storage "
            "alive: count t.untyped_storage().nbytes(), not the view's own size."
        )
    return (
        "Your measurement matches saved_tensor_bytes on all six cases, including views of parameters, "
        "views of activations and bfloat16."
    )


def _differs_by_parameters(fn, difference: int, views: bool) -> bool:
    """True when ``difference`` is the size of the parameters fn saved: leaf tensors requiring grad, and, with
    ``views=True``, also views of them (such as ``weight.t()``), each storage counted once."""
    sizes = []
    seen = set()

    def pack(t):
        base = t if t._base is None else t._base
        is_parameter = t.is_leaf and t.requires_grad
        if is_parameter or (views and base.is_leaf and base.requires_grad):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                sizes.append(storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return difference in {sum(sizes), sum(set(sizes)), *sizes}

