"""Large checkpoints against the disk: time, peak memory and share of the disk's speed.

The same measurement as lesson 08, from the command line, at any size. For a state dict of
about ``--size-mb`` MB (a :class:`helpers.large_checkpoints.LargeToyModel`), in ``--folder``:

1. the disk's sequential write and read speed, measured now, in that folder (the reference);
2. saving with ``torch.save`` (CRC-32 on, the default), ``torch.save`` with CRC-32 off, the
   course's crash-safe ``atomic_save`` with CRC-32 off, and ``safetensors``: each until the
   bytes are on the disk (fsync);
3. loading the usual way (build the model, ``torch.load``, ``load_state_dict``), with
   ``torch.load(mmap=True)`` into a model built on the ``meta`` device with
   ``load_state_dict(assign=True)``, and with safetensors into a ``meta`` model: each read from
   the disk (the file is dropped from the page cache first), until ready and after the first
   forward pass.

Every save and load runs ``--repeats`` times, each in a fresh process (so its peak memory is its
own); the table shows medians. Then the course's targets are checked:

- the mmap + meta + assign load is ready in at most 10 % of the usual load's time,
- it adds at most 20 % of the checkpoint's size to peak memory,
- ``atomic_save`` with CRC-32 off reaches at least 70 % of the disk's write speed.

Exit status: 0 when every target is met, 1 when one is missed (the table says which), 2 for a
usage error. Files go to ``runs/benchmark_large_checkpoints/`` by default and are removed at the
end (``--keep`` keeps them). Needs free disk space of about twice ``--size-mb``.

Usage: ``python scripts/benchmark_large_checkpoints.py [--size-mb 256] [--repeats 3] [--folder DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.large_checkpoints import MB, benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=256.0, help="size of the state dict in MB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method (default 3)")
    parser.add_argument("--folder", type=Path, default=Path("runs") / "benchmark_large_checkpoints")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files at the end")
    args = parser.parse_args(argv)
    if args.size_mb < 17 or args.repeats < 1:
        parser.error("--size-mb must be at least 17 (one layer) and --repeats at least 1")
    existing = args.folder.resolve()
    while not existing.exists():  # the folder (or runs/ in a fresh clone) may not exist yet
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < 2.2 * args.size_mb * MB:
        print(f"Not enough free disk space in {args.folder}: {free / MB:,.0f} MB free, about "
              f"{2.2 * args.size_mb:,.0f} MB needed. Use a smaller --size-mb or another --folder.")
        return 2
    start = time.perf_counter()
    try:
        result = benchmark(args.folder, size_mb=args.size_mb, repeats=args.repeats, progress=print)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    print()
    print(result.table())
    print()
    print(f"Machine: {result.machine}. Took {time.perf_counter() - start:.0f} s.")
    missed = 0
    for name, (met, line) in result.check_targets().items():
        print(f"{'met   ' if met else 'MISSED'} {line}")
        missed += not met
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
