"""helpers.pretrained: the shipped backbone, its checksum, the transfer-task helpers, and the
optional downloads failing with a clear message. No test here touches the network: every test
runs with sockets blocked, and the download tests point torch.hub at an empty folder."""

import importlib.util
import json
import re
import socket
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import pretrained
from helpers.environment import repo_root
from helpers.models import DigitsCNN
from helpers.pretrained import (
    BACKBONE_SHA256,
    DownloadFailedError,
    PretrainedFileError,
    backbone_metadata,
    backbone_path,
    cifar10_datasets,
    few_shot_indices,
    load_backbone_state,
    load_course_backbone,
    load_vgg19_imagenet,
    random_shift,
    sha256_of,
    verify_backbone,
)

ROOT = repo_root(Path(__file__).parent)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Block every connection, and give torch.hub an empty cache folder."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


# ---- the shipped backbone ----------------------------------------------------------------------

def test_the_shipped_file_matches_the_recorded_checksum_and_the_readme(in_repo):
    path = backbone_path()
    assert path == ROOT / "data" / "pretrained_backbone" / pretrained.BACKBONE_FILE
    assert sha256_of(path) == BACKBONE_SHA256
    readme = (path.parent / "README.md").read_text()
    assert re.search(rf"`{pretrained.BACKBONE_FILE}`.*`{BACKBONE_SHA256}`", readme)
    assert "CC BY 4.0" in readme and f"{path.stat().st_size:,} bytes" in readme


def test_the_shipped_backbone_loads_and_recognises_the_digits_0_to_4(in_repo):
    from helpers.data import digits_datasets

    model = load_course_backbone()
    assert isinstance(model, DigitsCNN) and not model.training
    meta = backbone_metadata()
    assert meta["architecture"] == "helpers.models.DigitsCNN" and meta["classes"] == "0,1,2,3,4"
    assert model.classifier[1].out_features == int(meta["num_classes"]) == len(pretrained.BACKBONE_CLASSES)
    _, val = digits_datasets(classes=range(5))
    x, y = val.tensors
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95
    state = load_backbone_state()
    assert set(state) == set(model.state_dict())


def test_a_missing_file_is_reported_with_how_to_restore_it(tmp_path):
    with pytest.raises(PretrainedFileError, match="missing") as info:
        load_course_backbone(tmp_path / "nothing.safetensors")
    assert "git checkout -- data/pretrained_backbone/" in str(info.value)
    assert "make_pretrained_backbone.py" in str(info.value)


def test_a_changed_file_is_refused_before_loading(in_repo, tmp_path):
    data = bytearray(backbone_path().read_bytes())
    data[-1] ^= 0xFF
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    assert len(load_file(str(damaged))) > 0  # safetensors alone would load it
    for load in (load_course_backbone, load_backbone_state, backbone_metadata, verify_backbone):
        with pytest.raises(PretrainedFileError, match="does not match its recorded checksum") as info:
            load(damaged)
        assert "git checkout" in str(info.value) and "It was not loaded" in str(info.value)
    assert damaged.read_bytes() == bytes(data)  # the file is left as it was


