"""Tests of helpers/measure.py. The GPU branches run only where CUDA is present; without it, the
GPU-only functions must refuse with a clear DeviceUnavailableError, which is tested here."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch
from torch import nn

from helpers.environment import DeviceUnavailableError
from helpers.measure import (
    MIB,
    Timing,
    cuda_peak_memory,
    mib,
    saved_tensor_bytes,
    saved_tensor_bytes_by_dtype,
    time_it,
)

HAS_CUDA = torch.cuda.is_available()


def test_linear_saves_its_input_but_parameters_are_not_counted():
    layer = nn.Linear(64, 32)
    x = torch.randn(16, 64)
    # linear saves its input (16*64 floats) and its weight; the weight is a parameter: excluded.
    assert saved_tensor_bytes(lambda: layer(x).sum()) == 16 * 64 * 4


def test_a_leaf_that_requires_grad_is_excluded_but_a_computed_tensor_is_counted():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    assert saved_tensor_bytes(lambda: (x @ w).sum()) == 4 * 8 * 4  # x counted, w not
    # w * 2 is computed inside fn: it is not a leaf, so when sin() saves it, it counts.
    assert saved_tensor_bytes(lambda: (w * 2).sin().sum()) == 8 * 8 * 4
    assert saved_tensor_bytes(lambda: w.sin().sum()) == 0


def test_one_storage_saved_twice_is_counted_once():
    w = torch.randn(1000, requires_grad=True)

    def square():
        a = w * 1.0  # a non-leaf tensor
        return (a * a).sum()  # mul saves `a` twice (self and other)

    assert saved_tensor_bytes(square) == 1000 * 4


def test_a_saved_view_counts_its_whole_storage():
    w = torch.randn(100, 10, requires_grad=True)

    def use_view():
        a = w * 1.0
        return (a[:5] * a[:5]).sum()  # the view keeps all 100x10 floats alive

    assert saved_tensor_bytes(use_view) == 100 * 10 * 4


def test_nothing_is_saved_under_no_grad():
    layer = nn.Linear(8, 8)
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: layer(torch.randn(4, 8))) == 0


def test_bfloat16_autocast_roughly_halves_saved_bytes_of_an_mlp_on_a_large_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    # Batch 2048 >> width 128: activations dominate the bfloat16 weight copies autocast also saves.
    x, y = torch.randn(2048, 64), torch.randint(0, 10, (2048,))
    fp32 = saved_tensor_bytes(lambda: nn.functional.cross_entropy(model(x), y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = saved_tensor_bytes(lambda: nn.functional.cross_entropy(model(x), y))
    assert 0.4 < bf16 / fp32 < 0.8


def test_the_graph_is_freed_after_measuring():
    w = torch.randn(10, requires_grad=True)
    refs = []

    def forward():
        a = w * 2
        refs.append(weakref.ref(a))
        return (a * a).sum()

    assert saved_tensor_bytes(forward) > 0
    gc.collect()
    assert refs[0]() is None


def test_saved_tensor_bytes_needs_a_function():
    with pytest.raises(TypeError, match="lambda"):
        saved_tensor_bytes(torch.randn(3))


def test_time_it_on_cpu_runs_warmup_then_repeats_and_measures_real_time():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)

    timing = time_it(work, warmup=2, repeats=3)
    assert len(calls) == 5
    assert isinstance(timing, Timing) and len(timing.times_s) == 3
    assert timing.median_s >= 0.002
    assert timing.median_ms == pytest.approx(1000 * timing.median_s)
    assert "median of 3 on cpu" in str(timing)


def test_time_it_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        time_it(lambda: None, repeats=0)
    with pytest.raises(TypeError):
        time_it(3)


def test_time_it_on_cuda():
    x = torch.randn(256, 256)
    if HAS_CUDA:
        x = x.cuda()
        timing = time_it(lambda: x @ x, device="cuda", warmup=1, repeats=3)
        assert timing.device.startswith("cuda") and all(t > 0 for t in timing.times_s)
    else:
        with pytest.raises(DeviceUnavailableError, match="needs a CUDA GPU"):
            time_it(lambda: x @ x, device="cuda")


def test_cuda_peak_memory():
    if HAS_CUDA:
        before = torch.cuda.memory_allocated()
        peak = cuda_peak_memory(lambda: torch.empty(4 * MIB, dtype=torch.uint8, device="cuda"))
        assert peak >= before + 4 * MIB
        with pytest.raises(ValueError, match="CUDA device"):
            cuda_peak_memory(lambda: None, device="cpu")
    else:
        with pytest.raises(DeviceUnavailableError, match="saved_tensor_bytes"):
            cuda_peak_memory(lambda: None)


def test_mib():
    assert mib(3 * MIB) == 3.0


def test_views_of_parameters_are_not_counted():
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(16, 64)
    # x, the relu output (saved by relu and by the second layer: once); the second layer also saves
    # weight.t(), a view of a parameter: not counted.
    assert saved_tensor_bytes(lambda: mlp(x).sum()) == 16 * 64 * 4 + 16 * 32 * 4


def test_by_dtype_splits_the_same_total():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))

    def fn():
        return nn.functional.cross_entropy(cnn(x), y)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = saved_tensor_bytes_by_dtype(fn)
        total = saved_tensor_bytes(fn)
    assert sum(parts.values()) == total
    assert parts[torch.bfloat16] > 0
    assert parts[torch.int64] >= 32 * 8 * 4 * 4 * 8  # max-pool indices stay int64
    with pytest.raises(TypeError):
        saved_tensor_bytes_by_dtype(None)


def test_cuda_bf16_native_asks_for_native_support(monkeypatch):
    from helpers import measure

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert measure.cuda_bf16_native() is False
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: calls.append(kw) or False)
    assert measure.cuda_bf16_native() is False and calls == [{"including_emulation": False}]

    def old_signature():  # a PyTorch without the argument: fall back to the compute capability
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_signature)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (7, 5))
    assert measure.cuda_bf16_native() is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 0))
    assert measure.cuda_bf16_native() is True
