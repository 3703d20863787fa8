"""Lesson 09's checks accept the solutions and reject plausible wrong answers with a reason."""

import signal
import sys

import pytest
import torch
import torch.nn.functional as F

from check_testing import assert_wrong, placeholder

from helpers.checkpointing import atomic_save, load_checkpoint, restore_training_checkpoint, training_checkpoint
from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson09 as ex
from helpers.preemption import StopFlag, exit_code_for

posix_only = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="q1 sends SIGUSR1")


# ---- q1: train_until_preempted -------------------------------------------------------------

def _step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def loop(*, check_before_step=False, code_on_stop=None, save=True, with_optimizer=True, check_flag=True,
         signals=None, as_text=False):
    def train_until_preempted(model, optimizer, batches, path, total_steps):
        step = 0
        flag = StopFlag(signals) if signals else StopFlag()
        with flag as stop:
            for x, y in batches:
                if check_before_step and stop.requested:
                    break
                _step(model, optimizer, x, y)
                step += 1
                if (check_flag and not check_before_step and stop.requested) or step == total_steps:
                    break
        if save:
            checkpoint = (training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=step) if with_optimizer
                          else {"model": model.state_dict(), "step": step, "optimizer": {"state": {}}})
            atomic_save(checkpoint, path)
        code = exit_code_for(stop.signal)
        if code_on_stop is not None and stop.signal is not None:
            code = code_on_stop
        return str(code) if as_text else code

    return train_until_preempted


def manual_handlers(model, optimizer, batches, path, total_steps):
    """The same loop with hand-written handlers, restored afterwards."""
    got = []
    previous = {s: signal.signal(s, lambda number, frame: got.append(number)) for s in (signal.SIGTERM, signal.SIGUSR1)}
    step = 0
    try:
        for x, y in batches:
            _step(model, optimizer, x, y)
            step += 1
            if got or step == total_steps:
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    atomic_save(training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=step), path)
    return 128 + got[0] if got else 0


@posix_only
def test_q1_accepts_the_solution_and_hand_written_handlers():
    assert ex.q1.evaluate(loop()).status == CORRECT
    assert ex.q1.evaluate(manual_handlers).status == CORRECT


@posix_only
def test_q1_leaves_the_signal_handlers_of_the_process_as_they_were():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    ex.q1.evaluate(loop())
    ex.q1.evaluate(lambda *args: None)
    assert {s: signal.getsignal(s) for s in before} == before


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


@posix_only
def test_q1_rejects_exit_code_0_and_other_codes():
    assert_wrong(ex.q1.evaluate(loop(code_on_stop=0)), "returned 0", "never run again")
    assert_wrong(ex.q1.evaluate(loop(code_on_stop=1)), "should be 143")
    assert_wrong(ex.q1.evaluate(loop(as_text=True)), "as an int")


@posix_only
def test_q1_rejects_a_handler_that_exits():
    def exits_in_handler(model, optimizer, batches, path, total_steps):
        previous = signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(143))
        try:
            for x, y in batches:
                _step(model, optimizer, x, y)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0

    assert_wrong(ex.q1.evaluate(exits_in_handler), "SystemExit", "only set a flag")


@posix_only
def test_q1_rejects_a_loop_that_does_not_handle_sigusr1():
    assert_wrong(ex.q1.evaluate(loop(signals=(signal.SIGTERM,))), "SIGUSR1", "does not handle it")


@posix_only
def test_q1_rejects_handlers_left_behind():
    def never_restores(model, optimizer, batches, path, total_steps):
        stop = StopFlag().install()
        step = 0
        for x, y in batches:
            _step(model, optimizer, x, y)
            step += 1
            if stop.requested or step == total_steps:
                break
        atomic_save(training_checkpoint(model=model, optimizer=optimizer, epoch=0, step=step), path)
        return exit_code_for(stop.signal)

    assert_wrong(ex.q1.evaluate(never_restores), "still goes to your handler", "previous handlers")


@posix_only
def test_q1_rejects_wrong_steps_and_missing_state():
    assert_wrong(ex.q1.evaluate(loop(check_before_step=True)), "step 4", "check the flag before the step")
    assert_wrong(ex.q1.evaluate(loop(check_flag=False)), "step 10", "check the flag at all")
    assert_wrong(ex.q1.evaluate(loop(with_optimizer=False)), "optimizer state")
    assert_wrong(ex.q1.evaluate(loop(save=False)), "No file was saved")


# ---- q2: resume_mid_epoch --------------------------------------------------------------------

def resume_variant(loader_state=True, restore_rng=True, returns="step"):
    def resume_mid_epoch(path, model, optimizer, loader):
        rest = restore_training_checkpoint(load_checkpoint(path), model=model, optimizer=optimizer,
                                           restore_rng=restore_rng)
        if loader_state:
            loader.load_state_dict(rest["loader"])
        return {"step": rest["step"], "epoch": rest["epoch"], "text": str(rest["step"])}[returns]

    return resume_mid_epoch


