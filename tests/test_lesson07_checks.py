"""Lesson 07's checks accept the solutions and reject plausible wrong answers with a reason."""

import copy
import re
import time

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from check_testing import assert_wrong, placeholder

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson07 as ex
from helpers.models import DigitsCNN


def trainable(model):
    return filter(lambda p: p.requires_grad, model.parameters())


# ---- q1: freeze the backbone and build the optimizer ----------------------------------------

def freeze_and_make_optimizer(model, lr):
    model.features.requires_grad_(False)
    return torch.optim.Adam(trainable(model), lr=lr)


def test_q1_accepts_the_solution_and_variants():
    assert ex.q1.evaluate(freeze_and_make_optimizer).status == CORRECT

    def head_parameters_directly(model, lr):
        for p in model.features.parameters():
            p.requires_grad = False
        return torch.optim.Adam(model.classifier.parameters(), lr=lr)

    def adamw(model, lr):  # AdamW is an Adam
        model.features.requires_grad_(False)
        return torch.optim.AdamW(trainable(model), lr=lr)

    assert ex.q1.evaluate(head_parameters_directly).status == CORRECT
    assert ex.q1.evaluate(adamw).status == CORRECT


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


def test_q1_rejects_an_optimizer_over_all_parameters():
    def all_parameters(model, lr):
        model.features.requires_grad_(False)
        return torch.optim.Adam(model.parameters(), lr=lr)

    assert_wrong(ex.q1.evaluate(all_parameters), "still holds 8 frozen parameters", "filter(")


def test_q1_rejects_freezing_the_head_too():
    def everything_frozen(model, lr):
        model.requires_grad_(False)
        return torch.optim.Adam(trainable(model), lr=lr)

    def freeze_everything_then_optimize_head(model, lr):
        model.requires_grad_(False)
        return torch.optim.Adam(model.classifier.parameters(), lr=lr)

    assert_wrong(ex.q1.evaluate(everything_frozen), "every parameter is frozen")
    assert_wrong(ex.q1.evaluate(freeze_everything_then_optimize_head), "the new classifier too")


def test_q1_rejects_forgetting_to_freeze_or_freezing_only_the_convolutions():
    def no_freeze(model, lr):
        return torch.optim.Adam(model.parameters(), lr=lr)

    def convs_only(model, lr):
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                layer.requires_grad_(False)
        return torch.optim.Adam(trainable(model), lr=lr)

    assert_wrong(ex.q1.evaluate(no_freeze), "model.features still trains")
    assert_wrong(ex.q1.evaluate(convs_only), "Part of the backbone still trains", "BatchNorm")


def test_q1_rejects_wrong_return_values_and_learning_rate():
    def no_return(model, lr):
        model.features.requires_grad_(False)
        torch.optim.Adam(trainable(model), lr=lr)

    def returns_parameters(model, lr):
        model.features.requires_grad_(False)
        return list(trainable(model))

    def default_lr(model, lr):
        model.features.requires_grad_(False)
        return torch.optim.Adam(trainable(model))

    def sgd(model, lr):
        model.features.requires_grad_(False)
        return torch.optim.SGD(trainable(model), lr=lr)

    def optimizer_before_freezing(model, lr):
        optimizer = torch.optim.Adam(trainable(model), lr=lr)
        model.features.requires_grad_(False)
        return optimizer

    def returns_the_model(model, lr):  # the wrong type
        model.features.requires_grad_(False)
        return model

    assert_wrong(ex.q1.evaluate(no_return), "returned None")
    assert_wrong(ex.q1.evaluate(returns_parameters), "not a list")
    assert_wrong(ex.q1.evaluate(returns_the_model), "not a DigitsCNN")
    assert_wrong(ex.q1.evaluate(default_lr), "lr=0.005")
    assert_wrong(ex.q1.evaluate(sgd), "torch.optim.Adam", "SGD")
    assert_wrong(ex.q1.evaluate(optimizer_before_freezing), "frozen parameters")


