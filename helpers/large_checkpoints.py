"""Large checkpoints measured against the disk: time and peak memory of each way to save and load.

Used by lesson 08 and by ``scripts/benchmark_large_checkpoints.py``; both print the same table.

- :class:`LargeToyModel`: a stack of ``Linear`` layers sized to a number of MB, so a lesson can
  make a checkpoint as big as the machine allows.
- :func:`write_raw_bytes` / :func:`read_raw_bytes`: the physical reference, measured in the
  same rounds and the same folder as the formats: the same bytes written to the disk with no
  format (then ``fsync``) and read back from the disk (after dropping the file from the page
  cache).
- :func:`drop_from_page_cache`: asks the OS to forget a file's cached pages, so the next read
  really comes from the disk (Linux; elsewhere it says it could not).
- :func:`run_in_fresh_process`: runs one measurement in a new process (forked from a server that
  has imported torch once), so that its peak memory (``VmHWM``) belongs to that measurement
  alone.
- :data:`SAVE_METHODS` / :data:`LOAD_METHODS`: the recipes being compared, each a small
  function you can read.
- :func:`save_sharded_safetensors`: writes a state dict the way the Hugging Face Hub stores a
  large model: ``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json``.
- :func:`one_benchmark_at_a_time`: a machine-wide lock, so that two benchmarks don't measure each
  other.
- :func:`benchmark`: measures everything, round-robin over ``repeats`` rounds, and returns a
  :class:`BenchmarkResult` with :meth:`~BenchmarkResult.table` and
  :meth:`~BenchmarkResult.check_targets`.

Units: MB is 10**6 bytes and MB/s 10**6 bytes per second, as disk makers count. Peak memory is
the peak resident set size (RSS, from ``/proc/self/status``) *above* what the process held
before the measurement started; where ``/proc`` is missing (macOS, Windows) it is reported as
not measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from helpers.checkpointing import atomic_save

__all__ = [
    "MB",
    "LargeToyModel",
    "crc32_disabled",
    "drop_from_page_cache",
    "fsync_file",
    "rss_bytes",
    "reset_peak_rss",
    "peak_rss_bytes",
    "write_raw_bytes",
    "read_raw_bytes",
    "REFERENCE",
    "run_in_fresh_process",
    "SAVE_METHODS",
    "LOAD_METHODS",
    "one_benchmark_at_a_time",
    "Measurement",
    "BenchmarkResult",
    "TARGETS",
    "benchmark",
    "folder_bytes",
    "save_sharded_safetensors",
]

MB = 10**6
"""Bytes in a megabyte as disk makers count it (the unit of every speed in lesson 08)."""

TARGETS = {
    "lean_ready_fraction": 0.10,
    "lean_peak_fraction": 0.20,
    "save_disk_fraction": 0.70,
}
"""The course's targets (issue 7): the mmap + meta + assign load is ready in at most 10 % of the
usual load's time and adds at most 20 % of the checkpoint's size to peak memory; the course's
save reaches at least 70 % of the disk's measured write speed."""


