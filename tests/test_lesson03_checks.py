"""Lesson 03's checks accept the solutions and reject plausible wrong answers with a reason."""

import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from check_testing import assert_wrong, placeholder

from helpers.checkpointing import capture_rng_state, restore_rng_state
from helpers.checks import CORRECT, NOT_ATTEMPTED, WRONG
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
        "rng_state": lesson_rng(),
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


def test_q1_accepts_the_lesson_layout_and_capture_rng_state():
    assert ex.q1.evaluate(q1_variant()).status == CORRECT
    assert ex.q1.evaluate(q1_variant(rng_state=lambda **_: capture_rng_state())).status == CORRECT


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
    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=rng)), "NumPy array", "tolist")


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

    def python_twice(**_):
        state = lesson_rng()
        random.random()
        state["python"] = random.getstate()
        return state

    assert_wrong(ex.q1.evaluate(q1_variant(rng_state=python_twice)), "rng_state['python']")


def test_q1_rejects_wrong_numbers_and_none():
    assert_wrong(ex.q1.evaluate(q1_variant(epoch=lambda epoch, **_: epoch + 1)), "epoch and step")
    assert_wrong(ex.q1.evaluate(lambda *args: None), "returned None")


# ---- q2: resume --------------------------------------------------------------------------------

def restore_lesson_rng(state):
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_variant(skip=(), epoch_shift=0, after=None, before=None):
    def resume(path, model, optimizer, scheduler, train_loader):
        checkpoint = torch.load(path, weights_only=True)
        if "rng first" in skip:
            restore_lesson_rng(checkpoint["rng_state"])
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
            restore_lesson_rng(checkpoint["rng_state"])
        if after is not None:
            after()
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
])
def test_q2_rejects_a_forgotten_piece(skip, phrase):
    skip = (skip,) if isinstance(skip, str) else skip
    assert_wrong(ex.q2.evaluate(resume_variant(skip=skip)), phrase)


def test_q2_rejects_random_numbers_drawn_after_restoring():
    verdict = ex.q2.evaluate(resume_variant(after=lambda: torch.nn.Linear(4, 4)))
    assert_wrong(verdict, "PyTorch's (CPU) random generator", "restore the random state last")


def test_q2_rejects_off_by_one_and_none():
    assert_wrong(ex.q2.evaluate(resume_variant(epoch_shift=1)), "Off by one")
    assert_wrong(ex.q2.evaluate(resume_variant(epoch_shift=-1)), "continue from epoch 2")
    assert_wrong(ex.q2.evaluate(lambda *args: None), "returned None")


def test_q2_reports_an_error_raised_by_the_answer():
    # restore_rng_state expects capture_rng_state's layout, not the lesson's: it raises, and the
    # check reports that instead of crashing.
    def with_helper(path, model, optimizer, scheduler, train_loader):
        checkpoint = torch.load(path, weights_only=True)
        resume_variant(skip=("rng",))(path, model, optimizer, scheduler, train_loader)
        restore_rng_state(checkpoint["rng_state"])
        return checkpoint["epoch"]

    assert ex.q2.evaluate(with_helper).status == WRONG


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


def latest_complete(folder, errors=(EOFError, RuntimeError, pickle.UnpicklingError)):
    for path in checkpoints_by_step(folder):
        try:
            torch.load(path, weights_only=True)
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