# ---- q2: training mode for the head, eval mode for the frozen backbone ------------------------

def set_training_mode(model):
    model.train()
    model.features.eval()
    return model


def test_q2_accepts_the_solution():
    assert ex.q2.evaluate(set_training_mode).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_plain_train_and_the_wrong_order():
    def plain_train(model):
        return model.train()

    def wrong_order(model):
        model.features.eval()
        return model.train()

    for answer in (plain_train, wrong_order):
        verdict = ex.q2.evaluate(answer)
        assert_wrong(verdict, "statistics drift", "after model.train()")
        moved = float(re.search(r"a running_mean by up to ([0-9.e+-]+)\)", verdict.message).group(1))
        assert moved > 0.01, verdict.message  # a drift that shows, printed with its digits


def test_q2_rejects_frozen_statistics_in_training_mode_and_half_eval():
    def momentum_zero(model):  # statistics stay, but BatchNorm still normalizes with batch statistics
        model.train()
        for m in model.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0
        return model

    def first_norm_only(model):
        model.train()
        model.features[1].eval()
        return model

    assert_wrong(ex.q2.evaluate(momentum_zero), "training mode", "each batch", "model.features.eval()")
    assert "moved" not in ex.q2.evaluate(momentum_zero).message
    assert_wrong(ex.q2.evaluate(first_norm_only), "features.4", "model.features.eval()")


def test_q2_rejects_eval_mode_everywhere_and_a_half_set_model():
    def everything_eval(model):
        return model.eval()

    def classifier_only(model):
        model.classifier.train()
        return model

    assert_wrong(ex.q2.evaluate(everything_eval), "classifier is in eval mode", "dropout")
    assert_wrong(ex.q2.evaluate(classifier_only), "model.training is False")


def test_q2_rejects_a_missing_or_wrong_return_and_changed_freezing():
    def no_return(model):
        model.train()
        model.features.eval()

    def returns_the_mode(model):  # the wrong type
        model.train()
        model.features.eval()
        return model.training

    def returns_a_copy(model):
        model.train()
        model.features.eval()
        return copy.deepcopy(model)

    def unfreezes(model):
        model.requires_grad_(True)
        return set_training_mode(model)

    assert_wrong(ex.q2.evaluate(no_return), "returned None", "return the model")
    assert_wrong(ex.q2.evaluate(returns_the_mode), "not a bool")
    assert_wrong(ex.q2.evaluate(returns_a_copy), "different model object")
    assert_wrong(ex.q2.evaluate(unfreezes), "changed which parameters train", "features.0.weight")


# ---- q3: a new head of the right size ---------------------------------------------------------

def replace_head(model, num_classes):
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
    return model


def test_q3_accepts_the_solution():
    assert ex.q3.evaluate(replace_head).status == CORRECT


def test_q3_not_attempted():
    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q3_rejects_wrong_sizes():
    def hard_coded_five(model, num_classes):
        model.classifier[1] = nn.Linear(512, 5)
        return model

    def ten_digits(model, num_classes):
        model.classifier[1] = nn.Linear(512, 10)
        return model

    assert_wrong(ex.q3.evaluate(hard_coded_five), "(16, 5)", "(16, 3)")
    assert_wrong(ex.q3.evaluate(ten_digits), "(16, 10)")


def test_q3_rejects_wrapping_and_appending():
    def wrap(model, num_classes):
        return nn.Sequential(model, nn.Linear(5, num_classes))

    def append(model, num_classes):
        model.classifier.append(nn.Linear(5, num_classes))
        return model

    assert_wrong(ex.q3.evaluate(wrap), "wrapped", "Replace model.classifier[1]")
    assert_wrong(ex.q3.evaluate(append), "Sequential of 3 layers")