class LargeToyModel(nn.Module):
    """A stack of ``width x width`` ``Linear`` layers with about ``size_mb`` MB of float32 weights.

    ``LargeToyModel(size_mb=256)`` has 16 layers of 2048 x 2048 (16.8 MB each). It stands in for
    a large model: what matters for saving and loading is how many bytes the state dict holds.
    Construction is seeded (``seed``), so two processes build the same weights; the caller's
    random state is left as it was.
    """

    def __init__(self, size_mb: float = 256, width: int = 2048, seed: int = 0) -> None:
        super().__init__()
        layer_bytes = (width * width + width) * 4
        depth = max(1, round(size_mb * MB / layer_bytes))
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(seed)
            self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

    @property
    def num_bytes(self) -> int:
        """Bytes of all parameters and buffers (what a state dict of this model holds)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


# -- the operating system: page cache, fsync, memory ------------------------------------------------


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file that is already written (and closed) to the disk: ``os.fsync``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_from_page_cache(path: str | os.PathLike) -> bool:
    """Ask the OS to drop ``path``'s pages from its cache, so the next read comes from the disk.

    Calls ``os.fsync`` (only clean pages can be dropped) and then
    ``os.posix_fadvise(..., POSIX_FADV_DONTNEED)``. Returns ``True`` where that exists (Linux),
    ``False`` where it does not (macOS, Windows): reads there may come from memory, and the
    lesson says so.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """This process's resident memory now (``VmRSS``), or ``None`` where ``/proc`` is missing."""
    return _proc_status("VmRSS")


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (``VmHWM``), or ``None`` where ``/proc`` is missing."""
    return _proc_status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the peak (``VmHWM``) to the current RSS by writing 5 to ``/proc/self/clear_refs``.

    Returns ``False`` where that is not possible (not Linux, or a kernel that forbids it); the
    peak then can't be measured for one step alone.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return peak_rss_bytes() is not None


class _Probe:
    """Time and peak memory since it was created; ``mark(name)`` records both."""

    def __init__(self) -> None:
        self.memory = reset_peak_rss()
        self.base = rss_bytes() if self.memory else None
        self.marks: dict[str, dict[str, float | int | None]] = {}
        self.start = time.perf_counter()

    def mark(self, name: str) -> None:
        seconds = time.perf_counter() - self.start
        extra_peak = extra_now = None
        if self.memory:
            extra_peak = peak_rss_bytes() - self.base
            extra_now = rss_bytes() - self.base
        self.marks[name] = {"seconds": seconds, "peak_extra_bytes": extra_peak, "rss_extra_bytes": extra_now}


@contextlib.contextmanager
def crc32_disabled() -> Iterator[None]:
    """Within the block, ``torch.save`` skips the CRC-32 checksums of its zip records.

    ``torch.serialization.set_crc32_options(False)`` is a global switch; this restores the old
    value afterwards. ``torch.load`` does not verify the checksums (PyTorch builds its zip
    reader without CRC checks), so nothing that loads the file changes; only tools that check a
    zip's CRCs (``unzip -t``) would complain.
    """
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


# -- the recipes being compared -----------------------------------------------------------------------


def _first_forward(model: nn.Module) -> None:
    """One forward pass: it touches every weight, so lazily loaded bytes are read now."""
    with torch.no_grad():
        model(torch.zeros(1, model.width))


def save_torch(state: dict, path: Path) -> None:
    """``torch.save`` (CRC-32 on, the default), then ``fsync``: the bytes are on the disk."""
    torch.save(state, path)
    fsync_file(path)


def save_torch_no_crc(state: dict, path: Path) -> None:
    """``torch.save`` with the CRC-32 checksums off, then ``fsync``."""
    with crc32_disabled():
        torch.save(state, path)
    fsync_file(path)


def save_atomic_no_crc(state: dict, path: Path) -> None:
    """The course's crash-safe ``atomic_save`` (lesson 03) with the CRC-32 checksums off."""
    with crc32_disabled():
        atomic_save(state, path)


def save_safetensors(state: dict, path: Path) -> None:
    """``safetensors.torch.save_file``, then ``fsync``."""
    from safetensors.torch import save_file

    save_file(state, str(path))
    fsync_file(path)


def load_usual(path: Path, size_mb: float) -> nn.Module:
    """The usual way: build the model (random init), ``torch.load`` a full copy, copy it in."""
    model = LargeToyModel(size_mb)
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state)
    del state
    return model


