"""The grader: run submitted notebooks in fresh kernels and report every exercise's verdict.

    python -m helpers.grade SUBMISSION.ipynb [MORE.ipynb ...] [--timeout SECONDS]
                            [--lesson NAME] [--csv FILE] [--json FILE]
    python -m helpers.grade --lessons        # what each lesson teaches, its time and exercises

**Which lesson.** For each submission, the first of these that names a lesson wins:

1. the notebook's metadata: ``metadata["course"]["lesson"]`` if present, else
   ``metadata["course"]["title"]`` matched against the titles in ``solutions/`` (the generator
   stamps ``metadata["course"]`` into every notebook it hands out);
2. the Colab link in the notebook's header cell (``.../notebooks/01_state_dict.ipynb``);
3. the file name: it contains a lesson's name (``alice_01_state_dict.ipynb``) or exactly one
   lesson number as a separate two-digit group (``alice_01.ipynb``, ``01-bob.ipynb``);
4. after running it, the lesson that the recorded verdicts belong to.

``--lesson NAME`` (a lesson name or its number) skips all that and applies to every submission.

**How it runs.** Each submission is graded by a grading process of its own (``--worker``), in a
session of its own, so a submission that kills its kernel's parent, process group or session
costs only its own grade (``killed``). It runs top to bottom in a fresh kernel of the Python that
runs the grader (like nbval's ``--nbval-current-env``), in a temporary copy of the course:
``pyproject.toml``, ``helpers/`` and ``data/`` are copied, the kernel's working folder is the
copy's ``notebooks/``, and the copy is first on the kernel's ``PYTHONPATH``. So ``run_dir()``
writes to the copy's ``runs/``, the helpers are imported from the copy, and ``data/`` is read
from the copy: relative paths such as ``../data`` or ``runs/`` never reach this repository.
Checks record their verdicts in ``$COURSE_VERDICTS_FILE``, which points to a second temporary
folder. Both are deleted afterwards. The kernel's environment leads only into the copy
(:func:`kernel_environment`: ``PWD``, ``HOME``; ``OLDPWD`` and variables naming the real course
dropped). Past :data:`MAX_OUTPUT_BYTES` of output the run is stopped (``output limit``).

**The score is the grader's own.** Every cell that calls ``ex.qN.check(...)`` gets the grader's
re-check appended (:mod:`helpers.grade_recheck`): the same answers, judged again in the same
kernel by checks built from source text read before the batch started. The verdicts the notebook
recorded or printed are only compared with those; a difference, a replaced helper function, or
changed helper files in the copy add a ``tampering suspected: ...`` flag. Flags (also: a handed-in
solution, a file name naming another lesson) never change a score.

Outputs are counted, not kept (only errors are), and the kernel's own stdout and stderr go to
``/dev/null``, so a notebook that prints gigabytes costs little here. **This is not a sandbox:** the kernel runs as you, with your files and network;
grade code you would run yourself.

A cell that raises does not stop the run (nbclient's ``allow_errors``): later exercises are
still graded, and each cell's error is listed. ``--timeout`` (default 300 s) limits the time
spent running one submission's cells (starting the kernel is not counted); when it runs out, or
the kernel dies, the kernel is killed and the exercises whose checks had not run are reported
as ``error`` with the reason.

**Statuses**, one per exercise: ``correct``, ``wrong``, ``not attempted`` (the grader's own
check's verdict; when a check ran more than once, the **last** verdict counts), or ``error``: no
verdict, because the check cell raised, never ran (timeout, dead kernel, killed), or is missing,
or the check found the course's files broken (an environment problem, not a wrong answer).

**Output.** A table (notebook, exercise, status, message; messages shortened to fit) and one
score line per submission on stdout; progress on stderr.

``--csv FILE``: one row per exercise of each submission, columns ``notebook`` (the path as
given), ``lesson``, ``exercise``, ``status``, ``points`` (1 if correct, else 0), ``message``,
``run`` (``completed``, ``timeout``, ``kernel died``, ``output limit``, ``killed``, ``invalid``,
``unknown lesson`` or ``failed``), ``flags`` (joined by `` | ``). A submission whose exercises are unknown gets one row with an empty ``exercise``.

``--json FILE``: ``{"timeout_seconds": ..., "submissions": [...]}``, each submission an object
with ``notebook``, ``lesson``, ``lesson_from`` (``metadata``, ``header``, ``file name``,
``verdicts``, ``--lesson`` or null), ``run``, ``problem`` (why the run did not complete, or
null), ``seconds``, ``output_bytes`` (what the notebook printed or displayed, not kept),
``correct``, ``total``, ``exercises`` (``[{"exercise", "status", "message"}]``),
``cell_errors`` (``[{"cell", "id", "error", "message"}]``, ``cell`` counting every cell from 1)
and ``flags`` (a list of strings).

**Exit status:** 0 when every submission ran to its end (whatever the scores, and even if some
cells raised); 1 when at least one could not be graded completely (it timed out, its kernel
died, it printed too much, it killed its grading process, it is not a readable notebook, or its
lesson is unknown); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_TIMEOUT = 300.0
"""Seconds one submission's cells may run in total (``--timeout``)."""

CORRECT, WRONG, NOT_ATTEMPTED = "correct", "wrong", "not attempted"  # the same as helpers.checks
ENVIRONMENT_PROBLEM = "environment problem"  # helpers.checks: the course files are broken, not the answer
ERROR = "error"
"""The status of an exercise whose check never gave a verdict (or could not judge the answer)."""

COMPLETED, TIMEOUT, KERNEL_DIED, OUTPUT_LIMIT, KILLED, INVALID, UNKNOWN_LESSON, FAILED = (
    "completed", "timeout", "kernel died", "output limit", "killed", "invalid", "unknown lesson", "failed",
)
RUN_OUTCOMES = (COMPLETED, TIMEOUT, KERNEL_DIED, OUTPUT_LIMIT, KILLED, INVALID, UNKNOWN_LESSON, FAILED)
"""How a submission's run ended; every outcome but ``completed`` makes the exit status 1."""

