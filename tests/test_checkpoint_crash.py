"""Kill a process with SIGKILL while it saves checkpoints, many times: the latest always loads.

A child process saves 4 MiB checkpoints in a loop through ``CheckpointManager`` (keeping the
last 2); the parent kills it at random moments with SIGKILL (no cleanup handler can run), then
checks that ``latest()`` names a complete checkpoint that loads and is self-consistent, that no
progress was lost, and that every checkpoint file in the folder is complete. Children are forked
from a fork server that imported torch once, so each restart is fast.

Set ``CRASH_TEST_SEED`` to replay a run (the seed is printed; see it with ``pytest -s``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import time
import warnings
from pathlib import Path

import pytest

from helpers.checkpointing import _TEMP_RE, CheckpointManager, is_complete_checkpoint, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_crash_child as child  # noqa: E402

KILLS = 30

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="needs SIGKILL and the forkserver start method (Linux, macOS)",
)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if _TEMP_RE.match(p.name)]


def test_latest_checkpoint_survives_sigkill_at_random_moments(tmp_path, capsys):
    seed = int(os.environ.get("CRASH_TEST_SEED", "20260311"))
    rng = random.Random(seed)
    print(f"crash test seed: {seed} (set CRASH_TEST_SEED={seed} to replay)")

    ctx = child.forkserver()
    folder = tmp_path / "checkpoints"

    mid_save = 0  # kills that left a temporary file: the child was inside atomic_save
    last_step = -1
    started_at = time.perf_counter()
    for kill in range(KILLS):
        started = ctx.Event()
        process = ctx.Process(target=child.save_forever, args=(str(folder), started), daemon=True)
        process.start()
        assert started.wait(60), "the child did not start"
        # Kill somewhere in the next few saves (a 4 MiB save takes a few milliseconds).
        time.sleep(rng.uniform(0.002, 0.08))
        process.kill()  # SIGKILL
        process.join(10)
        assert process.exitcode == -9, process.exitcode

        leftovers = temp_files(folder)
        mid_save += any(_TEMP_RE.match(p.name)["target"].endswith(".pt") for p in leftovers)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manager = CheckpointManager(folder, keep_last=child.KEEP_LAST)  # removes leftovers
            latest = manager.latest()
        problems = [str(w.message) for w in caught if "Removed" not in str(w.message)]
        assert not problems, f"kill {kill}: {problems}"
        assert not temp_files(folder), "stale temporary files were not removed"
        if latest is None:
            assert last_step == -1, f"kill {kill}: every checkpoint is gone (had step {last_step})"
            continue

        step = manager.parse(latest)["step"]
        checkpoint = load_checkpoint(latest, required=("step", "weights", "steps"))
        child.check_checkpoint(checkpoint, step)
        assert step >= last_step, f"kill {kill}: latest went back from step {last_step} to {step}"
        last_step = step
        for path in manager.checkpoints():  # every file under a checkpoint name is complete
            assert is_complete_checkpoint(path) is None, path
            child.check_checkpoint(load_checkpoint(path), manager.parse(path)["step"])

    # A kill between a save and its rotation leaves old files behind (save first, delete after);
    # the next save that completes cleans them up.
    manager = CheckpointManager(folder, keep_last=child.KEEP_LAST)
    manager.save(child.make_checkpoint(last_step + 1), step=last_step + 1)
    assert [manager.parse(p)["step"] for p in manager.checkpoints()] == [last_step, last_step + 1]

    elapsed = time.perf_counter() - started_at
    print(f"{KILLS} kills in {elapsed:.1f} s; {mid_save} landed in the middle of a save; last step {last_step}")
    assert last_step > 0, "no checkpoint was ever completed: the kills came too early"
    assert mid_save >= 1, "no kill landed in the middle of a save, so the test proved nothing"
