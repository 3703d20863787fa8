"""The nbval add-on reads every check's verdict after a notebook runs, and times the notebook."""

import json

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
        "ex.q1.check(..., DigitsCNN())\nex.q2.check(lambda m, p: None, lambda p: None)",
        "def f(*args):\n    raise NotImplementedError\nex.q3.check(f)\nex.q4.check(f)",
    )
    result = run(course, "notebooks")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*notebook run times*", "*s of 60 s  notebooks/01_state_dict.ipynb"])


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


def test_a_notebook_over_the_time_budget_fails(course):
    (course.path / "conftest.py").write_text("import helpers.pytest_plugin as p\np.NOTEBOOK_BUDGET_SECONDS = 0.5\n")
    write_notebook(
        course.path / "notebooks" / "01_state_dict.ipynb",
        IMPORT + "\nimport time\ntime.sleep(1)",
        "ex.q1.check(..., None)\nex.q2.check(..., ...)\nex.q3.check(...)\nex.q4.check(...)",
    )
    result = run(course, "notebooks")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*over the 0.5 s budget*"])
