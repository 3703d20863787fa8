"""Regenerate data/digits/ from the UCI handwritten digits that scikit-learn ships.

    pip install scikit-learn
    python scripts/make_digits_data.py

Writes images.npy (1797 x 8 x 8, uint8, values 0..16) and labels.npy (1797, uint8) and prints
their SHA-256 checksums, which must match data/README.md and helpers/data.py. The .npy format
has no timestamps, so the same data always gives the same bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent.parent / "data" / "digits"


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # the originals are small integers stored as float
    labels = digits.target.astype(np.uint8)
    assert np.array_equal(images.astype(digits.images.dtype), digits.images), "values are not integers"
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        path = OUT / name
        np.save(path, array, allow_pickle=False)
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  data/digits/{name}")


if __name__ == "__main__":
    main()
