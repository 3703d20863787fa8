"""helpers.state_dicts loads weights from every common checkpoint layout, strictly, and fails clearly.

Also checks the shipped data/cuda_checkpoint/ file and the two scripts of lesson 04.
"""

import hashlib
import importlib.util
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import gpu_reference
from helpers.checkpointing import CheckpointError, CheckpointWarning
from helpers.models import DigitsCNN, DigitsMLP
from helpers.state_dicts import (
    extract_state_dict,
    fitting_prefix,
    load_model_weights,
    state_dict_digest,
    strip_wrapper_prefixes,
    unwrap_model,
)

ROOT = Path(__file__).resolve().parent.parent
CUDA_CHECKPOINT = ROOT / "data" / "cuda_checkpoint" / "digits_mlp_cuda.pt"
CUDA_ERROR = "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False"


def seeded_cnn(seed):
    torch.manual_seed(seed)
    return DigitsCNN()


def same_weights(model, reference):
    got, want = model.state_dict(), reference.state_dict()
    return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def source():
    return seeded_cnn(1)


# ---- every layout loads ---------------------------------------------------------------------

def layouts(model):
    compiled_dp = torch.compile(nn.DataParallel(model))  # creating the wrapper does not compile
    dp_compiled = nn.DataParallel(torch.compile(model))
    return {
        "plain": model.state_dict(),
        "module.": nn.DataParallel(model).state_dict(),
        "_orig_mod.": torch.compile(model).state_dict(),
        "_orig_mod.module.": compiled_dp.state_dict(),
        "module._orig_mod.": dp_compiled.state_dict(),
        "nested model": {"model": nn.DataParallel(model).state_dict(), "epoch": 3, "optimizer": {"state": {}}},
        "nested state_dict": {"state_dict": model.state_dict(), "global_step": 10},
        "nested model_state_dict": {"model_state_dict": torch.compile(model).state_dict(), "loss": 0.5},
        "nested twice": {"model": {"state_dict": nn.DataParallel(model).state_dict()}},
    }


def test_the_wrappers_add_the_prefixes_this_module_expects(source):
    found = {name: next(iter(sd)) for name, sd in layouts(source).items() if not name.startswith("nested")}
    assert found == {
        "plain": "features.0.weight",
        "module.": "module.features.0.weight",
        "_orig_mod.": "_orig_mod.features.0.weight",
        "_orig_mod.module.": "_orig_mod.module.features.0.weight",
        "module._orig_mod.": "module._orig_mod.features.0.weight",
    }


@pytest.mark.parametrize("layout", list(layouts(seeded_cnn(1))))
def test_every_layout_loads_strictly(source, layout):
    checkpoint = layouts(source)[layout]
    target = seeded_cnn(2)
    assert not same_weights(target, source)
    assert load_model_weights(target, checkpoint) is target
    assert same_weights(target, source)


def test_extract_state_dict_finds_and_strips(source):
    for layout, checkpoint in layouts(source).items():
        extracted = extract_state_dict(checkpoint)
        assert list(extracted) == list(source.state_dict()), layout
        assert all(extracted[k] is not None for k in extracted)
    kept = extract_state_dict(layouts(source)["module."], strip_prefixes=False)
    assert next(iter(kept)) == "module.features.0.weight"


def test_loads_into_a_wrapped_model_too(source):
    for wrap in (nn.DataParallel, torch.compile, lambda m: nn.DataParallel(torch.compile(m))):
        inner = seeded_cnn(3)
        wrapped = wrap(inner)
        assert unwrap_model(wrapped) is inner
        assert load_model_weights(wrapped, layouts(source)["module."]) is wrapped
        assert same_weights(inner, source)


def test_loads_from_a_file_with_map_location(tmp_path, source):
    path = tmp_path / "dp.pt"
    torch.save({"model": nn.DataParallel(source).state_dict(), "epoch": 1}, path)
    target = seeded_cnn(4)
    load_model_weights(target, path)
    assert same_weights(target, source)
    load_model_weights(seeded_cnn(5), str(path), map_location=torch.device("cpu"))


def test_the_state_dict_objects_metadata_is_stripped_too(source):
    # BatchNorm reads its version from _metadata; the stripped copy must keep it under the new names.
    stripped = strip_wrapper_prefixes(torch.compile(nn.DataParallel(source)).state_dict())
    assert "features.1" in stripped._metadata and stripped._metadata["features.1"]["version"] == 2
    assert not any(key.startswith(("module", "_orig_mod")) for key in stripped._metadata)


# ---- the caller's objects are never changed -------------------------------------------------

def test_the_callers_dict_is_unchanged(source):
    checkpoint = {"model": nn.DataParallel(source).state_dict(), "epoch": 3}
    inner = checkpoint["model"]
    keys, values = list(inner), list(inner.values())
    metadata_keys = list(inner._metadata)
    load_model_weights(seeded_cnn(6), checkpoint)
    extract_state_dict(checkpoint)
    strip_wrapper_prefixes(inner)
    assert list(checkpoint) == ["model", "epoch"] and checkpoint["model"] is inner
    assert list(inner) == keys and all(a is b for a, b in zip(inner.values(), values))
    assert list(inner._metadata) == metadata_keys


