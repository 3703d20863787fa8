"""Lesson 03's checks accept the solutions and reject plausible wrong answers with a reason."""

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from check_testing import assert_wrong, placeholder

from helpers.checkpointing import capture_rng_state, restore_rng_state
from helpers.checks import CORRECT, ENVIRONMENT_PROBLEM, NOT_ATTEMPTED, WRONG
from helpers.exercises import lesson03 as ex


# ---- q1: make_checkpoint ----------------------------------------------------------------------

def numpy_state_list():
    name, keys, *rest = np.random.get_state()
    return [name, keys.tolist(), *rest]


def lesson_rng():
    return {
        "python": random.getstate(),
        "numpy": numpy_state_list(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def make_checkpoint(model, optimizer, scheduler, train_loader, epoch, step, changes):
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "rng_state": capture_rng_state(),
        "data_generator_state": train_loader.generator.get_state(),
    }
    checkpoint.update(changes)
    return {k: v for k, v in checkpoint.items() if v is not DROP}


DROP = object()


def q1_variant(**changes):
    def answer(model, optimizer, scheduler, train_loader, epoch, step):
        given = dict(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                     epoch=epoch, step=step)
        resolved = {k: (v(**given) if callable(v) else v) for k, v in changes.items()}
        return make_checkpoint(model, optimizer, scheduler, train_loader, epoch, step, resolved)

    return answer


def test_q1_accepts_capture_rng_state_and_the_hand_written_layout():
    assert ex.q1.evaluate(q1_variant()).status == CORRECT
    assert ex.q1.evaluate(q1_variant(rng_state=lambda **_: lesson_rng())).status == CORRECT


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


def test_q1_rejects_objects_instead_of_state():
    assert_wrong(ex.q1.evaluate(q1_variant(model=lambda model, **_: model)), "model object itself", "state_dict()")
    assert_wrong(ex.q1.evaluate(q1_variant(optimizer=lambda optimizer, **_: optimizer)), "optimizer object itself")


@pytest.mark.parametrize("entry, phrase", [
    ("optimizer", "Adam restarts"),
    ("scheduler", "schedule starts over"),
    ("rng_state", "random numbers"),
    ("data_generator_state", "another order"),
])
def test_q1_rejects_a_missing_entry(entry, phrase):
    assert_wrong(ex.q1.evaluate(q1_variant(**{entry: DROP})), f"no {entry!r} entry", phrase)


def test_q1_rejects_a_missing_random_stream():
    def without(stream):
        return lambda **_: {k: v for k, v in lesson_rng().items() if k != stream}

    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=without("numpy"))), "no 'numpy' entry")
    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=without("cuda"))), "no 'cuda' entry")


def test_q1_rejects_numpy_state_as_an_array():
    rng = lambda **_: dict(lesson_rng(), numpy=np.random.get_state())
    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=rng)), "NumPy array", "capture_rng_state()", "as a list")


def test_q1_rejects_the_generator_or_its_seed_instead_of_its_state():
    assert_wrong(ex.q1.evaluate(q1_variant(data_generator_state=lambda train_loader, **_: train_loader.generator)),
                 "generator itself")
    seed = lambda train_loader, **_: train_loader.generator.initial_seed()
    assert_wrong(ex.q1.evaluate(q1_variant(data_generator_state=seed)), "get_state()")


def test_q1_rejects_random_state_captured_after_drawing():
    def drew_first(**_):
        torch.rand(1)
        return lesson_rng()

    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=drew_first)), "rng_state['torch']", "don't draw")

    def drew_after(**_):
        state = capture_rng_state()
        np.random.rand()
        return state

    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=drew_after)), "NumPy's random generator moved on")

    def python_twice(**_):
        state = lesson_rng()
        random.random()
        state["python"] = random.getstate()
        return state

    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=python_twice)), "rng_state['python']")


def test_q1_rejects_state_left_behind():
    def peeked(train_loader, **_):
        state = train_loader.generator.get_state()
        next(iter(train_loader))  # "just to check the loader": draws this epoch's order
        return state

    assert_wrong(ex.q1.evaluate(q1_variant(data_generator_state=peeked)), "moved the training loader's generator")

    def evaluated(model, **_):
        model.eval()
        return model.state_dict()

    assert_wrong(ex.q1.evaluate(q1_variant(model=evaluated)), "eval mode")


