"""The grader runs each submission in a fresh kernel, in a temporary copy of the course, and
reports every exercise: a broken, hostile or non-notebook submission costs only its own grade.

The submissions are made here, at test time: copies of lesson 01's two versions, and tiny
notebooks of a few cells that call lesson 01's checks with fixed answers. Two grader runs (one
that ends with exit status 0, one with 1) keep the number of kernel starts small.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from helpers import grade
from helpers.environment import repo_root

ROOT = repo_root(Path(__file__).parent)
LESSON = "01_state_dict"
TITLE = json.loads((ROOT / "solutions" / f"{LESSON}.ipynb").read_text())["metadata"]["course"]["title"]
KNOWN = {LESSON, "02_other_lesson", "10_big_lesson"}

IMPORT = "from helpers.exercises import lesson01 as ex\nfrom helpers.models import DigitsCNN\nm = DigitsCNN()"
Q1_RIGHT = "ex.q1.check({name for name, _ in m.named_buffers()}, m)"
Q2_CHECK = "ex.q2.check(save_weights, load_weights)"


def write_notebook(path, *sources, course=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, id=f"c{i}") for i, source in enumerate(sources)]
    if course is not None:
        nb.metadata["course"] = course
    nbformat.write(nb, path)
    return path


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = grade.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def gradebook(folder, *argv):
    """Run the grader's command line with --csv and --json into ``folder``; parse both."""
    status, out, err = run_main(*argv, "--csv", folder / "grades.csv", "--json", folder / "grades.json")
    with open(folder / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    data = json.loads((folder / "grades.json").read_text(encoding="utf-8"))
    by_name = {Path(s["notebook"]).name: s for s in data["submissions"]}
    return SimpleNamespace(status=status, out=out, err=err, rows=rows, data=data, by_name=by_name,
                           json_bytes=(folder / "grades.json").stat().st_size)


def statuses(submission):
    return {e["exercise"]: e["status"] for e in submission["exercises"]}


def message(submission, exercise):
    return next(e["message"] for e in submission["exercises"] if e["exercise"] == exercise)


def data_fingerprint():
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (ROOT / "data").rglob("*") if p.is_file()}


# ---- one run where every submission runs to its end: exit status 0 --------------------------

@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("completed")
    probe = folder / "probe.json"
    probe_lesson = f"zz_grader_probe_{uuid.uuid4().hex[:8]}"
    submissions = [
        # Lesson from the metadata the generator stamps (the file name has no lesson number).
        shutil.copy(ROOT / "solutions" / f"{LESSON}.ipynb", folder / "alice_solved.ipynb"),
        shutil.copy(ROOT / "notebooks" / f"{LESSON}.ipynb", folder / "bob_homework.ipynb"),
        # Lesson from the file name: a syntax error, a check run twice, a wrong answer, a missing check.
        write_notebook(
            folder / "carol_01.ipynb",
            IMPORT,
            "ex.q1.check(set(), m)",          # wrong first ...
            Q1_RIGHT,                          # ... then right: the last verdict counts
            "def save_weights(model, path)\n    pass\nload_weights = None",  # SyntaxError
            Q2_CHECK,                          # NameError: save_weights is not defined
            "ex.q3.check(lambda old: None)",   # wrong
        ),                                     # no q4 check cell at all
        # Lesson from the recorded verdicts: prints megabytes, reports where it runs, deletes what
        # relative paths reach, then answers q1.
        write_notebook(
            folder / "dave.ipynb",
            IMPORT,
            "import sys\nfor _ in range(24):\n    sys.stdout.write('x' * 2**20)",
            "import os\nos.write(1, b'y' * 2**20)\nos.write(2, b'z' * 2**20)",  # straight to the kernel's stdout/stderr
            "import json, helpers\nfrom helpers.checks import verdicts_path\nfrom helpers.data import digits_dir\n"
            "from helpers.environment import repo_root, run_dir\n"
            f"json.dump({{'cwd': os.getcwd(), 'root': str(repo_root()), 'helpers': helpers.__file__,\n"
            f"           'run_dir': str(run_dir({probe_lesson!r})), 'data': str(digits_dir()),\n"
            f"           'verdicts': str(verdicts_path({LESSON!r}))}}, open({str(probe)!r}, 'w'))",
            "import shutil\nshutil.rmtree('../data')\nshutil.rmtree('../runs')\nshutil.rmtree('../helpers')\n"
            "shutil.rmtree(os.getcwd())\nassert not os.path.exists('../data')",
            Q1_RIGHT,
        ),
    ]
    sentinel = ROOT / "runs" / f"grader-test-sentinel-{uuid.uuid4().hex[:8]}" / "keep.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("the grader's submissions must not delete this")
    data_before = data_fingerprint()
    try:
        result = gradebook(folder, *submissions)
        result.sentinel_kept = sentinel.is_file()
    finally:
        shutil.rmtree(sentinel.parent, ignore_errors=True)
    result.data_before, result.data_after = data_before, data_fingerprint()
    result.probe = json.loads(probe.read_text()) if probe.exists() else None
    result.probe_lesson = probe_lesson
    return result


