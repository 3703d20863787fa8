"""helpers.checkpointing: atomic saves, friendly load errors, RNG, exact resume, rotation.

The SIGKILL test lives in tests/test_checkpoint_crash.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from helpers import checkpointing as ckpt
from helpers.checkpointing import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    atomic_save,
    capture_rng_state,
    explain_state_dict_mismatch,
    is_complete_checkpoint,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    restore_training_checkpoint,
    training_checkpoint,
)
from helpers.models import DigitsCNN, DigitsMLP

DEAD_PID = 99_999_999  # above every OS's pid limit: no such process


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def tiny_state(value: float = 1.0) -> dict:
    return {"w": torch.full((4, 4), value), "step": int(value)}


class Unpicklable:
    """Pickling it raises, like a lambda or an open file inside a checkpoint."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this on purpose")


# ---- atomic_save ----------------------------------------------------------------------------


def test_atomic_save_writes_a_loadable_file_and_creates_the_folder(tmp_path):
    path = atomic_save(tiny_state(3.0), tmp_path / "new" / "folder" / "a.pt")
    assert path == tmp_path / "new" / "folder" / "a.pt"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.full((4, 4), 3.0)) and loaded["step"] == 3
    assert files_in(path.parent) == ["a.pt"]  # no temporary file left


def test_atomic_save_failing_mid_pickle_keeps_the_old_file_and_reraises(tmp_path):
    path = atomic_save(tiny_state(1.0), tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this on purpose"):
        atomic_save({"big": torch.zeros(100_000), "oops": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert files_in(tmp_path) == ["last.pt"]


def test_atomic_save_failing_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_save(tiny_state(1.0), tmp_path / "last.pt")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(tiny_state(2.0), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert files_in(tmp_path) == ["last.pt"]


def test_atomic_save_cleans_up_after_keyboard_interrupt(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(tiny_state(), tmp_path / "x.pt")
    assert files_in(tmp_path) == []


def test_atomic_save_fsyncs_then_renames_from_the_same_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if sys.platform == "linux" else fd))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    target = tmp_path / "model.pt"
    atomic_save(tiny_state(), target)

    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events  # file, rename, folder
    _, src, dst = events[1]
    assert dst == target and src.parent == target.parent
    assert ckpt._TEMP_RE.match(src.name)["target"] == "model.pt"
    assert src.name.startswith(".model.pt.tmp-")
    if sys.platform == "linux":
        assert events[0][1] == str(src) and events[2][1] == str(tmp_path)


def test_atomic_save_without_fsync_still_renames(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ckpt.os, "fsync", calls.append)
    atomic_save(tiny_state(), tmp_path / "fast.pt", fsync=False)
    assert calls == [] and files_in(tmp_path) == ["fast.pt"]


def test_atomic_save_refuses_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        atomic_save(tiny_state(), tmp_path)


def test_atomic_write_text(tmp_path):
    path = ckpt.atomic_write_text("hello\n", tmp_path / "pointer.txt")
    assert path.read_text() == "hello\n" and files_in(tmp_path) == ["pointer.txt"]


# ---- load_checkpoint: every failure has a message that says what to do -----------------------


def load_error(path, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    return info.value


def test_load_missing_file_lists_nearby_checkpoints(tmp_path):
    atomic_save(tiny_state(), tmp_path / "epoch1.pt")
    error = load_error(tmp_path / "epoch2.pt")
    assert error.reason == "missing"
    assert "does not exist" in str(error) and "epoch1.pt" in str(error)
    error = load_error(tmp_path / "nowhere" / "epoch2.pt")
    assert "does not exist either" in str(error)


def test_load_empty_file_says_interrupted_save(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    error = load_error(tmp_path / "last.pt")
    assert error.reason == "empty"
    for phrase in ("empty (0 bytes)", "interrupted", "previous checkpoint"):
        assert phrase in str(error)


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"epoch,loss\n1,0.5\n", "text file"),
        (json.dumps({"lr": 0.1}).encode(), "JSON"),
        (None, "NumPy"),
    ],
    ids=["text", "json", "numpy"],
)
def test_load_other_formats_says_not_a_pytorch_checkpoint(tmp_path, content, phrase):
    path = tmp_path / "weights.pt"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.arange(3))
    else:
        path.write_bytes(content)
    error = load_error(path)
    assert error.reason == "not_a_checkpoint"
    assert "not a PyTorch checkpoint" in str(error) and phrase in str(error)


def test_load_plain_pickle_says_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    error = load_error(path)
    assert error.reason == "not_a_checkpoint" and "pickle" in str(error)


def test_load_truncated_file_says_use_the_previous_checkpoint(tmp_path):
    path = atomic_save({"model": DigitsCNN().state_dict()}, tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = load_error(path)
    assert error.reason == "truncated"
    for phrase in ("truncated", "interrupted", "previous checkpoint"):
        assert phrase in str(error)
    assert "central directory" in str(error)


def test_load_whole_pickled_model_explains_weights_only(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(DigitsMLP(), path)  # the whole model, pickled: what not to do
    error = load_error(path)
    assert error.reason == "pickled_objects"
    for phrase in ("pickled Python objects", "DigitsMLP", "weights_only", "state_dict()", "lesson 02", "trust"):
        assert phrase in str(error), phrase
    assert isinstance(error.__cause__, pickle.UnpicklingError)


def test_load_something_that_is_not_a_dict(tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    error = load_error(tmp_path / "t.pt")
    assert error.reason == "not_a_dict" and "holds a Tensor, not a dict" in str(error)


def test_load_names_the_missing_required_entry_and_lists_what_is_there(tmp_path):
    path = atomic_save({"model": DigitsMLP().state_dict(), "epoch": 3}, tmp_path / "c.pt")
    error = load_error(path, required=("model", "optimizer"))
    assert error.reason == "missing_entries"
    assert "no 'optimizer' entry" in str(error) and "It has: 'model', 'epoch'" in str(error)
    assert "'model'" not in str(error).split("It has")[0]
    assert set(load_checkpoint(path, required=["model", "epoch"])) == {"model", "epoch"}


def test_load_bare_state_dict_with_required_entries_says_so(tmp_path):
    path = atomic_save(DigitsMLP().state_dict(), tmp_path / "sd.pt")
    error = load_error(path, required="model")
    assert "bare state_dict" in str(error)


def test_is_complete_checkpoint(tmp_path):
    path = atomic_save(tiny_state(), tmp_path / "ok.pt")
    assert is_complete_checkpoint(path) is None
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-30])
    assert "truncated" in is_complete_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in is_complete_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    assert "not a torch.save" in is_complete_checkpoint(tmp_path / "text.pt")
    assert is_complete_checkpoint(tmp_path / "none.pt") == "missing"


# ---- explain_state_dict_mismatch / load_model_state -----------------------------------------


def test_matching_state_dicts_give_none():
    model = DigitsMLP()
    assert explain_state_dict_mismatch(model, DigitsMLP().state_dict()) is None
    assert explain_state_dict_mismatch(model.state_dict(), DigitsMLP().state_dict()) is None


def test_wrong_architecture_gives_counts_and_first_keys_of_each_kind():
    message = explain_state_dict_mismatch(DigitsMLP(), DigitsCNN().state_dict(), limit=3)
    assert "4 missing keys" in message and "16 unexpected keys" in message
    assert "Missing (in the model, not in the file): 'hidden.weight', 'hidden.bias', 'output.weight'" in message
    assert "Unexpected (in the file, not in the model): 'features.0.weight'" in message
    assert "(1 more)" in message and "(13 more)" in message


def test_shape_mismatch_lists_file_and_model_shapes():
    message = explain_state_dict_mismatch(DigitsMLP(hidden=64), DigitsMLP(hidden=32).state_dict())
    assert "0 missing keys, 0 unexpected keys, 3 shape mismatches" in message
    assert "hidden.weight: file [32, 64] vs model [64, 64]" in message
    assert "output.weight: file [10, 32] vs model [10, 64]" in message


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_prefix_hint_when_the_file_came_from_a_wrapped_model(prefix):
    wrapped = {prefix + k: v for k, v in DigitsMLP().state_dict().items()}
    message = explain_state_dict_mismatch(DigitsMLP(), wrapped)
    assert f"every key in the file starts with {prefix!r}" in message
    assert "consume_prefix_in_state_dict_if_present" in message and "lesson 04" in message


def test_prefix_hint_when_the_model_is_wrapped():
    message = explain_state_dict_mismatch(nn.DataParallel(DigitsMLP()), DigitsMLP().state_dict())
    assert "every key of the model starts with 'module.'" in message and "model.module" in message


def test_hint_when_given_a_whole_checkpoint_instead_of_a_state_dict():
    message = explain_state_dict_mismatch(DigitsMLP(), {"model": DigitsMLP().state_dict(), "epoch": 1})
    assert "checkpoint['model']" in message


def test_load_model_state_leaves_the_model_untouched_on_failure():
    model = DigitsMLP(hidden=64, num_classes=10)
    before = copy.deepcopy(model.state_dict())
    other = DigitsMLP(hidden=64, num_classes=12).state_dict()  # hidden.* fits, output.* doesn't

    # What load_state_dict(strict=True) does: it raises, but only after copying what fits.
    victim = copy.deepcopy(model)
    with pytest.raises(RuntimeError):
        victim.load_state_dict(other)
    assert torch.equal(victim.hidden.weight, other["hidden.weight"])

    with pytest.raises(CheckpointError) as info:
        load_model_state(model, other)
    assert info.value.reason == "mismatch"
    assert "2 shape mismatches" in str(info.value) and "Nothing was loaded" in str(info.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_load_model_state_loads_a_matching_state_dict():
    model, source = DigitsCNN(), DigitsCNN()
    load_model_state(model, source.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key])


# ---- random number generators ---------------------------------------------------------------


def draw_all() -> list:
    return [
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.standard_normal()),
        torch.rand(3),
        torch.randn(2),
    ]


def same_draws(a, b) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def test_rng_round_trip_repeats_every_stream(tmp_path):
    random.gauss(0, 1)  # leaves a cached value in random (gauss_next) ...
    np.random.standard_normal()  # ... and in numpy's legacy generator (has_gauss)
    state = capture_rng_state()
    assert set(state) == {"python", "numpy", "torch", "cuda"}
    first = draw_all()
    restore_rng_state(state)
    assert same_draws(first, draw_all())

    # Through a file loaded with weights_only=True: no allow-listing needed.
    restore_rng_state(state)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    draw_all()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert same_draws(first, draw_all())


@pytest.mark.parametrize("stream", ["python", "numpy", "torch", "cuda"])
def test_missing_rng_stream_warns_naming_it(stream):
    state = capture_rng_state()
    del state[stream]
    with pytest.warns(CheckpointWarning, match=f"no random-number state for '{stream}'"):
        restore_rng_state(state)


def test_cuda_device_count_mismatch_warns():
    state = capture_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = state["cuda"] + [state["cuda"][0]]
    else:
        state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    with pytest.warns(CheckpointWarning, match="CUDA device"):
        restore_rng_state(state)


# ---- training_checkpoint / restore_training_checkpoint ---------------------------------------


@dataclasses.dataclass
class Config:
    lr: float = 0.01
    hidden: int = 16
    run: Path = Path("runs/x")


def test_training_checkpoint_holds_everything(tmp_path):
    model = DigitsMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    scaler = torch.amp.GradScaler("cpu")
    generator = torch.Generator().manual_seed(5)
    checkpoint = training_checkpoint(
        model=model, optimizer=optimizer, epoch=3, step=120, scheduler=scheduler, scaler=scaler,
        best_metric=np.float32(0.5), config=Config(), data_generator=generator, history=[0.9, 0.7],
    )
    for key in ("model", "optimizer", "scheduler", "scaler", "rng_state", "data_generator_state",
                "torch_version", "python_version", "saved_at", "history"):
        assert key in checkpoint, key
    assert checkpoint["format_version"] == FORMAT_VERSION and checkpoint["world_size"] == 1
    assert checkpoint["epoch"] == 3 and checkpoint["step"] == 120 and checkpoint["best_metric"] == 0.5
    assert checkpoint["config"] == {"lr": 0.01, "hidden": 16, "run": "runs/x"}
    assert checkpoint["saved_at"].endswith("+00:00")
    # Everything loads back with weights_only=True.
    loaded = load_checkpoint(atomic_save(checkpoint, tmp_path / "c.pt"))
    assert loaded["config"] == checkpoint["config"] and loaded["history"] == [0.9, 0.7]


def test_training_checkpoint_refuses_what_weights_only_could_not_load():
    model = DigitsMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"config\['act'\] is a torch.nn.modules.activation.ReLU"):
        training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=0, config={"act": nn.ReLU()})
    with pytest.raises(ValueError, match="names training_checkpoint uses itself"):
        training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=0, **{"rng_state": 1})