def test_q1_gives_a_specific_message_for_entries_of_the_wrong_type():
    weights_as_list = lambda model, **_: list(model.state_dict().values())
    assert_wrong(ex.q1.evaluate(q1_variant(model=weights_as_list)), "checkpoint['model'] should be a dict", "list")
    only_state = lambda optimizer, **_: optimizer.state_dict()["state"]
    assert_wrong(ex.q1.evaluate(q1_variant(optimizer=only_state)), "'state' and 'param_groups'")
    assert_wrong(ex.q1.evaluate(q1_variant(epoch=lambda epoch, **_: str(epoch))), "should be an int", "str")
    assert_wrong(ex.q1.evaluate(lambda *args: [1, 2]), "Return a dict, not a list")


def test_q1_rejects_wrong_numbers_and_none():
    assert_wrong(ex.q1.evaluate(q1_variant(epoch=lambda epoch, **_: epoch + 1)), "epoch and step")
    assert_wrong(ex.q1.evaluate(lambda *args: None), "returned None")


# ---- q2: resume --------------------------------------------------------------------------------

def resume_variant(skip=(), epoch_shift=0, after=None, weights_only=True, returns=None):
    def resume(path, model, optimizer, scheduler, train_loader):
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
        if "rng first" in skip:
            restore_rng_state(checkpoint["rng_state"])
        model.load_state_dict(checkpoint["model"])
        if "optimizer" not in skip:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if "scheduler" not in skip:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if "new scheduler" in skip:
            other = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=3 * len(train_loader))
            other.load_state_dict(checkpoint["scheduler"])
        if "generator" not in skip:
            train_loader.generator.set_state(checkpoint["data_generator_state"])
        if "rng" not in skip and "rng first" not in skip:
            restore_rng_state(checkpoint["rng_state"])
        if "train" not in skip:
            model.train()
        if after is not None:
            after(path)
        if returns is not None:
            return returns(checkpoint)
        return checkpoint["epoch"] + epoch_shift

    return resume


def test_q2_accepts_the_solution():
    assert ex.q2.evaluate(resume_variant()).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


@pytest.mark.parametrize("skip, phrase", [
    ("optimizer", "optimizer's state was not restored"),
    ("scheduler", "scheduler you were given was not restored"),
    (("scheduler", "new scheduler"), "scheduler you were given was not restored"),
    ("generator", "data order was not restored"),
    ("rng", "(it was not restored)"),
    ("train", "still in eval mode"),
])
def test_q2_rejects_a_forgotten_piece(skip, phrase):
    skip = (skip,) if isinstance(skip, str) else skip
    assert_wrong(ex.q2.evaluate(resume_variant(skip=skip)), phrase)


def test_q2_rejects_random_numbers_drawn_after_restoring():
    verdict = ex.q2.evaluate(resume_variant(after=lambda path: torch.nn.Linear(4, 4)))
    assert_wrong(verdict, "PyTorch's (CPU) random generator", "restore the random state last")


def test_q2_rejects_off_by_one_and_none():
    assert_wrong(ex.q2.evaluate(resume_variant(epoch_shift=1)), "Off by one")
    assert_wrong(ex.q2.evaluate(resume_variant(epoch_shift=-1)), "continue from epoch 2")
    assert_wrong(ex.q2.evaluate(lambda *args: None), "returned None")


def test_q2_rejects_an_unsafe_load_and_a_removed_file():
    assert_wrong(ex.q2.evaluate(resume_variant(weights_only=False)), "weights_only=False")
    assert_wrong(ex.q2.evaluate(resume_variant(after=os.remove)), "changed or removed the checkpoint file")


def test_q2_gives_a_specific_message_for_a_return_of_the_wrong_type():
    assert_wrong(ex.q2.evaluate(resume_variant(returns=lambda c: c)), "an int", "dict")
    assert_wrong(ex.q2.evaluate(resume_variant(returns=lambda c: str(c["epoch"]))), "an int", "str", "'2'")
    assert_wrong(ex.q2.evaluate(resume_variant(returns=lambda c: (c["epoch"], c["step"]))), "an int", "tuple")
    assert ex.q2.evaluate(resume_variant(returns=lambda c: torch.tensor(c["epoch"]))).status == CORRECT


