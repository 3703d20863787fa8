import hashlib
import re
import shutil

import pytest
import torch

from helpers import data
from helpers.data import DIGITS_SHA256, DataFileError, digits_datasets, load_digits, make_loaders, split_indices
from helpers.environment import repo_root


def test_load_digits_gives_1797_real_images_and_labels():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert 0.0 == x.min().item() and x.max().item() == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))
    assert 170 <= torch.bincount(y).min().item()  # every digit appears about 180 times


def test_readme_lists_the_same_checksums_as_the_code_and_the_files():
    readme = (repo_root() / "data" / "README.md").read_text()
    for name, digest in DIGITS_SHA256.items():
        assert re.search(rf"`digits/{re.escape(name)}`.*`{digest}`", readme), name
        assert hashlib.sha256((repo_root() / "data" / "digits" / name).read_bytes()).hexdigest() == digest


def test_a_missing_file_says_how_to_restore_it(tmp_path):
    shutil.copy(data.digits_dir() / "labels.npy", tmp_path / "labels.npy")
    with pytest.raises(DataFileError, match="images.npy is missing.*git checkout"):
        load_digits(tmp_path)


def test_a_changed_file_is_refused(tmp_path):
    for name in DIGITS_SHA256:
        shutil.copy(data.digits_dir() / name, tmp_path / name)
    with open(tmp_path / "labels.npy", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataFileError, match="labels.npy does not match its recorded checksum"):
        load_digits(tmp_path)


def test_split_is_deterministic_disjoint_and_complete():
    torch.manual_seed(1)
    train, val = split_indices(100, 0.2, seed=0)
    torch.manual_seed(2)  # the global RNG must not matter
    train2, val2 = split_indices(100, 0.2, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 0.2, seed=1)[1], val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001])
def test_split_refuses_empty_parts(fraction):
    with pytest.raises(ValueError):
        split_indices(100, fraction)


def test_classes_keeps_only_those_digits():
    train, val = digits_datasets(classes=range(5))
    labels = torch.cat([train.tensors[1], val.tensors[1]])
    assert set(labels.tolist()) == {0, 1, 2, 3, 4}
    assert len(labels) == int((load_digits()[1] < 5).sum())
    with pytest.raises(ValueError, match="no digits"):
        digits_datasets(classes=[11])


def test_loaders_repeat_the_same_batch_order_whatever_the_global_rng():
    def first_labels(seed):
        train_loader, _ = make_loaders(batch_size=32, seed=seed)
        return next(iter(train_loader))[1]

    torch.manual_seed(0)
    a = first_labels(0)
    torch.manual_seed(99)
    assert torch.equal(a, first_labels(0))
    assert not torch.equal(a, first_labels(1))


def test_loaders_do_not_consume_the_global_rng():
    train_loader, _ = make_loaders(seed=0)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    list(train_loader)
    assert torch.equal(torch.rand(1), expected)


def test_validation_loader_is_not_shuffled():
    _, val_loader = make_loaders(seed=0)
    assert torch.equal(torch.cat([y for _, y in val_loader]), torch.cat([y for _, y in val_loader]))
    assert len(val_loader.dataset) == round(1797 * 0.2)