def test_a_prefix_is_stripped_only_when_every_key_has_it():
    mixed = OrderedDict([("module.weight", torch.ones(1)), ("head.weight", torch.ones(1))])
    assert list(strip_wrapper_prefixes(mixed)) == ["module.weight", "head.weight"]


def test_a_model_whose_own_keys_start_with_module_keeps_them():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    torch.manual_seed(0)
    saved = Holder()
    target = Holder()
    load_model_weights(target, saved.state_dict())
    assert same_weights(target, saved)
    load_model_weights(target, nn.DataParallel(saved).state_dict())  # module.module.weight -> module.weight
    assert same_weights(target, saved)


# ---- failures: clear message, model untouched ----------------------------------------------

def test_a_plain_strict_load_would_have_half_loaded_the_model(source):
    # Why the helper checks first: load_state_dict copies what fits, then raises about the rest.
    target = DigitsCNN(num_classes=5)
    before = snapshot(target)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(source.state_dict())
    assert not unchanged(target, before)


def test_shape_mismatch_raises_and_leaves_the_model_untouched(source):
    target = DigitsCNN(num_classes=5)
    before = snapshot(target)
    with pytest.raises(CheckpointError) as error:
        load_model_weights(target, {"model": nn.DataParallel(source).state_dict()})
    message = str(error.value)
    assert "classifier.1.weight: file [10, 512] vs model [5, 512]" in message
    assert "after removing the wrapper prefix" in message
    assert "Nothing was loaded" in message and "same class and settings" in message
    assert unchanged(target, before)


def test_missing_and_unexpected_keys_are_listed(source):
    target = DigitsMLP()
    before = snapshot(target)
    with pytest.raises(CheckpointError) as error:
        load_model_weights(target, source.state_dict())
    message = str(error.value)
    assert "Missing (in the model, not in the file): 'hidden.weight'" in message  # expected keys
    assert "Unexpected (in the file, not in the model): 'features.0.weight'" in message  # found keys
    assert "into DigitsMLP" in message
    assert unchanged(target, before)


def test_a_checkpoint_without_a_state_dict_says_what_it_holds(source):
    target = seeded_cnn(7)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=r"keys 'weights', 'epoch'.*checkpoint\['weights'\]"):
        load_model_weights(target, {"weights": source.state_dict(), "epoch": 1})
    with pytest.raises(CheckpointError, match="an empty dict"):
        extract_state_dict({})
    with pytest.raises(CheckpointError, match="got a model"):
        extract_state_dict(source)
    with pytest.raises(CheckpointError, match="a Tensor"):
        extract_state_dict(torch.ones(3))
    assert unchanged(target, before)


def test_a_missing_file_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_weights(seeded_cnn(8), tmp_path / "nope.pt")


def test_wrong_argument_types_say_what_to_pass(source):
    with pytest.raises(TypeError, match="model to load into first"):
        load_model_weights(source.state_dict(), "x.pt")
    with pytest.raises(TypeError, match="not the model"):
        state_dict_digest(source)
    with pytest.raises(TypeError):
        strip_wrapper_prefixes([1, 2])
    with pytest.raises(TypeError):
        unwrap_model("model")


# ---- state_dict_digest ----------------------------------------------------------------------

def test_digest_is_equal_exactly_when_the_tensors_are(source):
    state = source.state_dict()
    copy = {k: v.clone() for k, v in reversed(list(state.items()))}
    assert state_dict_digest(state) == state_dict_digest(copy)  # order and identity don't matter
    assert state_dict_digest(state) == state_dict_digest(strip_wrapper_prefixes(nn.DataParallel(source).state_dict()))
    copy["classifier.1.bias"] = copy["classifier.1.bias"].clone()
    copy["classifier.1.bias"][0] += 1e-6
    assert state_dict_digest(state) != state_dict_digest(copy)
    assert state_dict_digest({"a": torch.tensor(1)}) != state_dict_digest({"a": torch.tensor(1.0)})
    assert state_dict_digest({"a": torch.ones(2, 3)}) != state_dict_digest({"a": torch.ones(3, 2)})
    assert re.fullmatch(r"[0-9a-f]{64}", state_dict_digest(state))


# ---- the shipped CUDA checkpoint -------------------------------------------------------------

def test_the_cuda_checkpoint_matches_its_readme():
    readme = (CUDA_CHECKPOINT.parent / "README.md").read_text()
    recorded = re.search(r"SHA-256:\*\* `([0-9a-f]{64})`", readme).group(1)
    assert hashlib.sha256(CUDA_CHECKPOINT.read_bytes()).hexdigest() == recorded
    assert "storages tagged `cuda:0`" in readme
    assert "How it was made:" in readme and ("relabelling" in readme or "genuine CUDA" in readme)


