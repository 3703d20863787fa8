"""Tests of helpers/large_checkpoints.py and scripts/benchmark_large_checkpoints.py.

Small sizes only: the benchmark runs end to end on a 34 MB state dict (two 2048 x 2048 layers),
the script on 17 MB (one layer). Memory assertions need ``/proc/self/status`` (Linux) and are
skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import large_checkpoints as lc
from helpers.large_checkpoints import (
    LOAD_METHODS,
    MB,
    REFERENCE,
    SAVE_METHODS,
    TARGETS,
    BenchmarkResult,
    LargeToyModel,
    Measurement,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark_large_checkpoints.py"
HAS_PROC_STATUS = os.path.exists("/proc/self/status")
needs_proc = pytest.mark.skipif(not HAS_PROC_STATUS, reason="peak memory needs /proc/self/status (Linux)")


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_large_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- LargeToyModel --------------------------------------------------------------------------------

@pytest.mark.parametrize("size_mb, width", [(2, 256), (5, 512), (0.1, 256)])
def test_toy_model_has_about_size_mb_of_weights(size_mb, width):
    model = LargeToyModel(size_mb=size_mb, width=width)
    layer_bytes = (width * width + width) * 4
    assert len(model.layers) == max(1, round(size_mb * MB / layer_bytes))
    assert model.num_bytes == len(model.layers) * layer_bytes
    if size_mb * MB >= layer_bytes:
        assert abs(model.num_bytes - size_mb * MB) <= layer_bytes / 2
    assert model(torch.zeros(3, width)).shape == (3, width)


def test_toy_model_is_seeded():
    first, second = LargeToyModel(1, width=128, seed=3), LargeToyModel(1, width=128, seed=3)
    other = LargeToyModel(1, width=128, seed=4)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])


def test_toy_model_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    LargeToyModel(1, width=128, seed=3)
    assert torch.equal(torch.rand(3), expected)


def test_toy_model_on_meta_allocates_nothing():
    with torch.device("meta"):
        small = LargeToyModel(2, width=256)
    assert all(t.device.type == "meta" for t in small.state_dict().values())
    assert small.num_bytes == LargeToyModel(2, width=256).num_bytes
    assert lc._bytes_of(17) == (2048 * 2048 + 2048) * 4

    before = lc.rss_bytes()
    with torch.device("meta"):
        huge = LargeToyModel(2000)  # 2 GB of weights, if they existed
    assert huge.num_bytes > 1900 * MB
    if before is not None:
        assert lc.rss_bytes() - before < 100 * MB


# ---- the operating system: CRC-32, page cache, memory ------------------------------------------------

def _zip_crcs(data: bytes) -> list[int]:
    return [info.CRC for info in zipfile.ZipFile(io.BytesIO(data)).infolist()]


def test_crc32_disabled_restores_the_setting_and_files_still_load(tmp_path):
    state = {"w": torch.randn(64, 64), "step": torch.tensor(5)}
    original = torch.serialization.get_crc32_options()
    try:
        for before in (True, False):
            torch.serialization.set_crc32_options(before)
            with lc.crc32_disabled():
                assert torch.serialization.get_crc32_options() is False
                torch.save(state, tmp_path / "no_crc.pt")
            assert torch.serialization.get_crc32_options() is before

        torch.serialization.set_crc32_options(True)
        with pytest.raises(ValueError, match="boom"):
            with lc.crc32_disabled():
                raise ValueError("boom")
        assert torch.serialization.get_crc32_options() is True
    finally:
        torch.serialization.set_crc32_options(original)

    torch.save(state, tmp_path / "crc.pt")
    assert all(crc != 0 for crc in _zip_crcs((tmp_path / "crc.pt").read_bytes()))
    assert set(_zip_crcs((tmp_path / "no_crc.pt").read_bytes())) == {0}
    loaded = torch.load(tmp_path / "no_crc.pt", weights_only=True)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux/Unix only")
def test_drop_from_page_cache_works_and_keeps_the_file(tmp_path):
    path = tmp_path / "data.bin"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    assert lc.drop_from_page_cache(path) is True
    assert path.read_bytes() == data


def test_fsync_file_keeps_the_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    lc.fsync_file(path)
    assert path.read_bytes() == b"abc"


@needs_proc
def test_rss_and_peak_rss():
    if not lc.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    start = lc.rss_bytes()
    assert start > 0 and lc.peak_rss_bytes() - start < 10 * MB

    block = torch.ones(25_000_000)  # 100 MB, every page written
    assert lc.rss_bytes() > start + 90 * MB
    del block
    rss, peak = lc.rss_bytes(), lc.peak_rss_bytes()
    assert rss < start + 50 * MB  # freed: a block that large goes back to the OS
    assert peak >= rss + 90 * MB

    assert lc.reset_peak_rss() is True
    assert 0 <= lc.peak_rss_bytes() - lc.rss_bytes() < 10 * MB


# ---- raw bytes: the disk's reference -------------------------------------------------------------

def test_write_raw_bytes_writes_as_many_bytes_as_the_state_dict_holds(tmp_path):
    state = {
        "a": torch.randn(1000),
        "b": torch.arange(10, dtype=torch.int64),
        "half": torch.randn(33).bfloat16(),
        "d": torch.randn(7, requires_grad=True),
    }
    total = sum(t.numel() * t.element_size() for t in state.values())
    for chunk in (256, 4096, 16 << 20):  # many writes and a partial last one, and one write
        path = tmp_path / f"raw-{chunk}.bin"
        lc.write_raw_bytes(state, path, chunk=chunk)
        assert path.stat().st_size == total


def test_write_raw_bytes_uses_no_course_writer_and_fsyncs(tmp_path, monkeypatch):
    # The reference must be independent of what it is compared with: no torch.save, no atomic_save.
    def forbidden(*args, **kwargs):
        raise AssertionError("the disk reference must not use a checkpoint writer")

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(lc, "atomic_save", forbidden)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    state = LargeToyModel(1, width=128).state_dict()
    path = tmp_path / "raw.bin"
    lc.write_raw_bytes(state, path)
    assert path.stat().st_size == sum(t.numel() * t.element_size() for t in state.values())
    assert len(synced) == 1


def test_read_raw_bytes_reads_the_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "raw.bin"
    path.write_bytes(os.urandom(100_000))
    counted = []

    class Counting:
        def __init__(self, handle):
            self.handle, self.read = handle, 0

        def readinto(self, buffer):
            n = self.handle.readinto(buffer)
            self.read += n
            return n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def counting_open(*args, **kwargs):
        counted.append(Counting(open(*args, **kwargs)))
        return counted[-1]

    monkeypatch.setattr(lc, "open", counting_open, raising=False)
    assert lc.read_raw_bytes(path, chunk=4096) is None
    lc.read_raw_bytes(path)
    assert [c.read for c in counted] == [100_000, 100_000]


def test_folder_bytes_sums_nested_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "b").write_bytes(b"x" * 200)
    (tmp_path / "sub" / "deeper" / "c").write_bytes(b"x" * 3000)
    assert lc.folder_bytes(tmp_path) == 3210
    assert lc.folder_bytes(tmp_path / "sub") == 3200
    assert lc.folder_bytes(str(tmp_path / "sub" / "deeper")) == 3000


# ---- a fresh process per measurement --------------------------------------------------------------

def test_run_in_fresh_process_returns_the_childs_result(tmp_path):
    child = lc.run_in_fresh_process(os.getpid)
    assert isinstance(child, int) and child != os.getpid()
    assert lc.run_in_fresh_process(os.getpid) != child  # a new process each time
    (tmp_path / "f").write_bytes(b"12345")
    assert lc.run_in_fresh_process(lc.folder_bytes, str(tmp_path)) == 5


def test_run_in_fresh_process_raises_the_childs_error():
    with pytest.raises(RuntimeError, match="failed in the child process") as info:
        lc.run_in_fresh_process(lc._load_child, "no such method", "/nonexistent", 1)
    assert "Traceback" in str(info.value)
    assert "KeyError" in str(info.value) and "no such method" in str(info.value)


def test_run_in_fresh_process_reports_a_dead_child_and_a_timeout():
    with pytest.raises(RuntimeError, match=r"died \(exit code 3\)"):
        lc.run_in_fresh_process(os._exit, 3)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="took more than"):
        lc.run_in_fresh_process(time.sleep, 30, timeout=0.5)
    assert time.perf_counter() - start < 10


# ---- the benchmark ---------------------------------------------------------------------------------

BENCH_MB = 34  # two 2048 x 2048 layers: large enough that a copy dwarfs the process's fixed costs


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    lines = []
    result = lc.benchmark(folder, size_mb=BENCH_MB, repeats=1, progress=lines.append)
    return folder, result, lines


def test_benchmark_measures_every_recipe(measured):
    folder, result, lines = measured
    assert result.checkpoint_bytes == lc._bytes_of(BENCH_MB)
    assert [(r.kind, r.method) for r in result.rows] == (
        [("save", name) for name in SAVE_METHODS] + [("load", name) for name in LOAD_METHODS]
    )
    for row in result.rows:
        assert row.seconds > 0 and len(row.all_seconds) == result.repeats == 1
        assert row.disk_fraction > 0
        if row.kind == "save" or row.method == REFERENCE:
            assert row.first_use_seconds is None
        else:
            assert row.first_use_seconds >= 0
    assert result.row(REFERENCE, "save").disk_fraction == pytest.approx(1.0)
    assert result.row(REFERENCE, "load").disk_fraction == pytest.approx(1.0)
    assert result.disk_write > 0 and result.disk_read > 0
    assert result.cold_reads is hasattr(os, "posix_fadvise")
    # (a first line may say it waited for another benchmark on this machine, e.g. lesson 08's)
    assert [line for line in lines if not line.startswith("another benchmark")][0].startswith("saving")
    # the rotation deleted every numbered file; the last file of each recipe kept its name
    assert sorted(p.name for p in folder.iterdir()) == sorted({f for _, f in SAVE_METHODS.values()})


def test_benchmark_waits_while_another_benchmark_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lc, "BENCHMARK_LOCK", tmp_path / "benchmark.lock")
    lines: list[str] = []
    outcome: dict = {}

    def run():
        outcome["result"] = lc.benchmark(tmp_path / "bench", size_mb=BENCH_MB, repeats=1, progress=lines.append)

    with lc.one_benchmark_at_a_time() as locked:
        assert locked is True
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert lines == ["another benchmark is measuring this machine's disk: waiting for it to finish ..."]
        assert worker.is_alive() and list((tmp_path / "bench").iterdir()) == []  # nothing measured yet
    worker.join(timeout=120)
    assert not worker.is_alive() and "result" in outcome
    assert lines[1].startswith("saving")


def test_the_benchmark_lock_is_released_after_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(lc, "BENCHMARK_LOCK", tmp_path / "benchmark.lock")
    with pytest.raises(RuntimeError):
        with lc.one_benchmark_at_a_time():
            raise RuntimeError("a failed measurement")
    lines: list[str] = []
    with lc.one_benchmark_at_a_time(lines.append) as locked:
        assert locked is True
    assert lines == []  # free at once: nobody was waited for


def test_the_benchmark_measures_without_a_lock_it_may_not_open(tmp_path, monkeypatch):
    monkeypatch.setattr(lc, "BENCHMARK_LOCK", tmp_path / "no such folder" / "benchmark.lock")
    with lc.one_benchmark_at_a_time() as locked:
        assert locked is False


@needs_proc
def test_benchmark_shows_the_lean_load_avoids_the_copy(measured):
    _, result, _ = measured
    usual = result.row("torch.load + load_state_dict")
    lean = result.row("mmap + meta + assign")
    assert usual.peak_extra_bytes > 1.5 * result.checkpoint_bytes  # a random model + a full copy
    assert lean.peak_extra_bytes < 0.5 * result.checkpoint_bytes
    assert lean.peak_extra_bytes < usual.peak_extra_bytes - result.checkpoint_bytes
    # after the first forward pass the mapped file is resident: the whole checkpoint, once
    assert lean.peak_after_first_use_bytes > 0.8 * result.checkpoint_bytes
    assert lean.peak_after_first_use_bytes < usual.peak_after_first_use_bytes


def test_benchmark_table_and_targets(measured):
    _, result, _ = measured
    table = result.table()
    for name in [*SAVE_METHODS, *LOAD_METHODS]:
        assert name in table
    assert "peak extra RSS" in table and "after 1st use" in table and "% of disk" in table
    assert "Above 100 %" in table
    targets = result.check_targets()
    assert list(targets) == list(TARGETS)
    for met, line in targets.values():
        assert isinstance(met, bool) and isinstance(line, str) and "target" in line
    with pytest.raises(KeyError, match="was not measured"):
        result.row("pickle.dump")
    with pytest.raises(KeyError):
        result.row("torch.save", "load")


def _synthetic(lean_seconds=0.05, lean_peak=0.1, save_fraction=0.8, cold=True) -> BenchmarkResult:
    size = 100 * MB

    def m(kind, method, seconds, peak, fraction):
        return Measurement(kind, method, seconds, None, None if peak is None else int(peak * size), fraction, [seconds])

    rows = [
        m("save", REFERENCE, 0.1, 0.0, 1.0),
        m("save", "atomic_save, CRC off", 0.1 / save_fraction, 0.0, save_fraction),
        m("load", REFERENCE, 0.1, 0.2, 1.0),
        m("load", "torch.load + load_state_dict", 1.0, 2.0, 0.1),
        m("load", "mmap + meta + assign", lean_seconds, lean_peak, 0.9),
    ]
    return BenchmarkResult(size, 1000 * MB, 1000 * MB, cold, 1, rows, "test machine")


def test_check_targets_compares_with_the_targets():
    assert all(met for met, _ in _synthetic().check_targets().values())
    assert [met for met, _ in _synthetic(lean_seconds=0.2).check_targets().values()] == [False, True, True]
    assert [met for met, _ in _synthetic(lean_peak=0.3).check_targets().values()] == [True, False, True]
    assert [met for met, _ in _synthetic(save_fraction=0.5).check_targets().values()] == [True, True, False]
    met, line = _synthetic(lean_peak=None).check_targets()["lean_peak_fraction"]
    assert met is False and "could not be measured" in line
    assert "5.0% of the usual load" in _synthetic().check_targets()["lean_ready_fraction"][1]
    result = _synthetic()
    assert result.row(REFERENCE).kind == "save"
    assert result.row(REFERENCE, "load").kind == "load" and result.row(REFERENCE, "load").peak_extra_bytes == 20 * MB


def test_table_says_what_it_could_not_measure():
    table = _synthetic(lean_peak=None, cold=False).table()
    assert "not measured" in table
    assert "could NOT be dropped" in table
    assert "could NOT be dropped" not in _synthetic().table()


# ---- the script -------------------------------------------------------------------------------------

def test_script_runs_prints_the_table_and_cleans_up(tmp_path, capsys):
    script = load_script()
    folder = tmp_path / "b"
    status = script.main(["--size-mb", "17", "--repeats", "1", "--folder", str(folder)])
    out = capsys.readouterr().out
    assert status in (0, 1)
    assert "method" in out and "peak extra RSS" in out and "% of disk" in out
    verdicts = [line for line in out.splitlines() if line.startswith(("met   ", "MISSED"))]
    assert len(verdicts) == len(TARGETS)
    assert status == (1 if any(line.startswith("MISSED") for line in verdicts) else 0)
    assert not folder.exists()


def test_script_keeps_the_files_when_asked(tmp_path, capsys):
    folder = tmp_path / "kept"
    status = load_script().main(["--size-mb", "17", "--repeats", "1", "--folder", str(folder), "--keep"])
    assert status in (0, 1)
    assert (folder / "model.pt").exists() and (folder / "model.safetensors").exists()


@pytest.mark.parametrize("argv", [["--size-mb", "5"], ["--repeats", "0"], ["--size-mb", "lots"]])
def test_script_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        load_script().main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_script_refuses_without_disk_space(tmp_path, capsys, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script.shutil, "disk_usage", lambda path: _Usage(10 * MB))
    monkeypatch.setattr(script, "benchmark", lambda *a, **k: pytest.fail("benchmark must not run"))
    assert script.main(["--size-mb", "17", "--folder", str(tmp_path / "b")]) == 2
    assert "Not enough free disk space" in capsys.readouterr().out


def test_script_checks_disk_space_where_the_folder_will_be(tmp_path, capsys, monkeypatch):
    script = load_script()
    asked = []
    monkeypatch.setattr(script.shutil, "disk_usage", lambda path: asked.append(path) or _Usage(10 * MB))
    folder = tmp_path / "not" / "yet" / "there"  # like runs/ in a fresh clone
    assert script.main(["--size-mb", "17", "--folder", str(folder)]) == 2
    assert asked == [tmp_path.resolve()]
    assert "Not enough free disk space" in capsys.readouterr().out


class _Usage:
    def __init__(self, free):
        self.free = free


# ---- sharded safetensors, as the Hub stores them ---------------------------------------------------

def test_save_sharded_safetensors_writes_shards_and_an_index(tmp_path):
    import json

    from safetensors.torch import load_file

    state = LargeToyModel(1, width=128).state_dict()  # about 16 tensors of 64 KB and 512 B
    layer_bytes = (128 * 128 + 128) * 4
    index_path = lc.save_sharded_safetensors(state, tmp_path / "hub", max_shard_bytes=3 * layer_bytes)
    assert index_path == tmp_path / "hub" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert list(index["weight_map"]) == list(state)
    files = sorted(set(index["weight_map"].values()))
    count = len(files)
    assert count == -(-len(state) // 6)  # 3 layers (weight + bias) per shard
    assert files == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == sorted([*files, "model.safetensors.index.json"])
    loaded = {}
    for name in files:
        part = load_file(str(tmp_path / "hub" / name))
        assert sum(t.numel() * t.element_size() for t in part.values()) <= 3 * layer_bytes
        loaded.update(part)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_save_sharded_safetensors_gives_a_big_tensor_its_own_shard(tmp_path):
    import json

    state = {"small": torch.zeros(10), "big": torch.zeros(1000), "tail": torch.zeros(10)}
    index = json.loads(lc.save_sharded_safetensors(state, tmp_path, max_shard_bytes=100).read_text())
    assert index["weight_map"] == {
        "small": "model-00001-of-00003.safetensors",
        "big": "model-00002-of-00003.safetensors",
        "tail": "model-00003-of-00003.safetensors",
    }
    with pytest.raises(ValueError, match="must be positive"):
        lc.save_sharded_safetensors(state, tmp_path, max_shard_bytes=0)


# ---- scripts/benchmark_checkpoint_save.py ---------------------------------------------------------

def _save_script():
    path = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_checkpoint_save.py"
    spec = importlib.util.spec_from_file_location("benchmark_checkpoint_save", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_save_benchmark_reports_every_variant_paired_and_cleans_up(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lc, "BENCHMARK_LOCK", tmp_path / "benchmark.lock")
    script = _save_script()
    folder = tmp_path / "bench"
    assert script.main(["--sizes", "1", "--repeats", "2", "--folder", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in ("torch.save ", "torch.save + fsync", "atomic_save"):
        assert name in out
    assert "2 interleaved rounds" in out and "load average" in out
    assert "atomic_save / torch.save + fsync" in out and "paired ratio" in out
    assert not folder.exists()


def test_save_benchmark_skips_a_size_that_does_not_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lc, "BENCHMARK_LOCK", tmp_path / "benchmark.lock")
    script = _save_script()
    monkeypatch.setattr(script, "free_bytes", lambda folder: 10**9)
    assert script.main(["--sizes", "500", "--repeats", "1", "--folder", str(tmp_path / "b")]) == 0
    assert "500 MB: skipped" in capsys.readouterr().out


def test_save_benchmark_state_dict_has_the_size_asked_for():
    state = _save_script().make_state_dict(3)
    assert abs(sum(t.numel() * t.element_size() for t in state.values()) - 3e6) < 5e3
