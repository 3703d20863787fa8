"""Lesson 04's checks accept the solutions and reject plausible wrong answers with a reason."""

import time

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from check_testing import assert_wrong, placeholder

from helpers.checkpointing import atomic_save, restore_rng_state
from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson04 as ex
from helpers.models import DigitsMLP


# ---- q1: load a DataParallel checkpoint into a plain model -----------------------------------

def load_dp_checkpoint(model, state_dict):
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    model.load_state_dict(state_dict)
    return model


def test_q1_accepts_the_solution_and_slicing_the_prefix_off():
    assert ex.q1.evaluate(load_dp_checkpoint).status == CORRECT

    def by_slicing(model, state_dict):
        model.load_state_dict({k[len("module."):]: v for k, v in state_dict.items()})
        return model

    assert ex.q1.evaluate(by_slicing).status == CORRECT


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


def test_q1_rejects_strict_false_that_loads_nothing():
    def strict_false(model, state_dict):
        model.load_state_dict(state_dict, strict=False)
        return model

    assert_wrong(ex.q1.evaluate(strict_false), "nothing was loaded", "strict=False")


def test_q1_rejects_str_replace_that_damages_inner_names():
    def replace_everywhere(model, state_dict):
        model.load_state_dict({k.replace("module.", ""): v for k, v in state_dict.items()})
        return model

    assert_wrong(ex.q1.evaluate(replace_everywhere), "subweight", "Remove the prefix only")

    def replace_everywhere_lenient(model, state_dict):
        model.load_state_dict({k.replace("module.", ""): v for k, v in state_dict.items()}, strict=False)
        return model

    assert_wrong(ex.q1.evaluate(replace_everywhere_lenient), "not loaded", "module.submodule")


def test_q1_rejects_lstrip():
    def with_lstrip(model, state_dict):
        model.load_state_dict({k.lstrip("module."): v for k, v in state_dict.items()}, strict=False)
        return model

    assert_wrong(ex.q1.evaluate(with_lstrip), "decoder", "lstrip")


def test_q1_rejects_changing_the_callers_dict():
    def in_place(model, state_dict):
        consume_prefix_in_state_dict_if_present(state_dict, "module.")
        model.load_state_dict(state_dict)
        return model

    assert_wrong(ex.q1.evaluate(in_place), "changed the dict", "copy")


def test_q1_rejects_returning_the_wrapped_model():
    def wrap_and_load(model, state_dict):
        wrapped = nn.DataParallel(model)
        wrapped.load_state_dict(state_dict)
        return wrapped

    assert_wrong(ex.q1.evaluate(wrap_and_load), "wrapped in DataParallel")


def test_q1_rejects_returning_none_or_a_new_model():
    def no_return(model, state_dict):
        load_dp_checkpoint(model, state_dict)

    assert_wrong(ex.q1.evaluate(no_return), "returned None")

    def new_model(model, state_dict):
        return load_dp_checkpoint(ex.TwoLayerNet(), state_dict)

    assert_wrong(ex.q1.evaluate(new_model), "model you were given")


# ---- q2: map_location_for --------------------------------------------------------------------

def map_location_for(local_rank, use_cuda):
    return {"cuda:0": f"cuda:{local_rank}"} if use_cuda else "cpu"


def test_q2_accepts_a_dict_a_string_and_a_device():
    assert ex.q2.evaluate(map_location_for).status == CORRECT
    as_string = lambda r, c: f"cuda:{r}" if c else "cpu"
    as_device = lambda r, c: torch.device("cuda", r) if c else torch.device("cpu")
    cpu_dict = lambda r, c: {"cuda:0": f"cuda:{r}"} if c else {"cuda:0": "cpu"}
    for answer in (as_string, as_device, cpu_dict):
        assert ex.q2.evaluate(answer).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_always_cuda_0():
    assert_wrong(ex.q2.evaluate(lambda r, c: "cuda:0" if c else "cpu"), "Rank 1 would load onto cuda:0")
    assert_wrong(ex.q2.evaluate(lambda r, c: None if c else "cpu"), "cuda:0")


def test_q2_rejects_cuda_on_a_machine_without_gpu():
    assert_wrong(ex.q2.evaluate(lambda r, c: {"cuda:0": f"cuda:{r}"}), "use_cuda=False", "'cpu'")


def test_q2_rejects_the_cpu_when_there_are_gpus():
    assert_wrong(ex.q2.evaluate(lambda r, c: "cpu"), "loads onto the CPU", "cuda:0")


