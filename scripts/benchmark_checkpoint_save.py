"""How much does a crash-safe save cost? ``atomic_save`` against ``torch.save`` + fsync and bare ``torch.save``.

Builds a state dict of each size in ``--sizes`` (MB; float32 tensors of a few sizes, like a
model's layers) and times, in one folder on one disk, each write of ``last.pt``:

- ``torch.save``          bare ``torch.save(obj, path)``. It returns while the data are still
                          in the operating system's page cache: not durable, not crash-safe.
- ``torch.save + fsync``  ``torch.save`` then ``os.fsync``: the data are on the disk when it
                          returns. This is the fair baseline for a *durable* save.
- ``atomic_save``         ``helpers.checkpointing.atomic_save``: temp file in the same folder,
                          ``torch.save`` into it, ``flush`` + ``os.fsync``, ``os.replace``,
                          fsync of the folder. Durable *and* never leaves a half-written
                          ``last.pt``.

Method (what makes the figures comparable):

- The variants run round-robin: one untimed warm-up round, then ``--repeats`` timed rounds, the
  order shuffled in each round (seeded), so a drift of a shared machine hits them alike.
- After every save, untimed, ``os.sync()`` empties the page cache's queue of dirty data, so no
  variant pays for the data a bare ``torch.save`` left for the disk to write.
- Ratios are taken round by round (paired), then summarised as median and min-max.
- It holds the course's benchmark lock (``one_benchmark_at_a_time``), so lesson 08's benchmark
  and this one don't measure each other.
- The load average (1 minute) is printed before and after each size: a busy machine widens the
  ranges; quote them with the figures.

Usage::

    python scripts/benchmark_checkpoint_save.py [--sizes 10 100 500] [--repeats 15] [--folder DIR]

Files go to ``runs/benchmark_checkpoint_save/`` by default and are removed at the end. A size
that does not fit twice in the free disk space (the temporary file and the old ``last.pt``
exist at the same time) plus 1 GB is skipped, with a message.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.checkpointing import atomic_save  # noqa: E402
from helpers.large_checkpoints import one_benchmark_at_a_time  # noqa: E402


def make_state_dict(size_mb: float) -> dict[str, torch.Tensor]:
    """About ``size_mb`` MB of float32 tensors: pairs of a 1024-wide weight and its bias."""
    generator = torch.Generator().manual_seed(0)
    total = int(size_mb * 1e6 / 4)
    state, index = {}, 0
    while total > 0:
        rows = max(1, min(1024, total // 1024))
        state[f"layer{index}.weight"] = torch.randn(rows, 1024, generator=generator)
        state[f"layer{index}.bias"] = torch.randn(rows, generator=generator)
        total -= rows * 1024 + rows
        index += 1
    return state


def bare(obj, path: Path) -> None:
    torch.save(obj, path)


def bare_fsync(obj, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


VARIANTS = {
    "torch.save": bare,
    "torch.save + fsync": bare_fsync,
    "atomic_save": atomic_save,
}
# (numerator, denominator) of the paired ratios reported
RATIOS = [("atomic_save", "torch.save + fsync"), ("atomic_save", "torch.save")]


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def summary(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    """``median (min-max)`` of ``values`` times ``scale``."""
    median, low, high = (scale * v for v in (statistics.median(values), min(values), max(values)))
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def free_bytes(folder: Path) -> int:
    while not folder.exists():  # the nearest folder that exists is on the same disk
        folder = folder.parent
    return shutil.disk_usage(folder).free


def sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def run_size(size_mb: float, repeats: int, folder: Path, variants: dict, seed: int) -> dict[str, list[float]]:
    """Times of each variant (seconds), ``repeats`` interleaved rounds after one warm-up."""
    obj = make_state_dict(size_mb)
    nbytes = sum(t.numel() * t.element_size() for t in obj.values())
    path = folder / "last.pt"
    order_rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in variants}
    before = load_average()
    for round_ in range(repeats + 1):
        order = list(variants.items())
        order_rng.shuffle(order)
        for name, save in order:
            sync()
            start = time.perf_counter()
            save(obj, path)
            elapsed = time.perf_counter() - start
            sync()
            if round_:  # round 0 warms up the allocator and the file system
                times[name].append(elapsed)
        loaded = torch.load(path, weights_only=True, mmap=True)
        assert torch.equal(loaded["layer0.weight"], obj["layer0.weight"]), "a save wrote wrong data"
        del loaded
    after = load_average()

    print(f"\n{nbytes / 1e6:.0f} MB, {len(obj)} tensors | {repeats} interleaved rounds | "
          f"load average {before} before, {after} after ({os.cpu_count()} CPUs)")
    for name, values in times.items():
        print(f"  {name:<22} median (min-max) {summary(values, 1e3)} ms")
    for top, bottom in RATIOS:
        if top in times and bottom in times:
            ratios = [a / b for a, b in zip(times[top], times[bottom])]
            print(f"  {top} / {bottom:<20} paired ratio {summary(ratios, digits=2)}x")
    return times


def main(argv: list[str] | None = None, variants: dict | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10.0, 100.0, 500.0],
                        help="state dict sizes in MB (default 10 100 500)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per size, after one warm-up (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of the variants in each round")
    parser.add_argument("--folder", type=Path, default=Path("runs") / "benchmark_checkpoint_save")
    args = parser.parse_args(argv)
    variants = VARIANTS if variants is None else variants

    print(f"folder: {args.folder.resolve()} | torch {torch.__version__} | Python {platform.python_version()} | "
          f"{platform.system()} | {os.cpu_count()} CPUs")
    with one_benchmark_at_a_time(print):
        _run_all(args, variants)
    return 0


def _run_all(args, variants: dict) -> None:
    try:
        for size_mb in args.sizes:
            needed = 2 * size_mb * 1e6 + 1e9
            if free_bytes(args.folder) < needed:
                print(f"\n{size_mb:.0f} MB: skipped, {free_bytes(args.folder) / 1e9:.1f} GB free on the disk "
                      f"and it needs {needed / 1e9:.1f} GB (two copies and 1 GB to spare).")
                continue
            args.folder.mkdir(parents=True, exist_ok=True)
            run_size(size_mb, args.repeats, args.folder, variants, args.seed)
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
