"""Checks for lesson 01, ``01_state_dict``. In the notebook: ``from helpers.exercises import lesson01 as ex``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from helpers.checks import ExerciseSet, Wrong, read_state_dict_file
from helpers.models import DigitsCNN

exercises = ExerciseSet("01_state_dict")


def _first(items: Iterable[str], n: int = 3) -> str:
    items = sorted(items)
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _trained_looking_cnn(seed: int, num_classes: int = 10) -> DigitsCNN:
    """A DigitsCNN with seeded weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)  # Exercise.evaluate restores the learner's random state afterwards
    model = DigitsCNN(num_classes=num_classes)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8))  # moves the running statistics away from 0 and 1
    return model.eval()


def _sample_batch() -> torch.Tensor:
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _modules_in_training_mode(model: nn.Module) -> list[str]:
    """The names of ``model``'s submodules still in training mode (``model`` itself is ``"the model"``)."""
    return [name or "the model" for name, module in model.named_modules() if module.training]


@exercises.exercise(
    "q1",
    "Which entries of a state_dict are buffers?",
    hints=[
        "A state_dict holds parameters and buffers. model.named_parameters() lists the parameters.",
        "Start from the keys of model.state_dict() and take away the parameter names.",
        "BatchNorm has three buffers per layer: running_mean, running_var and num_batches_tracked.",
    ],
)
def q1(buffer_keys, model: nn.Module) -> str:
    """``buffer_keys``: the keys of ``model.state_dict()`` that are buffers, not parameters."""
    if isinstance(buffer_keys, (str, bytes)) or not isinstance(buffer_keys, Iterable):
        raise Wrong(f"Give a set (or list) of key strings, not a {type(buffer_keys).__name__}.")
    given = set(buffer_keys)
    if not all(isinstance(k, str) for k in given):
        raise Wrong("Every element should be a key string such as 'features.1.running_mean'.")
    keys = set(model.state_dict())
    parameters = {name for name, _ in model.named_parameters()}
    expected = keys - parameters
    if given - keys:
        raise Wrong(f"Not keys of model.state_dict(): {_first(given - keys)}.")
    if given & parameters:
        raise Wrong(f"These are parameters, not buffers: {_first(given & parameters)}.")
    if expected - given:
        raise Wrong(f"You missed {len(expected - given)} buffer(s), e.g. {_first(expected - given, 2)}.")
    return f"All {len(expected)} buffers found, and no parameters among them."


@exercises.exercise(
    "q2",
    "Save a model's weights, and load them into a new model ready for inference",
    hints=[
        "Save model.state_dict(), not the model itself.",
        "To load: build a new DigitsCNN(), then load_state_dict(torch.load(path, weights_only=True)).",
        "load_state_dict returns a report of keys, not the model. Return the model, and put it in eval mode.",
    ],
)
def q2(save_weights: Callable[[nn.Module, Path], object], load_weights: Callable[[Path], nn.Module]) -> str:
    """``save_weights(model, path)`` writes the weights; ``load_weights(path)`` returns a new model."""
    for name, answer in (("save_weights", save_weights), ("load_weights", load_weights)):
        if isinstance(answer, nn.Module):
            raise Wrong(f"`{name}` should be your function; you passed a model ({type(answer).__name__}).")
    model = _trained_looking_cnn(seed=2)
    x = _sample_batch()
    with torch.no_grad():
        expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "my_weights.pt"
        save_weights(model, path)
        if not path.exists():
            raise Wrong(
                "save_weights(model, path) ran, but wrote no file at `path`, the path it was given. "
                "Don't write to a file name of your own: torch.save(model.state_dict(), path)."
            )
        if model.training or any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()):
            raise Wrong("save_weights changed the model it was given (its weights or its mode). Only save it.")
        saved = read_state_dict_file(path)
        want = model.state_dict()
        if set(saved) != set(want):
            raise Wrong(f"The saved keys differ from model.state_dict(): missing {_first(set(want) - set(saved))}.")
        if any(not torch.equal(saved[k], want[k]) for k in want):
            raise Wrong("The saved tensors differ from the model's: save the model you are given.")
        restored = load_weights(path)
    if not isinstance(restored, nn.Module):
        raise Wrong(
            f"load_weights returned a {type(restored).__name__}, not a model. torch.load gives a dict of "
            "tensors and load_state_dict() a report of keys: return the model itself."
        )
    if not isinstance(restored, DigitsCNN):
        raise Wrong(f"load_weights returned a {type(restored).__name__}: build a new DigitsCNN() and load the weights into it.")
    still_training = _modules_in_training_mode(restored)
    if still_training:
        raise Wrong(
            f"The model you return is in training mode ({_first(still_training, 2)}), so dropout and BatchNorm "
            "change its outputs. Call .eval() before returning it: it switches every layer, "
            "while model.training = False switches only the outer module."
        )
    with torch.no_grad():
        got = restored(x)
    if not torch.equal(got, expected):
        raise Wrong("The loaded model's outputs differ from the saved model's: are the weights loaded into it?")
    return "The file holds a state_dict, and the new model reproduces the outputs exactly."


