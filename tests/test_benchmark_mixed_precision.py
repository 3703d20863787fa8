"""scripts/benchmark_mixed_precision_gpu.py: refuses without CUDA (message, status 1, no file),
and its measuring logic works on the CPU (with bfloat16, and float16 on a tiny model)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import gpu_reference
from helpers.environment import DeviceUnavailableError
from helpers.models import DigitsCNN, DigitsMLP

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark_mixed_precision_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_mixed_precision_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_explains_exits_1_and_writes_nothing():
    target = gpu_reference.reference_path("mixed_precision")
    before = target.read_bytes() if target.exists() else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hide any GPU, so this runs the same everywhere
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "No CUDA GPU" in result.stderr and "nothing was written" in result.stderr
    after = target.read_bytes() if target.exists() else None
    assert after == before


def test_main_without_cuda_returns_1(monkeypatch, tmp_path, capsys):
    module = load_script()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_reference, "REFERENCE_DIR", tmp_path)
    assert module.main([]) == 1
    assert "No CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_measure_rows_on_cpu_builds_one_row_per_configuration():
    module = load_script()
    models = {"tiny CNN": lambda: DigitsCNN(width=4)}
    rows = module.measure_rows(
        "cpu", models=models, batch_sizes=(8, 16), precisions=("float32", "bfloat16"), warmup=0, repeats=1
    )
    assert [(r["model"], r["batch_size"], r["precision"]) for r in rows] == [
        ("tiny CNN", 8, "float32"), ("tiny CNN", 8, "bfloat16"),
        ("tiny CNN", 16, "float32"), ("tiny CNN", 16, "bfloat16"),
    ]
    for row in rows:
        assert row["step_ms"] > 0 and row["activations_mib"] > 0
        assert "peak_mib" not in row  # only measured on a GPU
    assert rows[0]["time_vs_fp32"] == 1.0 and rows[0]["activations_vs_fp32"] == 1.0
    # bfloat16 autocast saves smaller activations than float32.
    assert 0.4 < rows[1]["activations_vs_fp32"] < 0.9
    assert rows[3]["activations_mib"] > rows[1]["activations_mib"]  # a bigger batch saves more


def test_float16_rows_use_the_scaler_and_train():
    from helpers.measure import training_step_benchmark

    torch.manual_seed(0)
    model = DigitsMLP(hidden=16)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    row = training_step_benchmark(model, x, y, "float16", warmup=1, repeats=2)
    assert row["precision"] == "float16" and row["batch_size"] == 32 and row["peak_mib"] is None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_step_benchmark_rejects_bad_arguments():
    from helpers.measure import training_step_benchmark

    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="precision must be one of"):
        training_step_benchmark(DigitsMLP(), x, y, "fp8")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="same device"):
            training_step_benchmark(DigitsMLP().cuda(), x, y, "float32")


def test_measure_rows_on_cuda_when_present(tmp_path, monkeypatch):
    module = load_script()
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="No CUDA GPU"):
            module.measure_rows("cuda")
        return
    rows = module.measure_rows("cuda", models={"tiny": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))},
                               batch_sizes=(8,), precisions=("float32", "float16"), warmup=1, repeats=2)
    assert all(r["peak_mib"] > 0 for r in rows) and "peak_vs_fp32" in rows[1]
    monkeypatch.setattr(gpu_reference, "REFERENCE_DIR", tmp_path)
    assert module.main(["--repeats", "1", "--warmup", "0"]) == 0
    assert (tmp_path / "mixed_precision.json").exists()
