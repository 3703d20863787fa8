"""Lesson 02's checks accept the solutions and reject plausible wrong answers with a reason."""

import importlib
import shutil

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from check_testing import assert_wrong, placeholder

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson02 as ex
from helpers.models import DigitsCNN

NEEDED = [DigitsCNN, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Linear]


def test_helpers_of_the_check_module():
    assert ex._spring_trap("x") == "x" and "x" in ex._SPRUNG
    assert ex._trained_looking_cnn(0).training is False
    ex._SPRUNG.clear()


# ---- q1: load a whole model with weights_only=True ------------------------------------------

def load_with_context_manager(path):
    with torch.serialization.safe_globals(NEEDED):
        model = torch.load(path, weights_only=True)
    return model


def test_q1_accepts_the_context_manager():
    assert ex.q1.evaluate(load_with_context_manager).status == CORRECT


def test_q1_rejects_add_safe_globals_and_undoes_it():
    before = torch.serialization.get_safe_globals()

    def load_with_add(path):
        torch.serialization.add_safe_globals(NEEDED)
        return torch.load(path, weights_only=True)

    assert_wrong(ex.q1.evaluate(load_with_add), "allow-list of the whole process", "safe_globals([...])")
    assert set(torch.serialization.get_safe_globals()) == set(before)


def test_q1_rejects_none_instead_of_a_function():
    assert_wrong(ex.q1.evaluate(None), "`load_whole_digits_cnn` should be your function", "NoneType")


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q1_rejects_turning_weights_only_off():
    verdict = ex.q1.evaluate(lambda path: torch.load(path, weights_only=False))
    assert_wrong(verdict, "ran a function hidden in a booby-trapped file")


def test_q1_rejects_allow_listing_whatever_the_file_asks_for():
    def trust_the_file(path):
        needed = []
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
            module, _, attribute = name.rpartition(".")
            needed.append(getattr(importlib.import_module(module), attribute))
        with torch.serialization.safe_globals(needed):
            return torch.load(path, weights_only=True)

    assert_wrong(ex.q1.evaluate(trust_the_file), "booby-trapped", "never everything the file asks for")


def test_q1_rejects_allow_listing_only_the_model_class():
    def only_the_class(path):
        with torch.serialization.safe_globals([DigitsCNN]):
            return torch.load(path, weights_only=True)

    assert_wrong(ex.q1.evaluate(only_the_class), "refused a clean DigitsCNN file", "torch.nn.modules")


def test_q1_rejects_the_default_load():
    assert_wrong(ex.q1.evaluate(lambda path: torch.load(path)), "refused a clean DigitsCNN file", "DigitsCNN")


def test_q1_rejects_a_fresh_model_or_nothing():
    assert_wrong(ex.q1.evaluate(lambda path: DigitsCNN()), "other outputs")
    assert_wrong(ex.q1.evaluate(lambda path: None), "returned None")

    def state_dict_of_it(path):
        return load_with_context_manager(path).state_dict()

    assert_wrong(ex.q1.evaluate(state_dict_of_it), "not the DigitsCNN")


# ---- q2: whole model -> state_dict file ----------------------------------------------------

def whole_to_weights(whole_path, weights_path):
    model = torch.load(whole_path, weights_only=False)  # the check's own file: trusted
    torch.save(model.state_dict(), weights_path)


def test_q2_accepts_the_solution_and_the_allow_list_way():
    assert ex.q2.evaluate(whole_to_weights).status == CORRECT

    def with_allow_list(whole_path, weights_path):
        torch.save(load_with_context_manager(whole_path).state_dict(), weights_path)

    assert ex.q2.evaluate(with_allow_list).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_writing_nothing_or_to_a_fixed_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_wrong(ex.q2.evaluate(lambda whole_path, weights_path: None), "wrote no file at weights_path")

    def fixed_name(whole_path, weights_path):
        torch.save(torch.load(whole_path, weights_only=False).state_dict(), "weights.pt")

    assert_wrong(ex.q2.evaluate(fixed_name), "wrote no file at weights_path", "the path it was given")


def test_q2_rejects_overwriting_the_whole_model_file():
    def overwrite(whole_path, weights_path):
        state_dict = torch.load(whole_path, weights_only=False).state_dict()
        torch.save(state_dict, whole_path)
        torch.save(state_dict, weights_path)

    assert_wrong(ex.q2.evaluate(overwrite), "changed or removed the whole-model file")


def test_q2_rejects_saving_the_model_again_or_copying_the_file():
    def save_model_again(whole_path, weights_path):
        torch.save(torch.load(whole_path, weights_only=False), weights_path)

    assert_wrong(ex.q2.evaluate(save_model_again), "still holds a pickled model", "model.state_dict()")
    assert_wrong(ex.q2.evaluate(shutil.copy), "still holds a pickled model")


def test_q2_rejects_a_whole_model_even_when_its_classes_are_allow_listed():
    def save_model_again(whole_path, weights_path):
        torch.save(torch.load(whole_path, weights_only=False), weights_path)
        torch.serialization.add_safe_globals(NEEDED)  # so that weights_only=True would accept it

    before = torch.serialization.get_safe_globals()
    assert_wrong(ex.q2.evaluate(save_model_again), "holds a whole model")
    assert set(torch.serialization.get_safe_globals()) == set(before)