def test_q2_reports_an_error_raised_by_the_answer():
    # The hand-written layout's restore on capture_rng_state()'s dict raises: wrong, not a crash.
    def by_hand(path, model, optimizer, scheduler, train_loader):
        checkpoint = torch.load(path, weights_only=True)
        resume_variant(skip=("rng",))(path, model, optimizer, scheduler, train_loader)
        random.setstate(checkpoint["rng_state"]["python"])
        return checkpoint["epoch"]

    assert ex.q2.evaluate(by_hand).status == WRONG


# ---- q3: to_delete -----------------------------------------------------------------------------

def to_delete(filenames, keep_last, best):
    steps = {}
    for name in filenames:
        match = re.fullmatch(r"ckpt-step(\d+)\.pt", name)
        if match:
            steps[name] = int(match.group(1))
    by_step = sorted(steps, key=steps.get)
    keep = set(by_step[-keep_last:]) | {best}
    return [name for name in by_step if name not in keep]


def test_q3_accepts_the_solution_as_list_or_set():
    assert ex.q3.evaluate(to_delete).status == CORRECT
    assert ex.q3.evaluate(lambda *a: set(to_delete(*a))).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_a_string_sort():
    def as_text(filenames, keep_last, best):
        mine = sorted(n for n in filenames if re.fullmatch(r"ckpt-step\d+\.pt", n))
        return [n for n in mine[:-keep_last] if n != best]

    assert_wrong(ex.q3.evaluate(as_text), "as text")


def test_q3_rejects_deleting_the_best():
    assert_wrong(ex.q3.evaluate(lambda f, k, best: to_delete(f, k, None)), "best checkpoint")


def test_q3_rejects_touching_other_files():
    def loose(filenames, keep_last, best):
        steps = {n: int(m.group(1)) for n in filenames if (m := re.search(r"step(\d+)", n))}
        ordered = sorted(steps, key=steps.get)
        return [n for n in ordered[:-keep_last] if n != best]

    assert_wrong(ex.q3.evaluate(loose), "not a ckpt-step<N>.pt checkpoint")


def test_q3_rejects_keeping_one_too_many():
    assert_wrong(ex.q3.evaluate(lambda f, k, best: to_delete(f, k + 1, best)), "off by one")


def test_q3_rejects_keeping_one_too_few():
    assert_wrong(ex.q3.evaluate(lambda f, k, best: to_delete(f, max(k - 1, 0), best) if k > 1 else to_delete(f, k, best)),
                 "newest checkpoints")


def test_q3_rejects_changing_the_given_list_and_returning_the_keepers():
    def sorts_in_place(filenames, keep_last, best):
        filenames.sort()
        return to_delete(filenames, keep_last, best)

    assert_wrong(ex.q3.evaluate(sorts_in_place), "changed the list of names")

    def keepers(filenames, keep_last, best):
        doomed = set(to_delete(filenames, keep_last, best))
        return [n for n in filenames if re.fullmatch(r"ckpt-step\d+\.pt", n) and n not in doomed]

    assert_wrong(ex.q3.evaluate(keepers), "checkpoints to keep")


def test_q3_gives_a_specific_message_for_the_wrong_element_type():
    assert_wrong(ex.q3.evaluate(lambda *a: [Path(n) for n in to_delete(*a)] or [Path("x")]), "as strings")


def test_q3_rejects_none_and_a_string():
    assert_wrong(ex.q3.evaluate(lambda *a: None), "returned None")
    assert_wrong(ex.q3.evaluate(lambda *a: "ckpt-step9.pt"), "list of file names")


def test_q3_reference_answer():
    assert ex.expected_deletions(["ckpt-step9.pt", "ckpt-step10.pt", "ckpt-step100.pt", "x.txt"], 1, "ckpt-step9.pt") == {
        "ckpt-step10.pt"
    }


# ---- q4: latest_complete -----------------------------------------------------------------------

