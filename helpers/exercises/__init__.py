"""One module of exercise checks per lesson.

A notebook imports its lesson's module as ``ex``::

    from helpers.exercises import lesson01 as ex
    ex.q1.check(answer)

Each module defines ``exercises = ExerciseSet("<notebook name>")`` and one :class:`Exercise`
per question (``q1``, ``q2``, ...).
"""

from __future__ import annotations

import importlib
import pkgutil

from helpers.checks import ExerciseSet


def all_lessons() -> dict[str, ExerciseSet]:
    """Every lesson's exercises, keyed by notebook name (e.g. ``"01_state_dict"``)."""
    lessons = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        exercises = getattr(module, "exercises", None)
        if isinstance(exercises, ExerciseSet):
            lessons[exercises.lesson] = exercises
    return lessons


def for_notebook(name: str) -> ExerciseSet | None:
    """The exercises of the notebook called ``name`` (with or without ``.ipynb``), if it has any."""
    return all_lessons().get(name.removesuffix(".ipynb"))
