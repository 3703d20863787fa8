"""The generator: solution regions become placeholders; headers, ids, outputs and the syllabus."""

import textwrap

import nbformat
import pytest

from helpers import config
from helpers.generate import (
    HEADER_ID,
    SETUP_ID,
    SYLLABUS_BEGIN,
    SYLLABUS_END,
    GeneratorError,
    generate,
    main,
    out_of_date,
    strip_solutions,
)

META = {
    "title": "A demo",
    "summary": "Demo things",
    "learn": ["one thing", "another"],
    "prerequisites": "none",
    "time_cpu": "about 1 s",
    "time_gpu": "not needed",
}


def code(text):
    return textwrap.dedent(text).strip("\n")


# ---- strip_solutions --------------------------------------------------------------------------

def test_assignments_become_ellipsis_placeholders():
    source = code("""
        import torch
        ### BEGIN SOLUTION
        keys = sorted(model.state_dict())
        first, last = keys[0], keys[-1]
        ### END SOLUTION
        ex.q1.check(keys)
    """)
    assert strip_solutions(source) == code("""
        import torch
        keys = ...  # YOUR CODE HERE
        first = ...  # YOUR CODE HERE
        last = ...  # YOUR CODE HERE
        ex.q1.check(keys)
    """)


def test_a_function_body_with_return_becomes_raise_not_implemented():
    source = code("""
        def f(x):
            # A comment that stays.
            ### BEGIN SOLUTION
            y = x * 2
            return y
            ### END SOLUTION
    """)
    assert strip_solutions(source) == code("""
        def f(x):
            # A comment that stays.
            raise NotImplementedError  # YOUR CODE HERE
    """)


def test_a_whole_function_keeps_its_signature_and_docstring():
    source = code('''
        ### BEGIN SOLUTION
        def upgrade(old, *, prefix="a."):
            """Rename keys."""
            return {prefix + k: v for k, v in old.items()}
        ### END SOLUTION
    ''')
    stub = strip_solutions(source)
    assert stub.splitlines()[0] == "def upgrade(old, *, prefix='a.'):"
    assert '"""Rename keys."""' in stub and stub.endswith("raise NotImplementedError()  # YOUR CODE HERE")
    assert "prefix + k" not in stub
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError):
        namespace["upgrade"]({})


def test_two_functions_in_one_region_stay_two_blank_lines_apart():
    source = code('''
        ### BEGIN SOLUTION
        def save(path):
            return 1
        def load(path):
            return 2
        ### END SOLUTION
    ''')
    stub = strip_solutions(source)
    assert "# YOUR CODE HERE\n\n\ndef load(path):" in stub
    assert not stub.startswith("\n")


def test_statements_without_a_result_raise_in_a_function_and_pass_at_top_level():
    source = "def save(m, p):\n    ### BEGIN SOLUTION\n    torch.save(m.state_dict(), p)\n    ### END SOLUTION\n"
    # A function body that returns nothing: the placeholder still raises, so "not attempted" and
    # "ran and did nothing" stay two different things.
    assert strip_solutions(source) == "def save(m, p):\n    raise NotImplementedError  # YOUR CODE HERE"


def test_every_placeholder_is_code_that_runs():
    source = code("""
        def g():
            ### BEGIN SOLUTION
            print("solution")
            ### END SOLUTION
        ### BEGIN SOLUTION
        answer = 42
        ### END SOLUTION
        ### BEGIN SOLUTION
        print("top level")
        ### END SOLUTION
    """)
    namespace = {}
    exec(strip_solutions(source), namespace)  # the cell runs...
    assert namespace["answer"] is Ellipsis
    with pytest.raises(NotImplementedError):  # ...and the function says it is not written yet
        namespace["g"]()


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "BEGIN SOLUTION without an"),
        ("x = 1\n### END SOLUTION\n", "END SOLUTION without a"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "inside another"),
        ("### BEGIN SOLUTION\nx = (1,\n### END SOLUTION\n)\n", "not valid Python by itself"),
    ],
)
def test_unbalanced_or_broken_regions_are_refused_with_their_place(source, message):
    with pytest.raises(GeneratorError, match=message) as error:
        strip_solutions(source, "solutions/07_x.ipynb, cell 4")
    assert "solutions/07_x.ipynb, cell 4" in str(error.value)