def test_q2_rejects_the_default_load():
    def default_load(whole_path, weights_path):
        torch.save(torch.load(whole_path).state_dict(), weights_path)

    assert_wrong(ex.q2.evaluate(default_load), "refused the whole-model file", "your own file")


def test_q2_rejects_another_models_weights():
    def fresh_model(whole_path, weights_path):
        torch.save(DigitsCNN().state_dict(), weights_path)

    assert_wrong(ex.q2.evaluate(fresh_model), "other tensors")


def test_q2_rejects_forgetting_the_buffers():
    def parameters_only(whole_path, weights_path):
        model = torch.load(whole_path, weights_only=False)
        torch.save(dict(model.named_parameters()), weights_path)

    assert_wrong(ex.q2.evaluate(parameters_only), "running_mean", "BatchNorm buffers")


def test_q2_rejects_a_nested_dict():
    def nested(whole_path, weights_path):
        model = torch.load(whole_path, weights_only=False)
        torch.save({"model": model.state_dict()}, weights_path)

    assert_wrong(ex.q2.evaluate(nested), "not tensors", "state_dict itself")


# ---- q3: safetensors -----------------------------------------------------------------------

def save_safetensors(model, path):
    save_file(model.state_dict(), path)


def load_safetensors(path):
    model = DigitsCNN()
    model.load_state_dict(load_file(path))
    return model.eval()


def test_q3_accepts_the_solution():
    assert ex.q3.evaluate(save_safetensors, load_safetensors).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder, load_safetensors).status == NOT_ATTEMPTED
    assert ex.q3.evaluate(save_safetensors, placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_writing_nothing_or_to_a_fixed_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_wrong(ex.q3.evaluate(lambda model, path: None, load_safetensors), "wrote no file at `path`")
    fixed_name = lambda model, path: save_file(model.state_dict(), "digits.safetensors")
    assert_wrong(ex.q3.evaluate(fixed_name, load_safetensors), "wrote no file at `path`", "the path it was given")


def test_q3_rejects_setting_only_the_outer_training_flag():
    def flag_only(path):
        model = DigitsCNN()
        model.load_state_dict(load_file(path))
        model.training = False
        return model

    assert_wrong(ex.q3.evaluate(save_safetensors, flag_only), "training mode", "only the outer module")


def test_q3_rejects_a_string_instead_of_a_function():
    assert_wrong(ex.q3.evaluate("digits.safetensors", load_safetensors), "`save_safetensors` should be your function")


def test_q3_rejects_torch_save_under_a_safetensors_name():
    verdict = ex.q3.evaluate(lambda model, path: torch.save(model.state_dict(), path), load_safetensors)
    assert_wrong(verdict, "not in the safetensors format", "torch.save zip archive", "save_file")


def test_q3_rejects_training_mode():
    def load_in_train_mode(path):
        model = DigitsCNN()
        model.load_state_dict(load_file(path))
        return model

    assert_wrong(ex.q3.evaluate(save_safetensors, load_in_train_mode), "training mode", ".eval()")


def test_q3_rejects_returning_the_dict():
    assert_wrong(ex.q3.evaluate(save_safetensors, load_file), "not a model", "dict of tensors")


def test_q3_rejects_a_model_that_never_got_the_weights():
    assert_wrong(ex.q3.evaluate(save_safetensors, lambda path: DigitsCNN().eval()), "outputs differ")


def test_q3_rejects_saving_only_the_parameters():
    def parameters_only(model, path):
        save_file({k: v.detach() for k, v in model.named_parameters()}, path)

    assert_wrong(ex.q3.evaluate(parameters_only, load_safetensors), "running_mean")


# ---- q4: torch.export ----------------------------------------------------------------------

def export_for_serving(model, example, path):
    model.eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, path)


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(export_for_serving).status == CORRECT


def test_q4_accepts_dim_auto():
    def with_auto(model, example, path):
        model.eval()
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim.AUTO}})
        torch.export.save(program, path)

    assert ex.q4.evaluate(with_auto).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_writing_nothing_or_to_a_fixed_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_wrong(ex.q4.evaluate(lambda model, example, path: None), "wrote no file at `path`")

    def fixed_name(model, example, path):
        model.eval()
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, "model.pt2")

    assert_wrong(ex.q4.evaluate(fixed_name), "wrote no file at `path`", "torch.export.save")


def test_q4_rejects_torch_save_of_the_program():
    def pickled(model, example, path):
        model.eval()
        torch.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}), path)

    assert_wrong(ex.q4.evaluate(pickled), "not a torch.export program", "not torch.save")


def test_q4_rejects_a_fixed_batch_size():
    def static(model, example, path):
        torch.export.save(torch.export.export(model.eval(), (example,)), path)

    assert_wrong(ex.q4.evaluate(static), "refuses a batch of 1", "Dim('batch')")


def test_q4_rejects_exporting_in_training_mode():
    def train_mode(model, example, path):
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, path)

    assert_wrong(ex.q4.evaluate(train_mode), "outputs differ", "model.eval()")


def test_q4_rejects_torch_save():
    assert_wrong(ex.q4.evaluate(lambda model, example, path: torch.save(model.state_dict(), path)), "not a torch.export program")
    assert_wrong(ex.q4.evaluate(lambda model, example, path: path.write_text("hello")), "not a torch.export program")


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    ex.q1.evaluate(load_with_context_manager)
    ex.q2.evaluate(whole_to_weights)
    ex.q3.evaluate(save_safetensors, load_safetensors)
    assert torch.equal(torch.rand(2), expected)
