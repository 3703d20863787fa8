"""Lesson 08's checks accept the solutions and reject plausible wrong answers with a reason."""

import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from check_testing import assert_wrong, placeholder

from helpers.checks import CORRECT, NOT_ATTEMPTED
from helpers.exercises import lesson08 as ex

HAS_PROC_MAPS = os.path.exists("/proc/self/maps")


# ---- q1: load without a second copy ----------------------------------------------------------

def load_lean(build_model, path):
    with torch.device("meta"):
        model = build_model()
    state = torch.load(path, mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    return model


def test_q1_accepts_the_solution():
    verdict = ex.q1.evaluate(load_lean)
    assert verdict.status == CORRECT, verdict


def test_q1_not_attempted():
    assert ex.q1.evaluate(placeholder).status == NOT_ATTEMPTED
    assert ex.q1.evaluate(...).status == NOT_ATTEMPTED


@pytest.mark.skipif(not HAS_PROC_MAPS, reason="needs /proc/self/maps (Linux)")
def test_q1_sees_where_the_tensors_live_on_linux(tmp_path):
    # The check's verdict rests on /proc/self/maps: the solution's tensors are inside the file's
    # mapping, and a plain load's tensors are not.
    path = tmp_path / "weights.pt"
    torch.save(ex._seeded_model(seed=1).state_dict(), path)
    assert ex._file_mappings(path) == []
    model = load_lean(ex._small_model, path)
    ranges = ex._file_mappings(path)
    assert ranges, "the memory-mapped file does not appear in /proc/self/maps"
    for tensor in model.state_dict().values():
        assert any(start <= tensor.data_ptr() < end for start, end in ranges)
    copied = torch.load(path, weights_only=True)
    assert not any(start <= copied["0.weight"].data_ptr() < end for start, end in ranges)
    del model
    assert ex.q1.evaluate(load_lean).status == CORRECT


def test_q1_rejects_a_full_copy_without_mmap():
    def no_mmap(build_model, path):
        with torch.device("meta"):
            model = build_model()
        model.load_state_dict(torch.load(path, weights_only=True), assign=True)
        return model

    assert_wrong(ex.q1.evaluate(no_mmap), "read the whole file into memory", "mmap=True")


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_q1_rejects_forgetting_assign():
    def no_assign(build_model, path):
        with torch.device("meta"):
            model = build_model()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
        return model

    assert_wrong(ex.q1.evaluate(no_assign), "still on the meta device", "assign=True")


def test_q1_rejects_a_model_built_on_the_cpu():
    def built_on_cpu(build_model, path):
        model = build_model()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        return model

    assert_wrong(ex.q1.evaluate(built_on_cpu), "built on 'cpu'", "torch.device('meta')")


@pytest.mark.skipif(not HAS_PROC_MAPS, reason="without /proc/self/maps the check cannot see a copy")
def test_q1_rejects_to_empty_and_a_copy():
    def to_empty_then_copy(build_model, path):
        with torch.device("meta"):
            model = build_model()
        model.to_empty(device="cpu")
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
        return model

    assert_wrong(ex.q1.evaluate(to_empty_then_copy), "live in ordinary memory", "they were copied", "assign=True")


def test_q1_rejects_wrong_return_values():
    def returns_state_dict(build_model, path):
        with torch.device("meta"):
            model = build_model()
        state = torch.load(path, mmap=True, weights_only=True)
        model.load_state_dict(state, assign=True)
        return state

    def returns_none(build_model, path):
        with torch.device("meta"):
            model = build_model()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)

    def returns_the_path(build_model, path):
        load_lean(build_model, path)
        return path

    assert_wrong(ex.q1.evaluate(returns_state_dict), "returned a dict", "return the model")
    assert_wrong(ex.q1.evaluate(returns_none), "returned None")
    assert_wrong(ex.q1.evaluate(returns_the_path), "Return the model (an nn.Module)")


def test_q1_rejects_building_twice():
    def builds_twice(build_model, path):
        with torch.device("meta"):
            build_model()  # "to see what it looks like"
            model = build_model()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        return model

    assert_wrong(ex.q1.evaluate(builds_twice), "called 2 times")


def test_q1_rejects_weights_that_are_not_the_files():
    def zeros_never_loaded(build_model, path):
        with torch.device("meta"):
            model = build_model()
        model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.zero_()
        return model

    def other_weights(build_model, path):
        model = load_lean(build_model, path)
        with torch.no_grad():
            model[0].weight.mul_(2)  # changes the mapped pages of this process only (copy-on-write)
        return model

    assert_wrong(ex.q1.evaluate(zeros_never_loaded), "differs from the file")
    assert_wrong(ex.q1.evaluate(other_weights), "0.weight differs from the file")


def test_q1_rejects_a_model_that_lost_its_buffers():
    def parameters_only(build_model, path):
        with torch.device("meta"):
            model = build_model()
        state = torch.load(path, mmap=True, weights_only=True)
        params = {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}
        model.load_state_dict(params, assign=True, strict=False)
        return model

    assert_wrong(ex.q1.evaluate(parameters_only), "still on the meta device", "load every entry")