CSV_COLUMNS = ("notebook", "lesson", "exercise", "status", "points", "message", "run", "flags")

TAMPERING = "tampering suspected"
"""How a flag starts when the notebook's own verdicts disagree with the grader's re-check."""

MESSAGE_LIMIT = 500
"""Characters kept of any one message (verdicts, errors) in the results."""
TABLE_MESSAGE_WIDTH = 140
MAX_NOTEBOOK_BYTES = 100 * 2**20
MAX_VERDICT_BYTES = 4 * 2**20
MAX_OUTPUT_BYTES = 64 * 2**20
"""What one submission may print or display in all; past it the run is stopped (``output limit``)."""
MAX_OUTPUT_KEPT_PER_CELL = 64 * 2**10
"""Characters of each cell's printed text kept, to compare printed verdicts with the grader's."""
KERNEL_STARTUP_TIMEOUT = 60
_CURRENT_ENV_KERNEL = "course-grader-current-env"

_log = logging.getLogger("helpers.grade.nbclient")
_log.addHandler(logging.NullHandler())
_log.propagate = False


def _shorten(text: object, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class ExerciseResult:
    """One exercise of one submission: its status and the message that explains it."""

    exercise: str
    status: str
    message: str


@dataclass
class CellError:
    """A cell that raised while the submission ran (``cell`` counts every cell from 1)."""

    cell: int
    id: str | None
    error: str
    message: str

    def where(self) -> str:
        """``cell 12 [q1-answer]``: how tables and messages name this cell."""
        return _cell_name(self.cell, self.id)


def _cell_name(number: int, cell_id: str | None) -> str:
    return f"cell {number} [{cell_id}]" if cell_id else f"cell {number}"


@dataclass
class Submission:
    """Everything the grader found out about one submitted notebook."""

    notebook: str
    lesson: str | None = None
    lesson_from: str | None = None
    run: str = COMPLETED
    problem: str | None = None
    seconds: float = 0.0
    output_bytes: int = 0
    exercises: list[ExerciseResult] = field(default_factory=list)
    cell_errors: list[CellError] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """What an instructor should look at: ``tampering suspected: ...``, a handed-in solution, a
    file name that names another lesson. Flags never change a score; the score is the grader's own."""

    @property
    def correct(self) -> int:
        """How many exercises are correct."""
        return sum(e.status == CORRECT for e in self.exercises)

    @property
    def total(self) -> int:
        """How many exercises the lesson has (0 when the lesson is unknown)."""
        return len(self.exercises)

    @property
    def complete(self) -> bool:
        """True when the notebook ran to its end, so every exercise got its chance."""
        return self.run == COMPLETED

    def score_line(self) -> str:
        """One line: the score, the other statuses, and how the run ended."""
        if self.lesson is None or not self.exercises or self.run in (INVALID, UNKNOWN_LESSON, FAILED):
            return f"{self.notebook}: not graded ({self.run}): {self.problem}"
        counts = collections.Counter(e.status for e in self.exercises)
        others = ", ".join(f"{counts[s]} {s}" for s in (WRONG, NOT_ATTEMPTED, ERROR) if counts[s])
        ending = (
            f"ran to the end in {self.seconds:.1f} s"
            if self.complete
            else f"{self.run}: {self.problem}"
        )
        return (
            f"{self.notebook}: {self.correct}/{self.total} correct"
            + (f" ({others})" if others else "")
            + f" · lesson {self.lesson} (from {self.lesson_from}) · {ending}"
            + (f" · ⚠ {len(self.flags)} flag{'s' if len(self.flags) > 1 else ''}" if self.flags else "")
        )

    def to_dict(self) -> dict:
        """The JSON form (see the module docstring)."""
        data = asdict(self)
        data["correct"], data["total"] = self.correct, self.total
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Submission":
        """The inverse of :meth:`to_dict` (how a grading process hands its result back)."""
        fields = {k: v for k, v in data.items() if k not in ("correct", "total", "exercises", "cell_errors")}
        return cls(
            **fields,
            exercises=[ExerciseResult(**e) for e in data.get("exercises", [])],
            cell_errors=[CellError(**e) for e in data.get("cell_errors", [])],
        )


# --------------------------------------------------------------------------------------------
# Which lesson


def course_root() -> Path:
    """The course folder whose ``solutions/``, ``data/`` and ``helpers/`` the grader uses.

    The repository this module lives in (the helpers are installed editable), else the course
    folder around the current folder.
    """
    from helpers.environment import repo_root  # imports torch: only when needed, so --help is quick

    here = repo_root(Path(__file__).resolve().parent)
    return here if (here / "helpers").is_dir() and (here / "pyproject.toml").is_file() else repo_root()


def _lessons() -> dict:
    from helpers.exercises import all_lessons

    return all_lessons()


@functools.lru_cache(maxsize=4)
def _solution_metadata(root: Path) -> dict[str, dict]:
    """``metadata["course"]`` of every ``solutions/*.ipynb``, keyed by lesson name."""
    found = {}
    for path in sorted((root / "solutions").glob("*.ipynb")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("course")
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            found[path.stem] = meta
    return found


_HEADER_LINK = re.compile(r"/(?:notebooks|solutions)/(\d\d_\w+)\.ipynb")


def lesson_from_notebook(nb: dict, known: set[str], root: Path | None = None) -> tuple[str | None, str | None]:
    """The lesson a notebook's own content names: ``(name, "metadata" | "header")``, or ``(None, None)``."""
    meta = nb.get("metadata", {}).get("course") if isinstance(nb.get("metadata"), dict) else None
    if isinstance(meta, dict):
        lesson, title = meta.get("lesson"), meta.get("title")
        if isinstance(lesson, str) and lesson in known:
            return lesson, "metadata"
        if isinstance(title, str):
            titles = {m.get("title"): name for name, m in _solution_metadata(root or course_root()).items()}
            if titles.get(title) in known:
                return titles[title], "metadata"
    cells = nb.get("cells") or []
    for cell in cells[:3]:
        if isinstance(cell, dict) and (cell.get("id") == "course-header" or cell.get("cell_type") == "markdown"):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            for match in _HEADER_LINK.finditer(source):
                if match.group(1) in known:
                    return match.group(1), "header"
    return None, None


def lesson_from_file_name(path: str | os.PathLike, known: set[str]) -> str | None:
    """The lesson a file name names: a whole lesson name in it, or exactly one lesson number."""
    stem = Path(path).name.removesuffix(".ipynb")
    named = [name for name in known if name in stem]
    if len(named) == 1:
        return named[0]
    numbers = set(re.findall(r"(?<![0-9])([0-9]{2})(?![0-9])", stem))
    matches = {name for name in known for n in numbers if name.startswith(n + "_")}
    return matches.pop() if len(matches) == 1 else None


def resolve_lesson_option(value: str, known: set[str]) -> str | None:
    """The lesson ``--lesson`` names: a lesson name (``01_state_dict``) or its number (``01``, ``1``)."""
    value = value.removesuffix(".ipynb")
    if value in known:
        return value
    if value.isdigit():
        matches = [name for name in known if name.split("_", 1)[0] == f"{int(value):02d}"]
        return matches[0] if len(matches) == 1 else None
    return None


# --------------------------------------------------------------------------------------------
# Running one notebook


def _kernel_manager():
    """An async kernel manager for a kernel of the Python running the grader."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnvironment(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            if kernel_name == _CURRENT_ENV_KERNEL:
                return self.kernel_spec_class(
                    resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
                )
            return super().get_kernel_spec(kernel_name)

    return AsyncKernelManager(kernel_name=_CURRENT_ENV_KERNEL, kernel_spec_manager=CurrentEnvironment())


def _make_client(nb, km, timeout: float, state: dict):
    from nbclient import NotebookClient

    class GradingClient(NotebookClient):
        """nbclient, with one deadline for all cells and outputs counted instead of kept."""

        def _get_timeout(self, cell):
            if state["deadline"] is None or cell is None:
                return KERNEL_STARTUP_TIMEOUT
            return max(0.1, state["deadline"] - time.monotonic())

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            data = content.get("data") or {}
            recheck = data.get(RECHECK_MIME_TYPE)
            if recheck is not None:  # the grader's own re-check of this cell (see helpers/grade_recheck.py)
                _receive_recheck(state, recheck, cell_index)
                return None
            text = str(content.get("text", ""))
            state["output_bytes"] += len(text) + sum(len(str(v)) for v in data.values())
            kept = state["printed"].setdefault(cell_index, [])
            if text and sum(map(len, kept)) < MAX_OUTPUT_KEPT_PER_CELL:
                kept.append(text[:MAX_OUTPUT_KEPT_PER_CELL])
            if state["output_bytes"] > MAX_OUTPUT_BYTES:
                raise OutputLimitExceeded(state["output_bytes"])
            return None

    def on_cell_execute(cell, cell_index, **_):
        if state["deadline"] is None:
            state["deadline"] = time.monotonic() + timeout
            _write_quietly(state.get("kernel_pid_file"), _kernel_pid(client))
        state["current"] = cell_index
        state["executed"].add(cell_index)
        _write_quietly(state.get("progress_file"), str(cell_index))

    def on_cell_error(cell, cell_index, execute_reply, **_):
        content = execute_reply.get("content", {})
        state["errors"][cell_index] = (
            _shorten(content.get("ename", "Error"), 100),
            _shorten(content.get("evalue", ""), 300),
        )

    def on_notebook_error(notebook, **_):  # the kernel died: keep its exit status before cleanup
        try:
            state["exit_status"] = client.km.provisioner.process.poll()
        except Exception:
            pass

    client = GradingClient(
        nb,
        km=km,
        allow_errors=True,
        startup_timeout=KERNEL_STARTUP_TIMEOUT,
        shutdown_kernel="immediate",
        record_timing=False,
        on_cell_execute=on_cell_execute,
        on_cell_error=on_cell_error,
        on_notebook_error=on_notebook_error,
        log=_log,
    )
    return client


class OutputLimitExceeded(Exception):
    """Raised while receiving outputs once a submission printed more than :data:`MAX_OUTPUT_BYTES`."""


def _kernel_pid(client) -> str:
    try:
        return str(client.km.provisioner.process.pid)
    except Exception:
        return ""


def _write_quietly(path, text: str) -> None:
    if path:
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError:
            pass


def _receive_recheck(state: dict, payload, cell_index: int) -> None:
    try:
        report = json.loads(payload)
    except (TypeError, ValueError):
        return
    if not isinstance(report, dict) or report.get("token") != state["token"]:
        state["forged"] = True  # our MIME type, but not our token: the notebook made it
        return
    if report.get("cell") != cell_index:
        state["forged"] = True
        return
    state["rechecks"].append(report)


def _course_copy(root: Path, folder: Path) -> Path:
    """Lay out a course folder in ``folder``: pyproject.toml, helpers/, data/, notebooks/."""
    course = folder / "course"
    course.mkdir()
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        shutil.copy2(pyproject, course / "pyproject.toml")
    else:
        (course / "pyproject.toml").write_text("")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(__file__).resolve().parent, course / "helpers", ignore=ignore)
    if (root / "data").is_dir():
        shutil.copytree(root / "data", course / "data", ignore=ignore)
    (course / "notebooks").mkdir()
    return course


def _read_verdicts(path: Path) -> list[dict]:
    """The verdict records in ``path`` (at most its last few MiB), oldest first."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size > MAX_VERDICT_BYTES:
                f.seek(size - MAX_VERDICT_BYTES)
                f.readline()  # a partial line
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("lesson"), str)
            and isinstance(record.get("exercise"), str)
            and record.get("status") in (CORRECT, WRONG, NOT_ATTEMPTED)
        ):
            records.append(record)
    return records


