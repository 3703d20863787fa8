"""Measuring memory and time correctly, on the CPU and on a CUDA GPU.

- :func:`saved_tensor_bytes`: the activation memory autograd keeps for the backward pass,
  measured with ``torch.autograd.graph.saved_tensors_hooks``. Works on every device, so a lesson
  run on a CPU can still show how mixed precision or gradient accumulation change memory.
- :func:`time_it`: wall-clock time of a function, with warm-up and, on a GPU, synchronization
  (CUDA kernels run asynchronously: timing without ``torch.cuda.synchronize()`` measures only how
  long it took to *queue* the work).
- :func:`cuda_peak_memory`: the peak GPU memory allocated while a function runs
  (``torch.cuda.reset_peak_memory_stats`` / ``torch.cuda.max_memory_allocated``); refuses, with
  a clear message, when there is no CUDA GPU.
- :func:`cuda_bf16_native`: whether the GPU runs bfloat16 natively, not only emulated.
- :func:`training_step_benchmark`: one row of a float32 / bfloat16 / float16 comparison (step
  time, activation memory, and peak GPU memory on a GPU), used by lesson 05 and by
  ``scripts/benchmark_mixed_precision_gpu.py``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from helpers.environment import DeviceUnavailableError

MIB = 2**20
"""Bytes in a mebibyte (MiB), the unit PyTorch's memory summaries use."""


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs.

    ``fn`` is typically ``lambda: loss_fn(model(x), y)``: a forward pass plus the loss, run with
    gradients enabled. Every tensor that autograd saves for the backward pass goes through a
    ``torch.autograd.graph.saved_tensors_hooks`` pack hook; this function adds up their sizes.

    What is counted:

    - each *storage* once (deduplicated by ``untyped_storage().data_ptr()``), with its full size
      (``untyped_storage().nbytes()``): a saved view keeps its whole storage alive, and one
      tensor saved by two operations is stored once;
    - tensors computed inside ``fn``: activations, and the low-precision *copies* of weights that
      ``torch.autocast`` makes (they are new tensors kept alive for backward, so they are memory
      that mixed precision adds);
    - the input batch, when an operation saves it (it is kept alive by the graph as well), and
      buffers such as BatchNorm's running statistics when an operation saves them (tiny).

    What is not counted: leaf tensors that require grad, i.e. the parameters themselves, and views
    of them (``nn.Linear`` saves ``weight.t()``, a view of the weight). They exist whether or not
    you train, so they are not *activation* memory; their size is
    ``sum(p.numel() * p.element_size() for p in model.parameters())``.

    Returns 0 when nothing is saved (e.g. under ``torch.no_grad()``). The result of ``fn()`` is
    dropped before returning, which frees the graph; nothing else is kept.
    """
    return sum(saved_tensor_bytes_by_dtype(fn).values())


def saved_tensor_bytes_by_dtype(fn: Callable[[], Any]) -> dict[torch.dtype, int]:
    """Like :func:`saved_tensor_bytes`, split by dtype: ``{torch.bfloat16: ..., torch.int64: ...}``.

    Counts exactly what :func:`saved_tensor_bytes` counts (each storage once, parameters
    excluded); a storage is filed under the dtype of the first tensor that saved it. Useful to
    see *which* saved tensors mixed precision shrinks and which it leaves alone (integer indices,
    float32 statistics).
    """
    if not callable(fn):
        raise TypeError(
            f"saved_tensor_bytes needs a function to call, got {type(fn).__name__}. "
            "Wrap the forward pass: saved_tensor_bytes(lambda: loss_fn(model(x), y))."
        )
    # Holding the storages (not copies) until the end means no address can be freed and reused
    # during fn(), so deduplicating by data_ptr() is exact.
    storages: list[tuple[torch.UntypedStorage, torch.dtype]] = []
    extra: dict[torch.dtype, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not _is_parameter_like(tensor):
            try:
                storages.append((tensor.untyped_storage(), tensor.dtype))
            except (RuntimeError, NotImplementedError):  # e.g. sparse tensors have no storage
                extra[tensor.dtype] = extra.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        result = fn()
    del result

    seen: dict[tuple[str, int], tuple[int, torch.dtype]] = {}
    for storage, dtype in storages:
        key = (str(storage.device), storage.data_ptr())
        size = max(seen[key][0], storage.nbytes()) if key in seen else storage.nbytes()
        seen[key] = (size, seen[key][1] if key in seen else dtype)
    storages.clear()
    by_dtype = dict(extra)
    for size, dtype in seen.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    return by_dtype


def _is_parameter_like(tensor: torch.Tensor) -> bool:
    """A leaf tensor that requires grad (a parameter), or a view of one (``weight.t()``)."""
    base = getattr(tensor, "_base", None)
    base = tensor if base is None else base
    return base.is_leaf and base.requires_grad


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """The result of :func:`time_it`: every repeat's time in seconds and their median."""

    times_s: list[float] = field(default_factory=list)
    device: str = "cpu"

    @property
    def median_s(self) -> float:
        """Median of the repeats, in seconds (robust to one slow outlier)."""
        return statistics.median(self.times_s)

    @property
    def median_ms(self) -> float:
        """Median of the repeats, in milliseconds."""
        return 1000 * self.median_s

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms (median of {len(self.times_s)} on {self.device})"


