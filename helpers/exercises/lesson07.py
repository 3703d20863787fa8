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

from helpers.checks import ExerciseSet, NotAttempted, Wrong, read_state_dict_file
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


@exercises.exercise(
    "q1",
    "Freeze the backbone and build the optimizer",
    hints=[
        "model.features.requires_grad_(False) freezes every parameter of the backbone in one call.",
        "Give the optimizer only what still trains: filter(lambda p: p.requires_grad, model.parameters()).",
        "Freeze the features only: the new classifier must keep requires_grad=True.",
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
    if optimizer is None:
        raise Wrong("Your function returned None: return the optimizer you built.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Wrong(f"Return a torch.optim optimizer, not a {type(optimizer).__name__}.")
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
    set_training_mode(model)
    stats_before = model.features[1].running_mean.clone()
    with torch.no_grad():
        model(_batch(32, seed=3))
    drift = (model.features[1].running_mean - stats_before).abs().max().item()
    in_train = [name for name, m in model.features.named_modules() if m.training]
    if in_train:
        raise Wrong(
            f"model.features is in training mode, so its BatchNorm statistics drift with every batch "
            f"(one forward pass moved running_mean by up to {drift:.3f}) even though requires_grad is False. "
            "Call model.features.eval() after model.train()."
        )
    if drift:
        raise Wrong("The backbone's running statistics still changed during a forward pass.")
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
    with torch.no_grad():
        out = result(x)
    if out.shape != (len(x), num_classes):
        raise Wrong(f"The model outputs shape {tuple(out.shape)}; it should be ({len(x)}, {num_classes}): one score per new class.")
    if not isinstance(result, DigitsCNN):
        raise Wrong(
            "You wrapped the model with a new layer after its old 5-class head. That keeps a layer you "
            "don't need and squeezes the features through the old task's scores. Replace model.classifier[1] instead."
        )
    last = result.classifier[1]
    if last is old_head or not isinstance(last, nn.Linear) or last.out_features != num_classes:
        raise Wrong(
            "model.classifier[1] is still the old layer (or not an nn.Linear with num_classes outputs): "
            "something after it changes the output size. Replace classifier[1] itself."
        )
    if any(not torch.equal(features_before[k], v) for k, v in result.features.state_dict().items()):
        raise Wrong("The features are not the pretrained ones any more: keep the model you are given and change only its last layer.")
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
        raise
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Wrong(f"Return a torch.optim optimizer, not a {type(optimizer).__name__}.")
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
    missing = [n for n in block + head if n not in lr_of]
    if missing:
        raise Wrong(f"Not in any parameter group, so they won't train: {_short(missing)}.")
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
    backbone_state = {k: v for k, v in trained.state_dict().items() if k.startswith("features.")}
    x = _batch()
    with torch.no_grad():
        expected = trained(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "head.pt"
        save_head(trained, path)
        if not path.exists():
            raise NotAttempted("save_head(model, path) wrote no file at `path`. Write it with torch.save(..., path).")
        saved = read_state_dict_file(path)
        if any("features" in k or "running_" in k for k in saved):
            raise Wrong(
                f"The file holds the backbone too ({len(saved)} tensors): save model.classifier.state_dict() only. "
                "The backbone is already in the course file."
            )
        torch.manual_seed(99)
        fresh = DigitsCNN(num_classes=5)
        fresh.load_state_dict(backbone_state, strict=False)
        load_head(fresh, path)
    fresh.eval()
    with torch.no_grad():
        got = fresh(x)
    if not torch.equal(got, expected):
        raise Wrong("After load_head, the model's outputs differ from the trained model's: is the head loaded into model.classifier?")
    return f"The head file holds {len(saved)} tensors, and backbone + head reproduce the outputs exactly."
