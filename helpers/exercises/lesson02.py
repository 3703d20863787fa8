"""Checks for lesson 02, ``02_whole_model_vs_state_dict``.

In the notebook: ``from helpers.exercises import lesson02 as ex``.
"""

from __future__ import annotations

import copy
import pickle
import contextlib
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from helpers.checks import ExerciseSet, Wrong, read_state_dict_file
from helpers.models import DigitsCNN

exercises = ExerciseSet("02_whole_model_vs_state_dict")

_SPRUNG: list[str] = []
"""Tokens of booby-trapped files whose hidden function ran (see :func:`_spring_trap`)."""


def _spring_trap(token: str) -> str:
    """The function hidden in q1's booby-trapped file: it only records that it was called.

    A loader that refuses to run code from a file never calls it.
    """
    _SPRUNG.append(token)
    return token


class _Trap:
    """An object that, when unpickled, calls :func:`_spring_trap` (harmlessly) instead."""

    def __init__(self, token: str):
        self.token = token

    def __reduce__(self):
        return (_spring_trap, (self.token,))


def _first(items, n: int = 3) -> str:
    items = sorted(items)
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _trained_looking_cnn(seed: int) -> DigitsCNN:
    """A DigitsCNN in eval mode with seeded weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)  # Exercise.evaluate restores the learner's random state afterwards
    model = DigitsCNN()
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8))  # moves the running statistics away from 0 and 1
    return model.eval()


def _sample_batch(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def _outputs(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _restore_safe_globals(before: list) -> None:
    """Undo any ``torch.serialization.add_safe_globals`` the learner's code made during a check."""
    if set(torch.serialization.get_safe_globals()) != set(before):
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def _modules_in_training_mode(model: nn.Module) -> list[str]:
    """The names of ``model``'s submodules still in training mode (``model`` itself is ``"the model"``)."""
    return [name or "the model" for name, module in model.named_modules() if module.training]


def _require_inference_mode(model: nn.Module) -> None:
    still_training = _modules_in_training_mode(model)
    if still_training:
        raise Wrong(
            f"The model you return is in training mode ({_first(still_training, 2)}), so dropout and BatchNorm "
            "change its outputs. Call .eval() before returning it: it switches every layer, "
            "while model.training = False switches only the outer module."
        )


