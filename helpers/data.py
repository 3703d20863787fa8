"""The course's offline data set (UCI handwritten digits, shipped in ``data/digits/``).

No download ever happens here: the files are part of the repository, and their checksums are
verified on load. See ``data/README.md`` for provenance and licence.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.environment import repo_root

DIGITS_SHA256 = {
    "images.npy": "88e52eb3e11cb9cc0130dc8fc4b6256aa919b3275fec17e6c2f880e1ae8d34ae",
    "labels.npy": "03ec0343bca84958ae3df825f252a3680415fa07fccb1ed1125ed521c13169e5",
}
"""SHA-256 of each file in ``data/digits/`` (the same table is in ``data/README.md``)."""

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)


class DataFileError(RuntimeError):
    """A data file is missing or does not match its recorded checksum."""


def digits_dir() -> Path:
    """The folder holding the digits files: ``data/digits/`` in the course repository."""
    return repo_root() / "data" / "digits"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_digits(folder: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images, labels)``.

    ``images`` is float32 of shape ``(1797, 1, 8, 8)`` scaled to [0, 1]; ``labels`` is int64 of
    shape ``(1797,)``. Both files are checked against :data:`DIGITS_SHA256` first.
    """
    folder = Path(folder) if folder is not None else digits_dir()
    for name, expected in DIGITS_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise DataFileError(
                f"{path} is missing. It ships with the course: run the notebook from inside the "
                "course folder (or, in Colab, run the setup cell first), or restore it with "
                f"`git checkout -- data/digits/{name}`."
            )
        if _sha256(path) != expected:
            raise DataFileError(
                f"{path} does not match its recorded checksum, so it was changed or damaged. "
                f"Restore it with `git checkout -- data/digits/{name}` "
                "(or regenerate it with scripts/make_digits_data.py)."
            )
    images = np.load(folder / "images.npy", allow_pickle=False)
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def split_indices(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic shuffle of ``range(n)`` cut into ``(train_idx, val_idx)``.

    The same ``n``, ``val_fraction`` and ``seed`` always give the same split, whatever the
    global random state is.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n_val == 0 or n_val == n:
        raise ValueError(f"val_fraction={val_fraction} leaves an empty split for n={n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def digits_datasets(
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Iterable[int] | None = None,
) -> tuple[TensorDataset, TensorDataset]:
    """``(train, val)`` TensorDatasets of the digits.

    ``classes`` keeps only those digits (e.g. ``range(5)`` for 0-4), labels unchanged.
    """
    x, y = load_digits()
    if classes is not None:
        keep = torch.isin(y, torch.tensor(sorted(set(classes)), dtype=y.dtype))
        if not keep.any():
            raise ValueError(f"no digits with classes {sorted(set(classes))}; labels are 0-9")
        x, y = x[keep], y[keep]
    train_idx, val_idx = split_indices(len(y), val_fraction, seed)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


def make_loaders(
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[int] | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, val_loader)`` for the digits.

    The training loader shuffles with its own ``torch.Generator`` seeded by ``seed``, so the
    batch order is the same on every run and does not depend on (or change) the global RNG.
    The validation loader does not shuffle.
    """
    train, val = digits_datasets(val_fraction, seed, classes)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False)
    return train_loader, val_loader
