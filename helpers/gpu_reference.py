"""Reference figures measured on a real GPU, for learners who run a lesson without one.

A benchmark script (``scripts/benchmark_*.py``) runs on a machine with a CUDA GPU and calls
:func:`write_reference`, which stores its rows in ``data/gpu_reference/<name>.json`` together with
the GPU's name, the PyTorch and CUDA versions and the date. A lesson run without a GPU calls
:func:`reference_table`: it shows those rows, or says plainly that nothing has been measured yet.
Nobody types a figure in by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

import torch

from helpers.environment import DeviceUnavailableError

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "data" / "gpu_reference"
"""Folder of the measured reference files (``data/gpu_reference/``)."""


def reference_path(name: str) -> Path:
    """The file that holds reference ``name``: ``data/gpu_reference/<name>.json``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"a reference name is letters, digits and underscores, got {name!r}")
    return REFERENCE_DIR / f"{name}.json"


def load_reference(name: str) -> dict | None:
    """The stored reference ``name`` as a dict, or ``None`` when it has not been measured yet.

    The dict has ``device``, ``torch``, ``cuda``, ``date``, ``script``, ``notes`` and ``rows``
    (a list of dicts, one per measurement).
    """
    path = reference_path(name)
    if not path.exists():
        return None
    try:
        reference = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}). Restore it with `git checkout -- {path.name}` "
            "or measure it again with its benchmark script on a GPU."
        ) from None
    missing = {"device", "torch", "date", "rows"} - set(reference)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}: it was not written by write_reference().")
    return reference


def write_reference(name: str, rows: list[dict], *, script: str, notes: str = "") -> Path:
    """Store ``rows`` measured on this machine's GPU as reference ``name``; returns the path.

    Refuses to run without CUDA: a reference figure must come from a real GPU. The device name,
    PyTorch and CUDA versions and today's date (UTC) are added automatically.
    """
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "Reference figures must be measured on a CUDA GPU, and none is visible here. "
            "Run this script on a machine with one (for example Colab with a GPU runtime)."
        )
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise ValueError("rows must be a non-empty list of dicts, one per measurement")
    reference = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "script": script,
        "notes": notes,
        "rows": rows,
    }
    path = reference_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=1) + "\n")
    return path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def reference_table(name: str, script: str) -> str:
    """A Markdown table of reference ``name`` with its provenance line, or a "not measured yet" note.

    ``script`` is the benchmark that measures it (shown in the note so anyone with a GPU can).
    """
    reference = load_reference(name)
    if reference is None:
        return (
            f"GPU reference figures: not measured yet. Nobody has run `python {script}` on a GPU "
            "for this course so far; with a GPU you can run it yourself, or run this lesson on "
            "the GPU directly."
        )
    rows = reference["rows"]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        f"Measured on {reference['device']} with torch {reference['torch']} "
        f"(CUDA {reference.get('cuda')}) on {reference['date']} by `{reference.get('script', script)}`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    if reference.get("notes"):
        lines += ["", reference["notes"]]
    return "\n".join(lines)