@contextlib.contextmanager
def _quiet_export_logs():
    """Silence torch.export's own log lines while the check tries to load a file that may not be a .pt2."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _compare_state_dicts(saved: Mapping, want: Mapping, what: str) -> None:
    missing, unexpected = set(want) - set(saved), set(saved) - set(want)
    if missing:
        buffers = [k for k in missing if "running_" in k or "num_batches" in k]
        extra = " (these are BatchNorm buffers: model.state_dict() includes them)" if buffers else ""
        raise Wrong(f"{what} lacks {len(missing)} entries of a DigitsCNN state_dict, e.g. {_first(missing, 2)}{extra}.")
    if unexpected:
        raise Wrong(f"{what} has keys a DigitsCNN does not have: {_first(unexpected)}.")
    differ = [k for k in want if not torch.equal(saved[k].cpu(), want[k])]
    if differ:
        raise Wrong(f"{what} has the right keys, but other tensors ({_first(differ)}): save the model you were given.")


# ---- q1 -------------------------------------------------------------------------------------


@exercises.exercise(
    "q1",
    "Load a whole-model file with weights_only=True",
    hints=[
        "torch.serialization.get_unsafe_globals_in_checkpoint(path) names what the file needs; section 3 printed "
        "that list for a DigitsCNN file.",
        "Import those classes (DigitsCNN and the torch.nn layer classes it uses) and put them in a list. "
        "Type the list yourself: don't build it from what the file asks for.",
        "with torch.serialization.safe_globals(needed): model = torch.load(path, weights_only=True), "
        "then return model.",
    ],
)
def q1(load_whole_digits_cnn: Callable[[Path], nn.Module]) -> str:
    """``load_whole_digits_cnn(path)`` loads a whole DigitsCNN with ``weights_only=True`` and returns it."""
    model = _trained_looking_cnn(seed=21)
    x = _sample_batch()
    expected = _outputs(model, x)
    token = f"trap-{id(model)}"
    _SPRUNG.clear()
    before = torch.serialization.get_safe_globals()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clean, trapped = Path(tmp) / "digits_cnn_whole.pt", Path(tmp) / "booby_trapped.pt"
            torch.save(model, clean)
            model.note = _Trap(token)  # an extra attribute whose unpickling calls _spring_trap
            torch.save(model, trapped)

            try:
                loaded = load_whole_digits_cnn(clean)
            except pickle.UnpicklingError as e:
                refused = str(e).split("Unsupported global: ")[-1].split(" was not")[0].removeprefix("GLOBAL ")
                raise Wrong(
                    f"Your function refused a clean DigitsCNN file: {refused} is not allow-listed. "
                    "The list needs DigitsCNN and every torch.nn layer class inside it."
                ) from None
            if set(torch.serialization.get_safe_globals()) != set(before):
                raise Wrong(
                    "Your function changed the allow-list of the whole process "
                    "(torch.serialization.add_safe_globals), so every later torch.load trusts these classes too. "
                    "Trust them for this one load only: with torch.serialization.safe_globals([...]): "
                    "model = torch.load(path, weights_only=True)."
                )
            if loaded is None:
                raise Wrong("Your function returned None: return the model that torch.load gives you.")
            if not isinstance(loaded, DigitsCNN):
                raise Wrong(f"Your function returned a {type(loaded).__name__}, not the DigitsCNN stored in the file.")
            loaded.eval()
            if not torch.equal(_outputs(loaded, x), expected):
                raise Wrong("The model you returned gives other outputs than the one in the file: return what torch.load loaded.")

            try:
                load_whole_digits_cnn(trapped)
            except pickle.UnpicklingError:
                pass
            except Exception as e:
                raise Wrong(
                    f"On a booby-trapped file your function raised {type(e).__name__}: {e}. "
                    "A safe load refuses it with pickle.UnpicklingError."
                ) from None
    finally:
        _restore_safe_globals(before)
    if token in _SPRUNG:
        raise Wrong(
            "Your function ran a function hidden in a booby-trapped file "
            "(harmless here: helpers.exercises.lesson02._spring_trap). Load with weights_only=True and allow-list "
            "only the classes a DigitsCNN needs: never turn weights_only off for a file you did not make, and never "
            "everything the file asks for."
        )
    return "The clean file loads with weights_only=True, and the booby-trapped one is refused without running anything."


# ---- q2 -------------------------------------------------------------------------------------


@exercises.exercise(
    "q2",
    "Turn a whole-model checkpoint into a state_dict file",
    hints=[
        "First load the whole model. It is your own file, so you may trust it and load it with weights_only "
        "set to False (or reuse your allow-list from exercise 1).",
        "Then save model.state_dict(), not the model, to weights_path.",
        "model.state_dict() includes the BatchNorm buffers; dict(model.named_parameters()) does not.",
    ],
)
def q2(whole_to_weights: Callable[[Path, Path], object]) -> str:
    """``whole_to_weights(whole_path, weights_path)`` writes the state_dict of the model in ``whole_path``."""
    model = _trained_looking_cnn(seed=22)
    x = _sample_batch()
    expected = _outputs(model, x)
    before = torch.serialization.get_safe_globals()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            whole_path, weights_path = Path(tmp) / "old_whole_model.pt", Path(tmp) / "weights.pt"
            torch.save(model, whole_path)
            whole_bytes = whole_path.read_bytes()
            try:
                whole_to_weights(whole_path, weights_path)
            except pickle.UnpicklingError:
                raise Wrong(
                    "torch.load refused the whole-model file (weights_only=True is the default). It is your own "
                    "file, so you may trust it: load it with weights_only set to False, or inside "
                    "torch.serialization.safe_globals([...]) with your list from exercise 1."
                ) from None
            if not whole_path.exists() or whole_path.read_bytes() != whole_bytes:
                raise Wrong(
                    "Your function changed or removed the whole-model file at whole_path. Leave it as it is "
                    "(it is the only copy until the new file is checked) and write the new file at weights_path."
                )
            if not weights_path.exists():
                raise Wrong(
                    "whole_to_weights ran, but wrote no file at weights_path, the path it was given. "
                    "Don't write to a file name of your own: torch.save(model.state_dict(), weights_path)."
                )
            saved = read_state_dict_file(weights_path, "The file you wrote")
    finally:
        _restore_safe_globals(before)
    _compare_state_dicts(saved, model.state_dict(), "The file you wrote")
    fresh = DigitsCNN()
    fresh.load_state_dict(saved)
    if not torch.equal(_outputs(fresh.eval(), x), expected):
        raise Wrong("A fresh DigitsCNN loaded from your file gives other outputs than the original model.")
    return "The new file loads with weights_only=True into a fresh DigitsCNN and reproduces the outputs exactly."


# ---- q3 -------------------------------------------------------------------------------------


@exercises.exercise(
    "q3",
    "Save and load with safetensors",
    hints=[
        "safetensors.torch.save_file(tensors, path) saves a dict of tensors: give it model.state_dict().",
        "safetensors.torch.load_file(path) returns that dict again: build a DigitsCNN and load_state_dict it.",
        "The model you return is for inference: call .eval() before returning it.",
    ],
)
def q3(
    save_safetensors: Callable[[nn.Module, Path], object],
    load_safetensors: Callable[[Path], nn.Module],
) -> str:
    """``save_safetensors(model, path)`` writes a .safetensors file; ``load_safetensors(path)`` returns a new model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = _trained_looking_cnn(seed=23)
    x = _sample_batch()
    expected = _outputs(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits_cnn.safetensors"
        save_safetensors(model, path)
        if not path.exists():
            raise Wrong(
                "save_safetensors ran, but wrote no file at `path`, the path it was given. "
                "Don't write to a file name of your own: safetensors.torch.save_file(model.state_dict(), path)."
            )
        try:
            saved = load_file(path)
        except SafetensorError:
            hint = " (it is a torch.save zip archive)" if zipfile.is_zipfile(path) else ""
            raise Wrong(
                f"The file is not in the safetensors format{hint}; a .safetensors name does not make it one. "
                "Write it with safetensors.torch.save_file(model.state_dict(), path)."
            ) from None
        _compare_state_dicts(saved, model.state_dict(), "The safetensors file")
        restored = load_safetensors(path)
    if not isinstance(restored, nn.Module):
        raise Wrong(
            f"load_safetensors returned a {type(restored).__name__}, not a model. load_file gives a dict of tensors: "
            "load it into a new DigitsCNN and return the model."
        )
    if not isinstance(restored, DigitsCNN):
        raise Wrong(f"load_safetensors returned a {type(restored).__name__}: build a new DigitsCNN() and load the weights into it.")
    _require_inference_mode(restored)
    if not torch.equal(_outputs(restored, x), expected):
        raise Wrong("The loaded model's outputs differ from the saved model's: are the weights loaded into it?")
    return "A safetensors file, and a model that reproduces the outputs exactly."


# ---- q4 -------------------------------------------------------------------------------------


@exercises.exercise(
    "q4",
    "Export a model for serving, with any batch size",
    hints=[
        "The model comes straight from training: put it in eval mode before exporting, because an exported "
        "program keeps the mode it was exported in.",
        "torch.export.export(model, (example,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) "
        "makes dimension 0 of the input `x` dynamic.",
        "Save the result with torch.export.save(program, path), not torch.save.",
    ],
)
def q4(export_for_serving: Callable[[nn.Module, torch.Tensor, Path], object]) -> str:
    """``export_for_serving(model, example, path)`` writes a .pt2 file that serves any batch size."""
    model = _trained_looking_cnn(seed=24)
    reference = copy.deepcopy(model).eval()
    model.train()  # as it is right after training
    example = _sample_batch(4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits_cnn.pt2"
        export_for_serving(model, example, path)
        if not path.exists():
            raise Wrong(
                "export_for_serving ran, but wrote no file at `path`, the path it was given. "
                "Save the program there with torch.export.save(program, path)."
            )
        try:
            with warnings.catch_warnings(), _quiet_export_logs():
                warnings.simplefilter("ignore")
                program = torch.export.load(path)
        except Exception as e:
            raise Wrong(
                f"torch.export.load cannot read the file you wrote ({type(e).__name__}), so it is not a torch.export "
                "program. Export with torch.export.export(...) and save with torch.export.save(program, path), "
                "not torch.save."
            ) from None
        if not isinstance(program, torch.export.ExportedProgram):
            raise Wrong(f"torch.export.load gave a {type(program).__name__}: save an ExportedProgram with torch.export.save.")
        served = program.module()
    for n in (4, 1, 7):
        x = _sample_batch(n)
        try:
            got = _outputs(served, x)
        except Exception as e:
            raise Wrong(
                f"The exported program refuses a batch of {n} ({type(e).__name__}: {str(e).splitlines()[0][:120]}). "
                "It was exported for one batch size only: make dimension 0 dynamic with "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}."
            ) from None
        if not torch.allclose(got, _outputs(reference, x), rtol=1e-5, atol=1e-6):
            raise Wrong(
                f"On a batch of {n} the exported program's outputs differ from the model's in eval mode. "
                "Was the model in training mode when you exported it? Call model.eval() first: "
                "an exported program keeps the mode it was exported in."
            )
    return "The .pt2 file serves batches of 1, 4 and 7 with the eval-mode outputs."