# ---- q2: the newest complete sharded checkpoint --------------------------------------------------

STEP = re.compile(r"step-(\d+)")


def latest_complete(folder):
    complete = [
        p for p in Path(folder).iterdir()
        if p.is_dir() and STEP.fullmatch(p.name) and (p / ".metadata").exists()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def test_q2_accepts_the_solution_and_a_str():
    assert ex.q2.evaluate(latest_complete).status == CORRECT

    def as_str(folder):
        found = latest_complete(folder)
        return None if found is None else str(found)

    assert ex.q2.evaluate(as_str).status == CORRECT


def test_q2_not_attempted():
    assert ex.q2.evaluate(placeholder).status == NOT_ATTEMPTED


def test_q2_rejects_text_order():
    def text_sort(folder):
        complete = [p for p in folder.iterdir() if STEP.fullmatch(p.name) and (p / ".metadata").exists()]
        return max(complete, key=lambda p: p.name, default=None)

    assert_wrong(ex.q2.evaluate(text_sort), "returned step-9", "compared as text", "int(step number)")


def test_q2_rejects_an_unfinished_save():
    def ignores_metadata(folder):
        steps = [p for p in folder.iterdir() if p.is_dir() and STEP.fullmatch(p.name)]
        return max(steps, key=lambda p: int(p.name.split("-")[1]), default=None)

    assert_wrong(ex.q2.evaluate(ignores_metadata), "returned step-11", "has no .metadata")


def test_q2_rejects_modification_time():
    def newest_mtime(folder):
        complete = [p for p in folder.iterdir() if STEP.fullmatch(p.name) and (p / ".metadata").exists()]
        return max(complete, key=lambda p: p.stat().st_mtime, default=None)

    assert_wrong(ex.q2.evaluate(newest_mtime), "returned step-10", "touched last", "step number")


def test_q2_rejects_an_answer_when_nothing_is_complete():
    def falls_back_to_any_step(folder):
        found = latest_complete(folder)
        if found is None:
            steps = [p for p in folder.iterdir() if p.is_dir() and STEP.fullmatch(p.name)]
            found = max(steps, key=lambda p: int(p.name.split("-")[1]))
        return found

    def returns_the_folder(folder):
        return latest_complete(folder) or folder

    assert_wrong(ex.q2.evaluate(falls_back_to_any_step), "returned step-4", "return None")
    assert_wrong(ex.q2.evaluate(returns_the_folder), "no checkpoint is complete", "return None")


def test_q2_rejects_max_of_nothing():
    def max_without_default(folder):
        complete = [p for p in folder.iterdir() if STEP.fullmatch(p.name) and (p / ".metadata").exists()]
        return max(complete, key=lambda p: int(p.name.split("-")[1]))

    assert_wrong(ex.q2.evaluate(max_without_default), "raised ValueError")


def test_q2_rejects_the_stray_folder():
    def any_folder_with_metadata_by_mtime(folder):
        complete = [p for p in folder.iterdir() if (p / ".metadata").exists()]
        return max(complete, key=lambda p: p.stat().st_mtime, default=None)

    def any_folder_with_metadata_by_name(folder):
        complete = [p for p in folder.iterdir() if (p / ".metadata").exists()]
        return max(complete, key=lambda p: p.name, default=None)

    assert_wrong(ex.q2.evaluate(any_folder_with_metadata_by_mtime), "returned notes", "step-10")
    assert_wrong(ex.q2.evaluate(any_folder_with_metadata_by_name), "returned step-9")


def test_q2_rejects_the_folder_name_without_its_path():
    def name_only(folder):
        found = latest_complete(folder)
        return None if found is None else found.name  # "step-10": relative to the working directory

    assert_wrong(ex.q2.evaluate(name_only), "'step-10'", "full path")


def test_q2_rejects_a_step_number():
    def returns_int(folder):
        found = latest_complete(folder)
        return None if found is None else int(found.name.split("-")[1])

    assert_wrong(ex.q2.evaluate(returns_int), "Path or a str", "int")


# ---- q3: the weights only, as safetensors --------------------------------------------------------

def export_weights(checkpoint_path, out_path):
    checkpoint = torch.load(checkpoint_path, mmap=True, weights_only=True)
    save_file(checkpoint["model"], out_path)


def test_q3_accepts_the_solution_with_and_without_mmap():
    verdict = ex.q3.evaluate(export_weights)
    assert verdict.status == CORRECT, verdict
    assert "smaller than the full training checkpoint" in verdict.message

    def without_mmap(checkpoint_path, out_path):
        save_file(torch.load(checkpoint_path, weights_only=True)["model"], str(out_path))

    assert ex.q3.evaluate(without_mmap).status == CORRECT


def test_q3_not_attempted_is_the_placeholder_only():
    def does_nothing(checkpoint_path, out_path):
        pass

    def fixed_name(checkpoint_path, out_path):
        save_file(torch.load(checkpoint_path, weights_only=True)["model"], Path(out_path).parent / "weights.safetensors")

    assert ex.q3.evaluate(placeholder).status == NOT_ATTEMPTED
    assert_wrong(ex.q3.evaluate(does_nothing), "wrote no file at out_path")
    assert_wrong(ex.q3.evaluate(fixed_name), "wrote no file at out_path", "weights.safetensors instead")


def test_q3_rejects_a_folder_at_out_path():
    def save_pretrained_style(checkpoint_path, out_path):
        Path(out_path).mkdir()
        save_file(torch.load(checkpoint_path, weights_only=True)["model"], Path(out_path) / "model.safetensors")

    assert_wrong(ex.q3.evaluate(save_pretrained_style), "out_path is a folder", "one file")


def test_q3_rejects_changing_the_training_checkpoint():
    def strips_the_checkpoint_in_place(checkpoint_path, out_path):
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        save_file(checkpoint["model"], out_path)
        torch.save({"model": checkpoint["model"]}, checkpoint_path)  # "to save space"

    assert_wrong(ex.q3.evaluate(strips_the_checkpoint_in_place), "changed the training checkpoint")


def test_q3_rejects_other_formats():
    def with_torch_save(checkpoint_path, out_path):
        torch.save(torch.load(checkpoint_path, weights_only=True)["model"], out_path)

    def with_pickle(checkpoint_path, out_path):
        state = torch.load(checkpoint_path, weights_only=True)["model"]
        Path(out_path).write_bytes(pickle.dumps({k: v.numpy() for k, v in state.items()}))

    assert_wrong(ex.q3.evaluate(with_torch_save), "torch.save file (a zip)", "safetensors.torch.save_file")
    assert_wrong(ex.q3.evaluate(with_pickle), "not a safetensors file")


def test_q3_rejects_bfloat16():
    def to_bf16(checkpoint_path, out_path):
        state = torch.load(checkpoint_path, weights_only=True)["model"]
        save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, out_path)

    assert_wrong(ex.q3.evaluate(to_bf16), "saved as torch.bfloat16, not torch.float32")