def test_q2_rejects_cuda_without_index_and_a_reversed_dict():
    assert_wrong(ex.q2.evaluate(lambda r, c: "cuda" if c else "cpu"), "without an index")
    assert_wrong(ex.q2.evaluate(lambda r, c: {f"cuda:{r}": "cuda:0"} if c else "cpu"), "cuda:0")


def test_q2_rejects_wrong_types():
    assert_wrong(ex.q2.evaluate(lambda r, c: r if c else "cpu"), "not a int")
    assert_wrong(
        ex.q2.evaluate(lambda r, c: {"cuda:0": torch.device("cuda", r)} if c else "cpu"),
        "values are strings",
    )
    assert_wrong(ex.q2.evaluate(lambda r, c: (lambda storage, loc: storage)), "return a device string")


# ---- q3: save_on_main ------------------------------------------------------------------------

def save_on_main(state, path, dist):
    if dist.get_rank() == 0:
        torch.save(state, path)
    dist.barrier()


def test_q3_accepts_the_solution_and_an_atomic_save():
    assert ex.q3.evaluate(save_on_main).status == CORRECT

    def atomic(state, path, dist):
        if dist.get_rank() == 0:
            atomic_save(state, path)
        dist.barrier()

    assert ex.q3.evaluate(atomic).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_code_that_ran_and_did_nothing_is_wrong_not_unattempted():
    assert_wrong(ex.q3.evaluate(lambda state, path, dist: None), "wrote nothing and called no barrier")


def test_q3_rejects_saving_on_every_rank():
    def every_rank(state, path, dist):
        torch.save(state, path)
        dist.barrier()

    assert_wrong(ex.q3.evaluate(every_rank), "Rank 1 wrote", "Only rank 0")


def test_q3_rejects_a_file_per_rank():
    def per_rank(state, path, dist):
        torch.save(state, f"{path}.{dist.get_rank()}")
        dist.barrier()

    assert_wrong(ex.q3.evaluate(per_rank), "Rank 1 wrote checkpoint.pt.1")


def test_q3_rejects_forgetting_the_barrier():
    def no_barrier(state, path, dist):
        if dist.get_rank() == 0:
            torch.save(state, path)

    assert_wrong(ex.q3.evaluate(no_barrier), "never called dist.barrier()")


def test_q3_rejects_a_barrier_only_rank_0_reaches():
    def barrier_inside_if(state, path, dist):
        if dist.get_rank() == 0:
            torch.save(state, path)
            dist.barrier()

    assert_wrong(ex.q3.evaluate(barrier_inside_if), "Rank 1 never called", "outside the")


def test_q3_rejects_the_barrier_before_the_save():
    def barrier_first(state, path, dist):
        dist.barrier()
        if dist.get_rank() == 0:
            torch.save(state, path)

    assert_wrong(ex.q3.evaluate(barrier_first), "before the file existed")


def test_q3_rejects_saving_something_else_or_a_global_rank():
    def model_only(state, path, dist):
        if dist.get_rank() == 0:
            torch.save(state["model"], path)
        dist.barrier()

    assert_wrong(ex.q3.evaluate(model_only), "does not hold the `state`")

    rank = 0  # a notebook-level variable instead of asking dist

    def global_rank(state, path, dist):
        if rank == 0:
            torch.save(state, path)
        dist.barrier()

    assert_wrong(ex.q3.evaluate(global_rank), "Rank 1 wrote")


# ---- q4: to_device ---------------------------------------------------------------------------

def to_device(model, batch, device):
    x, y = batch
    return model.to(device), (x.to(device), y.to(device))


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(to_device).status == CORRECT
    assert ex.q4.evaluate(lambda m, b, d: (m.to(d), [t.to(d) for t in b])).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_tensor_to_without_keeping_the_result():
    def forgot_result(model, batch, device):
        model.to(device)
        for tensor in batch:
            tensor.to(device)
        return model, batch

    assert_wrong(ex.q4.evaluate(forgot_result), "x and y are still on cpu", "returns a *new* tensor")


def test_q4_rejects_forgetting_the_labels_or_the_model():
    assert_wrong(ex.q4.evaluate(lambda m, b, d: (m.to(d), (b[0].to(d), b[1]))), "y is still on cpu")
    assert_wrong(ex.q4.evaluate(lambda m, b, d: (m, (b[0].to(d), b[1].to(d)))), "parameters are still on cpu")


