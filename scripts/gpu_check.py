"""`make gpu-check`: on a machine with a CUDA GPU, run every lesson's GPU path and the GPU benchmarks.

    python scripts/gpu_check.py            # what `make gpu-check` runs

1. Every lesson in ``solutions/`` (the list is read from the folder, so a new lesson is included)
   runs under nbval, as ``make test`` runs it: with a GPU visible, ``helpers.environment.pick_device``
   chooses it, so the lessons' GPU branches run, and every check must still say *correct*.
2. Every ``scripts/benchmark_*_gpu.py`` runs; each stores its figures in
   ``data/gpu_reference/<name>.json`` through ``helpers.gpu_reference.write_reference``, which adds
   the GPU's name, the PyTorch and CUDA versions and the date (and refuses without a GPU).

Without a CUDA GPU it stops at once with exit status 2 and writes nothing: a reference figure is
never made up on a CPU. The whole run must finish within :data:`TIME_LIMIT_SECONDS`; a step
still running then is stopped and reported. Exit status 0 when every step passed, 1 otherwise.
Commit the new ``data/gpu_reference/*.json`` files afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIME_LIMIT_SECONDS = 600.0
"""The whole GPU check, notebooks and benchmarks, within 10 minutes."""

NO_GPU_MESSAGE = (
    "make gpu-check runs the lessons' GPU paths and measures the GPU reference figures, and PyTorch "
    "sees no CUDA GPU here, so nothing was run or written. Run it on a machine with an NVIDIA GPU "
    "and a CUDA build of PyTorch (check with: python -c 'import torch; print(torch.cuda.is_available())')."
)


def lesson_notebooks(root: Path = ROOT) -> list[Path]:
    """Every lesson's solutions notebook (``solutions/NN_*.ipynb``), in lesson order."""
    return sorted(path for path in (root / "solutions").glob("[0-9][0-9]_*.ipynb"))


def gpu_benchmarks(root: Path = ROOT) -> list[Path]:
    """Every GPU benchmark script (``scripts/benchmark_*_gpu.py``)."""
    return sorted((root / "scripts").glob("benchmark_*_gpu.py"))


def steps(root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """The commands the check runs, each with a short name: the notebooks first, then each benchmark."""
    notebooks = [str(path.relative_to(root)) for path in lesson_notebooks(root)]
    run_notebooks = [sys.executable, "-m", "pytest", *notebooks, "--nbval-lax", "--nbval-current-env",
                     "--nbval-cell-timeout=300", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadscope"]
    return [(f"{len(notebooks)} lessons on the GPU", run_notebooks)] + [
        (path.name, [sys.executable, str(path.relative_to(root))]) for path in gpu_benchmarks(root)]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    if not cuda_available():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return 2
    start = time.monotonic()
    results = []
    for name, command in steps(root):
        left = TIME_LIMIT_SECONDS - (time.monotonic() - start)
        began = time.monotonic()
        if left <= 0:
            results.append((name, "not run: the 10 minutes were used up", 0.0))
            continue
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        try:
            status = subprocess.run(command, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), timeout=left).returncode
            outcome = "passed" if status == 0 else f"failed (exit status {status})"
        except subprocess.TimeoutExpired:
            outcome = f"stopped: the whole check may take {TIME_LIMIT_SECONDS:g} s"
        results.append((name, outcome, time.monotonic() - began))
    written = sorted(path.relative_to(root) for path in (root / "data" / "gpu_reference").glob("*.json")
                     if path.stat().st_mtime >= time.time() - (time.monotonic() - start))
    print("\n== gpu-check summary")
    for name, outcome, seconds in results:
        print(f"{seconds:6.1f} s  {outcome:<12}  {name}")
    print(f"{time.monotonic() - start:6.1f} s in all (limit {TIME_LIMIT_SECONDS:g} s)")
    print("written: " + (", ".join(map(str, written)) or "nothing") + "  (commit them)")
    return 0 if all(outcome == "passed" for _, outcome, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