def test_every_submission_that_runs_to_its_end_gives_exit_status_0(completed):
    assert completed.status == 0, completed.out
    assert {s["run"] for s in completed.data["submissions"]} == {"completed"}


def test_the_solution_scores_full_marks_and_the_handout_nothing(completed):
    alice, bob = completed.by_name["alice_solved.ipynb"], completed.by_name["bob_homework.ipynb"]
    assert (alice["lesson"], alice["lesson_from"]) == (LESSON, "metadata")
    assert statuses(alice) == dict.fromkeys(["q1", "q2", "q3", "q4"], "correct")
    assert (alice["correct"], alice["total"]) == (4, 4)
    # A handed-in solution is flagged (it still holds the solution regions), and nothing else is.
    assert len(alice["flags"]) == 1 and "a solution notebook" in alice["flags"][0]
    assert bob["flags"] == []
    assert (bob["lesson"], bob["lesson_from"]) == (LESSON, "metadata")
    assert statuses(bob) == dict.fromkeys(["q1", "q2", "q3", "q4"], "not attempted")
    assert bob["cell_errors"] == []


def test_errors_in_cells_cost_only_the_exercises_they_touch(completed):
    carol = completed.by_name["carol_01.ipynb"]
    assert (carol["lesson"], carol["lesson_from"], carol["run"]) == (LESSON, "file name", "completed")
    assert statuses(carol) == {"q1": "correct", "q2": "error", "q3": "wrong", "q4": "error"}
    assert "NameError" in message(carol, "q2") and "cell 4 [c3] raised SyntaxError" in message(carol, "q2")
    assert "returned None" in message(carol, "q3")
    assert "no cell calls ex.q4.check" in message(carol, "q4")
    assert [(e["cell"], e["id"], e["error"]) for e in carol["cell_errors"]] == [
        (4, "c3", "SyntaxError"), (5, "c4", "NameError")]


def test_megabytes_of_output_are_counted_not_kept(completed):
    dave = completed.by_name["dave.ipynb"]
    assert (dave["lesson"], dave["lesson_from"], dave["run"]) == (LESSON, "verdicts", "completed")
    assert statuses(dave)["q1"] == "correct"
    assert dave["output_bytes"] >= 24 * 2**20
    assert completed.json_bytes < 100_000 and len(completed.out) < 20_000 and len(completed.err) < 20_000


def test_a_submission_runs_in_a_temporary_copy_of_the_course(completed):
    probe = completed.probe
    assert probe is not None, "the probe cell did not run"
    root = Path(probe["root"])
    assert not root.is_relative_to(ROOT) and Path(probe["cwd"]) == root / "notebooks"
    assert Path(probe["helpers"]).is_relative_to(root / "helpers")
    assert Path(probe["run_dir"]) == root / "runs" / completed.probe_lesson
    assert Path(probe["data"]) == root / "data" / "digits"
    assert not Path(probe["verdicts"]).is_relative_to(root) and not Path(probe["verdicts"]).is_relative_to(ROOT)
    assert not root.exists() and not (ROOT / "runs" / completed.probe_lesson).exists()


def test_a_submission_that_deletes_files_deletes_only_its_copy(completed):
    dave = completed.by_name["dave.ipynb"]
    assert statuses(dave)["q1"] == "correct" and dave["cell_errors"] == []  # the deleting cell ran without error
    assert completed.sentinel_kept
    assert all(completed.data_after.get(path) == digest for path, digest in completed.data_before.items())


