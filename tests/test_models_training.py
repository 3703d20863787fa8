import pytest
import torch

from helpers.data import make_loaders
from helpers.models import DigitsCNN, DigitsMLP
from helpers.training import evaluate, train_one_epoch


@pytest.mark.parametrize("model_class", [DigitsCNN, DigitsMLP])
def test_models_map_digits_to_class_scores(model_class):
    model = model_class(num_classes=7)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 7)


def test_cnn_state_dict_has_nested_keys_and_batchnorm_buffers():
    keys = list(DigitsCNN().state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "classifier.1.bias"
    assert {"features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"} <= set(keys)
    assert sum(p.numel() for p in DigitsCNN().parameters()) == 10026


def test_mlp_state_dict_keys_are_named_after_its_layers():
    assert list(DigitsMLP().state_dict()) == ["hidden.weight", "hidden.bias", "output.weight", "output.bias"]


def test_one_epoch_lowers_the_loss_and_evaluate_reports_accuracy():
    torch.manual_seed(0)
    train_loader, val_loader = make_loaders(batch_size=64, seed=0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = evaluate(model, val_loader)
    first = train_one_epoch(model, train_loader, optimizer)
    second = train_one_epoch(model, train_loader, optimizer)
    after = evaluate(model, val_loader)
    assert second < first
    assert after > max(before, 0.8)
    assert not model.training  # evaluate leaves the model in eval mode


def test_train_one_epoch_puts_the_model_in_train_mode():
    train_loader, _ = make_loaders(batch_size=512, seed=0)
    model = DigitsMLP().eval()
    train_one_epoch(model, train_loader, torch.optim.SGD(model.parameters(), lr=0.1))
    assert model.training