def _check_cells(cells: list, exercise: str) -> list[int]:
    pattern = re.compile(rf"\.\s*{re.escape(exercise)}\s*\.\s*check\s*\(")
    return [i for i, c in enumerate(cells) if c.get("cell_type") == "code" and pattern.search(c.get("source", ""))]


def _why_no_verdict(exercise: str, cells: list, state: dict, submission: Submission, verdicts_exist: bool) -> str:
    check_cells = _check_cells(cells, exercise)
    if not check_cells:
        return f"No verdict: no cell calls ex.{exercise}.check(...). Was its check cell deleted?"
    name = lambda i: _cell_name(i + 1, cells[i].get("id"))  # noqa: E731
    for i in reversed(check_cells):
        if i in state["errors"]:
            ename, evalue = state["errors"][i]
            message = f"No verdict: its check cell ({name(i)}) raised {ename}: {evalue}"
            cause = _earlier_error(i, cells, state)
            if cause is not None:
                message += f". Probably because {name(cause)} raised {state['errors'][cause][0]}: {state['errors'][cause][1]}"
            return message
    ran = [i for i in check_cells if i in state["executed"]]
    if not submission.complete:
        if state["current"] in check_cells:
            return f"No verdict: the run stopped in its check cell ({name(state['current'])}): {submission.problem}"
        if not ran:
            return f"Not graded: the run stopped before its check cell ({name(check_cells[0])}): {submission.problem}"
    if not verdicts_exist:
        return f"No verdict: its check cell ({name(ran[-1] if ran else check_cells[0])}) ran, but the verdicts file is gone (did the notebook delete it?)."
    message = f"No verdict: its check cell ({name(ran[-1] if ran else check_cells[0])}) ran but recorded nothing for {exercise}."
    if state.get("other_lessons"):
        message += f" Its checks recorded verdicts for {', '.join(state['other_lessons'])}: is that its lesson (--lesson)?"
    return message


