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

def load_script(name="make_pretrained_backbone"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
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


# ---- the transfer task, BatchNorm calibration and the comparison ---------------------------------

def test_transfer_task_is_the_digits_5_to_9_shifted_reproducibly(in_repo):
    from helpers.data import digits_datasets
    from helpers.pretrained import transfer_task

    task, again, centred = transfer_task(), transfer_task(), transfer_task(shifted=False)
    train, test = digits_datasets(classes=range(5, 10))
    assert torch.equal(task.x_pool, again.x_pool) and torch.equal(task.x_test, again.x_test)
    assert torch.equal(centred.x_pool, train.tensors[0]) and torch.equal(centred.x_test, test.tensors[0])
    assert torch.equal(task.y_pool, train.tensors[1] - 5) and torch.equal(task.y_test, test.tensors[1] - 5)
    assert sorted(task.y_pool.unique().tolist()) == [0, 1, 2, 3, 4]
    assert task.x_pool.shape == centred.x_pool.shape and not torch.equal(task.x_pool, centred.x_pool)


def test_calibrate_batchnorm_sets_the_statistics_of_the_images_and_restores_the_rest():
    from helpers.pretrained import calibrate_batchnorm

    torch.manual_seed(0)
    model = DigitsCNN(num_classes=5)
    model.train()
    model.classifier.eval()
    norm = model.features[1]
    norm.momentum = 0.3
    params = [p.clone() for p in model.parameters()]
    images = torch.rand(40, 1, 8, 8) * 2 + 1
    assert calibrate_batchnorm(model, images) is model
    inputs = model.features[0](images)
    assert torch.allclose(norm.running_mean, inputs.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm.running_var, inputs.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert norm.momentum == 0.3 and model.features[4].momentum == 0.1
    assert model.training and model.features.training and not model.classifier.training
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    with pytest.raises(ValueError, match="no BatchNorm"):
        calibrate_batchnorm(torch.nn.Linear(3, 2), torch.rand(4, 3))


def test_setup_refuses_calibrating_a_backbone_that_trains():
    from helpers.pretrained import SETUPS, Setup

    with pytest.raises(ValueError, match="frozen"):
        Setup("pretrained", frozen=False, calibrate=True)
    with pytest.raises(ValueError, match="'pretrained' or 'random'"):
        Setup("imagenet", frozen=True)
    assert {s.frozen for s in SETUPS.values()} == {True, False} and len(SETUPS) == 6


def test_few_label_accuracy_is_reproducible_and_paired_by_seed(in_repo):
    from helpers.pretrained import SETUPS, few_label_accuracy, transfer_task

    task = transfer_task()
    setup = SETUPS["frozen random, BN calibrated"]
    with torch.random.fork_rng():
        first = few_label_accuracy(setup, task, k=1, seed=3, steps=5)
        second = few_label_accuracy(setup, task, k=1, seed=3, steps=5)
        other = few_label_accuracy(SETUPS["frozen pretrained"], task, k=1, seed=3, steps=5)
        explicit = few_label_accuracy(SETUPS["frozen pretrained"], task, k=1, seed=3, steps=5, backbone=load_backbone_state())
    assert first == second and other == explicit
    assert 0 <= first <= 1 and round(first * len(task.y_test)) == pytest.approx(first * len(task.y_test), abs=1e-3)


def test_t_quantile_matches_the_printed_tables():
    from helpers.pretrained import t_quantile_975

    for df, expected in ((1, 12.706), (4, 2.776), (11, 2.201), (19, 2.093), (30, 2.042), (1000, 1.962)):
        assert t_quantile_975(df) == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_difference_summarises_the_per_seed_differences():
    from helpers.pretrained import paired_difference, t_quantile_975

    d = paired_difference([0.5, 0.6, 0.7, 0.7], [0.4, 0.6, 0.5, 0.8])
    diffs = [10.0, 0.0, 20.0, -10.0]
    assert d["n"] == 4 and d["mean"] == pytest.approx(5.0) and d["min"] == pytest.approx(-10) and d["max"] == pytest.approx(20)
    sd = torch.tensor(diffs, dtype=torch.float64).std().item()
    assert d["sd"] == pytest.approx(sd)
    assert d["ci_high"] - d["mean"] == pytest.approx(t_quantile_975(3) * sd / 2)
    assert (d["ahead"], d["behind"], d["level"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="same number"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1], [1])


def test_the_stored_comparison_is_complete_consistent_and_has_its_provenance(in_repo):
    from helpers.pretrained import SETUPS, comparison_path, paired_difference, read_comparison

    stored = read_comparison()
    prov, settings = stored["provenance"], stored["settings"]
    assert prov["command"].startswith("python scripts/compare_pretrained_backbone.py")
    assert {"date", "torch", "python", "threads", "machine", "seconds"} <= set(prov) and prov["threads"] >= 1
    assert len(settings["seeds"]) >= 12 and settings["setups"] == {n: vars(s) for n, s in SETUPS.items()}
    n_test = settings["test_images"]
    for digits, ks in (("off-centre", settings["labels_per_class"]), ("centred", settings["centred_labels_per_class"])):
        assert sorted(stored["correct"][digits]) == sorted(map(str, ks))
        for counts in stored["correct"][digits].values():
            assert set(counts) == set(SETUPS)
            assert all(len(c) == len(settings["seeds"]) and all(0 <= x <= n_test for x in c) for c in counts.values())
    for d in stored["differences"]:  # every stored difference is what its counts give
        counts = stored["correct"][d["digits"]][str(d["labels_per_class"])]
        again = paired_difference([c / n_test for c in counts[d["a"]]], [c / n_test for c in counts[d["b"]]])
        assert all(d[key] == pytest.approx(value) for key, value in again.items())
    script = load_script("compare_pretrained_backbone")
    assert comparison_path().with_suffix(".md").read_text(encoding="utf-8") == script.markdown(stored)


def test_read_comparison_says_how_to_restore_a_missing_or_broken_file(tmp_path):
    from helpers.pretrained import read_comparison

    with pytest.raises(PretrainedFileError, match="missing") as info:
        read_comparison(tmp_path / "none.json")
    assert "git checkout -- data/pretrained_backbone/comparison.json" in str(info.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PretrainedFileError, match="could not be read"):
        read_comparison(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(PretrainedFileError, match="expected layout"):
        read_comparison(tmp_path / "other.json")


def test_the_comparison_script_runs_on_a_tiny_budget_and_records_its_threads(in_repo, tmp_path, capsys):
    from helpers.pretrained import read_comparison

    script = load_script("compare_pretrained_backbone")
    threads = torch.get_num_threads()
    out = tmp_path / "c.json"
    try:
        with torch.random.fork_rng():
            script.main(["--seeds", "2", "--labels", "1", "--centred-labels", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = read_comparison(out)
    assert result["provenance"]["threads"] == 1 and result["settings"]["seeds"] == [0, 1]
    assert result["provenance"]["command"].endswith("--threads 1 --out " + str(out))
    assert list(result["correct"]) == ["off-centre"] and len(result["differences"]) == len(script.PAIRS)
    assert out.with_suffix(".md").read_text(encoding="utf-8") == script.markdown(result)
    assert "Paired differences" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--seeds", "1", "--out", str(out)])
