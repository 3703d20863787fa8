"""`make gpu-check` (scripts/gpu_check.py): every lesson, every GPU benchmark, and nothing without a GPU."""

import importlib.util
import subprocess
import sys

from helpers.environment import repo_root
from helpers.exercises import all_lessons

ROOT = repo_root()
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_a_gpu_it_refuses_runs_nothing_and_writes_nothing(monkeypatch, capsys, tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_a.ipynb").write_text("{}")
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a step")))
    assert gpu_check.main([], root=tmp_path) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_the_make_target_refuses_on_this_cpu_only_machine_when_torch_sees_no_gpu():
    import torch

    if torch.cuda.is_available():  # a GPU machine: the refusal is tested above, the run is `make gpu-check`
        return
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "nothing was run or written" in done.stderr


def test_its_notebooks_are_every_lesson_read_from_the_folder(tmp_path):
    for name in ("01_a.ipynb", "09_new_lesson.ipynb", "README.md", "scratch.ipynb"):
        (tmp_path / "solutions").mkdir(exist_ok=True)
        (tmp_path / "solutions" / name).write_text("{}")
    assert [p.name for p in gpu_check.lesson_notebooks(tmp_path)] == ["01_a.ipynb", "09_new_lesson.ipynb"]
    # In the course: one notebook for each lesson that has exercise checks, and nothing else.
    assert {p.stem for p in gpu_check.lesson_notebooks()} == set(all_lessons())


def test_it_runs_the_notebooks_under_nbval_then_every_gpu_benchmark():
    names_and_commands = gpu_check.steps()
    notebooks = names_and_commands[0][1]
    assert notebooks[1:3] == ["-m", "pytest"] and "--nbval-lax" in notebooks
    assert all(f"solutions/{p.name}" in notebooks for p in gpu_check.lesson_notebooks())
    benchmarks = [command[-1] for _, command in names_and_commands[1:]]
    assert benchmarks == [f"scripts/{p.name}" for p in gpu_check.gpu_benchmarks()]
    assert {"scripts/benchmark_devices_gpu.py", "scripts/benchmark_mixed_precision_gpu.py"} <= set(benchmarks)
