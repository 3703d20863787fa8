import random
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.environment import (
    DeviceUnavailableError,
    environment_summary,
    in_colab,
    pick_device,
    repo_root,
    run_dir,
    runs_root,
    seed_everything,
    variant_of,
)


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    assert seed_everything(123) == 123
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


def test_seed_everything_rejects_a_non_integer_seed():
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything("0")


def test_in_colab_follows_the_google_colab_module(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert in_colab()


def test_pick_device_prefers_cuda_then_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_says_how_to_get_a_missing_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(DeviceUnavailableError, match="needs a CUDA GPU.*pick_device\\(\\)"):
        pick_device("cuda")
    monkeypatch.setitem(sys.modules, "google.colab", object())
    with pytest.raises(DeviceUnavailableError, match="Runtime > Change runtime type"):
        pick_device("cuda:0")


def test_environment_summary_names_python_torch_and_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = environment_summary()
    assert f"torch {torch.__version__}" in line and "Python 3." in line and "no GPU" in line
    assert "\n" not in line


def test_repo_root_is_found_from_any_subfolder(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    assert repo_root(tmp_path / "notebooks" / "deep") == tmp_path.resolve()


def test_repo_root_outside_the_course_falls_back_to_the_installed_course(tmp_path, monkeypatch):
    # A learner who runs a notebook from another folder still gets the course's data files.
    import helpers
    from helpers import environment

    course = Path(helpers.__file__).resolve().parent.parent
    assert repo_root(tmp_path) == course
    # Not an editable install and no Colab clone: the current folder is all that is left.
    monkeypatch.setattr(environment, "__file__", str(tmp_path / "site-packages" / "helpers" / "environment.py"))
    monkeypatch.setattr(environment.config, "COLAB_CLONE_DIR", str(tmp_path / "no-clone"))
    assert repo_root(tmp_path) == tmp_path.resolve()
    clone = tmp_path / "no-clone"
    (clone / "helpers").mkdir(parents=True)
    (clone / "pyproject.toml").write_text("")
    assert repo_root(tmp_path) == clone.resolve()


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    for folder in ("helpers", "notebooks", "solutions"):
        (tmp_path / folder).mkdir()
    return tmp_path


def test_variant_and_runs_root_keep_solutions_apart(fake_repo):
    assert variant_of(fake_repo / "notebooks") == "notebooks"
    assert variant_of(fake_repo / "solutions") == "solutions"
    assert variant_of(fake_repo) == "other"
    assert runs_root(fake_repo / "notebooks") == fake_repo.resolve() / "runs"
    assert runs_root(fake_repo) == fake_repo.resolve() / "runs"
    assert runs_root(fake_repo / "solutions") == fake_repo.resolve() / "runs" / "solutions"


def test_run_dir_creates_and_freshens_the_lesson_folder(fake_repo, monkeypatch):
    monkeypatch.chdir(fake_repo / "notebooks")
    folder = run_dir("01_state_dict")
    assert folder == fake_repo.resolve() / "runs" / "01_state_dict" and folder.is_dir()
    (folder / "old.pt").write_bytes(b"x")
    assert (run_dir("01_state_dict") / "old.pt").exists()
    assert not (run_dir("01_state_dict", fresh=True) / "old.pt").exists()
    monkeypatch.chdir(fake_repo / "solutions")
    assert run_dir("01_state_dict") == fake_repo.resolve() / "runs" / "solutions" / "01_state_dict"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "verdicts", "solutions"])
def test_run_dir_refuses_names_that_would_escape_or_collide(bad):
    with pytest.raises(ValueError, match="plain folder name"):
        run_dir(bad)