def test_q3_replacing_the_whole_classifier_gets_a_specific_message():
    def whole_classifier(model, num_classes):  # the wrong shape: a Linear where a Sequential was
        model.classifier = nn.Linear(512, num_classes)
        return model

    def sequential_without_dropout(model, num_classes):
        model.classifier = nn.Sequential(nn.Linear(512, num_classes))
        return model

    def wrong_input_size(model, num_classes):
        model.classifier[1] = nn.Linear(5, num_classes)
        return model

    verdict = ex.q3.evaluate(whole_classifier)
    assert_wrong(verdict, "model.classifier is now a Linear", "nn.Sequential(Dropout, Linear)", "model.classifier[1]")
    assert "Checking your answer raised" not in verdict.message
    assert_wrong(ex.q3.evaluate(sequential_without_dropout), "Sequential of 1 layers", "model.classifier[1]")
    verdict = ex.q3.evaluate(wrong_input_size)
    assert_wrong(verdict, "fails on a batch of shape (16, 1, 8, 8)", "nn.Linear(512, 3)")
    assert "Checking your answer raised" not in verdict.message


def test_q3_accepts_a_rebuilt_classifier_with_its_dropout():
    def rebuilt(model, num_classes):
        model.classifier = nn.Sequential(nn.Dropout(0.25), nn.Linear(512, num_classes))
        return model

    assert ex.q3.evaluate(rebuilt).status == CORRECT


def test_q3_rejects_a_frozen_head_a_thawed_backbone_and_a_fresh_model():
    def freeze_after(model, num_classes):
        model.classifier[1] = nn.Linear(512, num_classes)
        return model.requires_grad_(False)

    def unfreeze_all(model, num_classes):
        model.classifier[1] = nn.Linear(512, num_classes)
        return model.requires_grad_(True)

    def fresh_model(model, num_classes):
        return DigitsCNN(num_classes=num_classes)

    def no_return(model, num_classes):
        model.classifier[1] = nn.Linear(512, num_classes)

    assert_wrong(ex.q3.evaluate(freeze_after), "new layer is frozen")
    assert_wrong(ex.q3.evaluate(unfreeze_all), "unfroze the backbone")
    def changed_copy(model, num_classes):
        return replace_head(copy.deepcopy(model), num_classes)

    def returns_the_layer(model, num_classes):  # the wrong type
        model.classifier[1] = nn.Linear(512, num_classes)
        return model.classifier[1].weight

    assert_wrong(ex.q3.evaluate(fresh_model), "not the pretrained ones")
    assert_wrong(ex.q3.evaluate(no_return), "returned None")
    assert_wrong(ex.q3.evaluate(changed_copy), "different model object")
    assert_wrong(ex.q3.evaluate(returns_the_layer), "not a Parameter")


# ---- q4: parameter groups ---------------------------------------------------------------------

def make_optimizer(model, head_lr, block_lr):
    model.features[3:].requires_grad_(True)
    return torch.optim.Adam([
        {"params": model.classifier.parameters(), "lr": head_lr},
        {"params": model.features[3:].parameters(), "lr": block_lr},
    ])