# ---- whole notebooks in a scratch repository ---------------------------------------------------

@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "solutions").mkdir()
    (tmp_path / "README.md").write_text(f"# Course\n\n{SYLLABUS_BEGIN}\nold table\n{SYLLABUS_END}\n\nEnd.\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["course"] = dict(META)
    nb.cells = [
        nbformat.v4.new_markdown_cell("## Intro", id="intro"),
        nbformat.v4.new_code_cell("### BEGIN SOLUTION\nanswer = 6 * 7\n### END SOLUTION\nprint(answer)", id="q1-answer"),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="42\n")]
    nb.cells[1].execution_count = 3
    nbformat.write(nb, tmp_path / "solutions" / "01_demo.ipynb")
    return tmp_path


def read(path):
    return nbformat.read(path, as_version=4)


def test_generate_writes_the_student_version_and_stamps_both(repo):
    written = generate(repo)
    assert {p.relative_to(repo).as_posix() for p in written} == {
        "solutions/01_demo.ipynb", "notebooks/01_demo.ipynb", "README.md"}
    student, solution = read(repo / "notebooks" / "01_demo.ipynb"), read(repo / "solutions" / "01_demo.ipynb")
    assert [c.id for c in student.cells] == [c.id for c in solution.cells] == [HEADER_ID, SETUP_ID, "intro", "q1-answer"]
    assert student.cells[3].source == "answer = ...  # YOUR CODE HERE\nprint(answer)"
    assert "6 * 7" in solution.cells[3].source
    for nb in (student, solution):
        assert nb.nbformat == 4 and nb.nbformat_minor == 5
        assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
        assert config.REPOSITORY in nb.cells[1].source and "google.colab" in nb.cells[1].source
        assert nb.metadata["course"]["lesson"] == "01_demo"  # the grader reads it
    assert config.colab_url("notebooks/01_demo.ipynb") in student.cells[0].source
    assert config.colab_url("solutions/01_demo.ipynb") in solution.cells[0].source
    assert "# Lesson 01 · A demo" in student.cells[0].source and "- another" in student.cells[0].source


def test_generate_is_idempotent_and_check_mode_sees_drift(repo):
    generate(repo)
    assert out_of_date(repo) == [] and generate(repo) == []
    student = repo / "notebooks" / "01_demo.ipynb"
    nb = read(student)
    nb.cells[3].source = "answer = 42  # edited by hand"
    nbformat.write(nb, student)
    assert out_of_date(repo) == [student]
    generate(repo)
    assert "YOUR CODE HERE" in read(student).cells[3].source


def test_setup_cell_changes_nothing_outside_colab(repo, monkeypatch):
    generate(repo)
    monkeypatch.chdir(repo)
    exec(read(repo / "notebooks" / "01_demo.ipynb").cells[1].source, {})
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "helpers", "notebooks", "pyproject.toml", "solutions"]


def test_setup_cell_says_how_to_install_the_helpers_when_they_are_missing(monkeypatch):
    import sys

    from helpers.generate import setup_code

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setitem(sys.modules, "helpers.checks", None)  # as if the helpers were not installed
    with pytest.raises(ModuleNotFoundError, match="can't import the course helpers.*make lab.*pip install -e ."):
        exec(setup_code(), {})


def test_readme_syllabus_is_rewritten_between_its_markers(repo):
    generate(repo)
    readme = (repo / "README.md").read_text()
    assert "old table" not in readme and readme.endswith("\n\nEnd.\n")
    assert "| 01 | [A demo](notebooks/01_demo.ipynb) | Demo things |" in readme
    assert config.colab_url("notebooks/01_demo.ipynb") in readme


def test_a_generated_notebook_without_a_source_is_deleted(repo):
    generate(repo)
    orphan = repo / "notebooks" / "02_gone.ipynb"
    orphan.write_text((repo / "notebooks" / "01_demo.ipynb").read_text())
    assert orphan in generate(repo) and not orphan.exists()


