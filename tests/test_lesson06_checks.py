"""Lesson 06's checks accept the solutions and reject plausible wrong answers with a reason."""

import torch
from torch import nn

from check_testing import assert_wrong, placeholder

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson06 as ex


def does_nothing(*args):
    pass


# ---- q1: train_step ----------------------------------------------------------------------------

def train_step(model, optimizer, micro_batches, loss_fn):
    for x, y in micro_batches:
        loss = loss_fn(model(x), y) / len(micro_batches)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_q1_accepts_the_solution_and_zeroing_both_ends():
    assert ex.q1.evaluate(train_step).status == CORRECT

    def zero_both(model, optimizer, micro_batches, loss_fn):
        optimizer.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    assert ex.q1.evaluate(zero_both).status == CORRECT


def test_q1_rejects_leaving_the_gradients_behind():
    # Zeroing only at the start gives the right step, but the task says "leave the gradients zeroed".
    def zero_first(model, optimizer, micro_batches, loss_fn):
        optimizer.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()
        optimizer.step()

    assert_wrong(ex.q1.evaluate(zero_first), "gradients are not zero", "zero_grad")


def test_q1_rejects_adding_up_the_losses_and_one_backward():
    def sum_then_backward(model, optimizer, micro_batches, loss_fn):
        total = sum(loss_fn(model(x), y) / len(micro_batches) for x, y in micro_batches)
        total.backward()                        # same gradient, but all four graphs held at once
        optimizer.step()
        optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(sum_then_backward), "adding up the losses", "no saving")


def test_q1_not_attempted_and_doing_nothing():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED
    assert_wrong(ex.q1.evaluate(does_nothing), "did nothing")


def test_q1_rejects_answers_of_the_wrong_shape():
    assert_wrong(ex.q1.evaluate(42), "should be your function", "int")
    assert_wrong(ex.q1.evaluate(lambda model, optimizer: None), "should take (model, optimizer, micro_batches, loss_fn)")
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


def test_q1_rejects_forgetting_to_divide():
    def no_division(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(no_division), "4 times the full-batch gradient", "divide")


def test_q1_rejects_dividing_twice():
    def twice(model, optimizer, micro_batches, loss_fn):
        n = len(micro_batches)
        for x, y in micro_batches:
            (loss_fn(model(x), y) / n / n).backward()
        optimizer.step()
        optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(twice), "divided by 4 twice")


def test_q1_rejects_stepping_every_micro_batch():
    def every(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()
            optimizer.step()
            optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(every), "after every micro-batch")