def test_the_gradebook_files_and_the_table(completed):
    assert tuple(completed.rows[0]) == grade.CSV_COLUMNS
    assert len(completed.rows) == 4 * 4
    assert sum(int(row["points"]) for row in completed.rows) == 4 + 0 + 1 + 1
    assert {row["status"] for row in completed.rows} == {"correct", "wrong", "not attempted", "error"}
    submission = completed.data["submissions"][0]
    assert completed.data["timeout_seconds"] == grade.DEFAULT_TIMEOUT
    assert set(submission) == {"notebook", "lesson", "lesson_from", "run", "problem", "seconds", "output_bytes",
                               "correct", "total", "exercises", "cell_errors", "flags"}
    assert completed.out.splitlines()[0].split() == ["notebook", "exercise", "status", "message"]
    assert "alice_solved.ipynb: 4/4 correct" in completed.out and "⚠ a solution notebook" in completed.out
    alice_rows = [row for row in completed.rows if row["notebook"].endswith("alice_solved.ipynb")]
    assert all("a solution notebook" in row["flags"] for row in alice_rows)
    assert "carol_01.ipynb: 2/4 correct" not in completed.out and "carol_01.ipynb: 1/4 correct (1 wrong, 2 error)" in completed.out
    assert "cell 4 [c3] raised SyntaxError" in completed.out


# ---- one run where every submission fails in its own way: exit status 1 ---------------------

BROKEN_TIMEOUT = 60


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    (folder / "notes_01.ipynb").write_text("These are my notes, not a notebook.\n")
    submissions = [
        write_notebook(folder / "frank_01.ipynb", IMPORT, Q1_RIGHT,
                       "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", Q2_CHECK),
        write_notebook(folder / "gina_01.ipynb", IMPORT, Q1_RIGHT, "import time\nwhile True:\n    time.sleep(0.1)", Q2_CHECK),
        write_notebook(folder / "zed.ipynb", "x = 1"),
        folder / "notes_01.ipynb",
        folder / "missing.ipynb",
    ]
    # A hang guard, not a speed test: frank's and gina's first cells (importing torch) must fit
    # in it on a busy CI machine; gina's endless loop sleeps, so waiting for it costs no CPU.
    return gradebook(folder, *submissions, "--timeout", str(BROKEN_TIMEOUT))


def test_a_submission_that_cannot_be_graded_completely_gives_exit_status_1(broken):
    assert broken.status == 1
    runs = {name: s["run"] for name, s in broken.by_name.items()}
    assert runs == {"frank_01.ipynb": "kernel died", "gina_01.ipynb": "timeout", "zed.ipynb": "unknown lesson",
                    "notes_01.ipynb": "invalid", "missing.ipynb": "invalid"}


def test_a_crashed_kernel_keeps_the_verdicts_given_before_it(broken):
    frank = broken.by_name["frank_01.ipynb"]
    assert "SIGKILL" in frank["problem"] and "cell 3 [c2]" in frank["problem"]
    assert statuses(frank) == {"q1": "correct", "q2": "error", "q3": "error", "q4": "error"}
    assert "stopped before its check cell (cell 4 [c3])" in message(frank, "q2")


def test_an_endless_loop_is_stopped_at_the_timeout(broken):
    gina = broken.by_name["gina_01.ipynb"]
    assert f"timed out after {BROKEN_TIMEOUT} s in cell 3 [c2]" in gina["problem"]
    assert statuses(gina)["q1"] == "correct" and statuses(gina)["q2"] == "error"
    assert "timed out" in message(gina, "q2")
    # Stopped, not left running: within the grader's own limit for a submission's process.
    assert gina["seconds"] < BROKEN_TIMEOUT + 2 * grade.KERNEL_STARTUP_TIMEOUT + grade.WORKER_GRACE_SECONDS


def test_a_file_that_is_not_a_notebook_gets_an_error_row(broken):
    notes, missing = broken.by_name["notes_01.ipynb"], broken.by_name["missing.ipynb"]
    assert (notes["lesson"], notes["lesson_from"]) == (LESSON, "file name")
    assert statuses(notes) == dict.fromkeys(["q1", "q2", "q3", "q4"], "error")
    assert "not a Jupyter notebook" in message(notes, "q1")
    assert missing["exercises"] == [] and "there is no file" in missing["problem"]
    missing_rows = [r for r in broken.rows if r["notebook"].endswith("missing.ipynb")]
    assert [(r["exercise"], r["status"], r["run"]) for r in missing_rows] == [("", "error", "invalid")]
    assert "not graded (invalid)" in broken.out


def test_a_notebook_of_no_known_lesson_asks_for_lesson(broken):
    zed = broken.by_name["zed.ipynb"]
    assert zed["lesson"] is None and "--lesson" in zed["problem"]


