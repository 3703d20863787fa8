import json

import pytest
import torch

from helpers.checks import (
    CORRECT,
    ENVIRONMENT_PROBLEM,
    NOT_ATTEMPTED,
    VERDICTS_FILE_ENV,
    WRONG,
    EnvironmentProblem,
    ExerciseSet,
    NotAttempted,
    Verdict,
    Wrong,
    latest_verdicts,
    read_state_dict_file,
    read_verdicts,
    record_verdict,
    verdicts_path,
)
from helpers.data import DataFileError


@pytest.fixture
def verdicts_file(tmp_path, monkeypatch):
    path = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(VERDICTS_FILE_ENV, str(path))
    return path


@pytest.fixture
def exercises():
    exercises = ExerciseSet("99_demo")

    @exercises.exercise("q1", "Double it", hints=["Multiply by two.", "x * 2"])
    def q1(double, x=3):
        if double(x) != 2 * x:
            raise Wrong(f"double({x}) gave {double(x)}, expected {2 * x}.")
        return "Doubled."

    @exercises.exercise("q2", "Give a number", hints=["Any number."])
    def q2(answer):
        if answer is None:
            raise NotAttempted("Set answer to a number.")
        if not isinstance(answer, int):
            raise Wrong("That is not a number.")
        return ""

    return exercises


def test_correct_wrong_and_not_attempted_are_told_apart(exercises):
    q1 = exercises["q1"]
    assert q1.evaluate(lambda x: 2 * x).status == CORRECT
    wrong = q1.evaluate(lambda x: x + 2)
    assert wrong.status == WRONG and "double(3) gave 5, expected 6" in wrong.message and "ex.q1.hint()" in wrong.message
    assert q1.evaluate(...).status == NOT_ATTEMPTED


def test_placeholders_count_as_not_attempted(exercises):
    def placeholder(x):
        raise NotImplementedError

    verdict = exercises["q1"].evaluate(placeholder)
    assert verdict.status == NOT_ATTEMPTED and "NotImplementedError" in verdict.message
    assert exercises["q2"].evaluate(None) == Verdict("99_demo", "q2", NOT_ATTEMPTED, "Set answer to a number.")
    assert exercises["q2"].evaluate(answer=...).status == NOT_ATTEMPTED


def test_an_exception_in_the_learners_code_is_a_wrong_verdict_not_a_crash(exercises):
    verdict = exercises["q1"].evaluate(lambda x: 1 / 0)
    assert verdict.status == WRONG and "ZeroDivisionError" in verdict.message


@pytest.mark.parametrize(
    "problem",
    [EnvironmentProblem("The course file data/x.npy is missing."), DataFileError("data/digits/images.npy is missing")],
)
def test_a_broken_course_is_an_environment_problem_not_a_wrong_answer(exercises, problem):
    def needs_data(x):
        raise problem

    verdict = exercises["q1"].evaluate(needs_data)
    assert verdict.status == ENVIRONMENT_PROBLEM
    assert str(problem) in verdict.message and "not judged" in verdict.message
    assert "not your answer" in str(verdict)


def test_an_answer_of_the_wrong_kind_gets_a_message_that_says_what_was_expected():
    exercises = ExerciseSet("99_demo")

    @exercises.exercise("q1", "Double it", hints=["x * 2"])
    def q1(double: "Callable[[int], int]", x: int = 3):
        return "fine" if double(x) == 2 * x else "never"

    verdict = exercises["q1"].evaluate(6)
    assert verdict.status == WRONG and "`double` should be your function" in verdict.message and "int" in verdict.message
    verdict = exercises["q1"].evaluate(lambda x: 2 * x, 3, 4)
    assert verdict.status == WRONG and "takes (double, x)" in verdict.message
    assert "Checking your answer raised" not in verdict.message
    assert exercises["q1"].evaluate(lambda x: 2 * x).status == CORRECT


def test_an_empty_success_message_still_congratulates(exercises):
    assert exercises["q2"].evaluate(4).message == "Well done."


def test_check_prints_and_records_one_json_line_per_call(exercises, verdicts_file, capsys):
    exercises["q1"].check(lambda x: 2 * x)
    exercises["q2"].check("four")
    exercises["q2"].check(4)
    out = capsys.readouterr().out
    assert "✅ q1: correct" in out and "❌ q2: not yet right" in out
    lines = [json.loads(line) for line in verdicts_file.read_text().splitlines()]
    assert [(r["exercise"], r["status"]) for r in lines] == [("q1", CORRECT), ("q2", WRONG), ("q2", CORRECT)]
    assert all(r["lesson"] == "99_demo" and r["time"] > 0 for r in lines)
    assert {k: v["status"] for k, v in latest_verdicts(verdicts_file).items()} == {"q1": CORRECT, "q2": CORRECT}


