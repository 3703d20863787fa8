"""Pytest plugin (loaded by ``pyproject.toml``): "the notebook ran" is not the test.

For every notebook that nbval runs, it adds two test items around nbval's cells:

- before the first cell, one that deletes the lesson's recorded verdicts, so old runs can't count;
- after the last cell, one that reads the verdicts the checks recorded and requires that every
  exercise of the lesson was checked, and found **correct** in ``solutions/`` and **not
  attempted** in ``notebooks/``; it also fails when the notebook took longer than
  :data:`NOTEBOOK_BUDGET_SECONDS`.

At the end of the run it prints each notebook's time against the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.checks import CORRECT, NOT_ATTEMPTED, latest_verdicts, verdicts_path
from helpers.environment import variant_of

NOTEBOOK_BUDGET_SECONDS = 60.0
"""Each notebook must run top to bottom (kernel start included) within this on the CI machine."""

EXPECTED_STATUS = {"solutions": CORRECT, "notebooks": NOT_ATTEMPTED}

_started: dict[str, float] = {}


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
    """Reads the verdicts after the last cell and compares them with what this variant needs."""

    def runtest(self) -> None:
        from helpers.exercises import for_notebook

        elapsed = time.perf_counter() - _started.get(self.parent.nodeid, time.perf_counter())
        self.user_properties.append(("notebook_seconds", round(elapsed, 1)))
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
        if elapsed > NOTEBOOK_BUDGET_SECONDS:
            problems.append(f"took {elapsed:.1f} s, over the {NOTEBOOK_BUDGET_SECONDS:g} s budget")
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
        result.append(CheckVerdicts.from_parent(parent, name="recorded verdicts and time budget"))
        index = end
    items[:] = result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Start a notebook's clock before its kernel starts."""
    if isinstance(item, ResetVerdicts):
        _started[item.parent.nodeid] = time.perf_counter()


def pytest_terminal_summary(terminalreporter):
    """Print every notebook's run time against the budget."""
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", []):
                if key == "notebook_seconds" and report.when == "call":
                    rows.append((report.nodeid.split("::")[0], value))
    if rows:
        terminalreporter.section("notebook run times")
        for name, seconds in sorted(rows):
            terminalreporter.write_line(f"{seconds:6.1f} s of {NOTEBOOK_BUDGET_SECONDS:g} s  {name}")
