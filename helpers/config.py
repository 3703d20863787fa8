"""The one place that says where the course lives; every Colab link is built from it.

A fork changes ``REPOSITORY`` (and ``BRANCH`` if needed), then runs ``make notebooks``.
"""

from __future__ import annotations

REPOSITORY = "save-load-resume/pytorch-checkpoints-course"
"""GitHub ``owner/name`` of the course repository."""

BRANCH = "main"
"""The branch the Colab links and the Colab setup cell use."""

COLAB_CLONE_DIR = "/content/save-load-resume"
"""Where the Colab setup cell clones the course."""


def repository_url() -> str:
    """The HTTPS URL of the course repository (what ``git clone`` takes)."""
    return f"https://github.com/{REPOSITORY}"


def colab_url(path: str) -> str:
    """The Colab link that opens ``path`` (e.g. ``notebooks/01_state_dict.ipynb``) from GitHub."""
    path = path.lstrip("/")
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{path}"


def colab_badge(path: str) -> str:
    """Markdown for the "Open in Colab" badge that links to ``path``."""
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({colab_url(path)})"
    )