def load_lean(path: Path, size_mb: float) -> nn.Module:
    """Model on the ``meta`` device, ``torch.load(mmap=True)``, ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        model = LargeToyModel(size_mb)
    state = torch.load(path, mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    return model


def load_safetensors(path: Path, size_mb: float) -> nn.Module:
    """Model on the ``meta`` device, ``safetensors.torch.load_file``, ``load_state_dict(assign=True)``."""
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = LargeToyModel(size_mb)
    model.load_state_dict(load_file(str(path)), assign=True)
    return model


def write_raw_bytes(state: dict, path: Path, chunk: int = 16 << 20) -> None:
    """The disk's reference for saves: as many bytes as the state dict holds, with no format at all.

    Independent of every recipe it is compared with: one 16 MB buffer, written again and again
    with plain ``write()`` calls until the file has the state dict's size, then ``fsync``. No
    tensor is serialized and no course code is involved, so it measures the disk (and the
    operating system's write path), not a writer.
    """
    total = sum(t.numel() * t.element_size() for t in state.values())
    buffer = memoryview(bytes(range(256)) * (chunk // 256))
    with open(path, "wb", buffering=0) as handle:
        left = total
        while left > 0:
            left -= handle.write(buffer[: min(chunk, left)])
        os.fsync(handle.fileno())


def read_raw_bytes(path: Path, chunk: int = 16 << 20) -> None:
    """The disk's reference for loads: read the whole file in 16 MB pieces into one buffer."""
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


REFERENCE = "raw bytes (the disk)"
"""The reference row: the same number of bytes written or read with no format and no course code."""

SAVE_METHODS: dict[str, tuple[Callable[[dict, Path], None], str]] = {
    REFERENCE: (write_raw_bytes, "raw.bin"),
    "torch.save": (save_torch, "model.pt"),
    "torch.save, CRC off": (save_torch_no_crc, "model.pt"),
    "atomic_save, CRC off": (save_atomic_no_crc, "model.pt"),
    "safetensors save_file": (save_safetensors, "model.safetensors"),
}
"""Save recipes: name -> (function(state, path), file name). Each ends with the bytes on disk."""

LOAD_METHODS: dict[str, tuple[Callable[[Path, float], nn.Module | None], str]] = {
    REFERENCE: (lambda path, size_mb: read_raw_bytes(path), "raw.bin"),
    "torch.load + load_state_dict": (load_usual, "model.pt"),
    "mmap + meta + assign": (load_lean, "model.pt"),
    "safetensors + meta + assign": (load_safetensors, "model.safetensors"),
}
"""Load recipes: name -> (function(path, size_mb) -> model, file name)."""


# -- running a measurement in a fresh process ---------------------------------------------------------


def _save_child(folder: str, size_mb: float, repeats: int) -> dict[str, list[dict]]:
    """All saves in one process, like a training run that saves again and again.

    One state dict; one untimed warm-up save per recipe (the first large write of a new
    process is slower: the kernel's write throttling learns each process's rate); then
    ``repeats`` rounds of every recipe in turn, each timed with its own peak-memory probe.
    Like :class:`~helpers.checkpointing.CheckpointManager`, every save goes to a new file name
    and the previous file is deleted afterwards, outside the timing (deleting a large file
    takes the file system a while too, but that is rotation, not saving). The last file of
    each recipe is renamed to the recipe's file name, for the loads.
    """
    state = LargeToyModel(size_mb).state_dict()
    runs: dict[str, list[dict]] = {name: [] for name in SAVE_METHODS}
    previous: dict[str, Path] = {}

    def save(name: str, index: int, probe: _Probe | None) -> None:
        function, file_name = SAVE_METHODS[name]
        recipe = list(SAVE_METHODS).index(name)
        path = Path(folder) / f"{Path(file_name).stem}-recipe{recipe}-{index}{Path(file_name).suffix}"
        function(state, path)
        if probe is not None:
            probe.mark("done")
            runs[name].append(probe.marks)
        if name in previous:
            previous[name].unlink(missing_ok=True)
        previous[name] = path

    for name in SAVE_METHODS:
        save(name, 0, None)
    for index in range(1, repeats + 1):
        for name in SAVE_METHODS:
            save(name, index, _Probe())
    for name, path in previous.items():
        os.replace(path, Path(folder) / SAVE_METHODS[name][1])
    return runs


WARMUP_MB = 17
"""Size of the warm-up checkpoint each load process reads first (one 2048 x 2048 layer)."""


def _write_warmup_files(folder: Path) -> None:
    """Small files in every format, for :func:`_load_child`'s untimed warm-up."""
    state = LargeToyModel(WARMUP_MB).state_dict()
    torch.save(state, folder / "warmup.pt")
    save_safetensors(state, folder / "warmup.safetensors")
    write_raw_bytes(state, folder / "warmup.bin")


def _load_child(name: str, folder: str, size_mb: float) -> dict:
    """One load in its own process: until ready, then the first forward pass.

    The process first loads a small checkpoint the same way, untimed (when
    :func:`_write_warmup_files` made one): the first use of a code path in a process costs
    memory once (imports, the meta device's setup: about 10 MB here), and that is not what the
    checkpoint adds.
    """
    function, file_name = LOAD_METHODS[name]
    warmup = Path(folder) / f"warmup{Path(file_name).suffix}"
    if warmup.exists():
        function(warmup, WARMUP_MB)
    probe = _Probe()
    model = function(Path(folder) / file_name, size_mb)
    probe.mark("ready")
    if model is not None:
        if any(t.device.type == "meta" for t in model.state_dict().values()):
            raise RuntimeError(f"{name}: some weights are still on the meta device after loading")
        _first_forward(model)
    probe.mark("first_forward")
    return probe.marks


def _child_main(connection, function: Callable, args: tuple) -> None:
    try:
        connection.send(("ok", function(*args)))
    except BaseException:  # send every failure back: the parent raises it with the traceback
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "safetensors.torch", "helpers.large_checkpoints"])
        return context
    return multiprocessing.get_context("spawn")  # Windows: slower (imports torch each time)