def test_q3_rejects_the_optimizer_state():
    def with_optimizer(checkpoint_path, out_path):
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        flat = dict(checkpoint["model"])
        for index, state in checkpoint["optimizer"]["state"].items():
            for name, tensor in state.items():
                flat[f"optimizer.{index}.{name}"] = tensor
        save_file(flat, out_path)

    assert_wrong(ex.q3.evaluate(with_optimizer), "holds more than the weights", "optimizer.0.", "checkpoint['model'] only")


def test_q3_rejects_missing_keys():
    def parameters_only(checkpoint_path, out_path):
        state = torch.load(checkpoint_path, weights_only=True)["model"]
        save_file({k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}, out_path)

    def first_layer_only(checkpoint_path, out_path):
        state = torch.load(checkpoint_path, weights_only=True)["model"]
        save_file({k: v for k, v in state.items() if k.startswith("0.")}, out_path)

    assert_wrong(ex.q3.evaluate(parameters_only), "Some weights are missing", "1.running_mean")
    assert_wrong(ex.q3.evaluate(first_layer_only), "Some weights are missing", "and 4 more")


def test_q3_rejects_changed_values():
    def zeros(checkpoint_path, out_path):
        state = torch.load(checkpoint_path, weights_only=True)["model"]
        save_file({k: torch.zeros_like(v) for k, v in state.items()}, out_path)

    def fresh_model(checkpoint_path, out_path):
        save_file(ex._small_model().state_dict(), out_path)

    assert_wrong(ex.q3.evaluate(zeros), "0.weight differs from the checkpoint's")
    assert_wrong(ex.q3.evaluate(fresh_model), "differs from the checkpoint's")


# ---- what the answers leave behind, and answers of the wrong type ----------------------------------

def test_q1_rejects_a_default_device_left_on_meta():
    def set_default(build_model, path):
        torch.set_default_device("meta")  # instead of the with-block, and never put back
        model = build_model()
        model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
        return model

    assert_wrong(ex.q1.evaluate(set_default), "default device", "with torch.device('meta')")
    assert torch.empty(0).device.type == "cpu"  # the check put it back


def test_q1_rejects_mmap_switched_on_for_the_whole_process():
    from torch.utils.serialization import config

    def process_wide_mmap(build_model, path):
        config.load.mmap = True
        with torch.device("meta"):
            model = build_model()
        model.load_state_dict(torch.load(path, weights_only=True), assign=True)
        return model

    assert_wrong(ex.q1.evaluate(process_wide_mmap), "every later torch.load", "mmap=True to this one")
    assert config.load.mmap is False  # the check put it back


def test_q1_rejects_a_tuple_with_a_specific_message():
    def model_and_state(build_model, path):
        model = load_lean(build_model, path)
        return model, model.state_dict()

    assert_wrong(ex.q1.evaluate(model_and_state), "Return the model (an nn.Module), not a tuple")


def test_q2_rejects_cleaning_up_the_folder():
    import shutil

    def deletes_unfinished(folder):
        for p in Path(folder).iterdir():
            if p.is_dir() and STEP.fullmatch(p.name) and not (p / ".metadata").exists():
                shutil.rmtree(p)
        return latest_complete(folder)

    assert_wrong(ex.q2.evaluate(deletes_unfinished), "changed the folder", "removed step-11", "only look")

