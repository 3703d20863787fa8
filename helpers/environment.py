"""Seeding, device choice, Colab detection and the ``runs/`` folders notebooks write into."""

from __future__ import annotations

import os
import platform
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from helpers import config


class DeviceUnavailableError(RuntimeError):
    """Raised when a lesson asks for a device (e.g. a CUDA GPU) this machine does not have."""


def seed_everything(seed: int = 0) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    Returns the seed, so a notebook can write ``seed = seed_everything(0)``.
    This makes a run repeatable; it does not by itself make every CUDA kernel deterministic
    (see ``torch.use_deterministic_algorithms``).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def pick_device(require: str | None = None) -> torch.device:
    """The device lessons run on.

    With ``require=None`` (the default): a CUDA GPU when one is visible, else Apple's MPS, else
    the CPU. With ``require="cuda"`` (or ``"mps"``, ``"cpu"``): that device, or a
    :class:`DeviceUnavailableError` that says how to get one.
    """
    if require is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    kind = torch.device(require).type
    if kind == "cpu":
        return torch.device(require)
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device(require)
    if kind == "mps" and torch.backends.mps.is_available():
        return torch.device(require)
    if kind == "cuda":
        where = (
            "In Colab: Runtime > Change runtime type > a GPU, then run the notebook again."
            if in_colab()
            else "On this machine, use pick_device() (no argument) to run on the CPU instead."
        )
        raise DeviceUnavailableError(f"This needs a CUDA GPU, and none is visible to PyTorch. {where}")
    raise DeviceUnavailableError(
        f"This needs the {kind!r} device, which this machine does not have. "
        "Use pick_device() (no argument) to get the best device that is here."
    )


def environment_summary() -> str:
    """One line for the top of a notebook: Python, PyTorch, device, and where it runs."""
    if torch.cuda.is_available():
        device = f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "GPU: Apple MPS"
    else:
        device = f"no GPU, CPU with {os.cpu_count()} cores"
    where = "Google Colab" if in_colab() else platform.system() or "unknown OS"
    return (
        f"Python {platform.python_version()} | torch {torch.__version__} | {device} | {where}"
    )


def _is_course_root(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "helpers").is_dir()


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The course repository's root folder.

    Found by walking up from ``start`` (default: the current folder) to the first folder that
    holds both ``pyproject.toml`` and ``helpers/``. Notebooks run from ``notebooks/`` or
    ``solutions/`` locally and from the clone's root in Colab; all find the same root.
    Run from a folder outside the course, it falls back to the course these helpers belong to:
    the folder above an editable install's ``helpers/``, then the Colab clone
    (:data:`helpers.config.COLAB_CLONE_DIR`), and only then to the current folder.
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_course_root(folder):
            return folder
    for folder in (Path(__file__).resolve().parent.parent, Path(config.COLAB_CLONE_DIR)):
        if _is_course_root(folder):
            return folder
    return here


def variant_of(folder: str | os.PathLike) -> str:
    """``"notebooks"`` or ``"solutions"`` for those folders of the course, ``"other"`` elsewhere."""
    name = Path(folder).resolve().name
    return name if name in ("notebooks", "solutions") else "other"


def runs_root(cwd: str | os.PathLike | None = None) -> Path:
    """Where notebooks write: ``runs/`` under the repository root.

    Notebooks run from ``solutions/`` write to ``runs/solutions/`` instead, so that a lesson's
    solution and learner versions can run side by side (as the tests do) without touching each
    other's files.
    """
    cwd = Path(cwd or os.getcwd())
    root = repo_root(cwd) / "runs"
    return root / "solutions" if variant_of(cwd) == "solutions" else root


def run_dir(lesson: str, *, fresh: bool = False) -> Path:
    """The folder ``runs/<lesson>/`` (see :func:`runs_root`), created if missing.

    Every file a lesson writes goes here (``runs/`` is git-ignored), so re-running a notebook
    never dirties the repository. ``fresh=True`` empties the folder first, which makes a
    re-run start from the same state as the first run.
    """
    if not lesson or "/" in lesson or "\\" in lesson or lesson in {".", "..", "solutions", "verdicts"}:
        raise ValueError(f"lesson must be a plain folder name such as '01_state_dict', got {lesson!r}")
    folder = runs_root() / lesson
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