def test_restore_names_a_component_the_checkpoint_lacks_and_restores_nothing():
    model = DigitsMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = training_checkpoint(model=DigitsMLP(), optimizer=optimizer, epoch=1, step=10)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError) as info:
        restore_training_checkpoint(checkpoint, model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu"))
    assert info.value.reason == "missing_component"
    assert "scaler=" in str(info.value) and "no 'scaler' entry" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_restore_refuses_an_optimizer_built_differently_before_touching_the_model():
    source = DigitsMLP()
    checkpoint = training_checkpoint(
        model=source, optimizer=torch.optim.SGD(source.parameters(), lr=0.1), epoch=1, step=10
    )
    model = DigitsMLP()
    before = copy.deepcopy(model.state_dict())
    only_output = torch.optim.SGD(model.output.parameters(), lr=0.1)  # 2 parameters, not 4
    with pytest.raises(CheckpointError, match=r"sizes \[4\], this optimizer \[2\]"):
        restore_training_checkpoint(checkpoint, model=model, optimizer=only_output)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_restore_warns_about_a_newer_format_and_returns_the_rest():
    model = DigitsMLP()
    checkpoint = training_checkpoint(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=2, step=20,
        best_metric=0.8, config={"lr": 0.1},
    )
    checkpoint["format_version"] = FORMAT_VERSION + 1
    with pytest.warns(CheckpointWarning, match="newer than this code"):
        info = restore_training_checkpoint(checkpoint, model=DigitsMLP())
    assert info["epoch"] == 2 and info["step"] == 20 and info["best_metric"] == 0.8
    assert info["config"] == {"lr": 0.1} and "model" not in info and "rng_state" not in info


def test_restore_rejects_a_bare_state_dict():
    with pytest.raises(CheckpointError, match="bare state_dict"):
        restore_training_checkpoint(DigitsMLP().state_dict(), model=DigitsMLP())


# ---- exact resume ---------------------------------------------------------------------------


class FourRNGNet(nn.Module):
    """A tiny model whose forward draws from torch (dropout and randn), NumPy and random."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.dropout = nn.Dropout(0.3)
        self.output = nn.Linear(16, 3)

    def forward(self, x):
        x = x + 0.05 * torch.randn_like(x)
        h = self.dropout(self.hidden(x).relu())
        h = h * float(np.random.uniform(0.9, 1.1)) * random.uniform(0.9, 1.1)
        return self.output(h)


_data_generator = torch.Generator().manual_seed(1234)
DATA = TensorDataset(torch.randn(40, 6, generator=_data_generator), torch.randint(0, 3, (40,), generator=_data_generator))
EPOCHS = 2  # each half


def build(seed: int):
    """Model, Adam, a scheduler and a shuffling DataLoader with an explicit generator."""
    torch.manual_seed(seed)
    model = FourRNGNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(DATA, batch_size=8, shuffle=True, generator=generator)
    return model, optimizer, scheduler, generator, loader


def train(model, optimizer, scheduler, loader, epochs: int, step: int = 0) -> int:
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            step += 1
        scheduler.step()
    return step


def straight_run():
    ckpt_env_seed(0)
    model, optimizer, scheduler, _, loader = build(0)
    train(model, optimizer, scheduler, loader, 2 * EPOCHS)
    return model, optimizer


def ckpt_env_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def first_half(path: Path) -> Path:
    ckpt_env_seed(0)
    model, optimizer, scheduler, generator, loader = build(0)
    step = train(model, optimizer, scheduler, loader, EPOCHS)
    checkpoint = training_checkpoint(
        model=model, optimizer=optimizer, scheduler=scheduler, data_generator=generator,
        epoch=EPOCHS, step=step, config={"batch_size": 8},
    )
    return atomic_save(checkpoint, path)


def second_half(path: Path, leave_out: str | None = None):
    """What a new process does: build everything fresh, restore, train the other half.

    ``leave_out`` names something not to restore: ``"rng"`` (every generator), one RNG
    stream (``"python"``, ``"numpy"``, ``"torch"``) or ``"data_generator"``.
    """
    ckpt_env_seed(99)  # a different process: different global RNG, different initial weights
    model, optimizer, scheduler, generator, loader = build(99)
    checkpoint = load_checkpoint(path, required=("model", "optimizer", "scheduler", "rng_state"))
    if leave_out in ("python", "numpy", "torch"):
        del checkpoint["rng_state"][leave_out]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if leave_out else "error")  # a full restore warns about nothing
        info = restore_training_checkpoint(
            checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
            data_generator=None if leave_out == "data_generator" else generator,
            restore_rng=leave_out != "rng",
        )
    assert info["epoch"] == EPOCHS
    train(model, optimizer, scheduler, loader, EPOCHS, info["step"])
    return model, optimizer


def identical(a_model, a_optimizer, b_model, b_optimizer) -> bool:
    for (name, a), (_, b) in zip(a_model.state_dict().items(), b_model.state_dict().items()):
        if not torch.equal(a, b):
            return False
    a_state, b_state = a_optimizer.state_dict(), b_optimizer.state_dict()
    assert a_state["state"].keys() == b_state["state"].keys()
    for index, a in a_state["state"].items():
        for key, value in a.items():
            if not torch.equal(torch.as_tensor(value), torch.as_tensor(b_state["state"][index][key])):
                return False
    return a_state["param_groups"] == b_state["param_groups"]


def test_resume_is_bit_exact(tmp_path):
    straight = straight_run()
    path = first_half(tmp_path / "half.pt")
    resumed = second_half(path)
    assert identical(*straight, *resumed)


@pytest.mark.parametrize("leave_out", ["rng", "python", "numpy", "torch", "data_generator"])
def test_resume_without_any_one_generator_is_not_exact(tmp_path, leave_out):
    """The test above can fail: leaving out any one generator breaks it."""
    straight = straight_run()
    path = first_half(tmp_path / "half.pt")
    assert not identical(*straight, *second_half(path, leave_out))


def resume_in_child(path: str, out: str) -> None:
    """Run in another process: resume from ``path``, save the final state to ``out``."""
    model, optimizer = second_half(Path(path))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out)


@pytest.mark.skipif(
    "forkserver" not in __import__("multiprocessing").get_all_start_methods(), reason="needs forkserver"
)
def test_resume_in_another_process_is_bit_exact(tmp_path):
    """The second half runs in a new process (forked from a server that only imported modules)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import checkpoint_crash_child

    straight = straight_run()
    path = first_half(tmp_path / "half.pt")
    out = tmp_path / "resumed.pt"
    process = checkpoint_crash_child.forkserver().Process(target=resume_in_child, args=(str(path), str(out)))
    process.start()
    process.join(120)
    assert process.exitcode == 0, f"the resumed run failed (exit code {process.exitcode})"
    saved = load_checkpoint(out)
    model, optimizer, *_ = build(0)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    assert identical(*straight, model, optimizer)


# ---- CheckpointManager ----------------------------------------------------------------------


def test_file_names_carry_step_epoch_and_metric_and_parse_back(tmp_path):
    manager = CheckpointManager(tmp_path, metric="val_accuracy")
    name = manager.filename(120, 3, 0.9523)
    assert name == "checkpoint-step000120-epoch003-val_accuracy=0.9523.pt"
    assert manager.parse(name) == {"step": 120, "epoch": 3, "metric_name": "val_accuracy", "metric": 0.9523}
    assert manager.parse(manager.filename(7)) == {"step": 7, "epoch": None, "metric_name": None, "metric": None}
    assert manager.parse(manager.filename(1234567, None, -1.5e-7))["metric"] == -1.5e-7
    for foreign in ("checkpoint-latest.txt", "checkpoint-best.pt", "other-step000001.pt", "checkpoint-step1.pt.bak"):
        assert manager.parse(foreign) is None


def test_due_is_false_without_every_n_steps(tmp_path):
    assert not any(CheckpointManager(tmp_path).due(s) for s in (None, 0, 1, 100))
    manager = CheckpointManager(tmp_path, every_n_steps=5)
    assert [s for s in range(16) if manager.due(s)] == [5, 10, 15]
    assert not manager.due(None)


def test_steps_are_ordered_by_number_not_by_name_or_time(tmp_path):
    manager = CheckpointManager(tmp_path)
    for step in (100, 9, 10):  # unpadded names: as strings, "step9" sorts last
        atomic_save(tiny_state(step), tmp_path / f"checkpoint-step{step}.pt")
    os.utime(tmp_path / "checkpoint-step9.pt", (2e9, 2e9))  # the newest file on disk
    assert [manager.parse(p)["step"] for p in manager.checkpoints()] == [9, 10, 100]
    assert manager.latest().name == "checkpoint-step100.pt"


def test_rotation_keeps_the_last_k_and_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, metric="val_accuracy", mode="max")
    for step, accuracy in zip(range(1, 7), [0.5, 0.9, 0.6, 0.7, 0.65, 0.62]):
        manager.save(tiny_state(step), step=step, epoch=step, metric=accuracy)
    assert [manager.parse(p)["step"] for p in manager.checkpoints()] == [2, 5, 6]
    assert manager.parse(manager.best())["step"] == 2
    assert manager.latest().name == "checkpoint-step000006-epoch006-val_accuracy=0.62.pt"
    assert manager.pointer_path.read_text().strip() == manager.latest().name

    low = CheckpointManager(tmp_path / "min", keep_last=1, metric="val_loss", mode="min")
    for step, loss in zip(range(1, 5), [0.9, 0.3, 0.5, float("nan")]):
        low.save(tiny_state(step), step=step, metric=loss)
    assert [low.parse(p)["step"] for p in low.checkpoints()] == [2, 4]