def test_check_returns_nothing_so_the_notebook_shows_the_verdict_once(exercises, verdicts_file):
    assert exercises["q1"].check(lambda x: 2 * x) is None


def test_a_verdict_that_cannot_be_written_only_warns(exercises, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(VERDICTS_FILE_ENV, str(blocker / "verdicts.jsonl"))
    with pytest.warns(UserWarning, match="Could not record"):
        exercises["q1"].check(lambda x: 2 * x)
    assert "correct" in capsys.readouterr().out


def test_hints_come_one_at_a_time_then_repeat_the_last(exercises, capsys):
    for _ in range(3):
        exercises["q1"].hint()
    out = capsys.readouterr().out.splitlines()
    assert out == ["💡 q1, hint 1 of 2: Multiply by two.", "💡 q1, hint 2 of 2: x * 2", "💡 q1, hint 2 of 2: x * 2"]


def test_read_verdicts_skips_a_cut_off_line(tmp_path):
    path = tmp_path / "v.jsonl"
    record_verdict(Verdict("l", "q1", CORRECT, "ok"), path)
    with open(path, "a") as f:
        f.write('{"lesson": "l", "exerc')
    with pytest.warns(UserWarning, match="not a complete verdict line"):
        assert [r["exercise"] for r in read_verdicts(path)] == ["q1"]
    assert read_verdicts(tmp_path / "missing.jsonl") == []


def test_verdicts_path_follows_the_variant(tmp_path, monkeypatch):
    monkeypatch.delenv(VERDICTS_FILE_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    for folder in ("helpers", "notebooks", "solutions"):
        (tmp_path / folder).mkdir()
    root = tmp_path.resolve()
    assert verdicts_path("01_x", cwd=tmp_path / "notebooks") == root / "runs" / "verdicts" / "01_x.jsonl"
    assert verdicts_path("01_x", cwd=tmp_path / "solutions") == root / "runs" / "solutions" / "verdicts" / "01_x.jsonl"
    monkeypatch.setenv(VERDICTS_FILE_ENV, str(tmp_path / "grader.jsonl"))
    assert verdicts_path("01_x", cwd=tmp_path / "notebooks") == tmp_path / "grader.jsonl"


def test_exercise_sets_refuse_duplicates_and_need_hints(exercises):
    assert exercises.names == ["q1", "q2"] and len(exercises) == 2
    with pytest.raises(ValueError, match="already has"):
        exercises.exercise("q1", "again", hints=["h"])(lambda: "")
    with pytest.raises(ValueError, match="at least one hint"):
        exercises.exercise("q3", "no hints", hints=[])(lambda: "")


def test_checking_leaves_every_random_state_as_it_was(exercises):
    import random

    import numpy as np
    import torch

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    def consumes_rng(x):
        random.random(), np.random.rand(), torch.rand(3)
        return 2 * x

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    expected = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    exercises["q1"].evaluate(consumes_rng)
    assert draws() == expected


def test_read_state_dict_file_returns_a_saved_state_dict(tmp_path):
    state = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    torch.save(state, tmp_path / "weights.pt")
    loaded = read_state_dict_file(tmp_path / "weights.pt")
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], state["weight"])


@pytest.mark.parametrize("saved, phrases", [
    (torch.nn.Linear(2, 2), ("refused by torch.load", "pickled model object", "model.state_dict()")),
    ([torch.ones(1)], ("should hold a state_dict", "list")),
    ({"model": {"weight": torch.ones(1)}, "epoch": 3}, ("not tensors", "'epoch'", "state_dict itself")),
])
def test_read_state_dict_file_says_what_the_file_holds_instead(tmp_path, saved, phrases):
    torch.save(saved, tmp_path / "answer.pt")
    with pytest.raises(Wrong) as wrong:
        read_state_dict_file(tmp_path / "answer.pt", what="Your answer file")
    assert str(wrong.value).startswith("Your answer file")
    for phrase in phrases:
        assert phrase in str(wrong.value)


def test_watch_torch_load_records_unsafe_loads_and_puts_torch_load_back(tmp_path):
    from helpers.checks import watch_torch_load

    original = torch.load
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    with watch_torch_load() as unsafe:
        torch.load(tmp_path / "w.pt", weights_only=True)
        torch.load(tmp_path / "w.pt", weights_only=False)
    assert unsafe == [False, True]
    assert torch.load is original