def test_q4_rejects_moving_only_the_parameters():
    def parameters_only(model, batch, device):
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                setattr(module, name, nn.Parameter(p.detach().to(device)))
        return model, tuple(t.to(device) for t in batch)

    assert_wrong(ex.q4.evaluate(parameters_only), "buffers did not", "running_mean")


def test_q4_rejects_a_wrong_shape_of_answer():
    assert_wrong(ex.q4.evaluate(lambda m, b, d: m.to(d)), "Return a pair")


def test_every_check_is_cheap_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    answers = ((ex.q1, load_dp_checkpoint), (ex.q2, map_location_for), (ex.q3, save_on_main), (ex.q4, to_device),
               (ex.q5, load_ddp_checkpoint))
    for exercise, answer in answers:  # the first call pays one-off imports (Adam's first step)
        exercise.evaluate(answer)
    torch.manual_seed(0)
    begin = time.process_time()  # CPU seconds: a busy machine does not inflate them
    for exercise, answer in answers:
        start = time.process_time()
        assert exercise.evaluate(answer).status == CORRECT
        assert time.process_time() - start < 2.0, exercise
    assert torch.equal(torch.rand(2), expected)
    assert time.process_time() - begin < 5.0


def test_every_check_says_what_it_expected_for_an_answer_of_the_wrong_kind():
    for exercise in (ex.q1, ex.q2, ex.q3, ex.q4, ex.q5):
        verdict = exercise.evaluate("my_function")  # a string, not the function
        assert_wrong(verdict, "should be your function")


# ---- q5: resume one rank of a DDP run -------------------------------------------------------

def load_ddp_checkpoint(path, model, optimizer, rank, map_location):
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    model.train()
    restore_rng_state(checkpoint["rng_per_rank"][rank])
    return checkpoint["epoch"] + 1


def _variant(*, rng_rank="own", epoch_offset=1, optimizer=True, train=True, map_location=True,
             weights_only=True, rng_first=False, returns=None):
    def answer(path, model, opt, rank, location):
        kwargs = {"map_location": location} if map_location else {}
        checkpoint = torch.load(path, weights_only=weights_only, **kwargs)
        if rng_first and rng_rank == "own":
            restore_rng_state(checkpoint["rng_per_rank"][rank])
        model.load_state_dict(checkpoint["model"])
        if optimizer:
            opt.load_state_dict(checkpoint["optimizer"])
        if train:
            model.train()
        if rng_first:
            DigitsMLP()  # building something after the restore draws random numbers
        elif rng_rank is not None:
            restore_rng_state(checkpoint["rng_per_rank"][rank if rng_rank == "own" else 0])
        return returns if returns is not None else checkpoint["epoch"] + epoch_offset
    return answer


def test_q5_accepts_the_solution_and_the_course_loader():
    assert ex.q5.evaluate(load_ddp_checkpoint).status == CORRECT
    assert ex.q5.evaluate(_variant()).status == CORRECT


def test_q5_not_attempted():
    assert ex.q5.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q5.evaluate(...).status == NOT_ATTEMPTED


def test_q5_rejects_the_wrong_random_state():
    assert_wrong(ex.q5.evaluate(_variant(rng_rank=0)), "rank 0's random state on rank 1")
    assert_wrong(ex.q5.evaluate(_variant(rng_rank=None)), "not where rank 1 left them")
    assert_wrong(ex.q5.evaluate(_variant(rng_first=True)), "Restore them last")


def test_q5_rejects_an_off_by_one_epoch_and_a_wrong_return():
    assert_wrong(ex.q5.evaluate(_variant(epoch_offset=0)), "already finished", "+ 1")
    assert_wrong(ex.q5.evaluate(_variant(epoch_offset=2)), "goes on at 7, not 8")
    assert_wrong(ex.q5.evaluate(_variant(returns="7")), "as an int")


def test_q5_rejects_what_it_left_undone():
    assert_wrong(ex.q5.evaluate(_variant(optimizer=False)), "optimizer does not hold")
    assert_wrong(ex.q5.evaluate(_variant(train=False)), "eval mode", "model.train()")
    assert_wrong(ex.q5.evaluate(_variant(map_location=False)), "map_location you were given was not used")
    assert_wrong(ex.q5.evaluate(_variant(weights_only=False)), "weights_only=True")

    def nothing_loaded(path, model, opt, rank, location):
        torch.load(path, map_location=location, weights_only=True)
        return 7

    assert_wrong(ex.q5.evaluate(nothing_loaded), "does not hold the checkpoint's weights")