def test_rotation_never_touches_foreign_files(tmp_path):
    foreign = ["notes.txt", "checkpoint-best.pt", "other-step000001.pt", "checkpoint-step000001.pt.bak",
               "model.pt", f".notes.txt.tmp-{DEAD_PID}-abcdef12"]
    for name in foreign:
        (tmp_path / name).write_text("not yours")
    manager = CheckpointManager(tmp_path, keep_last=1, prefix="checkpoint")
    other = CheckpointManager(tmp_path, keep_last=1, prefix="other")
    for step in range(1, 5):
        manager.save(tiny_state(step), step=step)
    assert files_in(tmp_path) == sorted(foreign + ["checkpoint-latest.txt", "checkpoint-step000004.pt"])
    assert [p.name for p in other.checkpoints()] == ["other-step000001.pt"]


def test_latest_skips_a_truncated_newest_file_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        manager.save(tiny_state(step), step=step)
    newest = manager.latest()
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(CheckpointWarning) as caught:
        assert manager.parse(manager.latest())["step"] == 2
    messages = " ".join(str(w.message) for w in caught)
    assert newest.name in messages and "truncated" in messages and "previous" in messages
    assert len(caught) == 1  # the pointer names the same file: no second warning

    (tmp_path / manager.filename(2)).write_bytes(b"")  # and an empty one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = manager.load_latest()
    assert any("checkpoint-step000002.pt" in str(w.message) and "empty" in str(w.message) for w in caught)
    assert loaded["step"] == 1 and manager.resumed_from == tmp_path / manager.filename(1)