def test_missing_metadata_and_markdown_markers_are_refused(repo):
    path = repo / "solutions" / "01_demo.ipynb"
    nb = read(path)
    del nb.metadata["course"]["time_gpu"]
    nbformat.write(nb, path)
    with pytest.raises(GeneratorError, match="01_demo.ipynb: metadata\\['course'\\] lacks time_gpu"):
        generate(repo)
    nb.metadata["course"]["time_gpu"] = "x"
    nb.cells.append(nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nsecret\n### END SOLUTION", id="md"))
    nbformat.write(nb, path)
    with pytest.raises(GeneratorError, match="cell 4 \\(id md\\): solution markers only work in code cells"):
        generate(repo)


def test_main_check_mode_exit_codes(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["--check"]) == 1
    assert "out of date: notebooks/01_demo.ipynb" in capsys.readouterr().out
    assert main([]) == 0
    assert main(["--check"]) == 0
    nb = read(repo / "solutions" / "01_demo.ipynb")
    nb.cells[3].source = "### BEGIN SOLUTION\nx = 1"
    nbformat.write(nb, repo / "solutions" / "01_demo.ipynb")
    assert main([]) == 2
    assert "BEGIN SOLUTION without an" in capsys.readouterr().err


def test_setup_cell_in_colab_clones_installs_once_leaves_torch_alone_and_moves_in(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import types
    from pathlib import Path

    from helpers.generate import setup_code

    clone = tmp_path / "course"
    monkeypatch.setattr(config, "COLAB_CLONE_DIR", str(clone))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        if command[0] == "git":
            os.makedirs(command[-1])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # running the cell twice is harmless
        exec(setup_code(), {})
    assert len(calls) == 2, calls
    clone_command, install_command = calls
    assert clone_command[:2] == ["git", "clone"] and config.repository_url() in clone_command
    assert "--depth" in clone_command and config.BRANCH in clone_command
    # Non-editable (an editable install is not importable before a restart), nothing but the course:
    assert install_command[1:] == ["-m", "pip", "install", "--quiet", f"{clone}[colab]"]
    assert Path.cwd() == clone


def fake_colab(tmp_path, monkeypatch, git_script):
    """Colab as the setup cell sees it, with ``git`` replaced by ``git_script`` (bash)."""
    import os
    import sys
    import types

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = bin_dir / "git"
    git.write_text("#!/bin/bash\n" + git_script)
    git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(config, "COLAB_CLONE_DIR", str(tmp_path / "course"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.chdir(tmp_path)


def test_setup_cell_in_colab_explains_a_failed_clone_and_never_waits_for_a_password(tmp_path, monkeypatch):
    from helpers.generate import setup_code

    # What git prints for a private or missing repository when it may not prompt.
    fake_colab(tmp_path, monkeypatch,
               'echo "GIT_TERMINAL_PROMPT=$GIT_TERMINAL_PROMPT" > "$(dirname "$0")/env.txt"\n'
               "echo \"fatal: could not read Username for 'https://github.com': terminal prompts disabled\" >&2\n"
               "exit 128\n")
    with pytest.raises(RuntimeError) as raised:
        exec(setup_code(), {})
    text = str(raised.value)
    assert f"Could not download the course from {config.repository_url()}" in text
    for advice in ("no internet", "does not exist or is private", "helpers/config.py", "fork", "Restart session"):
        assert advice in text
    assert "could not read Username" in text  # git's own words follow the explanation
    assert (tmp_path / "bin" / "env.txt").read_text().strip() == "GIT_TERMINAL_PROMPT=0"
    assert not (tmp_path / "course").exists()


def test_setup_cell_in_colab_explains_a_failed_install(tmp_path, monkeypatch):
    from helpers.generate import setup_code

    fake_colab(tmp_path, monkeypatch, 'mkdir -p "${@: -1}"\n')  # a clone with no Python project in it
    with pytest.raises(RuntimeError) as raised:
        exec(setup_code(), {})
    text = str(raised.value)
    assert "Could not install the course's helpers with pip" in text and "Restart session" in text
    assert "What it printed:" in text and len(text.split("What it printed:")[1].strip()) > 0  # pip's own words
    assert not (tmp_path / "course" / ".colab-installed").exists()  # the next run tries again
