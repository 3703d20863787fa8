"""Lesson 01's checks accept the solutions and reject plausible wrong answers with a reason."""

import pytest
import torch

from check_testing import assert_wrong, placeholder

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson01 as ex
from helpers.models import DigitsCNN


# ---- q1: buffer keys ------------------------------------------------------------------------

@pytest.fixture
def model():
    return DigitsCNN()


def parameter_keys(model):
    return {name for name, _ in model.named_parameters()}


def test_q1_accepts_the_buffers(model):
    assert ex.q1.evaluate(set(model.state_dict()) - parameter_keys(model), model).status == CORRECT
    assert ex.q1.evaluate([name for name, _ in model.named_buffers()], model).status == CORRECT


def test_q1_not_attempted(model):
    assert ex.q1.evaluate(..., model).status == NOT_ATTEMPTED


def test_q1_rejects_the_parameters(model):
    assert_wrong(ex.q1.evaluate(parameter_keys(model), model), "parameters, not buffers")


def test_q1_rejects_all_keys(model):
    assert_wrong(ex.q1.evaluate(set(model.state_dict()), model), "parameters, not buffers")


def test_q1_rejects_forgetting_num_batches_tracked(model):
    running_only = {k for k in model.state_dict() if "running" in k}
    assert_wrong(ex.q1.evaluate(running_only, model), "missed 2 buffer", "num_batches_tracked")


def test_q1_rejects_module_names_and_wrong_types(model):
    assert_wrong(ex.q1.evaluate({"features.1"}, model), "Not keys")
    assert_wrong(ex.q1.evaluate("features.1.running_mean", model), "not a str")
    assert_wrong(ex.q1.evaluate([1, 2], model), "key string")


# ---- q2: save_weights / load_weights --------------------------------------------------------

def save_state_dict(model, path):
    torch.save(model.state_dict(), path)


def load_for_inference(path):
    model = DigitsCNN()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def test_q2_accepts_the_solution():
    assert ex.q2.evaluate(save_state_dict, load_for_inference).status == CORRECT


