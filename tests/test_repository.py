"""The committed course: generated files in sync, no outputs, links that resolve, current APIs."""

import ast
import json
import re
from pathlib import Path

import pytest

from helpers import config
from helpers.environment import repo_root
from helpers.exercises import all_lessons
from helpers.generate import out_of_date

ROOT = repo_root(Path(__file__).parent)
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/([^)\s\"']+)")


def test_there_are_lessons_in_both_versions():
    assert SOLUTIONS, "no solutions/*.ipynb"
    assert [p.name for p in NOTEBOOKS] == [p.name for p in SOLUTIONS]


def test_generated_files_are_in_sync_with_solutions():
    stale = [str(p.relative_to(ROOT)) for p in out_of_date(ROOT)]
    assert not stale, f"out of date: {stale}; run `make notebooks` and commit the result"


@pytest.mark.parametrize("path", SOLUTIONS + NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebooks_are_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip outputs"


def colab_links():
    for path in [ROOT / "README.md", *SOLUTIONS, *NOTEBOOKS]:
        for match in COLAB_LINK.finditer(path.read_text()):
            yield path.relative_to(ROOT).as_posix(), match


def test_every_colab_link_points_at_a_file_in_this_repository():
    links = list(colab_links())
    assert len(links) >= 2 * len(SOLUTIONS) + len(SOLUTIONS)  # a badge in each notebook, a row in the README
    for source, match in links:
        repository, branch, target = match.groups()
        assert (repository, branch) == (config.REPOSITORY, config.BRANCH), f"{source}: {match.group(0)}"
        assert (ROOT / target).is_file(), f"{source} links to {target}, which does not exist"


def test_each_notebook_badge_opens_that_notebook():
    for path in SOLUTIONS + NOTEBOOKS:
        header = json.loads(path.read_text())["cells"][0]
        assert config.colab_url(f"{path.parent.name}/{path.name}") in "".join(header["source"])


def test_every_lesson_has_at_least_three_checked_exercises_with_tests():
    lessons = all_lessons()
    for path in SOLUTIONS:
        exercises = lessons.get(path.stem)
        assert exercises is not None, f"no helpers/exercises module for {path.stem}"
        assert len(exercises) >= 3, f"{path.stem} has {len(exercises)} exercises"
        source = path.read_text()
        for name in exercises.names:
            assert f"ex.{name}.check(" in source, f"{path.name} never calls ex.{name}.check"
        number = path.stem.split("_")[0]
        assert (ROOT / "tests" / f"test_lesson{number}_checks.py").is_file()


DEPRECATED = {
    "torch.cuda.amp": "use torch.autocast(device_type=...) and torch.amp.GradScaler(device)",
    "pretrained=True": "use weight enums such as VGG19_Weights.DEFAULT",
    "weights_only=False": "only for files you trust, and only where a lesson explains it",
}


def _calls_with_weights_only_false(source: str) -> list[int]:
    """Lines where code passes weights_only=False (a check's message may name it to explain it)."""
    return [node.value.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.keyword) and node.arg == "weights_only"
            and isinstance(node.value, ast.Constant) and node.value.value is False]


def test_no_deprecated_or_unsafe_api_in_helpers_or_lessons():
    for path in [*ROOT.glob("helpers/**/*.py"), *SOLUTIONS]:
        text = path.read_text()
        for pattern, advice in DEPRECATED.items():
            if pattern == "weights_only=False":
                if path.suffix == ".py":  # lessons may show it next to an explanation; helpers never call it
                    lines = _calls_with_weights_only_false(text)
                    assert not lines, f"{path.relative_to(ROOT)}:{lines} passes {pattern}: {advice}"
                continue
            assert pattern not in text, f"{path.relative_to(ROOT)} uses {pattern}: {advice}"


def test_the_unsafe_api_test_sees_a_call_but_not_a_message():
    assert _calls_with_weights_only_false("torch.load(p, weights_only=False)") == [1]
    assert _calls_with_weights_only_false('raise Wrong("you passed weights_only=False")') == []


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme


def test_requirements_let_torchvision_choose_torch():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = {re.split(r"[<>=!~ ]", l)[0]: l for l in lines if l}
    assert requirements["torch"] == "torch>=2.8"  # the floor CI proves (make test-oldest); why: requirements.txt
    assert "torchvision" in requirements and "==" not in requirements["torchvision"]
    for needed in ("torchsummary", "matplotlib", "jupyterlab", "nbval", "tqdm"):
        assert needed in requirements


def test_installing_the_helpers_never_pulls_in_torch():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = project["dependencies"] + project["optional-dependencies"]["colab"]
    names = {re.split(r"[<>=!~\[ ]", p)[0].lower() for p in packages}
    assert not names & {"torch", "torchvision", "numpy"}, "Colab's own torch must never be reinstalled"
