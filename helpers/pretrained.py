"""Pretrained weights for lesson 07: the course's own backbone, and (with internet) ImageNet VGG19.

**The course backbone** is a :class:`~helpers.models.DigitsCNN` trained by the course on the digits
0-4 of the offline data set, with random one-pixel shifts. It ships in
``data/pretrained_backbone/`` as a ``.safetensors`` file, made by
``scripts/make_pretrained_backbone.py``. :func:`load_course_backbone` checks the file's SHA-256
before loading, so a damaged or changed file is refused with a message that says how to restore it.

**ImageNet VGG19** (548 MB) and **CIFAR-10** (163 MB) are downloaded by torchvision. That needs
internet, which CI and many learners don't have: :func:`load_vgg19_imagenet` and
:func:`cifar10_datasets` turn a failed download into a :class:`DownloadFailedError` that says what
happened and what to do, instead of a long stack trace. Nothing here downloads unless called.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import nn

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