# ---- hostile submissions: faked verdicts, patched checks, killed parents, writes outside -----

OLD_LESSON = "02_whole_model_vs_state_dict"
FAKE_LINES = (
    "import json, os\n"
    "for q in ['q1', 'q2', 'q3', 'q4']:\n"
    "    with open(os.environ['COURSE_VERDICTS_FILE'], 'a') as f:\n"
    f"        f.write(json.dumps({{'lesson': {LESSON!r}, 'exercise': q, 'status': 'correct', 'message': 'x'}}) + '\\n')\n"
    "    print(f'✅ {q}: correct. Well done.')"
)
PATCHES = (
    "import helpers.checks\nfrom helpers.checks import Verdict\n"
    "helpers.checks.Exercise.evaluate = lambda self, *a, **k: Verdict(self.lesson, self.name, 'correct', 'ok')\n"
    "helpers.checks.record_verdict = lambda verdict, path=None: None\n"
    "ex.q2.checker = lambda *a, **k: 'fine'"
)
DISK_PATCH = (
    "import pathlib, sys, importlib, helpers.checks\n"
    "path = pathlib.Path(helpers.checks.__file__)\n"
    "path.write_text(path.read_text().replace('    def _evaluate(self, *args, **kwargs) -> Verdict:\\n',\n"
    "    '    def _evaluate(self, *args, **kwargs) -> Verdict:\\n        return self._verdict(CORRECT, \"ok\")\\n'))\n"
    "for name in [n for n in sys.modules if n.startswith(('helpers.checks', 'helpers.exercises'))]:\n"
    "    del sys.modules[name]\n"
    "from helpers.exercises import lesson01 as ex"
)