def test_q4_accepts_the_solution_and_a_default_lr_variant():
    assert ex.q4.evaluate(make_optimizer).status == CORRECT

    def default_lr_for_head(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        return torch.optim.Adam(
            [{"params": model.features[3:].parameters(), "lr": block_lr}, {"params": model.classifier.parameters()}],
            lr=head_lr,
        )

    assert ex.q4.evaluate(default_lr_for_head).status == CORRECT


def test_q4_not_attempted():
    assert ex.q4.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q4_rejects_one_learning_rate():
    def one_group(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        return torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=head_lr)

    def same_lr_twice(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        return torch.optim.Adam([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features[3:].parameters(), "lr": head_lr},
        ])

    assert_wrong(ex.q4.evaluate(one_group), "same learning rate")
    assert_wrong(ex.q4.evaluate(same_lr_twice), "same learning rate")


def test_q4_rejects_swapped_rates_missing_and_duplicated_parameters():
    def swapped(model, head_lr, block_lr):
        return make_optimizer(model, block_lr, head_lr)

    def conv_only(model, head_lr, block_lr):
        model.features[3].requires_grad_(True)
        return torch.optim.Adam([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features[3].parameters(), "lr": block_lr},
        ])

    def in_two_groups(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        return torch.optim.Adam([
            {"params": list(model.classifier.parameters()) + list(model.features[3:].parameters()), "lr": head_lr},
            {"params": model.features[3:].parameters(), "lr": block_lr},
        ])

    assert_wrong(ex.q4.evaluate(swapped), "swapped")
    assert_wrong(ex.q4.evaluate(conv_only), "still frozen", "features.4.weight")
    assert_wrong(ex.q4.evaluate(in_two_groups), "two groups")


def test_q4_rejects_forgetting_to_unfreeze_and_unfreezing_everything():
    def not_unfrozen(model, head_lr, block_lr):
        return torch.optim.Adam([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features[3:].parameters(), "lr": block_lr},
        ])

    def everything(model, head_lr, block_lr):
        model.requires_grad_(True)
        return torch.optim.Adam([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features.parameters(), "lr": block_lr},
        ])

    assert_wrong(ex.q4.evaluate(not_unfrozen), "still frozen", "requires_grad_(True)")
    assert_wrong(ex.q4.evaluate(everything), "first block")


def test_q4_rejects_a_frozen_head_sgd_a_used_up_generator_and_the_wrong_type():
    def head_frozen(model, head_lr, block_lr):
        model.requires_grad_(False)
        return make_optimizer(model, head_lr, block_lr)

    def sgd(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        return torch.optim.SGD([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features[3:].parameters(), "lr": block_lr},
        ])

    def used_up_generator(model, head_lr, block_lr):
        model.features[3:].requires_grad_(True)
        block = model.features[3:].parameters()
        list(block)  # looks at the generator, which empties it
        return torch.optim.Adam([
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": block, "lr": block_lr},
        ])

    def returns_the_groups(model, head_lr, block_lr):  # the wrong type
        model.features[3:].requires_grad_(True)
        return [
            {"params": model.classifier.parameters(), "lr": head_lr},
            {"params": model.features[3:].parameters(), "lr": block_lr},
        ]

    def no_return(model, head_lr, block_lr):
        make_optimizer(model, head_lr, block_lr)

    assert_wrong(ex.q4.evaluate(head_frozen), "classifier is frozen")
    assert_wrong(ex.q4.evaluate(sgd), "torch.optim.Adam", "SGD")
    assert_wrong(ex.q4.evaluate(used_up_generator), "Not in any parameter group", "features.3.weight", "only once")
    def filter_before_unfreezing(model, head_lr, block_lr):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, model.features.parameters()), lr=block_lr)

    assert_wrong(ex.q4.evaluate(filter_before_unfreezing), "empty parameter list", "before unfreezing")
    assert_wrong(ex.q4.evaluate(returns_the_groups), "not a list")
    assert_wrong(ex.q4.evaluate(no_return), "returned None")


# ---- q5: save only the head -------------------------------------------------------------------

def save_head(model, path):
    torch.save(model.classifier.state_dict(), path)


def load_head(model, path):
    model.classifier.load_state_dict(torch.load(path, weights_only=True))
    return model


def test_q5_accepts_the_solution_and_prefixed_keys():
    assert ex.q5.evaluate(save_head, load_head).status == CORRECT

    def save_prefixed(model, path):
        torch.save({k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}, path)

    def load_prefixed(model, path):
        model.load_state_dict(torch.load(path, weights_only=True), strict=False)
        return model

    assert ex.q5.evaluate(save_prefixed, load_prefixed).status == CORRECT


def test_q5_accepts_safetensors_and_the_last_layer_alone():
    def save_safetensors(model, path):
        save_file(model.classifier.state_dict(), str(path))

    def load_safetensors(model, path):
        model.classifier.load_state_dict(load_file(str(path)))
        return model

    def save_last_layer(model, path):  # dropout has no weights: the same tensors
        torch.save(model.classifier[1].state_dict(), path)

    def load_last_layer(model, path):
        model.classifier[1].load_state_dict(torch.load(path, weights_only=True))
        return model

    assert ex.q5.evaluate(save_safetensors, load_safetensors).status == CORRECT
    assert ex.q5.evaluate(save_last_layer, load_last_layer).status == CORRECT