def time_it(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    On the CPU each call is timed with ``time.perf_counter``. On a CUDA GPU it is timed with CUDA
    events and ``torch.cuda.synchronize()`` before and after, because GPU work runs
    asynchronously: without synchronizing you would time how long it took to queue the kernels,
    not to run them. Warm-up calls absorb one-off costs (kernel selection, allocator growth,
    lazy initialization) that a training loop pays only once.

    Returns a :class:`Timing`; use ``.median_ms``.
    """
    if not callable(fn):
        raise TypeError(f"time_it needs a function to call, got {type(fn).__name__}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "time_it(device='cuda') needs a CUDA GPU and none is visible. "
            "Time on the CPU with device='cpu', or run on a machine with a GPU."
        )
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            _synchronize(device)
            times.append(time.perf_counter() - begin)
    return Timing(times_s=times, device=str(device))


def cuda_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cuda") -> int:
    """Peak bytes of GPU memory allocated by PyTorch while ``fn()`` runs.

    Resets the peak counter (``torch.cuda.reset_peak_memory_stats``), runs ``fn()``,
    synchronizes and reads ``torch.cuda.max_memory_allocated``. The figure is the peak of *all*
    tensors allocated on that GPU, including those that existed before ``fn`` (the model, the
    optimizer state); subtract ``torch.cuda.memory_allocated()`` taken before to get the increase.
    It counts tensors, not the memory PyTorch's caching allocator reserved
    (``max_memory_reserved``) nor the CUDA context.

    Raises :class:`~helpers.environment.DeviceUnavailableError` without a CUDA GPU.
    """
    if not callable(fn):
        raise TypeError(f"cuda_peak_memory needs a function to call, got {type(fn).__name__}")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "cuda_peak_memory() measures GPU memory and needs a CUDA GPU, but none is visible. "
            "On a CPU, measure activation memory with saved_tensor_bytes() instead."
        )
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"cuda_peak_memory measures a CUDA device, got {device}")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    del result
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def cuda_bf16_native() -> bool:
    """True when the current CUDA GPU runs bfloat16 natively (Ampere and newer, or ROCm).

    ``torch.cuda.is_bf16_supported()`` on its own also returns True where bfloat16 is only
    *emulated* (for example a T4 or a V100): tensors can be made, but without fast bfloat16 math.
    This asks for native support with ``including_emulation=False``; on a PyTorch without that
    argument it falls back to the compute capability (8 or more). False without a CUDA GPU.
    """
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a PyTorch without the argument
        return bool(torch.version.hip) or torch.cuda.get_device_capability()[0] >= 8


def mib(n_bytes: int | float) -> float:
    """``n_bytes`` in MiB (2**20 bytes)."""
    return n_bytes / MIB


PRECISIONS = ("float32", "bfloat16", "float16")
"""The precisions :func:`training_step_benchmark` compares."""


def training_step_benchmark(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    *,
    warmup: int = 3,
    repeats: int = 10,
    lr: float = 0.01,
) -> dict:
    """Measure one SGD training step of ``model`` on the batch ``(x, y)`` in ``precision``.

    ``precision`` is ``"float32"`` (no autocast), ``"bfloat16"`` (autocast, no scaler) or
    ``"float16"`` (autocast plus ``torch.amp.GradScaler``). Everything runs on ``x.device``;
    ``model`` must already be there, and is trained by the measured steps (use a fresh copy per
    precision). Returns a row::

        {"precision": ..., "batch_size": ..., "step_ms": median step time,
         "activations_mib": saved_tensor_bytes of forward + loss,
         "peak_mib": peak GPU memory of one step (CUDA only, else None)}

    The step is the lesson's recipe: ``zero_grad``, forward and loss under ``torch.autocast``,
    ``scaler.scale(loss).backward()``, ``scaler.step(optimizer)``, ``scaler.update()`` (a scaler
    built with ``enabled=False`` for float32 and bfloat16 passes everything straight through).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = x.device
    if any(p.device != device for p in model.parameters()):
        raise ValueError(f"the model and the batch must be on the same device; the batch is on {device}")
    low = precision != "float32"
    dtype = torch.float16 if precision == "float16" else torch.bfloat16
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "float16")
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def forward() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=low):
            return loss_fn(model(x), y)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(forward()).backward()
        scaler.step(optimizer)
        scaler.update()

    timing = time_it(step, device=device, warmup=warmup, repeats=repeats)
    row = {
        "precision": precision,
        "batch_size": len(x),
        "step_ms": timing.median_ms,
        "activations_mib": mib(saved_tensor_bytes(forward)),
        "peak_mib": None,
    }
    if device.type == "cuda":
        row["peak_mib"] = mib(cuda_peak_memory(step, device))
    return row
