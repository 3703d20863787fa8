"""Lesson 05's checks accept the solutions and reject plausible wrong answers with a reason."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from check_testing import assert_wrong

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson05 as ex


# ---- q1: the training step ------------------------------------------------------------------

def good_step(model, optimizer, scaler, x, y, max_norm):
    optimizer.zero_grad()
    with torch.autocast(device_type=x.device.type, dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss


def make_step(*, autocast=True, dtype=torch.float16, scale=True, unscale="before", clip=True,
              use_scaler_step=True, extra_optimizer_step=False, update="after", zero_grad=True,
              return_scaled=False):
    def step(model, optimizer, scaler, x, y, max_norm):
        if zero_grad:
            optimizer.zero_grad()
        with torch.autocast(device_type="cpu", dtype=dtype, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        scaled = scaler.scale(loss)
        (scaled if scale else loss).backward()
        if unscale == "before":
            scaler.unscale_(optimizer)
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if unscale == "after":
            scaler.unscale_(optimizer)
        if update == "before":
            scaler.update()
        if use_scaler_step:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if extra_optimizer_step:
            optimizer.step()
        if update == "after":
            scaler.update()
        return scaled.item() if return_scaled else loss.item()

    return step


def test_q1_accepts_the_solution():
    start = time.perf_counter()
    assert ex.q1.evaluate(good_step).status == CORRECT
    assert ex.q1.evaluate(ex.reference_amp_step).status == CORRECT
    assert ex.q1.evaluate(make_step()).status == CORRECT
    print(f"three checks took {time.perf_counter() - start:.2f} s")  # reported, not asserted


def test_q1_not_attempted():
    def placeholder(model, optimizer, scaler, x, y, max_norm):
        raise NotImplementedError

    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


def test_q1_rejects_no_autocast_and_bfloat16():
    assert_wrong(ex.q1.evaluate(make_step(autocast=False)), "did not run under autocast")
    assert_wrong(ex.q1.evaluate(make_step(dtype=torch.bfloat16)), "torch.bfloat16", "float16")


def test_q1_rejects_backward_on_the_unscaled_loss():
    assert_wrong(ex.q1.evaluate(make_step(scale=False)), "not scaled", "scaler.scale(loss).backward()")


def test_q1_rejects_clipping_before_unscaling():
    assert_wrong(ex.q1.evaluate(make_step(unscale="after")), "clipped before scaler.unscale_")


def test_q1_rejects_clipping_without_unscaling():
    assert_wrong(ex.q1.evaluate(make_step(unscale=None)), "clipped the *scaled* gradients")


def test_q1_rejects_no_clipping():
    assert_wrong(ex.q1.evaluate(make_step(clip=False)), "clip them")
    assert_wrong(ex.q1.evaluate(make_step(clip=False, unscale=None)), "neither unscaled nor clipped")


def test_q1_rejects_stepping_without_the_scaler():
    assert_wrong(ex.q1.evaluate(make_step(use_scaler_step=False)), "never called scaler.step")
    assert_wrong(ex.q1.evaluate(make_step(extra_optimizer_step=True)), "more than once")


def test_q1_rejects_update_before_step_or_no_update():
    assert_wrong(ex.q1.evaluate(make_step(update="before")), "after scaler.step")
    assert_wrong(ex.q1.evaluate(make_step(update=None)), "never called scaler.update")


def test_q1_rejects_forgetting_zero_grad():
    assert_wrong(ex.q1.evaluate(make_step(zero_grad=False)), "zero_grad")


def test_q1_rejects_returning_the_scaled_loss():
    assert_wrong(ex.q1.evaluate(make_step(return_scaled=True)), "scaled loss")


def test_q1_rejects_backward_inside_autocast():
    def step(model, optimizer, scaler, x, y, max_norm):
        optimizer.zero_grad()
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()          # inside the block: the lesson says outside
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    assert_wrong(ex.q1.evaluate(step), "backward() ran inside the autocast block")


def test_q1_rejects_returning_nothing_or_a_wrong_type():
    def returns_none(model, optimizer, scaler, x, y, max_norm):
        good_step(model, optimizer, scaler, x, y, max_norm)

    assert_wrong(ex.q1.evaluate(returns_none), "Return the loss", "NoneType")
    assert_wrong(ex.q1.evaluate(lambda *args: [good_step(*args)]), "Return the loss", "list")


def test_q1_rejects_a_non_function():
    assert_wrong(ex.q1.evaluate(3), "should be your function", "int")


# ---- q2: dtypes -----------------------------------------------------------------------------

ANSWER = {
    "linear": torch.bfloat16,
    "relu": torch.bfloat16,
    "cross_entropy": torch.float32,
    "weight": torch.float32,
    "after": torch.bfloat16,
}


def test_q2_accepts_the_measured_dtypes():
    assert ex.q2.evaluate(dict(ANSWER)).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(...).status == NOT_ATTEMPTED
    assert ex.q2.evaluate({key: ... for key in ANSWER}).status == NOT_ATTEMPTED


def test_q2_rejects_everything_low_precision():
    answer = {key: torch.bfloat16 for key in ANSWER}
    assert_wrong(ex.q2.evaluate(answer), "'cross_entropy'", "float32 list")


def test_q2_rejects_a_weight_that_autocast_converted():
    assert_wrong(ex.q2.evaluate(ANSWER | {"weight": torch.bfloat16}), "'weight'", "copies")


def test_q2_rejects_converting_back_after_the_block():
    assert_wrong(ex.q2.evaluate(ANSWER | {"after": torch.float32}), "'after'", "converts nothing")


def test_q2_rejects_float16_and_relu_in_float32():
    assert_wrong(ex.q2.evaluate(ANSWER | {"linear": torch.float16}), "'linear'")
    assert_wrong(ex.q2.evaluate(ANSWER | {"relu": torch.float32}), "'relu'", "its input")


def test_q2_rejects_wrong_shapes_of_answer():
    assert_wrong(ex.q2.evaluate([torch.bfloat16]), "dict")
    assert_wrong(ex.q2.evaluate({k: v for k, v in ANSWER.items() if k != "after"}), "missing: ['after']")
    assert_wrong(ex.q2.evaluate(ANSWER | {"relu": "bfloat16"}), "dtype such as")


def test_q2_answer_matches_what_autocast_does():
    assert ex.q2_actual_dtypes() == ANSWER


# ---- q3: the scaler in the checkpoint --------------------------------------------------------

def save_all(path, model, optimizer, scaler):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict()}, path)


def load_all(path, model, optimizer, scaler):
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])


def test_q3_accepts_the_solution():
    assert ex.q3.evaluate(save_all, load_all).status == CORRECT


def test_q3_not_attempted():
    def placeholder(*args):
        raise NotImplementedError

    assert ex.q3.evaluate(save_all, placeholder).status == NOT_ATTEMPTED
    assert ex.q3.evaluate(..., load_all).status == NOT_ATTEMPTED


def test_q3_rejects_forgetting_the_scaler():
    def save(path, model, optimizer, scaler):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)

    def load(path, model, optimizer, scaler):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])

    assert_wrong(ex.q3.evaluate(save, load), "back at 65536")


def test_q3_rejects_saving_only_the_scale():
    def save(path, model, optimizer, scaler):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scale": scaler.get_scale()}, path)

    def load(path, model, optimizer, scaler):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(scaler.state_dict() | {"scale": checkpoint["scale"]})

    assert_wrong(ex.q3.evaluate(save, load), "growth tracker")


def test_q3_rejects_pickling_the_objects():
    def save(path, model, optimizer, scaler):
        torch.save({"model": model, "optimizer": optimizer, "scaler": scaler}, path)

    assert_wrong(ex.q3.evaluate(save, load_all), "weights_only=True", "state_dicts")


def test_q3_rejects_returning_a_new_scaler():
    def load(path, model, optimizer, scaler):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        new = torch.amp.GradScaler("cpu")
        new.load_state_dict(checkpoint["scaler"])
        return new

    assert_wrong(ex.q3.evaluate(save_all, load), "instead of returning a new one")


def test_q3_rejects_forgetting_the_model_or_the_optimizer():
    def no_model(path, model, optimizer, scaler):
        checkpoint = torch.load(path, weights_only=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])

    def no_optimizer(path, model, optimizer, scaler):
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        scaler.load_state_dict(checkpoint["scaler"])

    assert_wrong(ex.q3.evaluate(save_all, no_model), "model's weights")
    assert_wrong(ex.q3.evaluate(save_all, no_optimizer), "momentum")


def test_q3_rejects_writing_no_file():
    assert_wrong(ex.q3.evaluate(lambda path, *args: None, load_all), "wrote no file")


# ---- q4: activation memory ------------------------------------------------------------------

def activation_bytes(fn):
    storages = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if not (base.is_leaf and base.requires_grad):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def make_counter(*, skip_parameters="views", dedupe=True, use_storage=True, elements=False, outside=False):
    def count(fn):
        seen, total = set(), 0

        def pack(t):
            nonlocal total
            base = t._base if t._base is not None else t
            if skip_parameters == "leaves" and t.is_leaf and t.requires_grad:
                return t
            if skip_parameters == "views" and base.is_leaf and base.requires_grad:
                return t
            key = t.untyped_storage().data_ptr()
            if dedupe and key in seen:
                return t
            seen.add(key)
            if elements:
                total += t.numel()
            else:
                total += t.untyped_storage().nbytes() if use_storage else t.numel() * t.element_size()
            return t

        if outside:
            fn()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                pass
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                fn()
        return total

    return count


def test_q4_accepts_the_solution_and_the_helper():
    from helpers.measure import saved_tensor_bytes

    assert ex.q4.evaluate(activation_bytes).status == CORRECT
    assert ex.q4.evaluate(saved_tensor_bytes).status == CORRECT
    assert ex.q4.evaluate(make_counter()).status == CORRECT


def test_q4_not_attempted():
    def placeholder(fn):
        raise NotImplementedError

    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_counting_parameters():
    assert_wrong(ex.q4.evaluate(make_counter(skip_parameters=False)), "included the parameters")


def test_q4_rejects_counting_views_of_parameters():
    # The old task text's rule (skip only leaves): nn.Linear's saved weight.t() is counted. On the
    # 3-layer MLP case that is 29 times what saved_tensor_bytes counts.
    verdict = ex.q4.evaluate(make_counter(skip_parameters="leaves"))
    assert_wrong(verdict, "3-layer MLP", "views of the parameters", "_base")


def test_q4_rejects_counting_a_storage_twice():
    assert_wrong(ex.q4.evaluate(make_counter(dedupe=False)), "more than once")


def test_q4_rejects_counting_elements():
    assert_wrong(ex.q4.evaluate(make_counter(elements=True)), "number of elements")


def test_q4_rejects_the_size_of_views():
    assert_wrong(ex.q4.evaluate(make_counter(use_storage=False)), "whole storage")


def test_q4_rejects_calling_fn_outside_the_hooks():
    assert_wrong(ex.q4.evaluate(make_counter(outside=True)), "inside")


def test_q4_rejects_a_non_number():
    assert_wrong(ex.q4.evaluate(lambda fn: "lots"), "an int")