def test_the_checkpoint_resumed_from_is_never_deleted(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        manager.save(tiny_state(step), step=step)
    (tmp_path / manager.filename(3)).write_bytes(b"")
    resumed = CheckpointManager(tmp_path, keep_last=1)
    with pytest.warns(CheckpointWarning):
        assert resumed.load_latest()["step"] == 2
    for step in (4, 5, 6):
        resumed.save(tiny_state(step), step=step)
    assert [resumed.parse(p)["step"] for p in resumed.checkpoints()] == [2, 6]


def test_stale_temp_files_are_removed_on_start(tmp_path):
    stale = [f".checkpoint-step000003.pt.tmp-{DEAD_PID}-abcdef12", f".checkpoint-latest.txt.tmp-{DEAD_PID}-0123abcd"]
    kept = [
        f".notes.txt.tmp-{DEAD_PID}-abcdef12",  # not ours
        f".checkpoint-step000004.pt.tmp-{os.getpid()}-abcdef12",  # a save that may be running
        "checkpoint-step000001.pt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"PK\x03\x04")
    with pytest.warns(CheckpointWarning, match="Removed 2 unfinished temporary file"):
        manager = CheckpointManager(tmp_path)
    assert sorted(p.name for p in manager.removed_temp_files) == sorted(stale)
    assert files_in(tmp_path) == sorted(kept)


def test_a_failed_save_raises_and_deletes_nothing(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(tiny_state(1), step=1)
    before = {name: (tmp_path / name).read_bytes() for name in files_in(tmp_path)}

    with pytest.raises(RuntimeError, match="cannot pickle"):
        manager.save({"oops": Unpicklable()}, step=2)

    def no_space(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    with pytest.raises(OSError, match="No space left"):
        manager.save(tiny_state(3), step=3)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in files_in(tmp_path)} == before
    assert manager.latest().name == manager.filename(1)


def test_a_failed_delete_warns_and_goes_on(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(tiny_state(1), step=1)
    real_unlink = Path.unlink

    def stubborn(self, missing_ok=False):
        if self.name == manager.filename(1):
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", stubborn)
    with pytest.warns(CheckpointWarning, match="Could not delete the old checkpoint"):
        path = manager.save(tiny_state(2), step=2)
    assert path.exists() and manager.latest() == path


def test_manager_refuses_a_whole_model_and_warns_when_steps_go_back(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="state_dict"):
        manager.save(DigitsMLP(), step=1)
    manager.save(tiny_state(5), step=5)
    with pytest.warns(CheckpointWarning, match="already holds later steps"):
        manager.save(tiny_state(2), step=2)


def test_stale_pointer_warns(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(tiny_state(1), step=1)
    manager.pointer_path.write_text(manager.filename(9) + "\n")
    with pytest.warns(CheckpointWarning, match="no longer exists"):
        assert manager.latest().name == manager.filename(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager.pointer_path.write_text(manager.filename(0) + "\n")  # e.g. killed before the pointer update
        (tmp_path / manager.filename(0)).write_bytes((tmp_path / manager.filename(1)).read_bytes())
        assert manager.latest().name == manager.filename(1)


def test_empty_folder_and_no_metric(tmp_path):
    manager = CheckpointManager(tmp_path / "new")
    assert manager.latest() is None and manager.best() is None and manager.load_latest() is None
    assert manager.checkpoints() == []
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, mode="maximum")


# ---- issue 19: truncation at every byte, CRC-32, safetensors, a full disk ------------------


def small_state() -> dict:
    return {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.float16), "step": 7}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_every_cut_point_says_truncated(tmp_path, zip_format):
    whole = tmp_path / "whole.pt"
    torch.save(small_state(), whole, _use_new_zipfile_serialization=zip_format)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pt"
    wrong = []
    for length in range(1, len(data)):
        cut.write_bytes(data[:length])
        try:
            load_checkpoint(cut)
        except CheckpointError as error:
            if error.reason != "truncated" or "truncated" not in str(error):
                wrong.append((length, error.reason, str(error)[:80]))
        except Exception as error:  # a raw exception: what the issue found at 635 cut points
            wrong.append((length, type(error).__name__, str(error)[:80]))
        else:
            wrong.append((length, "loaded", ""))
    assert wrong == [], f"{len(wrong)} of {len(data) - 1} cut points: {wrong[:5]}"
    assert load_checkpoint(whole)["step"] == 7


def test_a_flipped_byte_inside_a_tensor_is_caught_by_the_crc(tmp_path):
    path = atomic_save({"w": torch.arange(1000.0)}, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    offset = data.index(torch.arange(1000.0).numpy().tobytes()[400:416]) + 3
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(1000.0))  # torch.load: silent
    error = load_error(path)
    assert error.reason == "damaged" and "CRC-32" in str(error) and "data/0" in str(error)
    assert not torch.equal(load_checkpoint(path, verify_crc=False)["w"], torch.arange(1000.0))  # the opt-out
    assert ckpt.verify_zip_crc(path) is not None


def test_load_latest_skips_a_file_damaged_inside(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save({"w": torch.arange(1000.0), "n": 1}, step=1)
    newest = manager.save({"w": torch.arange(1000.0), "n": 2}, step=2)
    data = bytearray(newest.read_bytes())
    data[data.index(torch.arange(1000.0).numpy().tobytes()[400:416]) + 3] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match="damaged"):
        assert manager.load_latest()["n"] == 1


def test_safetensors_and_sharded_files_load(tmp_path):
    from safetensors.torch import save_file

    state = {"a.weight": torch.randn(3, 2), "b.bias": torch.randn(4)}
    save_file(state, tmp_path / "weights.bin")  # any extension: found from the header
    loaded = load_checkpoint(tmp_path / "weights.bin")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    save_file({"a.weight": state["a.weight"]}, tmp_path / "s1.safetensors")
    save_file({"b.bias": state["b.bias"]}, tmp_path / "s2.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a.weight": "s1.safetensors", "b.bias": "s2.safetensors"}}))
    merged = load_checkpoint(index)
    assert set(merged) == set(state) and torch.equal(merged["b.bias"], state["b.bias"])
    (tmp_path / "s2.safetensors").write_bytes((tmp_path / "s2.safetensors").read_bytes()[:-3])
    assert load_error(index).reason == "truncated"
    (tmp_path / "s2.safetensors").unlink()
    error = load_error(index)
    assert error.reason == "missing" and "s2.safetensors" in str(error)


def test_the_course_pretrained_backbone_loads():
    path = Path(__file__).resolve().parent.parent / "data" / "pretrained_backbone" / "digits_cnn_0to4.safetensors"
    assert all(isinstance(v, torch.Tensor) for v in load_checkpoint(path).values())


def test_every_reason_is_documented():
    import inspect

    from helpers import checkpoint_files, state_dicts

    source = inspect.getsource(ckpt) + inspect.getsource(checkpoint_files) + inspect.getsource(state_dicts)
    import re

    used = set(re.findall(r'reason="([a-z_]+)"', source)) | set(re.findall(r"reason != \"([a-z_]+)\"", source))
    assert used <= set(ckpt.REASONS), used - set(ckpt.REASONS)
    assert all(f'"{reason}"' in checkpoint_files.CheckpointError.__doc__ for reason in ckpt.REASONS)


def _fake_full_disk(monkeypatch):
    """torch.save's own report of a full disk, and a disk with 1 kB free."""
    import collections

    def no_space(obj, f):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f, _real=torch.save: _real(obj, f) if isinstance(f, ckpt._ByteCounter) else no_space(obj, f))
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))