def test_q1_rejects_zeroing_every_micro_batch():
    def zero_inside(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            optimizer.zero_grad()
            (loss_fn(model(x), y) / len(micro_batches)).backward()
        optimizer.step()

    assert_wrong(ex.q1.evaluate(zero_inside), "Only the last micro-batch", "inside the loop")


def test_q1_rejects_never_zeroing():
    def never_zero(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()
        optimizer.step()

    assert_wrong(ex.q1.evaluate(never_zero), "gradients are not zero", "zero_grad")


def test_q1_rejects_an_off_by_one_step_condition():
    def off_by_one(model, optimizer, micro_batches, loss_fn):
        n = len(micro_batches)
        for i, (x, y) in enumerate(micro_batches):
            (loss_fn(model(x), y) / n).backward()
            if i % n == 0:
                optimizer.step()
                optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(off_by_one), "off by one")


def test_q1_rejects_zeroing_before_the_step():
    def zero_then_step(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()
        optimizer.zero_grad()
        optimizer.step()

    assert_wrong(ex.q1.evaluate(zero_then_step), "all zero")


def test_q1_rejects_running_the_full_batch_at_once():
    def full_batch(model, optimizer, micro_batches, loss_fn):
        x = torch.cat([x for x, _ in micro_batches])
        y = torch.cat([y for _, y in micro_batches])
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    assert_wrong(ex.q1.evaluate(full_batch), "batch of 32", "one micro-batch at a time")


def test_q1_rejects_never_stepping():
    def no_step(model, optimizer, micro_batches, loss_fn):
        for x, y in micro_batches:
            (loss_fn(model(x), y) / len(micro_batches)).backward()

    assert_wrong(ex.q1.evaluate(no_step), "never called")


# ---- q2: accumulate_gradients with uneven micro-batches ----------------------------------------

def accumulate_by_sum(model, micro_batches):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total = sum(len(y) for _, y in micro_batches)
    for x, y in micro_batches:
        (loss_fn(model(x), y) / total).backward()


def accumulate_by_weight(model, micro_batches):
    total = sum(len(y) for _, y in micro_batches)
    for x, y in micro_batches:
        (nn.functional.cross_entropy(model(x), y) * len(y) / total).backward()


def test_q2_accepts_both_normalisations():
    assert ex.q2.evaluate(accumulate_by_sum).status == CORRECT
    assert ex.q2.evaluate(accumulate_by_weight).status == CORRECT


def test_q2_not_attempted_and_doing_nothing():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED
    assert_wrong(ex.q2.evaluate(does_nothing), "did nothing")


def test_q2_rejects_one_backward_for_all_and_stepping():
    def sum_then_backward(model, micro_batches):
        total = sum(len(y) for _, y in micro_batches)
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        sum(loss_fn(model(x), y) / total for x, y in micro_batches).backward()

    assert_wrong(ex.q2.evaluate(sum_then_backward), "adding up the losses")

    def steps_too(model, micro_batches):
        accumulate_by_sum(model, micro_batches)
        torch.optim.SGD(model.parameters(), lr=0.1).step()

    assert_wrong(ex.q2.evaluate(steps_too), "changed the weights", "don't step")


def test_q2_rejects_answers_of_the_wrong_shape():
    assert_wrong(ex.q2.evaluate("accumulate"), "should be your function", "str")
    assert_wrong(ex.q2.evaluate(lambda model: None), "should take (model, micro_batches)")


def test_q2_rejects_dividing_by_the_number_of_micro_batches():
    def by_steps(model, micro_batches):
        for x, y in micro_batches:
            (nn.functional.cross_entropy(model(x), y) / len(micro_batches)).backward()

    assert_wrong(ex.q2.evaluate(by_steps), "number of micro-batches (4)", "8, 8, 8, 6", "number of samples")


def test_q2_rejects_no_normalisation():
    def plain(model, micro_batches):
        for x, y in micro_batches:
            nn.functional.cross_entropy(model(x), y).backward()

    assert_wrong(ex.q2.evaluate(plain), "without normalising")


def test_q2_rejects_a_sum_without_dividing():
    def sum_only(model, micro_batches):
        for x, y in micro_batches:
            nn.functional.cross_entropy(model(x), y, reduction="sum").backward()

    assert_wrong(ex.q2.evaluate(sum_only), "did not divide by the number of samples (30)")


def test_q2_rejects_dividing_a_mean_by_the_total():
    def mean_over_total(model, micro_batches):
        total = sum(len(y) for _, y in micro_batches)
        for x, y in micro_batches:
            (nn.functional.cross_entropy(model(x), y) / total).backward()

    assert_wrong(ex.q2.evaluate(mean_over_total), "*mean* loss", "reduction='sum'")


def test_q2_rejects_zeroing_inside_the_loop():
    def zero_inside(model, micro_batches):
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total = sum(len(y) for _, y in micro_batches)
        for x, y in micro_batches:
            model.zero_grad()
            (loss_fn(model(x), y) / total).backward()

    assert_wrong(ex.q2.evaluate(zero_inside), "Only the last micro-batch")


def test_q2_rejects_the_full_batch_at_once_and_no_backward():
    def full_batch(model, micro_batches):
        x = torch.cat([x for x, _ in micro_batches])
        y = torch.cat([y for _, y in micro_batches])
        nn.functional.cross_entropy(model(x), y).backward()

    assert_wrong(ex.q2.evaluate(full_batch), "batch of 30")

    def no_backward(model, micro_batches):
        for x, y in micro_batches:
            nn.functional.cross_entropy(model(x), y)

    assert_wrong(ex.q2.evaluate(no_backward), "no .grad")


# ---- q3: should_step ---------------------------------------------------------------------------

def should_step(batch_index, num_batches, accumulation_steps):
    return (batch_index + 1) % accumulation_steps == 0 or batch_index + 1 == num_batches


def test_q3_accepts_the_solution():
    assert ex.q3.evaluate(should_step).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_answers_of_the_wrong_type_or_shape():
    assert_wrong(ex.q3.evaluate(lambda i, n, k: "yes"), "return True or False", "str")
    assert_wrong(ex.q3.evaluate(lambda i, n, k: int((i + 1) % k == 0 or i + 1 == n)), "return True or False", "int")
    assert_wrong(ex.q3.evaluate(lambda i, n: True), "should take (batch_index, num_batches, accumulation_steps)")


def test_q3_rejects_the_off_by_one():
    assert_wrong(ex.q3.evaluate(lambda i, n, k: i % k == 0), "after batches [0, 4, 8]", "(batch_index + 1)")
    assert_wrong(ex.q3.evaluate(lambda i, n, k: i % k == 0 or i + 1 == n), "[0, 4, 8, 9]")


def test_q3_rejects_forgetting_the_last_partial_group():
    assert_wrong(ex.q3.evaluate(lambda i, n, k: (i + 1) % k == 0), "batches 8 and 9 never reach", "num_batches")


def test_q3_rejects_stepping_every_batch_and_other_mistakes():
    assert_wrong(ex.q3.evaluate(lambda i, n, k: True), "every batch")
    assert_wrong(ex.q3.evaluate(lambda i, n, k: None), "returned None")
    # forgets the last group only when it is short... by checking i == n instead of i + 1 == n
    assert_wrong(ex.q3.evaluate(lambda i, n, k: (i + 1) % k == 0 or i == n), "never reach")
    # the last-batch test is right, the group test divides the wrong way round
    assert_wrong(ex.q3.evaluate(lambda i, n, k: (i + 1) % (n // k or 1) == 0 or i + 1 == n), "should be")


# ---- q4: amp_train_step ------------------------------------------------------------------------

def amp_train_step(model, optimizer, scaler, micro_batches, loss_fn, max_norm):
    n = len(micro_batches)
    for x, y in micro_batches:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            loss = loss_fn(model(x), y) / n
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


def amp_variant(*, dtype=torch.float16, backward_inside=False, divide=True, autocast=True, scale=True, unscale_first=True, clip=True,
                per_micro_batch=(), direct_step=False, zero=True):
    """amp_train_step with one mistake switched on; per_micro_batch names calls moved into the loop."""

    def step_fn(model, optimizer, scaler, micro_batches, loss_fn, max_norm):
        n = len(micro_batches)
        for x, y in micro_batches:
            context = torch.autocast(device_type="cpu", dtype=dtype) if autocast else torch.enable_grad()
            with context:
                loss = loss_fn(model(x), y) / (n if divide else 1)
                if backward_inside:
                    (scaler.scale(loss) if scale else loss).backward()
            if not backward_inside:
                (scaler.scale(loss) if scale else loss).backward()
            if "unscale_" in per_micro_batch:
                scaler.unscale_(optimizer)
            if "step" in per_micro_batch:
                scaler.step(optimizer)
            if "update" in per_micro_batch:
                scaler.update()
        if not clip:
            pass
        elif unscale_first:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if direct_step:
            optimizer.step()
        elif "step" not in per_micro_batch:
            scaler.step(optimizer)
        if "update" not in per_micro_batch:
            scaler.update()
        if zero:
            optimizer.zero_grad()

    return step_fn


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(amp_train_step).status == CORRECT
    assert ex.q4.evaluate(amp_variant()).status == CORRECT


def test_q4_not_attempted_and_doing_nothing():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED
    assert_wrong(ex.q4.evaluate(does_nothing), "did nothing")


def test_q4_rejects_bfloat16_by_its_dtype():
    # The check looks at the autocast dtype itself, not at a gradient that lands 1 % off.
    assert_wrong(ex.q4.evaluate(amp_variant(dtype=torch.bfloat16)), "torch.bfloat16, not torch.float16", "dtype")


def test_q4_rejects_backward_inside_autocast():
    assert_wrong(ex.q4.evaluate(amp_variant(backward_inside=True)), "backward() ran inside the autocast block")


def test_q4_rejects_answers_of_the_wrong_shape():
    assert_wrong(ex.q4.evaluate(None), "should be your function", "NoneType")
    assert_wrong(ex.q4.evaluate(lambda model, optimizer, scaler, micro_batches: None),
                 "should take (model, optimizer, scaler, micro_batches, loss_fn, max_norm)")


def test_q4_rejects_wrong_normalisation_and_missing_autocast():
    assert_wrong(ex.q4.evaluate(amp_variant(divide=False)), "4 times the full-batch gradient")
    assert_wrong(ex.q4.evaluate(amp_variant(autocast=False)), "without autocast")


def test_q4_rejects_scaler_calls_in_the_wrong_place():
    assert_wrong(ex.q4.evaluate(amp_variant(scale=False)), "scaler.scale() was never called")
    assert_wrong(ex.q4.evaluate(amp_variant(per_micro_batch=("update",))), "scaler.update()", "refused")
    assert_wrong(ex.q4.evaluate(amp_variant(per_micro_batch=("step", "update"))), "after every micro-batch")
    assert_wrong(ex.q4.evaluate(amp_variant(per_micro_batch=("unscale_",))), "unscale_(optimizer) ran more than once")
    assert_wrong(ex.q4.evaluate(amp_variant(direct_step=True)), "optimizer.step() yourself")


def test_q4_rejects_clipping_mistakes():
    assert_wrong(ex.q4.evaluate(amp_variant(unscale_first=False)), "clipped while still scaled", "unscale_")
    assert_wrong(ex.q4.evaluate(amp_variant(clip=False)), "not clipped")


def test_q4_rejects_never_zeroing():
    assert_wrong(ex.q4.evaluate(amp_variant(zero=False)), "gradients are not zero")


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    ex.q1.evaluate(train_step)
    ex.q2.evaluate(accumulate_by_sum)
    ex.q4.evaluate(amp_train_step)
    assert torch.equal(torch.rand(2), expected)


# ---- the lesson's two-process DDP script (off by default in the notebook, so tested here) -------

def test_the_lessons_ddp_script_gives_the_full_batch_step(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from helpers.environment import repo_root
    from helpers.models import DigitsMLP

    root = repo_root()
    cells = json.loads((root / "solutions" / "06_gradient_accumulation.ipynb").read_text())["cells"]
    source = "".join(next(c for c in cells if c.get("id") == "ddp-script")["source"])
    first_line, script = source.split("\n", 1)
    assert first_line.startswith("%%writefile")
    (tmp_path / "ddp_accumulation.py").write_text(script)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    torch.save({"x": x, "y": y}, tmp_path / "batch.pt")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(tmp_path / "ddp_accumulation.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("all-reduces with no_sync(): 1, without: 2") == 2, result.stdout

    torch.manual_seed(0)
    single = DigitsMLP(dropout=0.0)
    optimizer = torch.optim.SGD(single.parameters(), lr=0.1)
    nn.functional.cross_entropy(single(x), y).backward()
    optimizer.step()
    weights = torch.load(tmp_path / "ddp_weights.pt", weights_only=True)
    for key, value in single.state_dict().items():
        assert torch.allclose(weights[key], value, rtol=1e-5, atol=1e-6), key