_ANY_CHECK = re.compile(r"\.\s*\w+\s*\.\s*check\s*\(")


def _earlier_error(index: int, cells: list, state: dict) -> int | None:
    """The last cell before ``index``, and after the previous check cell, that raised."""
    for i in range(index - 1, -1, -1):
        if cells[i].get("cell_type") == "code" and _ANY_CHECK.search(cells[i].get("source", "")):
            return None
        if i in state["errors"]:
            return i
    return None


def _exit_status(status: int | None) -> str:
    if status is None:
        return ""
    if status < 0:
        try:
            return f" (killed by signal {signal.Signals(-status).name})"
        except ValueError:
            return f" (killed by signal {-status})"
    return f" (exit status {status})"


RECHECK_MIME_TYPE = "application/x-course-grader+json"  # the same as helpers.grade_recheck.MIME_TYPE


def pristine_sources(helpers_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The source text of ``helpers/checks.py`` and ``helpers/exercises/``, read from the grader's files.

    Keys are module names (a package's is ``NAME.__init__``), plus ``"__recheck__"``: the program
    that re-checks answers in a kernel (:mod:`helpers.grade_recheck`). The grader reads them once,
    before any submission runs, so no submission can change the checks that judge the others.
    """
    folder = Path(helpers_dir or Path(__file__).resolve().parent)
    sources = {"helpers.checks": (folder / "checks.py").read_text(encoding="utf-8"),
               "__recheck__": (folder / "grade_recheck.py").read_text(encoding="utf-8")}
    for path in sorted((folder / "exercises").glob("*.py")):
        name = "helpers.exercises." + path.stem if path.stem != "__init__" else "helpers.exercises.__init__"
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def _lesson_module_name(lesson: str, sources: dict[str, str]) -> str | None:
    """The ``helpers.exercises`` module that defines ``ExerciseSet("<lesson>")``."""
    pattern = re.compile(r"ExerciseSet\(\s*[\"']" + re.escape(lesson) + r"[\"']\s*\)")
    for name, source in sources.items():
        if name.startswith("helpers.exercises.") and not name.endswith("__init__") and pattern.search(source):
            return name
    return None


def _with_recheck(source: str, cell_index: int, token: str, lesson_module: str, sources: dict[str, str]) -> str:
    """A check cell's source with the grader's re-check appended (one line, so IPython leaves it alone)."""
    args = {
        "token": token,
        "cell": cell_index,
        "source": source,
        "lesson_module": lesson_module,
        "sources": {k: v for k, v in sources.items() if k != "__recheck__"},
    }
    program = sources["__recheck__"]
    return (
        f"{source}\n\n"
        "# (added by the grader) check the answers above again with the grader's own copy of the checks\n"
        f"exec(compile({program!r}, '<course grader>', 'exec'), "
        f"{{'__name__': '__course_grader__', '__course_grader_args__': {args!r}}})\n"
    )


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def kernel_environment(course: Path, home: Path, verdicts_file: Path, real_course: Path) -> dict[str, str]:
    """The kernel's environment: the grader's, with nothing left that leads to the real course.

    ``PWD`` is the copy's ``notebooks/``, ``OLDPWD`` is dropped, ``HOME`` (and the XDG, Jupyter,
    IPython and Matplotlib folders under it) is an empty folder of the grading copy, and every
    other variable that names a folder inside ``real_course`` is dropped (``PATH`` keeps its other
    entries, and the folder of the Python that runs the kernel).
    """
    real_course = real_course.resolve()
    python_bin = str(Path(sys.executable).parent)
    env = {}
    for key, value in os.environ.items():
        if key in ("OLDPWD", "PWD", "HOME", "PYTHONPATH"):
            continue
        if key == "PATH":
            parts = [p for p in value.split(os.pathsep) if p == python_bin or not (p and _inside(p, real_course))]
            env[key] = os.pathsep.join(parts)
        elif any(part and os.path.isabs(part) and _inside(part, real_course) for part in value.split(os.pathsep)):
            continue
        else:
            env[key] = value
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not _inside(p, real_course)]
    env.update({
        "PWD": str(course / "notebooks"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        "COURSE_VERDICTS_FILE": str(verdicts_file),
        "PYTHONPATH": os.pathsep.join([str(course), *pythonpath]),
    })
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.setdefault("MPLBACKEND", "agg")
    return env


def _fingerprint(folder: Path) -> dict[str, str]:
    import hashlib

    found = {}
    for path in sorted(folder.rglob("*.py")):
        try:
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            found[path.relative_to(folder).as_posix()] = "unreadable"
    return found


def _normalized_code(source: str) -> str:
    lines = [line.strip() for line in source.splitlines()]
    return "\n".join(line for line in lines if line and line not in ("### BEGIN SOLUTION", "### END SOLUTION"))


def solution_flag(nb, lesson: str, root: Path) -> str | None:
    """Why ``nb`` looks like the instructor's solution of ``lesson`` handed in, or None."""
    sources = [c.get("source", "") for c in nb.cells if c.get("cell_type") == "code"]
    if any("### BEGIN SOLUTION" in source for source in sources):
        return "a solution notebook: it still holds ### BEGIN SOLUTION regions (is this the instructor's copy?)"
    try:
        import nbformat

        solution = nbformat.read(root / "solutions" / f"{lesson}.ipynb", as_version=4)
    except Exception:
        return None
    answers = [_normalized_code(c.source) for c in solution.cells if c.cell_type == "code" and "### BEGIN SOLUTION" in c.source]
    submitted = {_normalized_code(source) for source in sources}
    if answers and all(answer in submitted for answer in answers):
        return "a solution notebook: every answer is exactly the instructor's solution"
    return None


def file_name_flag(path: Path, lesson: str, lesson_from: str | None, known: set[str]) -> str | None:
    """A note when the file name names another lesson than the one the notebook says it is."""
    if lesson_from not in ("metadata", "header"):
        return None
    named = lesson_from_file_name(path, known)
    if named is not None and named != lesson:
        return f"the file name says lesson {named}, but the notebook is lesson {lesson} (graded as {lesson})"
    return None


def _judge(lesson: str, names: list[str], records: list[dict], state: dict) -> tuple[dict[str, dict], list[str]]:
    """The grader's own verdicts (the last re-check of each exercise) and the tampering found."""
    own: dict[str, dict] = {}
    own_correct = collections.Counter()
    flags = []
    for report in state["rechecks"]:
        if report.get("problem"):
            flags.append(f"the grader could not re-check cell {report.get('cell', 0) + 1}: {_shorten(report['problem'], 200)}")
        for result in report.get("results", []):
            if result.get("exercise") in names:
                own[result["exercise"]] = result
                own_correct[result["exercise"]] += result.get("status") == CORRECT
        for name in report.get("replaced", []):
            reason = f"code in the notebook replaced {name}"
            if reason not in flags:
                flags.append(reason)
    if state.get("forged"):
        flags.append("the notebook displayed a re-check result the grader did not make")
    recorded = {r["exercise"]: r for r in records if r["lesson"] == lesson}
    for name in names:
        mine, theirs = own.get(name), recorded.get(name)
        if theirs is None:
            continue
        if mine is None:
            if theirs["status"] == CORRECT:
                flags.append(f"a '{CORRECT}' verdict for {name} was recorded, but no check call that the grader could re-run gave it")
        elif theirs["status"] != mine.get("status"):
            flags.append(
                f"the notebook recorded '{theirs['status']}' for {name}, but the grader's own check of the same "
                f"answer says '{mine.get('status')}'"
            )
    printed = collections.Counter()
    for texts in state["printed"].values():
        for match in re.finditer(r"✅ (q\d+): correct", "".join(texts)):
            printed[match.group(1)] += 1
    for name in names:
        if printed[name] > own_correct[name]:
            flags.append(f"the notebook printed a 'correct' verdict for {name} that the grader's check did not give")
    return own, [f"{TAMPERING}: {flag}" for flag in flags]


def grade_notebook(
    path: str | os.PathLike,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    lesson: str | None = None,
    workspace: str | os.PathLike | None = None,
    sources: dict[str, str] | None = None,
) -> Submission:
    """Run one submitted notebook in a fresh kernel, in a temporary copy of the course, and grade it.

    ``lesson`` forces the lesson (a name from ``helpers.exercises``); otherwise it is found as
    the module docstring says. ``workspace`` is an empty folder for the course copy and the
    verdicts (default: a temporary folder, deleted afterwards); ``sources`` are the checks to
    judge with (default: :func:`pristine_sources`). Never raises for a bad submission: whatever
    went wrong is in the returned :class:`Submission` (``run``, ``problem`` and ``flags``).
    """
    if workspace is None:
        with tempfile.TemporaryDirectory(prefix="grade-", ignore_cleanup_errors=True) as folder:
            return grade_notebook(path, timeout=timeout, lesson=lesson, workspace=folder, sources=sources)
    import secrets

    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    workspace = Path(workspace)
    sources = sources if sources is not None else pristine_sources()
    lessons = _lessons()
    known = set(lessons)
    submission = Submission(notebook=str(path))
    started = time.perf_counter()
    path = Path(path)

    def finish(run: str, problem: str | None = None) -> Submission:
        submission.run, submission.problem = run, problem
        submission.seconds = round(time.perf_counter() - started, 1)
        if not submission.exercises and submission.lesson in lessons and run != COMPLETED:
            submission.exercises = [
                ExerciseResult(name, ERROR, f"Not graded: {problem}") for name in lessons[submission.lesson].names
            ]
        return submission

    if lesson is not None:
        submission.lesson, submission.lesson_from = lesson, "--lesson"

    # 1. Read it.
    nb, problem = read_submission(path)
    if submission.lesson is None:
        submission.lesson, submission.lesson_from = identify_lesson(path, nb, known)
    if problem is not None:
        return finish(INVALID, problem)
    root = course_root()
    if submission.lesson is not None:
        for flag in (solution_flag(nb, submission.lesson, root),
                     file_name_flag(path, submission.lesson, submission.lesson_from, known)):
            if flag:
                submission.flags.append(flag)

    # 2. Run it: outputs stripped, in a fresh kernel, inside a temporary course copy; every check
    #    cell re-checks its answers with the grader's own checks (helpers/grade_recheck.py).
    original = []
    for cell in nb.cells:
        if not isinstance(cell.get("metadata"), dict):
            cell.metadata = nbformat.from_dict({})
        source = cell.get("source", "")
        cell.source = "".join(map(str, source)) if isinstance(source, list) else str(source)
        original.append(cell.source)
        if cell.get("cell_type") == "code":
            cell.outputs, cell.execution_count = [], None
    token = secrets.token_hex(16)
    lesson_module = _lesson_module_name(submission.lesson, sources) if submission.lesson else None
    if lesson_module is not None:
        for index, cell in enumerate(nb.cells):
            if cell.get("cell_type") == "code" and _ANY_CHECK.search(cell.source):
                cell.source = _with_recheck(cell.source, index, token, lesson_module, sources)
    state = {"deadline": None, "current": None, "executed": set(), "errors": {}, "output_bytes": 0,
             "exit_status": None, "token": token, "rechecks": [], "printed": {}, "forged": False,
             "progress_file": workspace / "progress", "kernel_pid_file": workspace / "kernel.pid"}
    run, problem = COMPLETED, None
    course = _course_copy(root, workspace)
    home = workspace / "home"
    home.mkdir()
    verdicts_file = workspace / "verdicts" / "verdicts.jsonl"
    verdicts_file.parent.mkdir()
    helpers_before = _fingerprint(course / "helpers")
    km = _kernel_manager()
    client = _make_client(nb, km, timeout, state)
    try:
        client.execute(
            cwd=str(course / "notebooks"),
            env=kernel_environment(course, home, verdicts_file, root),
            cleanup_kc=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    except CellTimeoutError:
        run, problem = TIMEOUT, f"timed out after {timeout:g} s{_stopped_at(nb, state)}; the kernel was stopped"
    except DeadKernelError:
        detail = _exit_status(state["exit_status"])
        run, problem = KERNEL_DIED, f"the kernel died{detail}{_stopped_at(nb, state)}"
    except OutputLimitExceeded:
        run, problem = OUTPUT_LIMIT, (
            f"it printed more than {MAX_OUTPUT_BYTES // 2**20} MiB{_stopped_at(nb, state)}; the kernel was stopped"
        )
    except Exception as e:  # e.g. the kernel did not start
        run, problem = FAILED, f"could not run it: {type(e).__name__}: {_shorten(e, 300)}"
    finally:
        try:
            if km.has_kernel:
                from jupyter_client.utils import run_sync

                run_sync(km.shutdown_kernel)(now=True)
        except Exception:
            pass
    records = _read_verdicts(verdicts_file)
    verdicts_exist = verdicts_file.exists()
    changed = sorted(k for k in set(helpers_before) | set(_fingerprint(course / "helpers"))
                     if helpers_before.get(k) != _fingerprint(course / "helpers").get(k))
    for cell, source in zip(nb.cells, original):
        cell.source = source

    submission.output_bytes = state["output_bytes"]
    submission.cell_errors = [
        CellError(i + 1, nb.cells[i].get("id"), ename, evalue) for i, (ename, evalue) in sorted(state["errors"].items())
    ]

    # 3. Which lesson, if nothing said it before the run: the one the checks recorded verdicts for.
    #    The grader could not re-check those answers (it did not know the lesson while they ran),
    #    so it runs the notebook once more, as that lesson.
    if submission.lesson is None:
        counted = collections.Counter(r["lesson"] for r in records if r["lesson"] in known)
        if counted:
            found = counted.most_common(1)[0][0]
            again_folder = workspace / "again"
            again_folder.mkdir()
            again = grade_notebook(path, timeout=timeout, lesson=found, workspace=again_folder, sources=sources)
            again.lesson_from = "verdicts"
            again.seconds = round(time.perf_counter() - started, 1)
            return again
    if submission.lesson is None:
        why = (
            "could not tell which lesson this is (no course metadata, no lesson number in the "
            "file name, and no check recorded a verdict); grade it again with --lesson NAME"
        )
        if problem:
            why = f"{problem}; and {why}"
        submission.run, submission.problem = UNKNOWN_LESSON, why
        submission.seconds = round(time.perf_counter() - started, 1)
        return submission
    submission.run, submission.problem = run, problem

    # 4. The score: the grader's own re-check of each exercise (its last one); the notebook's
    #    recorded and printed verdicts are only compared with it.
    names = lessons[submission.lesson].names
    others = sorted({r["lesson"] for r in records} - {submission.lesson})
    if not any(r["lesson"] == submission.lesson for r in records) and others:
        state["other_lessons"] = others
    own, tampering = _judge(submission.lesson, names, records, state)
    if changed:
        tampering.append(f"{TAMPERING}: the notebook changed the grading copy's helpers ({', '.join(changed[:5])})")
    submission.flags.extend(tampering)
    for name in names:
        record = own.get(name)
        status = record.get("status") if record else None
        if status in (CORRECT, WRONG, NOT_ATTEMPTED):
            submission.exercises.append(ExerciseResult(name, status, _shorten(record.get("message", ""))))
        elif status == ENVIRONMENT_PROBLEM:
            submission.exercises.append(
                ExerciseResult(name, ERROR, _shorten(f"Could not be checked (not the answer's fault): {record.get('message', '')}"))
            )
        elif record is not None:
            submission.exercises.append(ExerciseResult(name, ERROR, _shorten(f"No verdict: {record.get('message', '')}")))
        else:
            reason = _why_no_verdict(name, nb.cells, state, submission, verdicts_exist)
            submission.exercises.append(ExerciseResult(name, ERROR, _shorten(reason)))
    return finish(run, problem)


def read_submission(path: Path):
    """``(notebook, None)`` for a readable notebook, else ``(None, why not)``."""
    import nbformat

    if not path.exists():
        return None, f"there is no file {path}"
    if not path.is_file():
        return None, f"{path} is a folder, not a notebook file"
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        return None, f"{path.stat().st_size / 2**20:.0f} MiB is too large for a submitted notebook"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        if not isinstance(nb.get("cells"), list) or not all(isinstance(c, dict) for c in nb.cells):
            raise ValueError("it has no list of cells")
    except UnicodeDecodeError:
        return None, "not a Jupyter notebook: the file is not UTF-8 text"
    except Exception as e:
        return None, f"not a Jupyter notebook ({type(e).__name__}: {_shorten(e, 200)})"
    return nb, None


def identify_lesson(path: Path, nb, known: set[str]) -> tuple[str | None, str | None]:
    """The lesson a submission names before it runs: from its content, else its file name."""
    if nb is not None:
        lesson, source = lesson_from_notebook(nb, known)
        if lesson is not None:
            return lesson, source
    name = lesson_from_file_name(path, known)
    return (name, "file name") if name else (None, None)


def _stopped_at(nb, state: dict) -> str:
    index = state["current"]
    if index is None:
        return ""
    return f" in {_cell_name(index + 1, nb.cells[index].get('id'))}"


WORKER_GRACE_SECONDS = 180.0
"""How long past ``--timeout`` (and the kernel's start) a grading process may take before it is
stopped: a hang guard, not a speed limit."""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill_leftovers(workspace: Path, worker_pid: int) -> None:
    """Stop the grading process's session and every kernel it started (each kernel leads its own)."""
    _kill_group(worker_pid)
    for pid_file in workspace.rglob("kernel.pid"):
        try:
            pid = int(pid_file.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0:
            _kill_group(pid)


def _stopped_cell(workspace: Path, path: Path) -> str:
    try:
        index = int((workspace / "progress").read_text().strip())
    except (OSError, ValueError):
        return ""
    nb, _ = read_submission(path)
    cell_id = None
    if nb is not None and 0 <= index < len(nb.cells):
        cell_id = nb.cells[index].get("id")
    return f" while {_cell_name(index + 1, cell_id)} ran"


def grade_in_own_process(path, *, timeout: float = DEFAULT_TIMEOUT, lesson: str | None = None,
                         sources: dict[str, str] | None = None) -> Submission:
    """Grade one submission in a grading process of its own, in a session of its own.

    Whatever the submission does to its process tree (kill its kernel's parent, its process group
    or its session), only that grading process dies: this one reports it as ``killed``, stops
    what is left of it, and deletes its temporary files.
    """
    path = Path(path)
    sources = sources if sources is not None else pristine_sources()
    with tempfile.TemporaryDirectory(prefix="grade-", ignore_cleanup_errors=True) as folder:
        folder = Path(folder)
        workspace = folder / "workspace"
        workspace.mkdir()
        job = {"notebook": str(path.absolute()), "timeout": timeout, "lesson": lesson, "workspace": str(workspace),
               "result": str(folder / "result.json"), "sources": sources}
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        started = time.perf_counter()
        with open(folder / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "helpers.grade", "--worker", str(folder / "job.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=str(folder), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])])},
            )
            try:
                status = worker.wait(timeout=timeout + 2 * KERNEL_STARTUP_TIMEOUT + WORKER_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                status = None
            _kill_leftovers(workspace, worker.pid)
            if status is None:
                worker.wait()
        seconds = round(time.perf_counter() - started, 1)
        try:
            result = Submission.from_dict(json.loads((folder / "result.json").read_text(encoding="utf-8")))
            result.notebook = str(path)
            return result
        except (OSError, ValueError, TypeError):
            pass
        # The grading process died (or hung) before it could report.
        lessons = _lessons()
        nb, _ = read_submission(path)
        found, found_from = (lesson, "--lesson") if lesson else identify_lesson(path, nb, set(lessons))
        if status is None:
            what = "the grading process hung and was stopped (a hang guard)"
        else:
            what = f"the submission killed its grading process{_exit_status(status)}"
        problem = f"{what}{_stopped_cell(workspace, path)}; the other submissions were graded as usual"
        try:
            tail = (folder / "worker.log").read_bytes()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            tail = ""
        if tail and status not in (None,) and status >= 0:
            problem += f" (it said: {_shorten(tail.splitlines()[-1], 200)})"
        submission = Submission(notebook=str(path), lesson=found, lesson_from=found_from, run=KILLED,
                                problem=problem, seconds=seconds)
        if found in lessons:
            submission.exercises = [ExerciseResult(n, ERROR, f"Not graded: {problem}") for n in lessons[found].names]
        return submission


def _worker(job_file: str) -> int:
    """The grading process: grade one submission as ``job.json`` says, write the result."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    result = grade_notebook(job["notebook"], timeout=job["timeout"], lesson=job["lesson"],
                            workspace=job["workspace"], sources=job["sources"])
    Path(job["result"]).write_text(json.dumps(result.to_dict()), encoding="utf-8")
    return 0


def grade(paths, *, timeout: float = DEFAULT_TIMEOUT, lesson: str | None = None, progress=None) -> list[Submission]:
    """Grade every notebook in ``paths``, one after the other, each in its own grading process;
    ``progress`` (a file) gets a line for each."""
    sources = pristine_sources()  # read once, before any submission runs
    results = []
    for path in paths:
        if progress is not None:
            print(f"grading {path} ...", file=progress, flush=True)
        try:
            result = grade_in_own_process(path, timeout=timeout, lesson=lesson, sources=sources)
        except Exception as e:  # a bug here must not cost the other submissions their grade
            result = Submission(notebook=str(path), run=FAILED, problem=f"the grader failed: {type(e).__name__}: {_shorten(e, 300)}")
        if progress is not None:
            print(f"  {result.score_line()}", file=progress, flush=True)
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------
# Reports


def _rows(submissions: list[Submission]):
    for s in submissions:
        if s.exercises:
            for e in s.exercises:
                yield s, e.exercise, e.status, e.message
        else:
            yield s, "", ERROR, f"{s.run}: {s.problem}"


def format_report(submissions: list[Submission], message_width: int = TABLE_MESSAGE_WIDTH) -> str:
    """The table (notebook, exercise, status, message) and a score line per submission."""
    rows = [("notebook", "exercise", "status", "message")]
    rows += [(s.notebook, ex, status, _shorten(msg, message_width)) for s, ex, status, msg in _rows(submissions)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    lines += ["", "Scores:"]
    for s in submissions:
        lines.append(f"  {s.score_line()}")
        for flag in s.flags:
            lines.append(f"      ⚠ {_shorten(flag, message_width)}")
        for error in s.cell_errors[:10]:
            lines.append(f"      {error.where()} raised {error.error}: {_shorten(error.message, message_width)}")
        if len(s.cell_errors) > 10:
            lines.append(f"      ... and {len(s.cell_errors) - 10} more cells raised (see --json)")
    return "\n".join(lines)


def write_csv(submissions: list[Submission], path: str | os.PathLike) -> None:
    """Write the gradebook CSV: one row per exercise, columns :data:`CSV_COLUMNS`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for s, exercise, status, message in _rows(submissions):
            writer.writerow([s.notebook, s.lesson or "", exercise, status, int(status == CORRECT), message, s.run,
                             " | ".join(s.flags)])


def write_json(submissions: list[Submission], path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write the gradebook JSON (schema in the module docstring)."""
    data = {"timeout_seconds": timeout, "submissions": [s.to_dict() for s in submissions]}
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def lessons_overview(root: Path | None = None) -> str:
    """Markdown: every lesson in ``solutions/`` with what it teaches, its run times and its exercises."""
    root = root or course_root()
    lessons = _lessons()
    parts = []
    for name, meta in _solution_metadata(root).items():
        exercises = lessons.get(name)
        lines = [
            f"## {name.split('_', 1)[0]} · {meta.get('title', name)}",
            "",
            f"Hand out `notebooks/{name}.ipynb`; the solution is `solutions/{name}.ipynb`.",
            "",
            f"- **Prerequisites:** {meta.get('prerequisites', 'not stated')}",
            f"- **Time to run:** {meta.get('time_cpu', 'not measured yet')} on a 2-core CPU; "
            f"GPU: {meta.get('time_gpu', 'not measured yet')}",
            "- **Learning objectives:**",
            *[f"  - {item}" for item in meta.get("learn", [])],
        ]
        if exercises is not None:
            lines.append(f"- **Graded exercises ({len(exercises)}):**")
            lines += [f"  - `{e.name}`: {e.title}" for e in exercises]
        else:
            lines.append("- **Graded exercises:** none yet (no module in helpers/exercises/)")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "No lessons found in solutions/."


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.grade",
        description="Run submitted notebooks, each in a fresh kernel in a temporary copy of the course, "
        "and report every exercise's verdict (correct, wrong, not attempted, or error).",
        epilog="Exit status: 0 = every submission ran to its end (whatever the scores); "
        "1 = at least one could not be graded completely (timeout, kernel died, not a notebook, "
        "unknown lesson); 2 = usage error. The grader is not a sandbox: submissions run as you. "
        "Details: INSTRUCTORS.md and `python -m pydoc helpers.grade`.",
    )
    parser.add_argument("notebooks", nargs="*", metavar="SUBMISSION.ipynb", help="the notebooks to grade")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"time one submission's cells may take in total (default {DEFAULT_TIMEOUT:g}; kernel start not counted)",
    )
    parser.add_argument("--lesson", metavar="NAME", help="grade every submission as this lesson (e.g. 01_state_dict or 01)")
    parser.add_argument("--csv", metavar="FILE", help="also write a gradebook CSV, one row per exercise")
    parser.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    parser.add_argument("--lessons", action="store_true", help="list the lessons (objectives, times, exercises) and exit")
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)  # one grading process (internal)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.worker:
        return _worker(args.worker)
    if args.lessons:
        print(lessons_overview())
        return 0
    if not args.notebooks:
        parser.print_usage(sys.stderr)
        print("error: name at least one notebook to grade (or use --lessons)", file=sys.stderr)
        return 2
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        print(f"error: --timeout must be a positive number of seconds, got {args.timeout:g}", file=sys.stderr)
        return 2
    for option, value in (("--csv", args.csv), ("--json", args.json)):
        if value is not None and not Path(value).resolve().parent.is_dir():
            print(f"error: {option} {value}: the folder {Path(value).parent} does not exist", file=sys.stderr)
            return 2
    lesson = None
    if args.lesson is not None:
        known = set(_lessons())
        lesson = resolve_lesson_option(args.lesson, known)
        if lesson is None:
            print(f"error: no lesson {args.lesson!r}; the lessons are: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
    submissions = grade(args.notebooks, timeout=args.timeout, lesson=lesson, progress=sys.stderr)
    print(format_report(submissions))
    try:
        if args.csv:
            write_csv(submissions, args.csv)
        if args.json:
            write_json(submissions, args.json, timeout=args.timeout)
    except OSError as e:
        print(f"error: could not write the gradebook ({e}); the results above are complete", file=sys.stderr)
        return 1
    return 0 if all(s.complete for s in submissions) else 1


if __name__ == "__main__":
    sys.exit(main())