def test_a_full_disk_says_so_simulated(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    first = manager.save({"w": torch.zeros(50_000)}, step=1)
    before = first.read_bytes()
    _fake_full_disk(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        manager.save({"w": torch.zeros(50_000)}, step=2)
    monkeypatch.undo()
    message = str(info.value)
    assert info.value.reason == "no_space" and isinstance(info.value, OSError)
    for phrase in ("No space left on the device", "0.2 MB", "0.0 MB is free", "keep_last=2", "beside them", "intact"):
        assert phrase in message, phrase
    assert first.read_bytes() == before and files_in(tmp_path) == sorted([first.name, "checkpoint-latest.txt"])


def test_a_full_disk_says_so_on_a_real_small_filesystem(tmp_path):
    """A 1 MiB tmpfs (needs root, as in CI and the course's containers)."""
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); test_a_full_disk_says_so_simulated covers it")
    try:
        manager = CheckpointManager(mount, keep_last=2)
        first = manager.save({"w": torch.zeros(100_000)}, step=1)  # 400 kB
        before = first.read_bytes()
        with pytest.raises(CheckpointError) as info:
            manager.save({"w": torch.zeros(200_000)}, step=2)  # 800 kB: no room beside the first
        message = str(info.value)
        assert info.value.reason == "no_space" and "No space left on the device" in message
        assert "0.8 MB" in message and "keep_last=2" in message
        assert first.read_bytes() == before and load_checkpoint(first)["w"].shape == (100_000,)
        assert sorted(p.name for p in mount.iterdir()) == sorted([first.name, "checkpoint-latest.txt"])
    finally:
        subprocess.run(["umount", str(mount)], check=True)
