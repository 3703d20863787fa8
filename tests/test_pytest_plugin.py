"""The nbval add-on reads every check's verdict after a notebook runs, and holds it to a CPU budget."""

import json
import os
import re
import subprocess
import sys
import time

import nbformat
import pytest

pytest_plugins = ["pytester"]


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, id=f"c{i}") for i, source in enumerate(sources)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def course(pytester):
    (pytester.path / "pyproject.toml").write_text("")
    (pytester.path / "helpers").mkdir()
    return pytester


def run(course, *paths):
    return course.runpytest_subprocess(
        *paths, "--nbval-lax", "--nbval-current-env", "-p", "helpers.pytest_plugin", "-p", "no:cacheprovider"
    )


IMPORT = "from helpers.exercises import lesson01 as ex\nfrom helpers.models import DigitsCNN"


def test_a_wrong_or_missing_check_in_solutions_fails_even_with_stale_correct_verdicts(course):
    write_notebook(course.path / "solutions" / "01_state_dict.ipynb", IMPORT, "ex.q1.check(set(), DigitsCNN())")
    stale = course.path / "runs" / "solutions" / "verdicts" / "01_state_dict.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("".join(
        json.dumps({"lesson": "01_state_dict", "exercise": q, "status": "correct", "message": ""}) + "\n"
        for q in ("q1", "q2", "q3", "q4")))
    result = run(course, "solutions")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*q1: wrong (needs correct)*",
        "*q2: no verdict recorded*",
        "*q4: no verdict recorded*",
    ])


def test_an_untouched_student_notebook_passes_when_every_check_says_not_attempted(course):
    write_notebook(
        course.path / "notebooks" / "01_state_dict.ipynb",
        IMPORT,
        "def f(*args):\n    raise NotImplementedError  # the handout's placeholder",
        "ex.q1.check(..., DigitsCNN())\nex.q2.check(f, f)",
        "ex.q3.check(f)\nex.q4.check(f)",
    )
    result = run(course, "notebooks")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*notebook CPU time (budget) and wall time*",
                                 "* s CPU of 60 s, * s wall  notebooks/01_state_dict.ipynb"])


def test_a_solved_exercise_left_in_the_student_notebook_fails(course):
    write_notebook(
        course.path / "notebooks" / "01_state_dict.ipynb",
        IMPORT,
        "m = DigitsCNN()\nex.q1.check([n for n, _ in m.named_buffers()], m)",
        "def f(*args):\n    raise NotImplementedError\nex.q2.check(f, f)\nex.q3.check(f)\nex.q4.check(f)",
    )
    result = run(course, "notebooks")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*q1: correct (needs not attempted)*"])


BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end:\n    pass"
"""Python code that uses ``seconds`` of CPU time, then exits."""


def burn(seconds):
    return [sys.executable, "-c", BURN.format(seconds=seconds)]


def through_a_parent(command):
    """``command`` run by a Python process that waits for it, as torchrun waits for its workers."""
    return [sys.executable, "-c", f"import subprocess; subprocess.run({command!r}, check=True)"]


def test_the_cpu_time_of_a_process_counts_its_children_exited_and_running():
    from helpers.pytest_plugin import process_tree_cpu_seconds

    here = os.getpid()
    before, own = process_tree_cpu_seconds(here), time.process_time()
    subprocess.run(burn(0.6), check=True)
    subprocess.run(through_a_parent(burn(0.6)), check=True)
    exited = process_tree_cpu_seconds(here) - before - (time.process_time() - own)
    assert 1.15 < exited < 2.1  # each burn once (twice would be 2.4), plus three interpreter starts

    running = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=0.8) + "\nimport sys\nprint(flush=True)\nsys.stdin.read()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        running.stdout.readline()  # it has burned its CPU time and now waits
        alive = process_tree_cpu_seconds(here) - before - exited - (time.process_time() - own)
        assert alive > 0.75
    finally:
        running.communicate("")
    after = process_tree_cpu_seconds(here) - before - exited - (time.process_time() - own)
    assert alive - 0.05 <= after < alive + 0.5  # once it exited it is counted once, not twice


def lesson_01_with_a_last_cell(course, folder, last_cell):
    """A notebook of lesson 01's name that imports torch, then runs ``last_cell``, in its own course copy.

    Its folder is neither ``notebooks/`` nor ``solutions/``, so only the budget is judged, not verdicts.
    """
    root = course.path / folder
    (root / "helpers").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    notebook = root / "lesson" / "01_state_dict.ipynb"
    write_notebook(notebook, "import torch\nfrom helpers.models import DigitsCNN\nDigitsCNN()", last_cell)
    return notebook


def test_the_budget_counts_cpu_time_of_the_kernel_and_its_children_not_waiting(course):
    """Slow (70 s alone, both notebooks side by side; minutes on a busy machine): a notebook that
    sleeps 65 s passes the 60 s budget, one whose child and grandchild burn 66 s of CPU fails it."""
    sleeping = lesson_01_with_a_last_cell(course, "sleeping", "import time\ntime.sleep(65)")
    busy = lesson_01_with_a_last_cell(
        course, "busy",
        "import subprocess\n"
        f"child = subprocess.Popen({burn(33)!r})\n"
        f"grandchild = subprocess.Popen({through_a_parent(burn(33))!r})\n"
        "assert child.wait() == 0 and grandchild.wait() == 0")
    result = run(course, sleeping, busy, "-n", "2", "--dist", "loadscope")  # as `make test`: a notebook per worker
    result.assert_outcomes(passed=4 + 3, failed=1)
    result.stdout.fnmatch_lines(["*used * s of CPU time (its kernel and the processes it started), "
                                 "over the 60 s budget; wall time * s*"])
    times = {m["name"]: (float(m["cpu"]), float(m["wall"])) for m in re.finditer(
        r"(?P<cpu>[\d.]+) s CPU of 60 s, +(?P<wall>[\d.]+) s wall  (?P<name>\S+)", result.stdout.str())}
    sleeping_cpu, sleeping_wall = times["sleeping/lesson/01_state_dict.ipynb"]
    busy_cpu, _ = times["busy/lesson/01_state_dict.ipynb"]
    assert sleeping_wall > 65 and sleeping_cpu < 30, times
    assert busy_cpu > 66, times