OLD_NAMES = {"body.": "features.", "head.": "classifier."}
"""How an older version of DigitsCNN named its two blocks (old prefix -> today's prefix)."""


def make_old_state_dict(model: DigitsCNN) -> dict[str, torch.Tensor]:
    """``model``'s state_dict with the old names ``body.`` and ``head.``, as an old checkpoint had."""
    renamed = {}
    for key, value in model.state_dict().items():
        for old, new in OLD_NAMES.items():
            if key.startswith(new):
                key = old + key[len(new):]
        renamed[key] = value
    return renamed


def _upgraded_key(key: str) -> str:
    """What a correct upgrade makes of ``key``: the old prefix replaced at the start only."""
    for old, new in OLD_NAMES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


TRICKY_OLD_KEYS = ["body.downsample.weight", "body.bn.running_mean", "head.head_scale", "headline", "body_count"]
"""Old keys that ``str.lstrip`` damages, or that must stay as they are (they don't start with a prefix)."""


@exercises.exercise(
    "q3",
    "Upgrade an old checkpoint whose layers had other names",
    hints=[
        "Build a new dict: the same tensors, under new keys.",
        "key.startswith('body.') tells you which keys to rename; 'features.' + key[len('body.'):] renames one.",
        "Don't change the dict you are given: the old checkpoint should stay usable.",
    ],
)
def q3(upgrade_checkpoint: Callable[[dict], dict]) -> str:
    """``upgrade_checkpoint(old_state_dict)`` returns a state_dict that today's DigitsCNN loads."""
    source = _trained_looking_cnn(seed=3)
    old = make_old_state_dict(source)
    old_copy = dict(old)
    result = upgrade_checkpoint(old)
    if result is None:
        raise Wrong("upgrade_checkpoint returned None: return the new dict.")
    if set(old) != set(old_copy) or any(old[k] is not old_copy[k] for k in old_copy):
        raise Wrong(
            "Your function changed the dict it was given. Build and return a new dict instead, "
            "so the old checkpoint stays usable."
        )
    if not isinstance(result, Mapping):
        raise Wrong(f"Return a dict of tensors, not a {type(result).__name__}.")
    target = DigitsCNN()
    want = set(target.state_dict())
    missing, unexpected = want - set(result), set(result) - want
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {_first(missing, 2)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {_first(unexpected, 2)}")
        raise Wrong("DigitsCNN().load_state_dict() would fail: " + "; ".join(parts) + ".")
    target.load_state_dict(result)
    if any(not torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items()):
        raise Wrong("All keys match, but some tensors are not the ones from the old checkpoint.")

    # The course model's keys survive some wrong renamings by luck: try keys that don't.
    tricky = {key: torch.full((1,), float(i)) for i, key in enumerate(TRICKY_OLD_KEYS)}
    tricky_result = upgrade_checkpoint(dict(tricky))
    if not isinstance(tricky_result, Mapping):
        raise Wrong(f"On another old checkpoint your function returned a {type(tricky_result).__name__}, not a dict.")
    expected = {_upgraded_key(k): v for k, v in tricky.items()}
    if set(tricky_result) != set(expected):
        wrong = sorted(set(tricky_result) - set(expected))
        raise Wrong(
            f"Your renaming works for DigitsCNN's keys, but not for others. From an old checkpoint with the keys "
            f"{', '.join(TRICKY_OLD_KEYS)} you made {_first(wrong or tricky_result, 4)}. "
            "str.lstrip('body.') strips the letters b, o, d, y and '.', not a prefix ('body.downsample.weight' "
            "becomes 'wnsample.weight'); and keys that don't start with 'body.' or 'head.' stay as they are. "
            "Use key.startswith(old) and key[len(old):]."
        )
    if any(not torch.equal(tricky_result[k], v) for k, v in expected.items()):
        raise Wrong("On another old checkpoint the keys are right, but the tensors under them are not the old ones.")
    return f"All {len(want)} entries renamed at the start of the key only, and the old dict is untouched."


@exercises.exercise(
    "q4",
    "Reuse the layers that fit when the output layer changed size",
    hints=[
        "strict=False forgives missing and unexpected keys, but not a shape mismatch.",
        "Compare against model.state_dict(): keep a key only if the model has it with the same shape.",
        "Load what you kept with strict=False, and return the keys you left out (they can be in any order).",
    ],
)
def q4(load_matching: Callable[[nn.Module, dict], Iterable[str]]) -> str:
    """``load_matching(model, state_dict)`` loads every tensor whose name and shape fit; returns the skipped keys."""
    source = _trained_looking_cnn(seed=4, num_classes=10).state_dict()
    source["aux_head.weight"] = torch.ones(3)  # a layer today's model does not have
    target = _trained_looking_cnn(seed=5, num_classes=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    try:
        skipped = load_matching(target, source)
    except RuntimeError as e:
        if "size mismatch" in str(e):
            raise Wrong(
                "load_state_dict raised 'size mismatch': strict=False does not skip tensors of another "
                "shape. Leave out the keys whose shape differs before loading."
            ) from None
        raise
    if skipped is None or isinstance(skipped, (str, bytes)) or not isinstance(skipped, Iterable):
        shown = "nothing (None)" if skipped is None else f"a {type(skipped).__name__}"
        raise Wrong(f"Return the list of keys you skipped; your function returned {shown}.")
    if isinstance(skipped, Mapping) or not all(isinstance(k, str) for k in skipped):
        raise Wrong(
            f"Return a list of key strings, such as ['classifier.1.weight', ...]; you returned a {type(skipped).__name__} "
            "of other things. (load_state_dict's report holds two lists: missing_keys and unexpected_keys.)"
        )
    skipped = set(skipped)
    expected_skipped = {"classifier.1.weight", "classifier.1.bias", "aux_head.weight"}
    after = target.state_dict()
    not_loaded = [k for k in before if k not in expected_skipped and not torch.equal(after[k], source[k])]
    if not_loaded:
        raise Wrong(f"These tensors fit but were not loaded: {_first(not_loaded)}.")
    if any(not torch.equal(after[k], before[k]) for k in ("classifier.1.weight", "classifier.1.bias")):
        raise Wrong("The new classifier's own weights changed; only tensors that fit should be copied.")
    if skipped != expected_skipped:
        extra, forgot = skipped - expected_skipped, expected_skipped - skipped
        detail = []
        if forgot:
            detail.append(f"you left out of the list {_first(forgot)}")
        if extra:
            detail.append(f"the list names keys that were loaded: {_first(extra)}")
        raise Wrong("The loading is right, but the list of skipped keys is not: " + "; ".join(detail) + ".")
    return "Features copied, the new classifier kept, and the skipped keys reported."