@pytest.fixture(scope="module")
def attacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacks")
    tag = uuid.uuid4().hex[:8]
    pid_file = folder / "killer.pid"
    outside = (
        "import os, pathlib\n"
        f"pathlib.Path(os.environ['PWD'], 'pwd-{tag}.txt').write_text('x')\n"
        f"pathlib.Path(os.environ.get('OLDPWD', os.environ['PWD']), 'oldpwd-{tag}.txt').write_text('x')\n"
        f"pathlib.Path.home().joinpath('home-{tag}.txt').write_text('x')\n"
        f"pathlib.Path(os.path.expanduser('~/.config'), 'config-{tag}.txt').parent.mkdir(parents=True, exist_ok=True)"
    )
    submissions = [
        write_notebook(folder / "fake_lines_01.ipynb", IMPORT, FAKE_LINES),
        write_notebook(folder / "patched_01.ipynb", IMPORT, PATCHES, Q1_RIGHT.replace("named_buffers", "named_parameters"),
                       Q2_CHECK.replace("save_weights, load_weights", "None, None")),
        write_notebook(folder / "disk_01.ipynb", IMPORT, DISK_PATCH, "ex.q1.check(set(), m)"),
        # A batch of three around a submission that kills its kernel's parent, then one that kills
        # its parent's process group: the others are graded as usual.
        write_notebook(folder / "before_01.ipynb", IMPORT, outside, Q1_RIGHT),
        write_notebook(folder / "killer_01.ipynb", IMPORT, Q1_RIGHT,
                       f"import os, signal, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                       "os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(600)"),
        write_notebook(folder / "group_killer_01.ipynb", IMPORT,
                       "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)"),
        write_notebook(folder / "after_01.ipynb", IMPORT, Q1_RIGHT),
        # A lesson 02 notebook handed in under a lesson 01 name.
        write_notebook(folder / "renamed_01.ipynb", "x = 1", course={"lesson": OLD_LESSON}),
    ]
    temp_before = set(Path(tempfile.gettempdir()).glob("grade-*"))
    checks_before = (ROOT / "helpers" / "checks.py").read_bytes()
    result = gradebook(folder, *submissions, "--timeout", "120")
    result.tag, result.pid_file = tag, pid_file
    result.temp_left = set(Path(tempfile.gettempdir()).glob("grade-*")) - temp_before
    result.checks_unchanged = (ROOT / "helpers" / "checks.py").read_bytes() == checks_before
    return result


def flags(submission):
    return " | ".join(submission["flags"])


def test_faked_verdict_lines_and_printed_verdicts_do_not_raise_the_score(attacks):
    fake = attacks.by_name["fake_lines_01.ipynb"]
    assert fake["correct"] == 0 and statuses(fake)["q1"] == "error"  # no check call: the grader's own verdict is missing
    assert "tampering suspected" in flags(fake)
    assert "a 'correct' verdict for q1 was recorded" in flags(fake)
    assert "printed a 'correct' verdict for q1" in flags(fake)


def test_patched_checks_do_not_raise_the_score(attacks):
    patched = attacks.by_name["patched_01.ipynb"]
    # The grader judged q1 (parameter names, not buffers) and q2 (None) with its own checks.
    assert statuses(patched)["q1"] == "wrong" and statuses(patched)["q2"] == "wrong"
    for name in ("helpers.checks.Exercise.evaluate", "helpers.checks.record_verdict", "helpers.exercises.lesson01.q2.checker"):
        assert f"code in the notebook replaced {name}" in flags(patched), name
    assert "printed a 'correct' verdict for q1 that the grader's check did not give" in flags(patched)


def test_a_checks_module_patched_on_disk_does_not_raise_the_score(attacks):
    disk = attacks.by_name["disk_01.ipynb"]
    assert statuses(disk)["q1"] == "wrong"
    assert "changed the grading copy's helpers (checks.py)" in flags(disk)
    assert attacks.checks_unchanged


def test_killing_the_grading_process_costs_only_that_submission(attacks):
    assert attacks.status == 1
    runs = {name: s["run"] for name, s in attacks.by_name.items()}
    assert runs["killer_01.ipynb"] == runs["group_killer_01.ipynb"] == "killed"
    killer = attacks.by_name["killer_01.ipynb"]
    assert "killed its grading process (killed by signal SIGKILL) while cell 3 [c2] ran" in killer["problem"]
    assert statuses(killer) == dict.fromkeys(["q1", "q2", "q3", "q4"], "error")
    for name in ("before_01.ipynb", "after_01.ipynb"):
        assert runs[name] == "completed" and statuses(attacks.by_name[name])["q1"] == "correct", name
    assert "killer_01.ipynb: not graded" not in attacks.out and "killer_01.ipynb: 0/4" in attacks.out
    # What the killed one left behind is gone: its kernel, its temporary folders.
    pid = int(attacks.pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert attacks.temp_left == set()


def test_a_submission_cannot_write_into_the_course_through_its_environment(attacks):
    before = attacks.by_name["before_01.ipynb"]
    assert before["cell_errors"] == []  # every write went somewhere: into the grading copy
    written = [p for p in ROOT.rglob(f"*{attacks.tag}*")] + list(Path.home().glob(f"*{attacks.tag}*"))
    assert written == []


def test_a_renamed_lesson_is_noted(attacks):
    renamed = attacks.by_name["renamed_01.ipynb"]
    assert renamed["lesson"] == OLD_LESSON
    assert f"the file name says lesson {LESSON}, but the notebook is lesson {OLD_LESSON}" in flags(renamed)


def test_an_environment_without_the_real_course(tmp_path, monkeypatch):
    monkeypatch.setenv("OLDPWD", str(ROOT))
    monkeypatch.setenv("VIRTUAL_ENV", str(ROOT / ".venv"))
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    course, home = tmp_path / "course", tmp_path / "home"
    env = grade.kernel_environment(course, home, tmp_path / "v.jsonl", ROOT)
    assert "OLDPWD" not in env and "VIRTUAL_ENV" not in env and env["SOMETHING_ELSE"] == "kept"
    assert env["PWD"] == str(course / "notebooks") and env["HOME"] == str(home)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(course)
    inside = [key for key, value in env.items() if key != "PATH" and str(ROOT.resolve()) in value]
    assert inside == []


def test_the_recheck_finds_check_calls_and_replaced_functions():
    from helpers import grade_recheck

    calls = grade_recheck.check_calls("x = 1\nex.q2.check(a, b=c)\nprint(ex.q1.check(*args))")
    assert [c.func.value.attr for c in calls] == ["q2", "q1"]
    assert grade_recheck.check_calls("def broken(:") == []
    args, kwargs = grade_recheck.call_arguments(calls[0], {"a": 1, "c": 2})
    assert (args, kwargs) == ([1], {"b": 2})
    assert grade_recheck.replaced_helpers() == []  # nothing replaced in this test process


# ---- without a kernel ---------------------------------------------------------------------

def test_lesson_from_the_file_name():
    assert grade.lesson_from_file_name("alice_01.ipynb", KNOWN) == LESSON
    assert grade.lesson_from_file_name("01-bob.ipynb", KNOWN) == LESSON
    assert grade.lesson_from_file_name("carol_01_state_dict (1).ipynb", KNOWN) == LESSON
    assert grade.lesson_from_file_name("2024_dave_10.ipynb", KNOWN) == "10_big_lesson"
    assert grade.lesson_from_file_name("erin_01_02.ipynb", KNOWN) is None  # two lessons: ambiguous
    assert grade.lesson_from_file_name("frank_1.ipynb", KNOWN) is None
    assert grade.lesson_from_file_name("homework.ipynb", KNOWN) is None


def test_lesson_from_the_notebook_metadata_then_its_header():
    lesson_key = {"metadata": {"course": {"lesson": "02_other_lesson", "title": TITLE}}, "cells": []}
    assert grade.lesson_from_notebook(lesson_key, KNOWN) == ("02_other_lesson", "metadata")
    by_title = {"metadata": {"course": {"title": TITLE}}, "cells": []}
    assert grade.lesson_from_notebook(by_title, KNOWN) == (LESSON, "metadata")
    header = {"metadata": {"course": {"title": "renamed since"}}, "cells": [
        {"cell_type": "markdown", "id": "course-header",
         "source": "# Lesson 10\n[badge](https://colab.research.google.com/github/o/r/blob/main/notebooks/10_big_lesson.ipynb)"}]}
    assert grade.lesson_from_notebook(header, KNOWN) == ("10_big_lesson", "header")
    assert grade.lesson_from_notebook({"metadata": {}, "cells": []}, KNOWN) == (None, None)


def test_the_lesson_option_takes_a_name_or_a_number():
    assert grade.resolve_lesson_option("01_state_dict.ipynb", KNOWN) == LESSON
    assert grade.resolve_lesson_option("1", KNOWN) == LESSON
    assert grade.resolve_lesson_option("10", KNOWN) == "10_big_lesson"
    assert grade.resolve_lesson_option("7", KNOWN) is None


def test_a_forced_lesson_is_reported_for_an_unreadable_submission(tmp_path):
    result = grade.grade_notebook(tmp_path / "nothing_here.ipynb", lesson=LESSON)
    assert (result.lesson, result.lesson_from, result.run, result.complete) == (LESSON, "--lesson", "invalid", False)
    assert [e.status for e in result.exercises] == ["error"] * 4
    assert "not graded (invalid)" in result.score_line()


def test_usage_errors_give_exit_status_2(tmp_path):
    assert run_main()[0] == 2
    assert run_main("x.ipynb", "--timeout", "0")[0] == 2
    status, _, err = run_main("x.ipynb", "--lesson", "99")
    assert status == 2 and LESSON in err
    status, _, err = run_main("x.ipynb", "--csv", tmp_path / "no" / "such" / "folder.csv")
    assert status == 2 and "does not exist" in err
    assert run_main("--no-such-option")[0] == 2
    assert run_main("--help")[0] == 0


def test_lessons_lists_objectives_times_and_exercises():
    status, out, _ = run_main("--lessons")
    assert status == 0
    assert f"## 01 · {TITLE}" in out and "**Prerequisites:**" in out and "on a 2-core CPU" in out
    assert "`q4`:" in out and f"notebooks/{LESSON}.ipynb" in out


def test_help_on_the_command_line_documents_the_exit_statuses():
    result = subprocess.run([sys.executable, "-m", "helpers.grade", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)  # a hang guard
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for phrase in ("--timeout SECONDS", "--csv FILE", "--json FILE", "--lesson NAME", "Exit status: 0",
                   "1 = at least one", "2 = usage error", "not a sandbox"):
        assert phrase in text


def test_the_instructors_guide_matches_the_grader():
    guide = (ROOT / "INSTRUCTORS.md").read_text(encoding="utf-8")
    assert "(INSTRUCTORS.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^- `(--[a-z]+)", guide, flags=re.MULTILINE))
    options = {option for action in grade._parser()._actions for option in action.option_strings}
    assert documented == {"--timeout", "--lesson", "--csv", "--json"} and documented <= options
    for word in (*grade.CSV_COLUMNS, *grade.RUN_OUTCOMES, "correct", "wrong", "not attempted", "error"):
        assert f"`{word}`" in guide, word
    for phrase in ("--lessons", "make notebooks", "bash .ci/run", "### BEGIN SOLUTION", "not a sandbox"):
        assert phrase in guide, phrase
