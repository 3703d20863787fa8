"""Pretrained weights for lesson 07: the course's own backbone, and (with internet) ImageNet VGG19.

**The course backbone** is a :class:`~helpers.models.DigitsCNN` trained by the course on the digits
0-4 of the offline data set, with random one-pixel shifts. It ships in
``data/pretrained_backbone/`` as a ``.safetensors`` file, made by
``scripts/make_pretrained_backbone.py``. :func:`load_course_backbone` checks the file's SHA-256
before loading, so a damaged or changed file is refused with a message that says how to restore it.

**The transfer task** of the lesson: the digits 5-9 (labels 0-4), off-centre, with a few labels per
class (:func:`transfer_task`, :func:`few_shot_indices`). :func:`few_label_accuracy` learns it one
way (a :class:`Setup`: pretrained or random backbone, frozen or trained), the same way for every
setup; ``scripts/compare_pretrained_backbone.py`` runs it over many seeds and writes
``data/pretrained_backbone/comparison.json``, which :func:`read_comparison` reads.
:func:`calibrate_batchnorm` gives a frozen backbone BatchNorm statistics of the new images, without
labels, and :func:`paired_difference` summarises a comparison paired by seed.

**ImageNet VGG19** (548 MB) and **CIFAR-10** (163 MB) are downloaded by torchvision. That needs
internet, which CI and many learners don't have: :func:`load_vgg19_imagenet` and
:func:`cifar10_datasets` turn a failed download into a :class:`DownloadFailedError` that says what
happened and what to do, instead of a long stack trace. Nothing here downloads unless called.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import nn

from helpers.data import digits_datasets
from helpers.environment import repo_root
from helpers.models import DigitsCNN

BACKBONE_FILE = "digits_cnn_0to4.safetensors"
"""File name of the course backbone inside ``data/pretrained_backbone/``."""

BACKBONE_SHA256 = "c6dc535d6bb6069b1ac77fe210c477b2c50d67805dd43d002d3dba330af1487a"
"""SHA-256 of the shipped backbone file (the same value is in ``data/pretrained_backbone/README.md``)."""

BACKBONE_CLASSES = (0, 1, 2, 3, 4)
"""The digits the backbone was pretrained on; its output ``i`` means digit ``BACKBONE_CLASSES[i]``."""

RESTORE_ADVICE = (
    f"Restore it with `git checkout -- data/pretrained_backbone/{BACKBONE_FILE}`, "
    "or regenerate it with `python scripts/make_pretrained_backbone.py` (a few seconds on a CPU)."
)


class PretrainedFileError(RuntimeError):
    """The course backbone file is missing, or does not match its recorded checksum."""


class DownloadFailedError(RuntimeError):
    """A download (ImageNet weights, CIFAR-10) failed, usually because there is no internet."""


def backbone_path() -> Path:
    """Where the course backbone lives: ``data/pretrained_backbone/<BACKBONE_FILE>`` in the course folder."""
    return repo_root() / "data" / "pretrained_backbone" / BACKBONE_FILE


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_backbone(path: str | Path | None = None, expected_sha256: str | None = None) -> Path:
    """Check that the backbone file exists and has the recorded SHA-256; return its path.

    Raises :class:`PretrainedFileError` that says how to restore the file otherwise.
    """
    path = Path(path) if path is not None else backbone_path()
    expected = expected_sha256 or BACKBONE_SHA256
    if not path.is_file():
        raise PretrainedFileError(
            f"The course backbone {path} is missing. It ships with the course: run the notebook "
            f"from inside the course folder (in Colab, run the setup cell first). {RESTORE_ADVICE}"
        )
    actual = sha256_of(path)
    if actual != expected:
        raise PretrainedFileError(
            f"The course backbone {path} does not match its recorded checksum "
            f"(SHA-256 {actual[:12]}..., expected {expected[:12]}...), so it was changed or damaged. "
            f"It was not loaded. {RESTORE_ADVICE}"
        )
    return path


def backbone_metadata(path: str | Path | None = None) -> dict[str, str]:
    """What the backbone file's header says about it: architecture, width, data, training, accuracy.

    The script stores these as one JSON string under the header key ``course``. Reads only the
    header; checks the checksum first.
    """
    from safetensors import safe_open

    path = verify_backbone(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return json.loads(header.get("course", "{}"))


def load_backbone_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone's state_dict (every tensor of a ``DigitsCNN``), after checking the checksum."""
    from safetensors.torch import load_file

    path = verify_backbone(path)
    return load_file(str(path), device="cpu")


