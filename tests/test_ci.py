"""CI runs the suite twice: `make test` (newest releases) and `make test-oldest` (the stated floor)."""

import re
import subprocess

from helpers.environment import repo_root

ROOT = repo_root()


def lower_bounds(path):
    """``{name: version}`` for every ``name>=version`` line of a requirements file."""
    bounds = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", line.split("#")[0].strip())
        if match:
            bounds[match[1].lower()] = match[2]
    return bounds


def test_the_oldest_environment_pins_every_stated_lower_bound():
    stated = lower_bounds(ROOT / "requirements.txt") | lower_bounds(ROOT / "requirements-dev.txt")
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", line).groups()
                for line in (ROOT / "constraints" / "oldest.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert set(pins) == set(stated), "constraints/oldest.txt must pin exactly the packages requirements*.txt bound"
    for name, version in stated.items():
        # ">=1.8" is proven by 1.8.0 (a release of that number), never by a newer one.
        assert pins[name].split(".")[:len(version.split("."))] == version.split("."), (name, pins[name], version)
        assert all(part == "0" for part in pins[name].split(".")[len(version.split(".")):]), (name, pins[name])
    assert (stated["torch"], stated["torchvision"]) == ("2.8", "0.23")


def test_ci_runs_make_test_then_the_same_suite_in_the_oldest_environment():
    run = (ROOT / ".ci" / "run").read_text()
    assert run.index("make test\n") < run.index("make test-oldest")
    dry = subprocess.run(["make", "-n", "test-oldest", "PYTHON_OLDEST=python3.10"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "VENV=.venv-oldest" in dry.stdout and "CONSTRAINTS=constraints/oldest.txt" in dry.stdout


def test_test_oldest_without_python_3_10_says_what_to_do():
    done = subprocess.run(["make", "test-oldest", "PYTHON_OLDEST=no-such-python3.10"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "needs Python 3.10" in done.stdout + done.stderr and "PYTHON_OLDEST=" in done.stdout + done.stderr


def test_the_oldest_environment_and_the_colab_marker_are_not_committed():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".venv-oldest/" in ignored and ".colab-installed" in ignored