def run_in_fresh_process(function: Callable, *args: Any, timeout: float = 300) -> Any:
    """Run ``function(*args)`` in a new process and return its result.

    The process is forked from a server that has imported torch once (the ``forkserver``
    start method), so starting one costs tens of milliseconds instead of an import of torch,
    and its peak memory is its own. ``function`` must be importable (defined in a module, not
    in a notebook cell), and a script that calls this needs the ``if __name__ == "__main__":``
    guard. An exception in the child is raised here as a ``RuntimeError`` with the child's
    traceback.
    """
    context = _context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(send, function, args))
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            process.kill()
            raise RuntimeError(f"{getattr(function, '__name__', function)} took more than {timeout:.0f} s in the child process")
        status, value = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(
            f"The measuring process died (exit code {process.exitcode}) before reporting. "
            "If that is -9, the operating system ran out of memory: use a smaller size_mb."
        ) from None
    finally:
        process.join()
        receive.close()
    if status == "error":
        raise RuntimeError(f"The measurement failed in the child process:\n{value}")
    return value


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files in ``folder`` and below (what the checkpoints cost on disk)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


INDEX_NAME = "model.safetensors.index.json"
"""The index file of a sharded safetensors checkpoint (the name the Hugging Face Hub uses)."""


def save_sharded_safetensors(state: dict, folder: str | os.PathLike, max_shard_bytes: int) -> Path:
    """Write ``state`` as shards of at most ``max_shard_bytes`` plus an index, as the Hub stores models.

    Tensors are taken in order and a new shard starts when the next tensor would make the current
    one larger than ``max_shard_bytes`` (a tensor larger than that gets a shard of its own). The
    files are ``model-00001-of-0000N.safetensors`` ... and ``model.safetensors.index.json``::

        {"metadata": {"total_size": <bytes of all tensors>},
         "weight_map": {"<tensor name>": "model-00001-of-0000N.safetensors", ...}}

    That is the layout ``transformers``' ``save_pretrained`` and ``huggingface_hub``'s
    ``split_torch_state_dict_into_shards`` produce. Returns the index file's path.
    """
    from safetensors.torch import save_file

    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, not {max_shard_bytes}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in shard.items()}, str(folder / file_name))
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = folder / INDEX_NAME
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return index


