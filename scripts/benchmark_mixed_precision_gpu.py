"""Measure float32 vs bfloat16 vs float16 (+ GradScaler) training steps on a CUDA GPU.

    python scripts/benchmark_mixed_precision_gpu.py            # on a machine with a CUDA GPU

For each of the course's models at a few batch sizes, and each precision, it measures the median
time of one training step (after warm-up, synchronized with CUDA events), the peak GPU memory of
one step and the activation memory autograd saves, then stores the rows in
``data/gpu_reference/mixed_precision.json`` with the GPU's name, the PyTorch and CUDA versions and
the date (``helpers.gpu_reference.write_reference``). Lesson 05 shows that table when it runs
without a GPU. Without a CUDA GPU this script prints why and exits with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/...` from a clone without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from helpers.environment import DeviceUnavailableError  # noqa: E402
from helpers.gpu_reference import reference_table, write_reference  # noqa: E402
from helpers.measure import PRECISIONS, cuda_bf16_native, training_step_benchmark  # noqa: E402
from helpers.models import DigitsCNN, DigitsMLP  # noqa: E402

NAME = "mixed_precision"
SCRIPT = "scripts/benchmark_mixed_precision_gpu.py"
MODELS: dict[str, Callable[[], nn.Module]] = {
    "DigitsCNN(width=32)": lambda: DigitsCNN(width=32),  # the model of lesson 05
    "DigitsMLP(hidden=2048)": lambda: DigitsMLP(hidden=2048),
}
BATCH_SIZES = (256, 2048, 8192)
NO_CUDA_MESSAGE = (
    "No CUDA GPU is visible to PyTorch, so nothing was measured and nothing was written. "
    "Run this script on a machine with a CUDA GPU (for example Colab with a GPU runtime)."
)


def measure_rows(
    device: torch.device | str,
    *,
    models: dict[str, Callable[[], nn.Module]] | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    precisions: tuple[str, ...] = PRECISIONS,
    warmup: int = 5,
    repeats: int = 20,
    seed: int = 0,
) -> list[dict]:
    """One row per (model, batch size, precision), measured on ``device``.

    Each precision starts from the same freshly seeded model and the same random batch of 8x8
    "digits". Rows get ``time_vs_fp32`` and ``activations_vs_fp32`` (ratios to the float32 row of
    the same model and batch size; below 1 means faster / smaller) and, on a GPU,
    ``peak_vs_fp32``.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(NO_CUDA_MESSAGE)
    models = MODELS if models is None else models
    rows = []
    for model_name, make_model in models.items():
        for batch_size in batch_sizes:
            generator = torch.Generator().manual_seed(seed)
            x = torch.rand(batch_size, 1, 8, 8, generator=generator).to(device)
            y = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
            baseline = None
            for precision in precisions:
                torch.manual_seed(seed)
                model = make_model().to(device)
                row = training_step_benchmark(model, x, y, precision, warmup=warmup, repeats=repeats)
                row = {"model": model_name, **row}
                if precision == "float32":
                    baseline = row
                if baseline is not None:
                    row["time_vs_fp32"] = row["step_ms"] / baseline["step_ms"]
                    row["activations_vs_fp32"] = row["activations_mib"] / baseline["activations_mib"]
                    if row["peak_mib"] is not None:
                        row["peak_vs_fp32"] = row["peak_mib"] / baseline["peak_mib"]
                if row["peak_mib"] is None:
                    del row["peak_mib"]
                rows.append(row)
                del model
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure on the GPU and write the reference file; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 1
    precisions = PRECISIONS
    notes = ("step_ms: median of one SGD training step after warm-up; peak_mib: "
             "torch.cuda.max_memory_allocated during one step (model, gradients, batch included); "
             "activations_mib: tensors saved for backward (helpers.measure.saved_tensor_bytes).")
    if not cuda_bf16_native():
        precisions = tuple(p for p in PRECISIONS if p != "bfloat16")
        notes += " This GPU has no native bfloat16 (is_bf16_supported(including_emulation=False) is False), so it has no bfloat16 rows."
    rows = measure_rows("cuda", precisions=precisions, warmup=args.warmup, repeats=args.repeats)
    path = write_reference(NAME, rows, script=SCRIPT, notes=notes)
    print(reference_table(NAME, SCRIPT))
    print(f"\nWrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