def load_course_backbone(path: str | Path | None = None) -> DigitsCNN:
    """The course's pretrained ``DigitsCNN`` (5 outputs, for the digits 0-4), in eval mode.

    The architecture (``width``, ``num_classes``) is read from the file's metadata; the
    checksum is verified first. Replace ``model.classifier[1]`` to use it for another task.
    """
    meta = backbone_metadata(path)
    model = DigitsCNN(num_classes=int(meta["num_classes"]), width=int(meta["width"]))
    model.load_state_dict(load_backbone_state(path))
    return model.eval()


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image moved by a random whole number of pixels (-max_shift..max_shift) in each direction.

    Pixels moved in from outside are 0 (background). ``images`` has shape ``(N, C, H, W)``; the
    shifts come from ``generator``, so the same generator state gives the same result.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be 0 or more, got {max_shift}")
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(height))[:, :, None]
    cols = (offsets[:, 1, None] + torch.arange(width))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def few_shot_indices(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` examples of every class in ``labels``, drawn at random with ``seed``.

    Classes appear in sorted order, ``k`` indices each. Raises ``ValueError`` if a class has
    fewer than ``k`` examples.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique(sorted=True).tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) < k:
            raise ValueError(f"class {c} has only {len(members)} examples, fewer than k={k}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen)


@dataclass(frozen=True)
class TransferTask:
    """Lesson 07's new task: the digits 5-9 as labels 0-4, ``(N, 1, 8, 8)`` images.

    ``x_pool, y_pool``: the training split, from which a few labelled images per class are drawn;
    ``x_test, y_test``: the held-out split.
    """

    x_pool: torch.Tensor
    y_pool: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def transfer_task(shifted: bool = True, shift_seed: int = 7) -> TransferTask:
    """The digits 5-9 (labels 0-4), each image moved by up to one pixel unless ``shifted=False``.

    The split is the one ``helpers.data.digits_datasets(classes=range(5, 10))`` makes; the shifts
    come from ``torch.Generator().manual_seed(shift_seed)``, training images first.
    """
    train, test = digits_datasets(classes=range(5, 10))
    x_pool, x_test = train.tensors[0], test.tensors[0]
    if shifted:
        shifts = torch.Generator().manual_seed(shift_seed)
        x_pool, x_test = random_shift(x_pool, shifts), random_shift(x_test, shifts)
    return TransferTask(x_pool, train.tensors[1] - 5, x_test, test.tensors[1] - 5)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``images``, without labels; return ``model``.

    One forward pass under ``torch.no_grad()`` in training mode, with ``momentum=None`` (so the
    running mean and variance become exactly this pass's). Each module's mode and each
    BatchNorm's momentum are put back afterwards; no parameter changes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to calibrate")
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        model.train()
        with torch.no_grad():
            model(images)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return model


@dataclass(frozen=True)
class Setup:
    """One way to learn the new task: which backbone, frozen or not, and its BatchNorm statistics.

    ``weights``: ``"pretrained"`` (the course backbone's) or ``"random"``. ``frozen``: only the new
    head trains, the backbone stays in eval mode; otherwise everything trains.

    ``calibrate`` (frozen backbones only): recompute the backbone's BatchNorm statistics on the
    labelled training images (no labels used) before training the head. Without it, a frozen
    backbone keeps the statistics it came with: the pretraining ones, or 0 and 1 for a random one.
    """

    weights: str
    frozen: bool
    calibrate: bool = False

    def __post_init__(self):
        if self.weights not in ("pretrained", "random"):
            raise ValueError(f"weights must be 'pretrained' or 'random', got {self.weights!r}")
        if self.calibrate and not self.frozen:
            raise ValueError("calibrate is for frozen backbones: a trained backbone's BatchNorm learns its statistics")


SETUPS: dict[str, Setup] = {
    "frozen pretrained": Setup("pretrained", frozen=True),
    "frozen pretrained, BN recalibrated": Setup("pretrained", frozen=True, calibrate=True),
    "frozen random, BN calibrated": Setup("random", frozen=True, calibrate=True),
    "frozen random, BN at 0 and 1": Setup("random", frozen=True),
    "fine-tuned pretrained": Setup("pretrained", frozen=False),
    "trained from scratch": Setup("random", frozen=False),
}
"""The setups lesson 07 compares, by name (the names ``comparison.json`` uses)."""


def few_label_accuracy(
    setup: Setup,
    task: TransferTask,
    k: int,
    seed: int,
    steps: int = 50,
    lr: float = 1e-2,
    backbone: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Test accuracy after learning ``task`` from ``k`` labelled images per class, one ``setup``.

    ``seed`` picks the labelled images and seeds PyTorch, so the new head starts from the same
    weights in every setup (and a random backbone is the same for the frozen and trained ones):
    results with the same seed are paired. Training: a fresh ``DigitsCNN`` with 5 outputs, Adam
    with ``lr`` over the trainable parameters, ``steps`` full-batch steps; a frozen backbone is kept
    in eval mode. ``backbone`` is the pretrained state_dict (default: the course backbone's).
    Changes PyTorch's global random state (seeds it).
    """
    torch.manual_seed(seed)
    model = DigitsCNN(num_classes=5)
    if setup.weights == "pretrained":
        state = backbone if backbone is not None else load_backbone_state()
        model.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    chosen = few_shot_indices(task.y_pool, k, seed)
    x, y = task.x_pool[chosen], task.y_pool[chosen]
    if setup.frozen:
        model.features.requires_grad_(False)
        if setup.calibrate:
            calibrate_batchnorm(model.features, x)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    if setup.frozen:
        model.features.eval()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(task.x_test).argmax(1) == task.y_test).float().mean().item()


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t distribution with ``df`` degrees of freedom (2.093 for 19).

    Mean ± this × sd / √n is the usual 95 % confidence interval of a mean of n values. Computed
    by integrating the density numerically (no SciPy needed); accurate to about 1e-6.
    """
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf_above_half(x: float, n: int = 2000) -> float:  # integral of the density from 0 to x (Simpson)
        h = x / n
        total = 0.0
        for i in range(n + 1):
            weight = 1 if i in (0, n) else (4 if i % 2 else 2)
            t = i * h
            total += weight * math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))
        return total * h / 3

    low, high = 0.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if cdf_above_half(mid) < 0.475:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def paired_difference(a: Sequence[float], b: Sequence[float], scale: float = 100.0) -> dict[str, float]:
    """Summary of ``a[i] - b[i]`` (paired by seed), times ``scale`` (100: accuracy points).

    Returns ``n``, ``mean``, ``sd`` (sample standard deviation), ``min``, ``max``, the 95 %
    confidence interval of the mean (``ci_low``, ``ci_high``; Student's t) and how many pairs
    had ``a`` ahead, behind or level (``ahead``, ``behind``, ``level``).
    """
    if len(a) != len(b):
        raise ValueError(f"paired results need the same number of seeds, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a spread needs at least 2 pairs")
    diffs = [scale * (x - y) for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {
        "n": n, "mean": mean, "sd": sd, "min": min(diffs), "max": max(diffs),
        "ci_low": mean - half, "ci_high": mean + half,
        "ahead": sum(d > 0 for d in diffs), "behind": sum(d < 0 for d in diffs), "level": sum(d == 0 for d in diffs),
    }


COMPARISON_FILE = "comparison.json"
"""Results of ``scripts/compare_pretrained_backbone.py``, inside ``data/pretrained_backbone/``."""


def comparison_path() -> Path:
    """Where the stored comparison lives: ``data/pretrained_backbone/comparison.json``."""
    return repo_root() / "data" / "pretrained_backbone" / COMPARISON_FILE


def read_comparison(path: str | Path | None = None) -> dict:
    """The stored comparison (see ``scripts/compare_pretrained_backbone.py`` for its layout).

    Raises :class:`PretrainedFileError` that says how to restore or regenerate a missing or
    unreadable file.
    """
    path = Path(path) if path is not None else comparison_path()
    advice = (
        f"Restore it with `git checkout -- data/pretrained_backbone/{COMPARISON_FILE}`, or regenerate it "
        "with `python scripts/compare_pretrained_backbone.py` (a few minutes on one CPU core)."
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PretrainedFileError(f"The stored comparison {path} is missing. {advice}") from None
    except (OSError, ValueError) as error:
        raise PretrainedFileError(f"The stored comparison {path} could not be read ({error}). {advice}") from None
    if not isinstance(data, dict) or not {"provenance", "settings", "correct"} <= set(data):
        raise PretrainedFileError(f"The stored comparison {path} does not have the expected layout. {advice}")
    return data


def _download_advice(what: str, error: BaseException) -> str:
    return (
        f"Could not download {what}: {type(error).__name__}: {error}. "
        "This machine seems to have no internet (or the server is unreachable). "
        "Set USE_IMAGENET = False to continue with the course's own backbone, which ships with "
        "the course, or run the notebook where there is internet, e.g. in Google Colab. "
        "Nothing was lost: files that did download are kept and reused next time."
    )


def load_vgg19_imagenet(progress: bool = True) -> nn.Module:
    """VGG19 with the ImageNet weights ``VGG19_Weights.DEFAULT``, in eval mode. Needs internet once.

    Does what ``vgg19(weights=VGG19_Weights.DEFAULT)`` does, but downloads the 548 MB file
    *before* building the model (on the ``meta`` device, so no time is spent on random
    initialization), and turns a failed download into a :class:`DownloadFailedError`. The file
    is cached in ``torch.hub.get_dir()``/checkpoints and reused afterwards.
    """
    from torchvision.models import VGG19_Weights, vgg19

    weights = VGG19_Weights.DEFAULT
    try:
        state_dict = weights.get_state_dict(progress=progress, check_hash=True)
    except (URLError, OSError) as error:  # URLError is an OSError; so are timeouts and DNS failures
        raise DownloadFailedError(_download_advice(f"the ImageNet weights {weights} ({weights.url})", error)) from error
    except RuntimeError as error:
        if "hash" not in str(error):
            raise
        raise DownloadFailedError(
            f"The downloaded ImageNet weights are damaged ({error}). Delete the file in "
            f"{torch.hub.get_dir()}/checkpoints and run the cell again."
        ) from error
    with torch.device("meta"):
        model = vgg19(weights=None)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


def cifar10_datasets(root: str | Path, transform=None):
    """``(train, test)`` CIFAR-10 data sets from torchvision, downloaded into ``root`` (163 MB, once).

    A failed download raises :class:`DownloadFailedError` that says what to do.
    """
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=True, transform=transform)
        test = CIFAR10(str(root), train=False, download=True, transform=transform)
    except (URLError, OSError) as error:
        raise DownloadFailedError(_download_advice("CIFAR-10", error)) from error
    return train, test