# -- the benchmark ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    """Medians over the repeats of one recipe.

    ``seconds``: until saved (on disk) or until the model is ready to run.
    ``first_use_seconds``: loads only, the first forward pass after ``ready`` (it reads whatever
    was loaded lazily). ``peak_extra_bytes``: peak RSS above the process's start, until
    ``seconds`` (``None`` where it can't be measured). ``disk_fraction``: bytes / (seconds +
    first_use_seconds) as a fraction of the reference row's speed (the same bytes written or
    read raw, in the same rounds). ``peak_after_first_use_bytes``: loads only, the peak RSS above
    the start until the first forward pass is done: a memory-mapped load holds nothing at
    ``ready`` and the whole checkpoint (file-backed page cache) after first use.
    """

    kind: str
    method: str
    seconds: float
    first_use_seconds: float | None
    peak_extra_bytes: int | None
    disk_fraction: float
    all_seconds: list[float]
    peak_after_first_use_bytes: int | None = None


@dataclasses.dataclass
class BenchmarkResult:
    """Everything :func:`benchmark` measured, with the disk reference and the machine."""

    checkpoint_bytes: int
    disk_write: float
    disk_read: float
    cold_reads: bool
    repeats: int
    rows: list[Measurement]
    machine: str

    def row(self, method: str, kind: str | None = None) -> Measurement:
        """The measurement of ``method`` (a key of :data:`SAVE_METHODS` or :data:`LOAD_METHODS`)."""
        for row in self.rows:
            if row.method == method and kind in (None, row.kind):
                return row
        raise KeyError(f"{method!r} was not measured; measured: {[r.method for r in self.rows]}")

    def table(self) -> str:
        """The table the lesson and the script print: method, seconds, peak RSS, % of the disk."""
        lines = [
            f"Checkpoint: {self.checkpoint_bytes / MB:,.0f} MB of float32 weights. The disk, measured in the "
            f"same rounds: write {self.disk_write / MB:,.0f} MB/s, read {self.disk_read / MB:,.0f} MB/s"
            + ("" if self.cold_reads else " (the page cache could NOT be dropped: reads may come from memory)")
            + f". Medians of {self.repeats} runs.",
            "",
            f"{'':5} {'method':30} {'seconds':>8} {'+1st use':>8} {'peak extra RSS':>15} "
            f"{'after 1st use':>15} {'% of disk':>9}",
        ]

        def memory(value: int | None) -> str:
            if value is None:
                return "not measured"
            return f"{value / MB:,.0f} MB ({value / self.checkpoint_bytes:.0%})"

        for row in self.rows:
            first = "" if row.first_use_seconds is None else f"{row.first_use_seconds:8.3f}"
            after = "" if row.kind == "save" or row.method == REFERENCE else memory(row.peak_after_first_use_bytes)
            lines.append(
                f"{row.kind:5} {row.method:30} {row.seconds:8.3f} {first:>8} {memory(row.peak_extra_bytes):>15} "
                f"{after:>15} {row.disk_fraction:9.0%}"
            )
        lines += [
            "",
            "seconds: save = until the bytes are on the disk (fsync); load = until the model is ready to run.",
            "+1st use: the first forward pass after loading (it reads what was loaded lazily).",
            "peak extra RSS: the process's peak resident memory above where it started, until saved / ready",
            "  (% of the checkpoint); after 1st use: the same peak, until the first forward pass is done.",
            "% of disk: speed (checkpoint bytes / (seconds + 1st use)) as a share of the raw bytes' speed.",
            "  Above 100 %: faster than our plain write()/read() of as many bytes. The disk is the same, so",
            "  the reference was not the ceiling: run-to-run noise, or a device cache that absorbed writes.",
        ]
        return "\n".join(lines)

    def check_targets(self) -> dict[str, tuple[bool, str]]:
        """The course's targets (:data:`TARGETS`): name -> (met, one line saying what was measured)."""
        usual, lean = self.row("torch.load + load_state_dict"), self.row("mmap + meta + assign")
        save = self.row("atomic_save, CRC off")
        ready = lean.seconds / usual.seconds
        results = {
            "lean_ready_fraction": (
                ready <= TARGETS["lean_ready_fraction"],
                f"mmap + meta + assign ready in {lean.seconds:.3f} s = {ready:.1%} of the usual load's "
                f"{usual.seconds:.3f} s (target <= {TARGETS['lean_ready_fraction']:.0%})",
            ),
        }
        if lean.peak_extra_bytes is None:
            results["lean_peak_fraction"] = (False, "peak memory could not be measured on this system")
        else:
            peak = lean.peak_extra_bytes / self.checkpoint_bytes
            results["lean_peak_fraction"] = (
                peak <= TARGETS["lean_peak_fraction"],
                f"mmap + meta + assign adds {lean.peak_extra_bytes / MB:,.1f} MB = {peak:.1%} of the "
                f"checkpoint to peak memory (target <= {TARGETS['lean_peak_fraction']:.0%})",
            )
        results["save_disk_fraction"] = (
            save.disk_fraction >= TARGETS["save_disk_fraction"],
            f"atomic_save, CRC off writes at {save.disk_fraction:.0%} of the disk's "
            f"{self.disk_write / MB:,.0f} MB/s (target >= {TARGETS['save_disk_fraction']:.0%})",
        )
        return results


BENCHMARK_LOCK = Path(tempfile.gettempdir()) / "save-load-resume-benchmark.lock"


