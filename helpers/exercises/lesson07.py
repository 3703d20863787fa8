"""Checks for lesson 07, ``07_transfer_learning_and_freezing``. In the notebook: ``from helpers.exercises import lesson07 as ex``.

The checks build small ``DigitsCNN`` models of their own (seeded, with BatchNorm statistics moved
away from their defaults, like a trained backbone), so each runs in milliseconds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from helpers.checks import ExerciseSet, Wrong, read_state_dict_file
from helpers.models import DigitsCNN

exercises = ExerciseSet("07_transfer_learning_and_freezing")


def pretrained_looking_cnn(seed: int = 0, num_classes: int = 5) -> DigitsCNN:
    """A ``DigitsCNN`` with seeded weights and non-default BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)  # Exercise.evaluate restores the learner's random state afterwards
    model = DigitsCNN(num_classes=num_classes)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8))  # moves the running statistics away from 0 and 1
    return model.eval()


def _batch(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _names(model: nn.Module, params) -> list[str]:
    ids = {id(p) for p in params}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def _short(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _require_adam(optimizer, what: str = "the optimizer you built") -> None:
    if optimizer is None:
        raise Wrong(f"Your function returned None: return {what}.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Wrong(f"Return {what} (a torch.optim.Adam), not a {type(optimizer).__name__}.")
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # AdamW subclasses Adam only in newer torch
        raise Wrong(f"The task asks for torch.optim.Adam; you returned a {type(optimizer).__name__}.")


def _require_same_model(result, model: nn.Module) -> None:
    if result is None:
        raise Wrong("Your function returned None: return the model.")
    if not isinstance(result, nn.Module):
        raise Wrong(f"Return the model (an nn.Module), not a {type(result).__name__}.")
    if result is not model:
        raise Wrong(
            "You returned a different model object. Change the model you are given, in place, "
            "and return that same model."
        )


def _trainable_flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def _read_head_file(path: Path) -> dict[str, torch.Tensor]:
    """The learner's head file: a ``torch.save``d state_dict, or a safetensors file (the lesson shows both)."""
    with open(path, "rb") as f:
        start = f.read(9)
    if len(start) == 9 and start[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - any unreadable file is the answer's fault
            raise Wrong(f"The file at `path` looks like safetensors but could not be read ({error}).") from None
    return read_state_dict_file(path, what="The file save_head wrote")


@exercises.exercise(
    "q1",
    "Freeze the backbone and build the optimizer",
    hints=[
        "model.features.requires_grad_(False) freezes every parameter of the backbone in one call.",
        "Give the optimizer only what still trains: filter(lambda p: p.requires_grad, model.parameters()).",
        "Freeze the features only: the new classifier must keep requires_grad=True.",
        "Return torch.optim.Adam(..., lr=lr): the optimizer itself, built after freezing.",
    ],
)
def q1(freeze_and_make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer]) -> str:
    """``freeze_and_make_optimizer(model, lr)`` freezes ``model.features`` and returns an Adam optimizer."""
    model = pretrained_looking_cnn(seed=11)
    lr = 0.005
    try:
        optimizer = freeze_and_make_optimizer(model, lr)
    except ValueError as error:
        if "empty parameter list" not in str(error):
            raise
        raise Wrong(
            "The optimizer got no parameters at all: every parameter is frozen, the new classifier too. "
            "Freeze model.features only."
        ) from None
    _require_adam(optimizer)
    features = [n for n, _ in model.named_parameters() if n.startswith("features.")]
    head = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not set(head) & trainable and not set(features) & trainable:
        raise Wrong("Every parameter is frozen, the new classifier too, so nothing can learn. Freeze model.features only.")
    if set(head) - trainable:
        raise Wrong(
            f"The classifier is frozen too ({_short(sorted(set(head) - trainable))}): it is the part that "
            "must learn the new task. Freeze model.features only."
        )
    if set(features) & trainable:
        still = sorted(set(features) & trainable)
        if len(still) == len(features):
            raise Wrong("model.features still trains: call model.features.requires_grad_(False).")
        raise Wrong(
            f"Part of the backbone still trains: {_short(still)}. BatchNorm has a weight and a bias too; "
            "model.features.requires_grad_(False) freezes them all."
        )
    held = _names(model, _optimizer_params(optimizer))
    frozen_held = [n for n in held if n not in trainable]
    if frozen_held:
        raise Wrong(
            f"The optimizer still holds {len(frozen_held)} frozen parameters ({_short(frozen_held)}). "
            "It skips them while their .grad is None, but they sit in its state and param groups, and "
            "if you unfreeze them later they train with this learning rate. Pass only "
            "filter(lambda p: p.requires_grad, model.parameters())."
        )
    missing = sorted(trainable - set(held))
    if missing:
        raise Wrong(f"The optimizer leaves out trainable parameters: {_short(missing)}.")
    lrs = {group["lr"] for group in optimizer.param_groups}
    if lrs != {lr}:
        raise Wrong(f"Use the learning rate you are given (lr={lr}); the optimizer has {sorted(lrs)}.")
    before = {k: v.clone() for k, v in model.features.state_dict().items()}
    x, y = _batch(), torch.arange(16) % 5
    model.train()
    model.features.eval()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    if any(not torch.equal(before[k], v) for k, v in model.features.state_dict().items()):
        raise Wrong("A training step changed the backbone. Is weight decay or another trick touching it?")
    return f"Backbone frozen, and the optimizer holds exactly the {len(held)} classifier parameters."


@exercises.exercise(
    "q2",
    "Training mode for the head, eval mode for the frozen BatchNorm",
    hints=[
        "model.train() sets every submodule to training mode, the frozen features included.",
        "So call model.train() first, then put model.features back with model.features.eval().",
        "The order matters: model.features.eval() followed by model.train() undoes the eval().",
    ],
)
def q2(set_training_mode: Callable[[nn.Module], object]) -> str:
    """``set_training_mode(model)``: train mode for the classifier, eval mode for the frozen ``features``."""
    model = pretrained_looking_cnn(seed=12)
    model.features.requires_grad_(False)
    model.eval()
    flags_before = _trainable_flags(model)
    result = set_training_mode(model)
    _require_same_model(result, model)
    in_train = [f"features.{name}" if name else "features" for name, m in model.features.named_modules() if m.training]
    norms = {name: m for name, m in model.features.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    stats_before = {name: m.running_mean.clone() for name, m in norms.items()}
    with torch.no_grad():
        model(3 * _batch(32, seed=3) + 1)  # images brighter than the ones the statistics came from
    drift = max(((m.running_mean - stats_before[name]).abs().max().item() for name, m in norms.items()), default=0.0)
    if in_train:
        layers = [n for n in in_train if n != "features"]
        norms_in_train = [n for n in layers if n[len("features."):] in norms]
        where = (
            "model.features is" if len(in_train) == len(list(model.features.modules()))
            else f"Part of model.features ({_short(norms_in_train or in_train)}) is"
        )
        effect = (
            f"its BatchNorm statistics drift with every batch (one forward pass moved a running_mean by up to "
            f"{drift:.2g}) even though requires_grad is False"
            if drift > 0
            else "its BatchNorm normalizes each batch with that batch's own statistics instead of the pretrained ones"
            if any(n[len("features."):] in norms for n in layers)
            else "model.features.training is True (its layers are in eval mode, but the module that holds them is not)"
        )
        raise Wrong(f"{where} in training mode, so {effect}. Call model.features.eval() after model.train().")
    if drift > 0:
        raise Wrong(f"The backbone's running statistics still changed during a forward pass (by up to {drift:.2g}).")
    if not model.classifier.training:
        raise Wrong(
            "The classifier is in eval mode, so its dropout is off while it trains. "
            "Call model.train() first, then model.features.eval()."
        )
    if not model.training:
        raise Wrong(
            "model.training is False, so code that asks the model whether it is training (and tools "
            "such as torchinfo) will think it is evaluating. Call model.train(), then model.features.eval()."
        )
    if _trainable_flags(model) != flags_before:
        changed = sorted(n for n, flag in _trainable_flags(model).items() if flag != flags_before[n])
        raise Wrong(
            f"Your function changed which parameters train ({_short(changed)}). Set the modes only: "
            "train() and eval() do not freeze or unfreeze anything."
        )
    return "Classifier in training mode, frozen BatchNorm in eval mode: its statistics stay put."


@exercises.exercise(
    "q3",
    "Replace the head with one of the right size",
    hints=[
        "model.classifier[1] is the last layer; assign a new nn.Linear to it.",
        "Keep its input size: model.classifier[1].in_features. The output size is num_classes.",
        "A new nn.Linear has requires_grad=True: don't freeze the whole model after replacing it.",
    ],
)
def q3(replace_head: Callable[[nn.Module, int], nn.Module]) -> str:
    """``replace_head(model, num_classes)`` returns the model with a new last layer for ``num_classes``."""
    num_classes = 3
    model = pretrained_looking_cnn(seed=13)
    model.requires_grad_(False)
    features_before = {k: v.clone() for k, v in model.features.state_dict().items()}
    old_head = model.classifier[1]
    result = replace_head(model, num_classes)
    if result is None:
        raise Wrong("Your function returned None: return the model.")
    if not isinstance(result, nn.Module):
        raise Wrong(f"Return the model (an nn.Module), not a {type(result).__name__}.")
    x = _batch()
    result.eval()
    try:
        with torch.no_grad():
            out = result(x)
    except RuntimeError as error:
        raise Wrong(
            f"The model you returned fails on a batch of shape {tuple(x.shape)}: {str(error).splitlines()[0]}. "
            f"The new layer takes the old one's inputs: nn.Linear(model.classifier[1].in_features, num_classes), "
            f"here nn.Linear({old_head.in_features}, {num_classes})."
        ) from None
    if not isinstance(out, torch.Tensor):
        raise Wrong(f"The model you returned outputs a {type(out).__name__}; it should output a tensor of scores.")
    if out.shape != (len(x), num_classes):
        raise Wrong(f"The model outputs shape {tuple(out.shape)}; it should be ({len(x)}, {num_classes}): one score per new class.")
    if not isinstance(result, DigitsCNN):
        raise Wrong(
            "You wrapped the model with a new layer after its old 5-class head. That keeps a layer you "
            "don't need and squeezes the features through the old task's scores. Replace model.classifier[1] instead."
        )
    classifier = getattr(result, "classifier", None)
    if not isinstance(classifier, nn.Sequential) or len(classifier) != 2:
        shape = type(classifier).__name__ + (f" of {len(classifier)} layers" if isinstance(classifier, nn.Sequential) else "")
        raise Wrong(
            f"model.classifier is now a {shape}; it should still be the nn.Sequential(Dropout, Linear) it was, "
            "with only its last layer new. Assigning to model.classifier replaces the whole classifier (its "
            "dropout too): assign the new nn.Linear to model.classifier[1]."
        )
    if not isinstance(classifier[0], nn.Dropout):
        raise Wrong(
            f"model.classifier[0] is now a {type(classifier[0]).__name__}, not the Dropout it was. "
            "Keep the classifier and replace only model.classifier[1]."
        )
    last = classifier[1]
    if last is old_head or not isinstance(last, nn.Linear) or last.out_features != num_classes:
        raise Wrong(
            "model.classifier[1] is still the old layer (or not an nn.Linear with num_classes outputs): "
            "something after it changes the output size. Replace classifier[1] itself."
        )
    if any(not torch.equal(features_before[k], v) for k, v in result.features.state_dict().items()):
        raise Wrong("The features are not the pretrained ones any more: keep the model you are given and change only its last layer.")
    _require_same_model(result, model)
    if not all(p.requires_grad for p in last.parameters()):
        raise Wrong("The new layer is frozen (requires_grad=False): it could never learn. Replace the layer after freezing, not before.")
    if any(p.requires_grad for p in result.features.parameters()):
        raise Wrong("You unfroze the backbone: the features were frozen when you got the model. Change only the last layer.")
    return f"New head: {last.in_features} features in, {num_classes} classes out, trainable; the backbone untouched."


@exercises.exercise(
    "q4",
    "Unfreeze the last block with a lower learning rate",
    hints=[
        "The last block is model.features[3:] (the second conv and its BatchNorm). requires_grad_(True) unfreezes it.",
        "Pass a list of dicts to the optimizer: [{'params': ..., 'lr': ...}, {'params': ..., 'lr': ...}].",
        "Each parameter in exactly one group: the classifier's with head_lr, the last block's with block_lr.",
    ],
)
def q4(make_optimizer: Callable[[nn.Module, float, float], torch.optim.Optimizer]) -> str:
    """``make_optimizer(model, head_lr, block_lr)`` unfreezes ``features[3:]`` and returns Adam with two groups."""
    head_lr, block_lr = 1e-2, 1e-3
    model = pretrained_looking_cnn(seed=14)
    model.features.requires_grad_(False)
    try:
        optimizer = make_optimizer(model, head_lr, block_lr)
    except ValueError as error:
        if "more than one parameter group" in str(error):
            raise Wrong("A parameter appears in two groups (PyTorch refuses that): put each parameter in exactly one group.") from None
        if "empty parameter list" in str(error):
            raise Wrong(
                "The optimizer got an empty parameter list: nothing you passed had parameters to train (a filter "
                "on requires_grad before unfreezing, or a generator such as model.parameters() used up already)."
            ) from None
        raise
    _require_adam(optimizer)
    first = [n for n, _ in model.features[:3].named_parameters(prefix="features")]
    block = [f"features.{n}" for n, _ in model.features.named_parameters() if int(n.split(".")[0]) >= 3]
    head = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    named = dict(model.named_parameters())
    lr_of: dict[str, list[float]] = {}
    for group in optimizer.param_groups:
        for name in _names(model, group["params"]):
            lr_of.setdefault(name, []).append(group["lr"])
    if [n for n in first if named[n].requires_grad] or [n for n in first if n in lr_of]:
        raise Wrong(f"The first block ({_short(first)}) should stay frozen and out of the optimizer.")
    frozen_block = [n for n in block if not named[n].requires_grad]
    if frozen_block:
        raise Wrong(
            f"These are in the last block but still frozen: {_short(frozen_block)}. "
            "Call model.features[3:].requires_grad_(True), or they get no gradient and never change."
        )
    frozen_head = [n for n in head if not named[n].requires_grad]
    if frozen_head:
        raise Wrong(f"The classifier is frozen ({_short(frozen_head)}): it must keep training. Unfreeze only model.features[3:].")
    missing = [n for n in block + head if n not in lr_of]
    if missing:
        empty = any(not group["params"] for group in optimizer.param_groups)
        raise Wrong(
            f"Not in any parameter group, so they won't train: {_short(missing)}."
            + (" One of your groups is empty: a generator such as model.parameters() can be used only once, "
               "so pass it straight to the optimizer (or make it a list first)." if empty else "")
        )
    if len(optimizer.param_groups) < 2 or len({group["lr"] for group in optimizer.param_groups}) < 2:
        raise Wrong(
            f"Every parameter gets the same learning rate. Use two groups: the classifier with head_lr={head_lr}, "
            f"the last block with block_lr={block_lr}."
        )
    wrong_head = [n for n in head if lr_of[n] != [head_lr]]
    wrong_block = [n for n in block if lr_of[n] != [block_lr]]
    if wrong_head or wrong_block:
        swapped = wrong_head and all(lr_of[n] == [block_lr] for n in head)
        raise Wrong(
            ("The learning rates are swapped: " if swapped else "Wrong learning rate for ")
            + f"{_short(wrong_head + wrong_block)}. The classifier gets head_lr={head_lr}, "
            f"the last block the lower block_lr={block_lr}."
        )
    return f"Two groups: {len(head)} classifier tensors at lr={head_lr}, {len(block)} last-block tensors at lr={block_lr}."


@exercises.exercise(
    "q5",
    "Save only the head, and load it back on top of the backbone",
    hints=[
        "model.classifier.state_dict() holds only the head's tensors.",
        "To load: model.classifier.load_state_dict(torch.load(path, weights_only=True)).",
        "The backbone comes from the course file, so the head file needs nothing else.",
    ],
)
def q5(save_head: Callable[[nn.Module, Path], object], load_head: Callable[[nn.Module, Path], object]) -> str:
    """``save_head(model, path)`` writes only the classifier; ``load_head(model, path)`` loads it into ``model``."""
    trained = pretrained_looking_cnn(seed=15)
    head_state = {k: v.clone() for k, v in trained.classifier.state_dict().items()}
    backbone_state = {k: v for k, v in trained.state_dict().items() if k.startswith("features.")}
    x = _batch()
    with torch.no_grad():
        expected = trained(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lesson07_q5_head.pt"
        save_head(trained, path)
        if not path.is_file():
            written = sorted(p.name for p in Path(tmp).iterdir())
            raise Wrong(
                "save_head(model, path) ran but wrote no file at `path`"
                + (f" (it wrote {_short(written)} in the same folder)" if written else "")
                + ". Save to the path you are given: torch.save(..., path)."
            )
        saved = _read_head_file(path)
        if any("features" in k or "running_" in k for k in saved):
            raise Wrong(
                f"The file holds the backbone too ({len(saved)} tensors): save model.classifier.state_dict() only. "
                "The backbone is already in the course file."
            )
        strangers = [k for k, v in saved.items() if not any(v.shape == h.shape and torch.equal(v, h) for h in head_state.values())]
        if strangers or len(saved) != len(head_state):
            raise Wrong(
                f"The file holds {len(saved)} tensors ({_short(sorted(saved))}); the head has {len(head_state)} "
                f"({_short(sorted(head_state))})"
                + (f", and {_short(strangers)} are not the head's weights" if strangers else "")
                + ". Save model.classifier.state_dict()."
            )
        torch.manual_seed(99)
        fresh = DigitsCNN(num_classes=5)
        fresh.load_state_dict(backbone_state, strict=False)
        result = load_head(fresh, path)
    if result is None:
        raise Wrong("load_head returned None: return the model you loaded the head into.")
    if result is not fresh:
        raise Wrong(
            f"load_head returned {'a different model' if isinstance(result, nn.Module) else 'a ' + type(result).__name__}: "
            "load the head into the model you are given and return that model."
        )
    fresh.eval()
    with torch.no_grad():
        got = fresh(x)
    if not torch.equal(got, expected):
        raise Wrong("After load_head, the model's outputs differ from the trained model's: is the head loaded into model.classifier?")
    return f"The head file holds {len(saved)} tensors, and backbone + head reproduce the outputs exactly."