def test_the_cuda_checkpoint_needs_map_location_without_a_gpu():
    locations = []
    torch.load(CUDA_CHECKPOINT, map_location=lambda s, loc: locations.append(loc) or s, weights_only=True)
    assert locations.count("cuda:0") == 12 and locations.count("cpu") == 4
    if torch.cuda.is_available():
        checkpoint = torch.load(CUDA_CHECKPOINT, weights_only=True)
        assert checkpoint["model"]["hidden.weight"].device == torch.device("cuda:0")
    else:
        with pytest.raises(RuntimeError) as error:
            torch.load(CUDA_CHECKPOINT, weights_only=True)
        assert str(error.value).startswith(CUDA_ERROR)
        assert "map_location=torch.device('cpu')" in str(error.value)
    checkpoint = torch.load(CUDA_CHECKPOINT, map_location="cpu", weights_only=True)
    assert {t.device.type for t in checkpoint["model"].values()} == {"cpu"}
    model = load_model_weights(DigitsMLP(hidden=16), CUDA_CHECKPOINT)
    assert torch.equal(model.hidden.weight, checkpoint["model"]["hidden.weight"])


# ---- scripts ---------------------------------------------------------------------------------

def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_refuses_without_cuda_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_reference, "REFERENCE_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script = load_script("benchmark_devices_gpu")
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert "PyTorch sees no CUDA GPU here, so nothing was measured or written" in str(exit_info.value.code)
    assert "python scripts/benchmark_devices_gpu.py" in str(exit_info.value.code)
    assert list(tmp_path.iterdir()) == []


def test_the_benchmark_rows_have_every_column():
    script = load_script("benchmark_devices_gpu")
    rows = script.benchmark_rows(torch.device("cpu"), matmul_size=16, batch_size=4, repeats=1)
    assert [row["workload"] for row in rows] == ["matmul 16x16 float32", "DigitsCNN training step, batch 4"]
    for row in rows:
        assert row["CPU ms"] > 0 and row["GPU ms"] > 0 and "GPU ms timed without synchronize (wrong)" in row


def test_make_cuda_checkpoint_relabels_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    script = load_script("make_cuda_checkpoint")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        script.main(["--method", "cuda", "--out", str(tmp_path)])
    path = script.main(["--out", str(tmp_path)])
    assert script.location_tags(path) == {"cuda:0": 12, "cpu": 4}
    readme = (tmp_path / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
    assert "by relabelling" in readme
    # the relabelling tagger is inert outside the script's save
    torch.save({"t": torch.ones(2)}, tmp_path / "plain.pt")
    assert script.location_tags(tmp_path / "plain.pt") == {"cpu": 1}
    remade = torch.load(path, map_location="cpu", weights_only=True)
    assert set(remade) == {"model", "optimizer", "epoch"}


# ---- issue 19: Lightning prefixes, safetensors, one vocabulary of reasons ------------------


def test_a_lightning_checkpoint_loads_and_says_it_stripped_the_prefix(tmp_path, source):
    weights = {"model." + k: v for k, v in source.state_dict().items()}
    weights["loss_fn.pos_weight"] = torch.ones(1)  # another submodule of the LightningModule
    path = tmp_path / "epoch=1-step=20.ckpt"
    torch.save({"state_dict": weights, "pytorch-lightning_version": "2.4.0", "epoch": 1, "global_step": 20,
                "optimizer_states": [], "lr_schedulers": [], "loops": {}}, path)
    model = DigitsCNN()
    with pytest.warns(CheckpointWarning, match=r"prefix 'model\.'.*Lightning.*ignored 1 other entry \(loss_fn.pos_weight\)"):
        load_model_weights(model, path)
    assert same_weights(model, source)


def test_fitting_prefix_finds_only_a_prefix_that_fits(source):
    keys = list(source.state_dict())
    assert fitting_prefix(["net." + k for k in keys] + ["head.x"], keys) == "net."
    assert fitting_prefix(["net." + k for k in keys[:-1]], keys) is None


def test_safetensors_files_load_into_the_model(tmp_path, source):
    from safetensors.torch import save_file

    save_file(source.state_dict(), tmp_path / "model.safetensors")
    model = DigitsCNN()
    load_model_weights(model, tmp_path / "model.safetensors")
    assert same_weights(model, source)


def test_a_mismatch_has_the_same_reason_as_load_model_state(source):
    from helpers.checkpointing import load_model_state

    with pytest.raises(CheckpointError) as weights_error:
        load_model_weights(DigitsMLP(), source.state_dict())
    with pytest.raises(CheckpointError) as state_error:
        load_model_state(DigitsMLP(), source.state_dict())
    assert weights_error.value.reason == state_error.value.reason == "mismatch"
    with pytest.raises(CheckpointError) as nothing:
        extract_state_dict({"epoch": 1})
    assert nothing.value.reason == "no_state_dict"
