"""helpers.doctor: every file kind, damaged ones too, and the code it prints loads the model.

The example files are made here, offline, with the layouts the libraries write:
- Lightning: ``{"state_dict": {"model.<key>": ...}, "pytorch-lightning_version", "optimizer_states",
  "lr_schedulers", "loops", "epoch", "global_step", ...}`` (``LightningModule.state_dict()`` keys
  carry the attribute name of each submodule);
- Hugging Face sharded: ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` with
  ``{"metadata": {"total_size"}, "weight_map": {name: shard}}``;
- accelerate ``save_state``: ``model.safetensors`` (or ``pytorch_model.bin``), ``optimizer.bin``,
  ``scheduler.bin``, ``scaler.pt``, ``random_states_0.pkl`` (constants in accelerate's
  ``utils/constants.py``: MODEL_NAME, SAFE_WEIGHTS_NAME, OPTIMIZER_NAME, SCHEDULER_NAME,
  SCALER_NAME, RNG_STATE_NAME);
- ``torch.distributed.checkpoint``: written by ``dcp.save`` itself, in one process.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import doctor
from helpers.models import DigitsMLP

ROOT = Path(__file__).resolve().parent.parent
MODEL = "helpers.models:DigitsMLP"


def source_model(seed=3):
    torch.manual_seed(seed)
    return DigitsMLP()


def run_printed_code(code: str) -> torch.nn.Module:
    """Run the doctor's code exactly as printed, in a fresh namespace; return its ``model``."""
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(code, namespace)
    return namespace["model"]


def same_weights(model, reference) -> bool:
    got, want = model.state_dict(), reference.state_dict()
    return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


# ---- the files ------------------------------------------------------------------------------


def make_files(folder: Path, model) -> dict[str, Path]:
    sd = model.state_dict()
    opt = torch.optim.Adam(model.parameters())
    files = {}
    files["bare.pt"] = folder / "bare.pt"
    torch.save(sd, files["bare.pt"])
    files["legacy.tar"] = folder / "legacy.tar"
    torch.save(sd, files["legacy.tar"], _use_new_zipfile_serialization=False)
    files["training.pth"] = folder / "training.pth"
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 2, "step": 40}, files["training.pth"])
    files["ddp.bin"] = folder / "ddp.bin"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, files["ddp.bin"])
    files["compiled.pt"] = folder / "compiled.pt"
    torch.save({"_orig_mod." + k: v for k, v in sd.items()}, files["compiled.pt"])
    files["lightning.ckpt"] = folder / "lightning.ckpt"
    torch.save(
        {
            "epoch": 1, "global_step": 20, "pytorch-lightning_version": "2.4.0",
            "state_dict": {"model." + k: v for k, v in sd.items()},
            "loops": {}, "callbacks": {}, "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.001},
        },
        files["lightning.ckpt"],
    )
    files["model.safetensors"] = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, files["model.safetensors"], metadata={"format": "pt"})
    for kind, suffix in (("st", "safetensors"), ("bin", "bin")):
        shard_dir = folder / f"sharded_{kind}"
        shard_dir.mkdir()
        keys = list(sd)
        halves = {f"part-00001-of-00002.{suffix}": keys[:2], f"part-00002-of-00002.{suffix}": keys[2:]}
        for name, part in halves.items():
            tensors = {k: sd[k].contiguous() for k in part}
            save_file(tensors, shard_dir / name) if kind == "st" else torch.save(tensors, shard_dir / name)
        index_name = "model.safetensors.index.json" if kind == "st" else "pytorch_model.bin.index.json"
        index = {"metadata": {"total_size": sum(v.nbytes for v in sd.values())},
                 "weight_map": {k: name for name, part in halves.items() for k in part}}
        (shard_dir / index_name).write_text(json.dumps(index))
        files[index_name] = shard_dir / index_name
    acc = folder / "accelerate" / "checkpoint_0"
    acc.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, acc / "model.safetensors", metadata={"format": "pt"})
    torch.save(opt.state_dict(), acc / "optimizer.bin")
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    torch.save(sched.state_dict(), acc / "scheduler.bin")
    torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state(), "torch_cuda_manual_seed": []}, acc / "random_states_0.pkl")
    files["accelerate"] = acc
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": sd, "optimizer": opt.state_dict()}, checkpoint_id=folder / "dcp")
    files["dcp"] = folder / "dcp"
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctor")
    return make_files(folder, source_model())


LOADABLE = ["bare.pt", "legacy.tar", "training.pth", "ddp.bin", "compiled.pt", "lightning.ckpt",
            "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin.index.json", "accelerate", "dcp"]


@pytest.mark.parametrize("name", LOADABLE)
def test_the_printed_code_loads_the_model_exactly(files, name):
    report = doctor.diagnose(files[name], MODEL)
    assert report["verdict"] == "loads" and report["exit_code"] == 0, doctor.format_report(report)
    assert report["model_check"]["loads"] is True
    model = run_printed_code(report["code"])
    assert same_weights(model, source_model())
    assert report["tensors"]["tensor_count"] == 4 and report["tensors"]["parameters"] == sum(
        p.numel() for p in DigitsMLP().parameters())


