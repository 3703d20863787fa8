"""Measure what checking every record's CRC-32 costs when loading a checkpoint, per GB.

``helpers.checkpoint_files.load_checkpoint`` checks the CRC-32 of every zip record by default
(``verify_crc=True``), because ``torch.load`` does not. This script saves a checkpoint of
``--mb`` megabytes, then, ``--runs`` times in alternating order: loads it with the check and
without it, and times the check alone (``verify_zip_crc``). The file is read once before the
first run, so both loads read from the page cache (the check's cost when the file is already
in memory; on a cold cache the check's read is what brings the file in, and the load that
follows finds it in the cache).

    python scripts/measure_crc_cost.py --mb 256 --runs 5

Prints each run and the range, in seconds per GB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.checkpoint_files import load_checkpoint, verify_zip_crc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="checkpoint size in MB (default 256)")
    parser.add_argument("--runs", type=int, default=5, help="paired runs (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "runs" if (Path(__file__).resolve().parent.parent / "runs").is_dir() else None) as folder:
        path = Path(folder) / "crc.pt"
        tensors = {f"layer{i}.weight": torch.randn(args.mb * 250_000 // 8) for i in range(8)}  # 8 tensors, --mb MB
        torch.save(tensors, path)
        gigabytes = path.stat().st_size / 1e9
        path.read_bytes()  # warm the page cache once
        check, with_crc, without = [], [], []
        for run in range(args.runs):
            order = [True, False] if run % 2 == 0 else [False, True]
            for verify in order:
                start = time.perf_counter()
                load_checkpoint(path, verify_crc=verify)
                (with_crc if verify else without).append(time.perf_counter() - start)
            start = time.perf_counter()
            assert verify_zip_crc(path) is None
            check.append(time.perf_counter() - start)
            print(f"run {run + 1}: check {check[-1] / gigabytes:.2f} s/GB; load with check {with_crc[-1]:.3f} s, "
                  f"without {without[-1]:.3f} s ({gigabytes * 1000:.0f} MB)")
        extra = [(a - b) / gigabytes for a, b in zip(with_crc, without)]
        print(f"CRC-32 check alone: {min(check) / gigabytes:.2f}-{max(check) / gigabytes:.2f} s per GB over {args.runs} runs")
        print(f"load_checkpoint with the check minus without: {min(extra):.2f}-{max(extra):.2f} s per GB over {args.runs} paired runs")


if __name__ == "__main__":
    main()
