"""Pytest plugin (loaded by ``pyproject.toml``): "the notebook ran" is not the test.

For every notebook that nbval runs, it adds two test items around nbval's cells:

- before the first cell, one that deletes the lesson's recorded verdicts, so old runs can't count;
- after the last cell, one that reads the verdicts the checks recorded and requires that every
  exercise of the lesson was checked, and found **correct** in ``solutions/`` and **not
  attempted** in ``notebooks/``; it also fails when the notebook used more than
  :data:`NOTEBOOK_BUDGET_SECONDS` of CPU time.

The budget counts work, not waiting. A busy machine (other jobs, a slow disk) makes a notebook
*wait* longer, but it does not make it *compute* more, so the budget is the CPU time of the
notebook's kernel process and of every process it started, and the wall time is only printed
beside it. :func:`process_tree_cpu_seconds` reads that total when the last cell has run, while
the kernel still lives:

- the kernel's own user + system time (its threads included; the kernel start is counted);
- the kernel's *children* times: the operating system adds a child's time, and the time of the
  child's own children that it waited for, to its parent when the parent waits for it. So a
  ``subprocess.run`` or a ``torchrun`` and the workers it started count once they have exited;
- children still running (or exited but not yet waited for) at that moment, read one by one.

What it misses: processes that detached themselves (a double fork, a daemon) and, on macOS and
Windows, children that exited (there ``psutil`` reports no children times). The course's
notebooks start no such processes, and CI runs on Linux.

At the end of the run it prints each notebook's CPU time against the budget, and its wall time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.checks import CORRECT, NOT_ATTEMPTED, latest_verdicts, verdicts_path
from helpers.environment import variant_of

NOTEBOOK_BUDGET_SECONDS = 60.0
"""CPU seconds each notebook may use, top to bottom: its kernel and every process it starts.

The course promises a 60 s run on a 2-core machine; with one thread per process, as ``make
test`` runs it, a notebook's CPU time is what it would take alone on such a machine (or less,
where two processes share the work)."""

EXPECTED_STATUS = {"solutions": CORRECT, "notebooks": NOT_ATTEMPTED}

_started: dict[str, float] = {}


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and all the processes it started.

    Counts the process itself, its children that exited and were waited for (with everything
    *they* waited for), and every descendant still running. A descendant that exits while this
    function runs may be missed (never counted twice). Raises ``psutil.NoSuchProcess`` when
    ``pid`` is gone.
    """
    import psutil

    def total(times) -> float:
        return times.user + times.system + getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)

    process = psutil.Process(pid)
    seconds = total(process.cpu_times())
    for child in process.children(recursive=True):
        try:
            seconds += total(child.cpu_times())
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited meanwhile: its parent has it now, or soon
            pass
    return seconds


def _kernel_pid(collector) -> int | None:
    """The process id of the kernel nbval started for this notebook, or None when it is gone."""
    kernel = getattr(collector, "kernel", None)
    manager = getattr(kernel, "km", None)
    provisioner = getattr(manager, "provisioner", None)
    process = getattr(provisioner, "process", None)
    return getattr(process, "pid", None) or getattr(provisioner, "pid", None)


def _kernel_cpu_seconds(collector) -> float | None:
    pid = _kernel_pid(collector)
    if pid is None:
        return None
    try:
        return process_tree_cpu_seconds(pid)
    except Exception:  # the kernel died or was stopped (a cell timed out): that cell's test says why
        return None


def _is_notebook_collector(node) -> bool:
    try:
        from nbval.plugin import IPyNbFile
    except ImportError:  # nbval not installed: nothing to add
        return False
    return isinstance(node, IPyNbFile)


class _NotebookItem(pytest.Item):
    @property
    def notebook(self) -> Path:
        return Path(str(self.parent.path))

    def verdicts_file(self) -> Path:
        return verdicts_path(self.notebook.stem, cwd=self.notebook.parent)

    def reportinfo(self):
        return self.path, None, f"{self.notebook.name}: {self.name}"


class ResetVerdicts(_NotebookItem):
    """Deletes the notebook's verdicts file before its first cell runs."""

    def runtest(self) -> None:
        self.verdicts_file().unlink(missing_ok=True)


class CheckVerdicts(_NotebookItem):
    """Reads the verdicts after the last cell, compares them with what this variant needs, and
    holds the notebook to its CPU budget."""

    def runtest(self) -> None:
        from helpers.exercises import for_notebook

        cpu = _kernel_cpu_seconds(self.parent)
        wall = time.perf_counter() - _started.get(self.parent.nodeid, time.perf_counter())
        self.user_properties.append(("notebook_seconds", (None if cpu is None else round(cpu, 1), round(wall, 1))))
        variant = variant_of(self.notebook.parent)
        expected = EXPECTED_STATUS.get(variant)
        problems = []
        exercises = for_notebook(self.notebook.stem)
        records = latest_verdicts(self.verdicts_file())
        if exercises is None:
            problems.append(f"no exercise checks for {self.notebook.stem} in helpers/exercises/")
        elif expected is not None:
            for name in exercises.names:
                record = records.get(name)
                if record is None:
                    problems.append(f"{name}: no verdict recorded (is its check cell gone?)")
                elif record["status"] != expected:
                    problems.append(f"{name}: {record['status']} (needs {expected}): {record['message']}")
            for name in sorted(set(records) - set(exercises.names)):
                problems.append(f"{name}: a verdict for an exercise the lesson does not define")
        if cpu is not None and cpu > NOTEBOOK_BUDGET_SECONDS:
            problems.append(
                f"used {cpu:.1f} s of CPU time (its kernel and the processes it started), over the "
                f"{NOTEBOOK_BUDGET_SECONDS:g} s budget; wall time {wall:.1f} s")
        if problems:
            raise AssertionError(f"{self.notebook.parent.name}/{self.notebook.name}:\n  " + "\n  ".join(problems))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Surround each notebook's cells with a ResetVerdicts and a CheckVerdicts item."""
    result, index = [], 0
    while index < len(items):
        parent = items[index].parent
        if not _is_notebook_collector(parent):
            result.append(items[index])
            index += 1
            continue
        end = index
        while end < len(items) and items[end].parent is parent:
            end += 1
        result.append(ResetVerdicts.from_parent(parent, name="reset recorded verdicts"))
        result.extend(items[index:end])
        result.append(CheckVerdicts.from_parent(parent, name="recorded verdicts and CPU budget"))
        index = end
    items[:] = result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Start a notebook's wall clock before its kernel starts."""
    if isinstance(item, ResetVerdicts):
        _started[item.parent.nodeid] = time.perf_counter()


def pytest_terminal_summary(terminalreporter):
    """Print every notebook's CPU time against the budget, and its wall time."""
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", []):
                if key == "notebook_seconds" and report.when == "call":
                    rows.append((report.nodeid.split("::")[0], *value))
    if rows:
        terminalreporter.section("notebook CPU time (budget) and wall time")
        for name, cpu, wall in sorted(rows):
            used = "  ?  " if cpu is None else f"{cpu:5.1f}"
            terminalreporter.write_line(f"{used} s CPU of {NOTEBOOK_BUDGET_SECONDS:g} s, {wall:6.1f} s wall  {name}")