def test_verify_backbone_accepts_another_expected_checksum(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_of(path) == expected
    assert verify_backbone(path, expected_sha256=expected) == path


# ---- the script that makes it --------------------------------------------------------------------

def load_script():
    spec = importlib.util.spec_from_file_location("make_pretrained_backbone", ROOT / "scripts" / "make_pretrained_backbone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_trains_and_saves_reproducibly_on_a_tiny_budget(tmp_path):
    script = load_script()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    lines = []
    with torch.random.fork_rng():
        model, metadata = script.train_backbone(epochs=1, log=lines.append)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    assert isinstance(model, DigitsCNN) and not model.training and lines
    assert metadata["width"] == "16" and metadata["num_classes"] == "5"
    assert all(isinstance(v, str) for v in metadata.values())

    first = script.save_backbone(model, metadata, tmp_path / "a.safetensors")
    second = script.save_backbone(model, metadata, tmp_path / "b.safetensors")
    assert first == second == sha256_of(tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["course"]) == metadata
    reloaded = DigitsCNN(num_classes=5)
    reloaded.load_state_dict(load_file(str(tmp_path / "a.safetensors")))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())


# ---- transfer-task helpers ---------------------------------------------------------------------

def test_random_shift_moves_each_image_by_at_most_max_shift():
    images = torch.rand(20, 1, 8, 8)
    shifted = random_shift(images, torch.Generator().manual_seed(0), max_shift=1)
    assert shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for image, padded_image in zip(shifted, padded):
        assert any(
            torch.equal(image, padded_image[:, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3)
        )
    again = random_shift(images, torch.Generator().manual_seed(0), max_shift=1)
    assert torch.equal(shifted, again)
    assert not torch.equal(shifted, images)
    assert torch.equal(random_shift(images, torch.Generator(), max_shift=0), images)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(images, torch.Generator(), max_shift=-1)


def test_few_shot_indices_draws_k_per_class_reproducibly():
    labels = torch.tensor([0, 1, 2] * 10)
    picked = few_shot_indices(labels, 4, seed=3)
    assert torch.bincount(labels[picked]).tolist() == [4, 4, 4]
    assert labels[picked].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(picked, few_shot_indices(labels, 4, seed=3))
    assert not torch.equal(picked, few_shot_indices(labels, 4, seed=4))
    assert len(set(picked.tolist())) == 12
    with pytest.raises(ValueError, match="fewer than k=11"):
        few_shot_indices(labels, 11, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        few_shot_indices(labels, 0, seed=0)


# ---- optional downloads: clear errors offline --------------------------------------------------

def test_vgg19_imagenet_offline_says_what_happened_and_what_to_do():
    with pytest.raises(DownloadFailedError) as info:
        load_vgg19_imagenet(progress=False)
    message = str(info.value)
    assert "Could not download the ImageNet weights" in message and "vgg19-dcbb9e9d.pth" in message
    assert "no internet" in message and "USE_IMAGENET = False" in message and "Colab" in message
    assert isinstance(info.value.__cause__, OSError)


def test_vgg19_imagenet_with_the_download_function_patched_to_fail(monkeypatch):
    def fail(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(DownloadFailedError, match="Temporary failure in name resolution"):
        load_vgg19_imagenet(progress=False)


def test_vgg19_imagenet_reports_a_damaged_download(monkeypatch):
    from torchvision.models import VGG19_Weights

    def damaged(self, *args, **kwargs):
        raise RuntimeError('invalid hash value (expected "dcbb9e9d", got "00000000")')

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", damaged)
    with pytest.raises(DownloadFailedError, match="damaged.*Delete the file"):
        load_vgg19_imagenet(progress=False)


def test_vgg19_imagenet_loads_what_it_downloaded(monkeypatch):
    from torchvision.models import VGG19_Weights, vgg19

    with torch.device("meta"):
        state = vgg19(weights=None).state_dict()  # stands in for the real file: shapes, no data...
    state["classifier.6.bias"] = torch.arange(1000.0)  # ...except one real tensor to recognise
    calls = []

    def fake_download(self, *args, **kwargs):
        calls.append(kwargs)
        return state

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", fake_download)
    model = load_vgg19_imagenet(progress=False)
    assert calls == [{"progress": False, "check_hash": True}]
    assert not model.training
    assert torch.equal(model.classifier[6].bias, torch.arange(1000.0))
    assert model.features[0].weight.is_meta  # built on the meta device: no random initialization


def test_cifar10_offline_says_what_happened(tmp_path):
    with pytest.raises(DownloadFailedError, match="Could not download CIFAR-10") as info:
        cifar10_datasets(tmp_path / "cifar")
    assert "USE_IMAGENET = False" in str(info.value)