def test_what_it_says_about_layout_and_origin(files):
    training = doctor.diagnose(files["training.pth"])
    assert training["layout"]["kind"] == "training checkpoint" and training["layout"]["key_path"] == ["model"]
    assert set(training["layout"]["exact_resume_lacks"]) == {"scheduler", "scaler", "rng", "data position"}
    assert "model = MyModel()" in training["code"]
    lightning = doctor.diagnose(files["lightning.ckpt"])
    assert any("Lightning" in note and "'model.'" in note for note in lightning["origin"])
    assert lightning["strip_prefix"] == "model."
    assert any("module." in note for note in doctor.diagnose(files["ddp.bin"])["origin"])
    assert any("_orig_mod." in note for note in doctor.diagnose(files["compiled.pt"])["origin"])
    assert doctor.diagnose(files["legacy.tar"])["format"].startswith("torch.save (legacy")
    acc = doctor.diagnose(files["accelerate"])
    assert acc["format"] == "accelerate save_state folder"
    assert "scaler" in acc["layout"]["exact_resume_lacks"]
    assert any("NumPy" in f["text"] for f in acc["findings"])
    bare = doctor.diagnose(files["bare.pt"])
    assert bare["devices"] == ["cpu"] and bare["tensors"]["bytes_by_dtype"] == {
        "float32": sum(v.nbytes for v in DigitsMLP().state_dict().values())}


def test_a_gpu_checkpoint_says_where_it_was_saved_from():
    report = doctor.diagnose(ROOT / "data" / "cuda_checkpoint" / "digits_mlp_cuda.pt")
    assert "cuda:0" in report["devices"] and report["verdict"] == "loads"
    assert any("map_location='cpu'" in f["text"] for f in report["findings"])


def test_a_whole_model_lists_its_classes_without_running_them(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(DigitsMLP(), path)
    report = doctor.diagnose(path)
    assert report["verdict"] == "needs_changes" and report["exit_code"] == 1
    assert "helpers.models.DigitsMLP" in report["pickled_classes"]
    legacy = tmp_path / "whole_legacy.pt"
    torch.save(DigitsMLP(), legacy, _use_new_zipfile_serialization=False)
    assert "helpers.models.DigitsMLP" in doctor.diagnose(legacy)["pickled_classes"]


def test_a_model_that_does_not_fit_is_explained_with_the_fix(files, tmp_path):
    wide = tmp_path / "wide.pt"
    torch.manual_seed(0)
    torch.save(DigitsMLP(hidden=32).state_dict(), wide)
    report = doctor.diagnose(wide, MODEL)
    assert report["verdict"] == "needs_changes" and report["exit_code"] == 1
    assert "shape mismatch" in report["model_check"]["problem"] and "settings" in report["model_check"]["fix"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "cut_magic"])
def test_damaged_files_exit_3_and_say_where(files, tmp_path, damage):
    data = files["bare.pt"].read_bytes()
    path = tmp_path / "damaged.pt"
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        offset = data.index(source_model().state_dict()["hidden.weight"].numpy().tobytes()[:16]) + 5  # inside a tensor
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:2])
    report = doctor.diagnose(path)
    assert report["verdict"] == "damaged" and report["exit_code"] == 3, doctor.format_report(report)
    assert report["integrity"]["ok"] is False
    if damage == "flip":
        assert "data/0" in report["integrity"]["problem"] and "CRC-32" in report["integrity"]["problem"]


def test_damaged_shards_and_folders(files, tmp_path):
    import shutil

    sharded = tmp_path / "sharded"
    shutil.copytree(files["model.safetensors.index.json"].parent, sharded)
    shard = sharded / "part-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert doctor.diagnose(sharded / "model.safetensors.index.json")["verdict"] == "damaged"
    shard.unlink()
    assert doctor.diagnose(sharded / "model.safetensors.index.json")["verdict"] == "damaged"
    unfinished = tmp_path / "dcp"
    shutil.copytree(files["dcp"], unfinished)
    (unfinished / ".metadata").unlink()
    assert doctor.diagnose(unfinished)["verdict"] == "damaged"


def test_not_a_checkpoint_exits_4(tmp_path):
    (tmp_path / "notes.pt").write_text("epoch,loss\n")
    assert doctor.diagnose(tmp_path / "notes.pt")["exit_code"] == 4
    assert doctor.diagnose(tmp_path / "nothing.pt")["exit_code"] == 4


def test_the_command_line_prints_text_or_json_and_returns_the_exit_code(files):
    command = [sys.executable, "-m", "helpers.doctor", str(files["lightning.ckpt"]), "--model", MODEL]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PyTorch Lightning" in done.stdout and "Verdict: loads" in done.stdout
    code = done.stdout.split("To load it into a plain model:\n\n", 1)[1].split("\n\n", 1)[0]
    model = run_printed_code("\n".join(line[4:] for line in code.splitlines()))  # as printed, unindented
    assert same_weights(model, source_model())
    done = subprocess.run(command + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["verdict"] == "loads"
    bad = subprocess.run([sys.executable, "-m", "helpers.doctor", str(files["bare.pt"]), "--model", "nowhere:Nothing"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Could not build the model" in bad.stderr


def test_doctor_links_point_at_troubleshooting_entries():
    import re

    from tests.test_troubleshooting import anchors_of

    anchors = anchors_of((ROOT / "TROUBLESHOOTING.md").read_text(encoding="utf-8"))
    source = (ROOT / "helpers" / "doctor.py").read_text(encoding="utf-8")
    used = set(re.findall(r'"([a-z0-9_]+(?:-[a-z0-9_]+){2,})"', source))  # every anchor-like literal
    assert len(used) >= 6
    assert not sorted(used - anchors), sorted(used - anchors)