def test_q2_not_attempted_only_for_the_placeholder():
    assert ex.q2.evaluate(placeholder, load_for_inference).status == NOT_ATTEMPTED
    assert ex.q2.evaluate(save_state_dict, placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_saving_nothing():
    assert_wrong(ex.q2.evaluate(lambda model, path: None, load_for_inference), "wrote no file at `path`")


def test_q2_rejects_saving_to_a_fixed_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def fixed_name(model, path):
        torch.save(model.state_dict(), "weights.pt")

    def load_fixed_name(path):
        return load_for_inference("weights.pt")

    assert_wrong(ex.q2.evaluate(fixed_name, load_fixed_name), "wrote no file at `path`", "the path it was given")


def test_q2_rejects_the_functions_called_instead_of_passed():
    assert_wrong(ex.q2.evaluate(None, load_for_inference), "`save_weights` should be your function", "NoneType")
    assert_wrong(ex.q2.evaluate(save_state_dict, DigitsCNN().eval()), "`load_weights` should be your function",
                 "a model (DigitsCNN)")


def test_q2_rejects_changing_the_model_while_saving():
    def save_and_train(model, path):
        torch.save(model.state_dict(), path)
        model.train()

    assert_wrong(ex.q2.evaluate(save_and_train, load_for_inference), "changed the model it was given")


def test_q2_rejects_setting_only_the_outer_training_flag():
    def flag_only(path):
        model = DigitsCNN()
        model.load_state_dict(torch.load(path, weights_only=True))
        model.training = False
        return model

    assert_wrong(ex.q2.evaluate(save_state_dict, flag_only), "training mode", "classifier", "only the outer module")


def test_q2_rejects_returning_the_state_dict():
    verdict = ex.q2.evaluate(save_state_dict, lambda path: torch.load(path, weights_only=True))
    assert_wrong(verdict, "returned a OrderedDict, not a model", "return the model itself")


def test_q2_rejects_saving_the_whole_model():
    verdict = ex.q2.evaluate(lambda model, path: torch.save(model, path), load_for_inference)
    assert_wrong(verdict, "pickled model object", "model.state_dict()")


def test_q2_rejects_forgetting_eval():
    def load_in_train_mode(path):
        model = DigitsCNN()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model

    assert_wrong(ex.q2.evaluate(save_state_dict, load_in_train_mode), "training mode", ".eval()")


def test_q2_rejects_returning_what_load_state_dict_returns():
    def return_report(path):
        return DigitsCNN().eval().load_state_dict(torch.load(path, weights_only=True))

    assert_wrong(ex.q2.evaluate(save_state_dict, return_report), "not a model", "report of keys")


def test_q2_rejects_a_model_whose_weights_were_never_loaded():
    assert_wrong(ex.q2.evaluate(save_state_dict, lambda path: DigitsCNN().eval()), "outputs differ")


def test_q2_rejects_saving_another_models_weights():
    assert_wrong(
        ex.q2.evaluate(lambda model, path: torch.save(DigitsCNN().state_dict(), path), load_for_inference),
        "saved tensors differ",
    )


def test_q2_rejects_saving_only_the_parameters():
    def parameters_only(model, path):
        torch.save(dict(model.named_parameters()), path)

    assert_wrong(ex.q2.evaluate(parameters_only, load_for_inference), "saved keys differ", "running_mean")


# ---- q3: upgrade_checkpoint -----------------------------------------------------------------

def upgrade(old):
    renames = {"body.": "features.", "head.": "classifier."}
    new = {}
    for key, value in old.items():
        for a, b in renames.items():
            if key.startswith(a):
                key = b + key[len(a):]
        new[key] = value
    return new


def test_q3_accepts_the_solution_and_a_replace_based_one():
    assert ex.q3.evaluate(upgrade).status == CORRECT
    with_replace = lambda old: {k.replace("body.", "features.").replace("head.", "classifier."): v for k, v in old.items()}
    assert ex.q3.evaluate(with_replace).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_lstrip():
    def with_lstrip(old):
        new = {}
        for key, value in old.items():
            if key.startswith("body."):
                key = "features." + key.lstrip("body.")
            elif key.startswith("head."):
                key = "classifier." + key.lstrip("head.")
            new[key] = value
        return new

    assert_wrong(ex.q3.evaluate(with_lstrip), "lstrip", "wnsample.weight", "not a prefix")


def test_q3_rejects_renaming_keys_without_the_dot():
    def no_dot(old):
        return {("features" + k[4:] if k.startswith("body") else "classifier" + k[4:] if k.startswith("head") else k): v
                for k, v in old.items()}

    assert_wrong(ex.q3.evaluate(no_dot), "works for DigitsCNN's keys, but not for others", "classifierline")


def test_q3_rejects_a_list_of_pairs():
    assert_wrong(ex.q3.evaluate(lambda old: list(upgrade(old).items())), "Return a dict of tensors, not a list")


def test_q3_the_tricky_keys_expose_lstrip():
    assert "body.downsample.weight".lstrip("body.") != "downsample.weight"
    assert "head.head_scale".lstrip("head.") != "head_scale"
    assert ex._upgraded_key("headline") == "headline" and ex._upgraded_key("body.bn.x") == "features.bn.x"


def test_q3_rejects_renaming_only_one_block():
    only_head = lambda old: {k.replace("head.", "classifier."): v for k, v in old.items()}
    assert_wrong(ex.q3.evaluate(only_head), "missing", "features.0.weight", "unexpected", "body.")


def test_q3_rejects_changing_the_given_dict_in_place():
    def in_place(old):
        for key in list(old):
            new_key = key.replace("body.", "features.").replace("head.", "classifier.")
            old[new_key] = old.pop(key)
        return old

    assert_wrong(ex.q3.evaluate(in_place), "changed the dict it was given")


def test_q3_rejects_returning_none():
    assert_wrong(ex.q3.evaluate(lambda old: None), "returned None")


def test_q3_rejects_new_tensors_under_the_right_names():
    assert_wrong(ex.q3.evaluate(lambda old: DigitsCNN().state_dict()), "not the ones from the old checkpoint")


# ---- q4: load_matching ----------------------------------------------------------------------

def load_matching(model, state_dict):
    own = model.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return [k for k in state_dict if k not in fitting]


def test_q4_accepts_the_solution():
    assert ex.q4.evaluate(load_matching).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_returning_the_load_report():
    def report(model, state_dict):
        own = model.state_dict()
        return model.load_state_dict({k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape},
                                     strict=False)

    assert_wrong(ex.q4.evaluate(report), "list of key strings", "missing_keys")


def test_q4_rejects_returning_the_loaded_dict():
    def loaded_dict(model, state_dict):
        load_matching(model, state_dict)
        own = model.state_dict()
        return {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}

    assert_wrong(ex.q4.evaluate(loaded_dict), "list of key strings")


def test_q4_rejects_plain_strict_false():
    def strict_false(model, state_dict):
        report = model.load_state_dict(state_dict, strict=False)
        return report.missing_keys + report.unexpected_keys

    assert_wrong(ex.q4.evaluate(strict_false), "size mismatch", "strict=False does not skip")


def test_q4_rejects_forgetting_to_return_the_skipped_keys():
    def no_return(model, state_dict):
        load_matching(model, state_dict)

    assert_wrong(ex.q4.evaluate(no_return), "Return the list", "nothing (None)")


def test_q4_rejects_listing_only_the_shape_mismatches():
    def shapes_only(model, state_dict):
        load_matching(model, state_dict)
        own = model.state_dict()
        return [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]

    assert_wrong(ex.q4.evaluate(shapes_only), "list of skipped keys", "aux_head.weight")


def test_q4_rejects_loading_nothing():
    def nothing(model, state_dict):
        return list(state_dict)

    assert_wrong(ex.q4.evaluate(nothing), "fit but were not loaded")


def test_q4_rejects_filtering_by_name_only():
    def by_name(model, state_dict):
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
        return [k for k in state_dict if k not in own]

    assert_wrong(ex.q4.evaluate(by_name), "size mismatch")


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    ex.q2.evaluate(save_state_dict, load_for_inference)
    ex.q3.evaluate(upgrade)
    ex.q4.evaluate(load_matching)
    assert torch.equal(torch.rand(2), expected)
