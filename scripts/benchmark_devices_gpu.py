"""Measure CPU vs GPU for lesson 04, and store the figures as the "devices" GPU reference.

    python scripts/benchmark_devices_gpu.py     # on a machine with a CUDA GPU

For a large matrix multiplication and for one training step of the course's DigitsCNN it
measures, on the CPU and on the GPU:

- the median time of a call after warm-up (``helpers.measure.time_it``: CUDA events and
  ``torch.cuda.synchronize()`` on the GPU);
- on the GPU, the very first call (CUDA context, cuBLAS/cuDNN set-up: why you warm up first);
- on the GPU, the time ``time.perf_counter()`` reports *without* synchronizing, which only
  measures how long queueing the work took (the classic mistake the lesson warns about).

The rows go to ``data/gpu_reference/devices.json`` through ``helpers.gpu_reference.write_reference``,
which adds the GPU's name, the PyTorch and CUDA versions and the date. Without a CUDA GPU the
script stops with a message and writes nothing.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone without installing the helpers

import torch  # noqa: E402
from torch import nn  # noqa: E402

from helpers.gpu_reference import write_reference  # noqa: E402
from helpers.measure import time_it  # noqa: E402
from helpers.models import DigitsCNN  # noqa: E402

SCRIPT = "scripts/benchmark_devices_gpu.py"
NO_GPU_MESSAGE = (
    "benchmark_devices_gpu.py compares the CPU with a CUDA GPU, and PyTorch sees no CUDA GPU "
    "here, so nothing was measured or written. Run it on a machine with a GPU (for example "
    "Colab with a GPU runtime): python scripts/benchmark_devices_gpu.py"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_workload(device: torch.device, size: int):
    """A function that multiplies two ``size`` x ``size`` float32 matrices on ``device``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator).to(device)
    b = torch.rand(size, size, generator=generator).to(device)
    return lambda: a @ b


def training_step_workload(device: torch.device, batch_size: int):
    """A function that runs one SGD training step of DigitsCNN on a batch of ``batch_size`` on ``device``."""
    torch.manual_seed(0)
    model = DigitsCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(batch_size, 1, 8, 8).to(device)
    y = torch.randint(0, 10, (batch_size,)).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def first_call_ms(fn, device: torch.device) -> float:
    """Time of one call with no warm-up before it, synchronized."""
    _sync(device)
    begin = time.perf_counter()
    fn()
    _sync(device)
    return 1000 * (time.perf_counter() - begin)


def unsynchronized_ms(fn, repeats: int = 5) -> float:
    """Median time of calls timed with perf_counter and no synchronize: only the queueing (wrong on a GPU)."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - begin))
    return statistics.median(times)


def benchmark_rows(gpu: torch.device, *, matmul_size: int = 4096, batch_size: int = 1024, repeats: int = 10) -> list[dict]:
    """Measure each workload on the CPU and on ``gpu``; one row per workload."""
    cpu = torch.device("cpu")
    workloads = [
        (f"matmul {matmul_size}x{matmul_size} float32", lambda d: matmul_workload(d, matmul_size)),
        (f"DigitsCNN training step, batch {batch_size}", lambda d: training_step_workload(d, batch_size)),
    ]
    rows = []
    for name, make in workloads:
        on_gpu = make(gpu)
        first = first_call_ms(on_gpu, gpu)
        gpu_ms = time_it(on_gpu, device=gpu, warmup=3, repeats=repeats).median_ms
        _sync(gpu)
        no_sync = unsynchronized_ms(on_gpu, repeats)
        _sync(gpu)
        cpu_ms = time_it(make(cpu), device=cpu, warmup=1, repeats=max(3, repeats // 3)).median_ms
        rows.append({
            "workload": name,
            "CPU ms": round(cpu_ms, 3),
            "GPU ms": round(gpu_ms, 3),
            "GPU speed-up": round(cpu_ms / gpu_ms, 1),
            "GPU first call ms (no warm-up)": round(first, 3),
            "GPU ms timed without synchronize (wrong)": round(no_sync, 3),
        })
    return rows


def main() -> Path:
    """Measure on this machine's GPU and write ``data/gpu_reference/devices.json``; exits without a GPU."""
    if not torch.cuda.is_available():
        raise SystemExit(NO_GPU_MESSAGE)
    gpu = torch.device("cuda:0")
    rows = benchmark_rows(gpu)
    notes = (
        f"CPU: {torch.get_num_threads()} threads. Median of timed calls after warm-up; GPU times "
        "with CUDA events and torch.cuda.synchronize(). The first-call column includes one-off "
        "set-up; the last column shows what perf_counter reports when you forget to synchronize."
    )
    path = write_reference("devices", rows, script=SCRIPT, notes=notes)
    for row in rows:
        print(row)
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