def test_q5_not_attempted():
    assert ex.q5.evaluate(placeholder, placeholder).status == NOT_ATTEMPTED
    assert ex.q5.evaluate(save_head, placeholder).status == NOT_ATTEMPTED


def test_q5_code_that_ran_but_wrote_no_file_at_path_is_wrong(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def writes_nothing(model, path):
        model.classifier.state_dict()

    def fixed_name(model, path):
        torch.save(model.classifier.state_dict(), "head.pt")

    def next_to_path(model, path):
        torch.save(model.classifier.state_dict(), str(path) + ".tmp")

    assert_wrong(ex.q5.evaluate(writes_nothing, load_head), "wrote no file at `path`")
    assert_wrong(ex.q5.evaluate(fixed_name, load_head), "wrote no file at `path`", "torch.save(..., path)")
    assert (tmp_path / "head.pt").is_file()
    assert_wrong(ex.q5.evaluate(next_to_path, load_head), "wrote no file at `path`", "lesson07_q5_head.pt.tmp")


def test_q5_rejects_saving_the_whole_model():
    def whole_state_dict(model, path):
        torch.save(model.state_dict(), path)

    def pickled_head(model, path):
        torch.save(model.classifier, path)

    def a_tensor(model, path):  # the wrong type: one tensor, not a state_dict
        torch.save(model.classifier[1].weight.detach(), path)

    def untrained_head(model, path):
        torch.save(nn.Sequential(nn.Dropout(), nn.Linear(512, 5)).state_dict(), path)

    assert_wrong(ex.q5.evaluate(whole_state_dict, load_head), "holds the backbone too")
    assert_wrong(ex.q5.evaluate(pickled_head, load_head), "pickled module")
    assert_wrong(ex.q5.evaluate(a_tensor, load_head), "holds a Tensor")
    assert_wrong(ex.q5.evaluate(untrained_head, load_head), "not the head's weights")


def test_q5_rejects_a_load_that_does_not_load():
    def forgets_to_load(model, path):
        torch.load(path, weights_only=True)
        return model

    def loads_into_a_copy(model, path):
        copy = DigitsCNN(num_classes=5)
        copy.classifier.load_state_dict(torch.load(path, weights_only=True))
        return copy

    def no_return(model, path):
        model.classifier.load_state_dict(torch.load(path, weights_only=True))

    def returns_the_keys(model, path):  # the wrong type
        return model.classifier.load_state_dict(torch.load(path, weights_only=True))

    assert_wrong(ex.q5.evaluate(save_head, forgets_to_load), "outputs differ")
    assert_wrong(ex.q5.evaluate(save_head, loads_into_a_copy), "a different model")
    assert_wrong(ex.q5.evaluate(save_head, no_return), "load_head returned None")
    assert_wrong(ex.q5.evaluate(save_head, returns_the_keys), "returned a _IncompatibleKeys")


# ---- all checks: fast, and they leave the learner's random state alone --------------------------

def test_each_check_is_fast_and_keeps_the_random_state():
    answers = {
        "q1": (freeze_and_make_optimizer,),
        "q2": (set_training_mode,),
        "q3": (replace_head,),
        "q4": (make_optimizer,),
        "q5": (save_head, load_head),
    }
    assert set(answers) == set(ex.exercises.names)
    for name, args in answers.items():  # the first calls pay one-off imports (the optimizers')
        ex.exercises[name].evaluate(*args)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name, args in answers.items():
        start = time.process_time()  # CPU seconds: a busy machine does not inflate them
        assert ex.exercises[name].evaluate(*args).status == CORRECT
        assert time.process_time() - start < 1.0, name
    assert torch.equal(torch.rand(3), expected)