def test_q2_accepts_the_solution():
    assert ex.q2.evaluate(resume_variant()).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_a_forgotten_loader_position_or_random_state():
    assert_wrong(ex.q2.evaluate(resume_variant(loader_state=False)), "start the epoch again", "load_state_dict")
    assert_wrong(ex.q2.evaluate(resume_variant(restore_rng=False)), "random state", "dropout")


def test_q2_rejects_the_epoch_a_string_or_nothing():
    assert_wrong(ex.q2.evaluate(resume_variant(returns="epoch")), "that is the epoch")
    assert_wrong(ex.q2.evaluate(resume_variant(returns="text")), "as an int", "str")
    assert_wrong(ex.q2.evaluate(lambda *args: None), "returned None")


def test_q2_rejects_a_missing_optimizer_state():
    def model_only(path, model, optimizer, loader):
        checkpoint = load_checkpoint(path)
        model.load_state_dict(checkpoint["model"])
        loader.load_state_dict(checkpoint["loader"])
        return checkpoint["step"]

    assert_wrong(ex.q2.evaluate(model_only), "optimizer's state")


# ---- q3: resume_schedule --------------------------------------------------------------------

def schedule_variant(order="right", returns="both", load_model=True):
    def resume_schedule(model, checkpoint, make_optimizer, make_schedule):
        if load_model:
            model.load_state_dict(checkpoint["model"])
        optimizer = make_optimizer(model)
        if order == "right":
            scheduler = make_schedule(optimizer)
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        elif order == "optimizer first":
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler = make_schedule(optimizer)
            scheduler.load_state_dict(checkpoint["scheduler"])
        elif order == "no scheduler state":
            scheduler = make_schedule(optimizer)
            optimizer.load_state_dict(checkpoint["optimizer"])
        elif order == "last_epoch":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=26, last_epoch=checkpoint["step"])
        return {"both": (optimizer, scheduler), "swapped": (scheduler, optimizer), "scheduler": scheduler}[returns]

    return resume_schedule


def test_q3_accepts_the_solution():
    assert ex.q3.evaluate(schedule_variant()).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_the_wrong_order_a_missing_state_and_last_epoch():
    assert_wrong(ex.q3.evaluate(schedule_variant(order="optimizer first")), "learning rate is", "then load")
    assert_wrong(ex.q3.evaluate(schedule_variant(order="no scheduler state")), "warm-up again")
    assert_wrong(ex.q3.evaluate(schedule_variant(order="last_epoch")), "initial_lr", "load its state_dict")
    assert_wrong(ex.q3.evaluate(schedule_variant(load_model=False)), "checkpoint's weights")


def test_q3_rejects_answers_of_the_wrong_shape():
    assert_wrong(ex.q3.evaluate(schedule_variant(returns="scheduler")), "tuple (optimizer, scheduler)", "SequentialLR")
    assert_wrong(ex.q3.evaluate(schedule_variant(returns="swapped")), "in that order")


# ---- q4: ema_checkpoint, exported_weights ---------------------------------------------------------

def good_checkpoint(model, ema, optimizer, step):
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": step}


def good_export(ema):
    return ema.module.state_dict()


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(good_checkpoint, good_export).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder, placeholder).status == NOT_ATTEMPTED
    assert ex.q4.evaluate(good_checkpoint, placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_an_ema_without_n_averaged_or_swapped_weights():
    def module_only(model, ema, optimizer, step):
        return dict(good_checkpoint(model, ema, optimizer, step), ema=ema.module.state_dict())

    def swapped(model, ema, optimizer, step):
        return dict(good_checkpoint(model, ema, optimizer, step), model=ema.module.state_dict())

    assert_wrong(ex.q4.evaluate(module_only, good_export), "n_averaged", "ema.state_dict()")
    assert_wrong(ex.q4.evaluate(swapped, good_export), "holds the EMA weights")


def test_q4_rejects_missing_entries_and_objects():
    def no_optimizer(model, ema, optimizer, step):
        return {"model": model.state_dict(), "ema": ema.state_dict(), "step": step}

    def objects(model, ema, optimizer, step):
        return dict(good_checkpoint(model, ema, optimizer, step), ema=ema)

    assert_wrong(ex.q4.evaluate(no_optimizer, good_export), "no 'optimizer' entry")
    assert_wrong(ex.q4.evaluate(objects, good_export), "module object")
    assert_wrong(ex.q4.evaluate(lambda *args: [1, 2], good_export), "should return a dict", "list")


def test_q4_rejects_the_wrong_export():
    assert_wrong(ex.q4.evaluate(good_checkpoint, lambda ema: ema.state_dict()), "'module.'", "for resuming")
    assert_wrong(ex.q4.evaluate(good_checkpoint, lambda ema: ema.module), "returned a module")
    zeros = lambda ema: {k: torch.zeros_like(v) for k, v in ema.module.state_dict().items()}
    assert_wrong(ex.q4.evaluate(good_checkpoint, zeros), "not the EMA's")
    assert_wrong(ex.q4.evaluate(good_checkpoint, lambda ema: "weights.pt"), "should return a state_dict", "str")