@contextlib.contextmanager
def one_benchmark_at_a_time(say: Callable[[str], None] = lambda line: None) -> Iterator[bool]:
    """Hold a machine-wide lock while measuring; wait (and say so) while another benchmark holds it.

    Two benchmarks at once share one disk and measure each other: run side by side on a 2-core
    machine (as CI runs both versions of lesson 08), a 10 ms mmap load took up to 176 ms. The
    lock is an exclusive ``fcntl.flock`` on :data:`BENCHMARK_LOCK`, released when the block ends
    or the process dies.
    Yields ``True`` where it holds the lock; ``False`` where it measures without one (no ``fcntl``,
    as on Windows, or a lock file it may not open).
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    try:
        handle = open(BENCHMARK_LOCK, "a")
    except OSError:  # e.g. another user's lock file: measure without one
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another benchmark is measuring this machine's disk: waiting for it to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield True  # closing the file releases the lock, also after an error


def _median(values) -> float:
    return statistics.median(list(values))


def benchmark(
    folder: str | os.PathLike,
    size_mb: float = 256,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Measure every recipe in :data:`SAVE_METHODS` and :data:`LOAD_METHODS` against the disk.

    In ``folder`` (created if missing; the files written stay there):

    - saves: one fresh process builds a :class:`LargeToyModel` of ``size_mb``, saves it once
      with each recipe (untimed), then ``repeats`` rounds of every recipe in turn (see
      :func:`_save_child`). The first recipe writes the raw bytes: the disk's write speed,
      measured in the same rounds as the formats.
    - loads: ``repeats`` rounds of every recipe, each load in its own fresh process (a load
      happens once per process), the file dropped from the page cache first so that it is read
      from the disk. The first recipe reads the raw bytes: the disk's read speed.

    ``progress`` (e.g. ``print``) is called with one line per step.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda line: None)
    checkpoint_bytes = _bytes_of(size_mb)

    with one_benchmark_at_a_time(say):
        say(f"saving {checkpoint_bytes / MB:,.0f} MB: every recipe {repeats} times, after one warm-up save each ...")
        save_runs = run_in_fresh_process(_save_child, str(folder), size_mb, repeats)
        _write_warmup_files(folder)
        load_runs: dict[str, list[dict]] = {name: [] for name in LOAD_METHODS}
        cold = True
        for round_ in range(repeats):
            say(f"loading, round {round_ + 1} of {repeats} ...")
            for name, (_, file_name) in LOAD_METHODS.items():
                cold = drop_from_page_cache(folder / file_name) and cold
                load_runs[name].append(run_in_fresh_process(_load_child, name, str(folder), size_mb))

        for suffix in (".pt", ".safetensors", ".bin"):
            (folder / f"warmup{suffix}").unlink(missing_ok=True)

    def peak(runs: list[dict], mark: str) -> int | None:
        peaks = [run[mark]["peak_extra_bytes"] for run in runs]
        return None if any(p is None for p in peaks) else int(_median(peaks))

    write = checkpoint_bytes / _median(run["done"]["seconds"] for run in save_runs[REFERENCE])
    read_runs = load_runs[REFERENCE]
    read = checkpoint_bytes / _median(run["ready"]["seconds"] for run in read_runs)
    rows = []
    for name, runs in save_runs.items():
        seconds = [run["done"]["seconds"] for run in runs]
        speed = checkpoint_bytes / _median(seconds)
        rows.append(Measurement("save", name, _median(seconds), None, peak(runs, "done"), speed / write, seconds))
    for name, runs in load_runs.items():
        seconds = [run["ready"]["seconds"] for run in runs]
        first_use = _median(run["first_forward"]["seconds"] - run["ready"]["seconds"] for run in runs)
        if name == REFERENCE:
            first_use = None
        speed = checkpoint_bytes / (_median(seconds) + (first_use or 0.0))
        rows.append(Measurement("load", name, _median(seconds), first_use, peak(runs, "ready"), speed / read, seconds,
                                peak(runs, "first_forward") if name != REFERENCE else None))
    machine = f"{os.cpu_count()} CPU cores, {sys.platform}, torch {torch.__version__}"
    return BenchmarkResult(checkpoint_bytes, write, read, cold, repeats, rows, machine)


def _bytes_of(size_mb: float) -> int:
    """Bytes of a :class:`LargeToyModel` of ``size_mb``, without allocating it (meta device)."""
    with torch.device("meta"):
        return LargeToyModel(size_mb).num_bytes
