"""The configured repository, lesson discovery, and a docstring on every public helper."""

import importlib
import inspect
import pkgutil

import helpers
from helpers import config
from helpers.exercises import all_lessons, for_notebook


def test_colab_links_are_built_from_the_one_configured_repository(monkeypatch):
    monkeypatch.setattr(config, "REPOSITORY", "someone/fork")
    monkeypatch.setattr(config, "BRANCH", "dev")
    assert config.repository_url() == "https://github.com/someone/fork"
    url = "https://colab.research.google.com/github/someone/fork/blob/dev/notebooks/01_x.ipynb"
    assert config.colab_url("/notebooks/01_x.ipynb") == url
    assert config.colab_badge("notebooks/01_x.ipynb").endswith(f"]({url})")
    assert "colab-badge.svg" in config.colab_badge("notebooks/01_x.ipynb")


def test_lessons_are_found_by_notebook_name():
    assert "01_state_dict" in all_lessons()
    assert for_notebook("01_state_dict.ipynb") is all_lessons()["01_state_dict"]
    assert for_notebook("99_no_such_lesson") is None


def public_objects():
    for info in pkgutil.walk_packages(helpers.__path__, prefix="helpers."):
        module = importlib.import_module(info.name)
        yield module.__name__, module
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj


def test_every_public_helper_has_a_docstring():
    missing = [name for name, obj in public_objects() if not inspect.getdoc(obj)]
    assert not missing, f"add docstrings to: {missing}"