def checkpoints_by_step(folder, pattern=r"ckpt-step(\d+)\.pt", match=re.fullmatch):
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := match(pattern, p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete(folder, errors=(EOFError, RuntimeError, pickle.UnpicklingError), weights_only=True):
    for path in checkpoints_by_step(folder):
        try:
            torch.load(path, weights_only=weights_only)
        except errors:
            continue
        return path
    return None


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(latest_complete).status == CORRECT
    assert ex.q4.evaluate(lambda folder: str(latest_complete(folder)) if latest_complete(folder) else None).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_comparing_names_as_text():
    def as_text(folder):
        for path in sorted((p for p in Path(folder).iterdir() if re.fullmatch(r"ckpt-step\d+\.pt", p.name)), reverse=True):
            try:
                torch.load(path, weights_only=True)
            except (EOFError, RuntimeError):
                continue
            return path

    assert_wrong(ex.q4.evaluate(as_text), "as text")


def test_q4_rejects_the_highest_step_without_checking_it():
    assert_wrong(ex.q4.evaluate(lambda folder: checkpoints_by_step(folder)[0]), "empty")


def test_q4_rejects_trusting_the_pointer_file():
    def pointer(folder):
        return Path(folder) / (Path(folder) / "ckpt-latest.txt").read_text().strip()

    assert_wrong(ex.q4.evaluate(pointer), "pointer file names it")


def test_q4_rejects_the_newest_modification_time():
    def by_mtime(folder):
        files = [p for p in Path(folder).iterdir() if re.fullmatch(r"ckpt-step\d+\.pt", p.name) and p.stat().st_size]
        complete = [p for p in files if latest_complete_single(p)]
        return max(complete, key=lambda p: p.stat().st_mtime, default=None)

    assert_wrong(ex.q4.evaluate(by_mtime), "most recently modified")


def latest_complete_single(path):
    try:
        torch.load(path, weights_only=True)
    except (EOFError, RuntimeError):
        return False
    return True


def test_q4_rejects_catching_only_runtime_error():
    assert_wrong(ex.q4.evaluate(lambda folder: latest_complete(folder, errors=(RuntimeError,))), "EOFError")


def test_q4_rejects_loose_name_matching():
    def loose(folder):
        for path in checkpoints_by_step(folder, pattern=r"step(\d+)", match=re.search):
            if latest_complete_single(path):
                return path
        return None

    assert_wrong(ex.q4.evaluate(loose), "backup copy")


def test_q4_rejects_returning_only_the_name_or_a_fallback():
    assert_wrong(ex.q4.evaluate(lambda folder: latest_complete(folder).name), "full path")

    def fallback(folder):
        found = latest_complete(folder)
        return found if found is not None else checkpoints_by_step(folder)[0]

    assert_wrong(ex.q4.evaluate(fallback), "return None")


def test_q4_rejects_deleting_damaged_files_and_an_unsafe_load():
    def cleans_up(folder):
        for path in checkpoints_by_step(folder):
            if not latest_complete_single(path):
                path.unlink()
        return latest_complete(folder)

    assert_wrong(ex.q4.evaluate(cleans_up), "changed the folder", "deleted")

    assert_wrong(ex.q4.evaluate(lambda folder: latest_complete(folder, weights_only=False)), "weights_only=False")


def test_q4_gives_a_specific_message_for_a_return_of_the_wrong_type():
    assert_wrong(ex.q4.evaluate(lambda folder: [latest_complete(folder)]), "a Path or a str", "list")
    assert_wrong(ex.q4.evaluate(lambda folder: torch.load(latest_complete(folder))), "a Path or a str", "dict")


def test_q4_crashed_folder_is_what_the_docstring_says(tmp_path):
    expected = ex.make_crashed_folder(tmp_path / "crashed")
    assert latest_complete(expected.parent) == expected
    assert (tmp_path / "crashed" / "ckpt-step200.pt").stat().st_size == 0
    newest_mtime = max((p for p in expected.parent.iterdir() if p.suffix == ".pt"), key=lambda p: p.stat().st_mtime)
    assert newest_mtime.name == "ckpt-step10.pt"


def test_checks_leave_the_random_state_alone():
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    ex.q1.evaluate(q1_variant())
    ex.q2.evaluate(resume_variant())
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])


# ---- run from outside the course ---------------------------------------------------------------

def test_checks_judge_the_answer_when_run_from_outside_the_course(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder with no course in it: the data is found where the helpers are
    assert ex.q1.evaluate(q1_variant()).status == CORRECT
    assert ex.q2.evaluate(resume_variant()).status == CORRECT
    assert_wrong(ex.q2.evaluate(resume_variant(skip=("optimizer",))), "optimizer's state was not restored")


def test_a_missing_data_file_is_an_environment_problem(tmp_path, monkeypatch):
    import helpers.data

    monkeypatch.setattr(helpers.data, "digits_dir", lambda: tmp_path / "no-digits-here")
    for verdict in (ex.q1.evaluate(q1_variant()), ex.q2.evaluate(resume_variant())):
        assert verdict.status == ENVIRONMENT_PROBLEM, verdict
        assert "images.npy is missing" in verdict.message
