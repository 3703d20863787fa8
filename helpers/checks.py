"""Exercise checks: ``ex.q1.check(answer)``, ``ex.q1.hint()``.

A check never raises into the learner's notebook. It shows one of these verdicts:

- **not attempted** yet: the placeholder (``...`` or ``raise NotImplementedError``) is still there,
  and nothing else: code that ran is an attempt;
- **correct**;
- **wrong**, with a specific reason and what to try;
- **environment problem**: the check could not judge the answer because something outside it is
  broken (a course data file is missing, say). It says what to repair; it is not a wrong answer,
  and the grader reports it as an error.

Every verdict is also appended as one JSON line to a verdicts file, so that the tests and the
grader can read what each check said after a notebook ran. The file is
``$COURSE_VERDICTS_FILE`` when that is set, else ``runs/verdicts/<lesson>.jsonl`` under the
repository root (``runs/solutions/verdicts/`` for notebooks run from ``solutions/``).

A lesson's checks live in ``helpers/exercises/lessonNN.py``::

    exercises = ExerciseSet("01_state_dict")

    @exercises.exercise("q1", "Find the buffers", hints=["...", "..."])
    def q1(buffer_keys, model):
        if ...:
            raise Wrong("what is wrong, and what to try")
        return "what the learner got right"
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pickle
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np
import torch

from helpers.data import DataFileError
from helpers.environment import runs_root

NOT_ATTEMPTED = "not attempted"
CORRECT = "correct"
WRONG = "wrong"
ENVIRONMENT_PROBLEM = "environment problem"
STATUSES = (NOT_ATTEMPTED, CORRECT, WRONG, ENVIRONMENT_PROBLEM)

VERDICTS_FILE_ENV = "COURSE_VERDICTS_FILE"
"""Environment variable that, when set, names the file verdicts are appended to."""

_SYMBOL = {NOT_ATTEMPTED: "⏳", CORRECT: "✅", WRONG: "❌", ENVIRONMENT_PROBLEM: "⚠️"}


class NotAttempted(Exception):
    """Raised by a checker when the learner has not written an answer yet."""


class Wrong(Exception):
    """Raised by a checker when the answer is wrong; the message says why and what to try."""


class EnvironmentProblem(Exception):
    """Raised by a checker when it cannot judge the answer because the course's own files or
    packages are broken (not the learner's fault); the message says what to repair."""


@dataclass(frozen=True)
class Verdict:
    """What one check said about one answer."""

    lesson: str
    exercise: str
    status: str
    message: str

    def __str__(self) -> str:
        label = {
            NOT_ATTEMPTED: "not attempted yet",
            CORRECT: "correct",
            WRONG: "not yet right",
            ENVIRONMENT_PROBLEM: "could not be checked (a problem with the course files, not your answer)",
        }
        return f"{_SYMBOL[self.status]} {self.exercise}: {label[self.status]}. {self.message}"


def verdicts_path(lesson: str, cwd: str | os.PathLike | None = None) -> Path:
    """Where the checks of ``lesson`` record their verdicts (see the module docstring)."""
    override = os.environ.get(VERDICTS_FILE_ENV)
    if override:
        return Path(override)
    return runs_root(cwd) / "verdicts" / f"{lesson}.jsonl"


def read_verdicts(path: str | os.PathLike) -> list[dict]:
    """Every verdict recorded in ``path``, oldest first (an empty list if there is no file).

    A line that is not valid JSON (say, cut short by a crash) is skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number} is not a complete verdict line; skipped it")
    return records


def latest_verdicts(path: str | os.PathLike) -> dict[str, dict]:
    """The last verdict recorded for each exercise in ``path``, keyed by exercise name."""
    return {record["exercise"]: record for record in read_verdicts(path)}


def _is_placeholder(value) -> bool:
    return value is Ellipsis


class Exercise:
    """One exercise: ``check(...)`` gives and records a verdict, ``hint()`` shows the next hint."""

    def __init__(self, lesson: str, name: str, title: str, checker: Callable[..., str], hints: list[str]):
        if not hints:
            raise ValueError(f"exercise {name} needs at least one hint")
        self.lesson = lesson
        self.name = name
        self.title = title
        self.checker = checker
        self.hints = list(hints)
        self._hints_shown = 0
        self.__doc__ = checker.__doc__

    def __repr__(self) -> str:
        return f"<exercise {self.lesson}/{self.name}: {self.title}>"

    def evaluate(self, *args, **kwargs) -> Verdict:
        """The verdict for this answer, without showing or recording it.

        Checking leaves Python's, NumPy's and PyTorch's random states as they were, so running a
        check cell never changes the random numbers the rest of the notebook draws.
        """
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng():
                return self._evaluate(*args, **kwargs)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def _evaluate(self, *args, **kwargs) -> Verdict:
        if any(_is_placeholder(a) for a in (*args, *kwargs.values())):
            return self._verdict(
                NOT_ATTEMPTED, "Replace the `...` placeholder with your code, then run the check again."
            )
        shape_problem = self._shape_problem(args, kwargs)
        if shape_problem:
            return self._verdict(WRONG, f"{shape_problem} (Stuck? Run ex.{self.name}.hint().)")
        try:
            message = self.checker(*args, **kwargs)
        except NotAttempted as e:
            return self._verdict(NOT_ATTEMPTED, str(e) or "Write your answer, then run the check again.")
        except NotImplementedError:
            return self._verdict(
                NOT_ATTEMPTED,
                "The `raise NotImplementedError` placeholder is still there: replace it with your code.",
            )
        except Wrong as e:
            return self._verdict(WRONG, f"{e} (Stuck? Run ex.{self.name}.hint().)")
        except (EnvironmentProblem, DataFileError) as e:
            return self._verdict(
                ENVIRONMENT_PROBLEM,
                f"{e} Your answer was not judged. Repair the course files (see the README's quick start), "
                "then run the check again.",
            )
        except Exception as e:  # the learner's code raised while being checked
            return self._verdict(
                WRONG,
                f"Checking your answer raised {type(e).__name__}: {e}. "
                f"Fix that error, then run the check again. (Stuck? Run ex.{self.name}.hint().)",
            )
        return self._verdict(CORRECT, message or "Well done.")

    def _shape_problem(self, args: tuple, kwargs: dict) -> str | None:
        """What is wrong with the *kind* of answer given, before the checker looks at it.

        The check cell passes what the task asks for: the right number of answers, and a function
        where the checker's parameter is annotated ``Callable``. Anything else gets a message
        that says what was expected, instead of an error raised inside the checker.
        """
        signature = inspect.signature(self.checker)
        expected = ", ".join(signature.parameters)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            return f"ex.{self.name}.check(...) takes ({expected}); {e}. Run the check cell as it was given."
        for name, value in bound.arguments.items():
            annotation = self.checker.__annotations__.get(name)
            if annotation is not None and "Callable" in str(annotation) and not callable(value):
                return (
                    f"`{name}` should be your function, passed by its name without calling it "
                    f"(ex.{self.name}.check({name}, ...)); you passed a {type(value).__name__}."
                )
        return None

    def check(self, *args, **kwargs) -> None:
        """Check an answer: show the verdict and record it. Never raises."""
        verdict = self.evaluate(*args, **kwargs)
        print(verdict)
        record_verdict(verdict)

    def hint(self) -> None:
        """Show the next hint (and the last one again once all have been shown)."""
        index = min(self._hints_shown, len(self.hints) - 1)
        self._hints_shown += 1
        print(f"💡 {self.name}, hint {index + 1} of {len(self.hints)}: {self.hints[index]}")

    def _verdict(self, status: str, message: str) -> Verdict:
        return Verdict(self.lesson, self.name, status, message)


def record_verdict(verdict: Verdict, path: str | os.PathLike | None = None) -> None:
    """Append ``verdict`` as one JSON line; a file that can't be written only warns."""
    path = Path(path) if path is not None else verdicts_path(verdict.lesson)
    record = asdict(verdict) | {"time": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        warnings.warn(f"Could not record this verdict in {path} ({e}); the check itself still ran.")


class ExerciseSet:
    """The exercises of one lesson, in order; ``exercise(...)`` registers one."""

    def __init__(self, lesson: str):
        self.lesson = lesson
        self._exercises: dict[str, Exercise] = {}

    def exercise(self, name: str, title: str, hints: list[str]) -> Callable[[Callable[..., str]], Exercise]:
        """Decorator: turn a checker function into the :class:`Exercise` called ``name``."""

        def register(checker: Callable[..., str]) -> Exercise:
            if name in self._exercises:
                raise ValueError(f"{self.lesson} already has an exercise called {name}")
            exercise = Exercise(self.lesson, name, title, checker, hints)
            self._exercises[name] = exercise
            return exercise

        return register

    @property
    def names(self) -> list[str]:
        """The exercise names, in the order they were defined."""
        return list(self._exercises)

    def __getitem__(self, name: str) -> Exercise:
        return self._exercises[name]

    def __iter__(self) -> Iterator[Exercise]:
        return iter(self._exercises.values())

    def __len__(self) -> int:
        return len(self._exercises)


def read_state_dict_file(path: str | os.PathLike, what: str = "The file you wrote") -> dict[str, torch.Tensor]:
    """For checkers: the state_dict a learner saved at ``path``.

    Loads with ``weights_only=True``; a file that holds a pickled model, something other than a
    dict, or a dict with entries that are not tensors raises :class:`Wrong` saying so and what to
    save instead. ``what`` names the file in those messages.
    """
    try:
        saved = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise Wrong(
            f"{what} is refused by torch.load(..., weights_only=True): it still holds a pickled model object "
            "(a pickled module, not just its tensors). Save a state_dict instead: model.state_dict(), "
            "or a part's, such as model.classifier.state_dict()."
        ) from None
    if isinstance(saved, torch.nn.Module):
        raise Wrong(f"{what} holds a whole model (a {type(saved).__name__}), not a state_dict. Save model.state_dict().")
    if not isinstance(saved, Mapping):
        raise Wrong(f"{what} should hold a state_dict (a dict of tensors); it holds a {type(saved).__name__}.")
    not_tensors = sorted(repr(k) for k, v in saved.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        shown = ", ".join(not_tensors[:3]) + (f" and {len(not_tensors) - 3} more" if len(not_tensors) > 3 else "")
        raise Wrong(
            f"{what} holds a dict with entries that are not tensors ({shown}). "
            "Save the state_dict itself, not a dict that contains it."
        )
    return dict(saved)


@contextlib.contextmanager
def watch_torch_load() -> Iterator[list[bool]]:
    """For checkers: record, for every ``torch.load`` call inside, whether it passed ``weights_only=False``.

    Yields the list it fills (one ``True`` per unsafe call); ``torch.load`` is put back afterwards.
    A learner's code that looks up ``torch.load`` when it calls it is seen.
    """
    calls: list[bool] = []
    original = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only") is False)
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield calls
    finally:
        torch.load = original
