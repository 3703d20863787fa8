"""helpers.resume_demo: lesson 03's training run, fresh-process resume, comparisons and the SIGKILL demo."""

import sys

import matplotlib
import pytest
import torch

from helpers import resume_demo as demo
from helpers.checkpointing import capture_rng_state

matplotlib.use("Agg")

RECIPE = '''
import torch
from helpers.checkpointing import atomic_save, capture_rng_state, restore_rng_state


def save_checkpoint(path, model, optimizer, scheduler, train_loader, epoch):
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "rng_state": capture_rng_state(),
                 "data_generator_state": train_loader.generator.get_state()}, path)


def resume(path, model, optimizer, scheduler, train_loader):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    train_loader.generator.set_state(checkpoint["data_generator_state"])
    restore_rng_state(checkpoint["rng_state"])
    model.train()
    return checkpoint["epoch"]
'''

SMALL = dict(demo.CONFIG, epochs=2, hidden=16)


@pytest.fixture
def interrupted(tmp_path):
    """A recipe file, a checkpoint after epoch 1 of a 2-epoch run, and the uninterrupted run's final state."""
    recipe_path = tmp_path / "recipe.py"
    recipe_path.write_text(RECIPE)
    recipe = demo.load_recipe(recipe_path)
    model, optimizer, scheduler, train_loader, val_loader = demo.build(SMALL)
    last = tmp_path / "last.pt"
    demo.fit(model, optimizer, scheduler, train_loader, val_loader, SMALL, stop_after=len(train_loader),
             on_checkpoint=lambda p: recipe.save_checkpoint(last, model, optimizer, scheduler, train_loader, p["epoch"]))
    model, optimizer, scheduler, train_loader, val_loader = demo.build(SMALL)
    history = []
    progress = demo.fit(model, optimizer, scheduler, train_loader, val_loader, SMALL, history=history)
    return recipe_path, last, demo.full_state(model, optimizer, scheduler, train_loader, progress["epoch"]), history


def test_compare_states_finds_every_difference():
    a = {"w": torch.ones(3), "n": 1, "nested": [{"x": torch.zeros(2)}]}
    assert demo.compare_states(a, a) == (2, [])
    b = {"w": torch.ones(3).double(), "n": 2, "nested": [{"x": torch.zeros(2)}], "extra": 0}
    compared, differences = demo.compare_states(a, b)
    assert compared == 2
    assert differences == ["/extra (only in the second)", "/n", "/w"]


def test_describe_and_saved_bytes_of():
    checkpoint = {"model": {"w": torch.ones(4)}, "epoch": 3, "rng_state": capture_rng_state()}
    lines = demo.describe(checkpoint)
    assert lines[0].startswith("model") and "dict of w" in lines[0]
    assert any("rng_state['torch']: tensor of" in line for line in lines)
    data = demo.saved_bytes_of(checkpoint)
    assert data[:4] == b"PK\x03\x04" and len(data) > 5000


def test_load_recipe_says_what_to_run_when_the_file_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe cell"):
        demo.load_recipe(tmp_path / "recipe.py")


def test_resume_leaving_out_nothing_is_exact_and_each_piece_changes_the_run(interrupted):
    _, last, straight, history = interrupted
    exact_history, _, _ = demo.resume_leaving_out(last, None, SMALL)
    after = history[len(history) - len(exact_history):]
    assert all(torch.equal(mine[2], ref[2]) for mine, ref in zip(exact_history, after))
    for piece in demo.PIECES:
        broken_history, _, _ = demo.resume_leaving_out(last, piece, SMALL)
        assert not torch.equal(broken_history[-1][2], after[-1][2]), piece
    with pytest.raises(ValueError, match="one of"):
        demo.resume_leaving_out(last, "optimiser")


def test_finish_in_fresh_process_ends_bit_for_bit_like_the_uninterrupted_run(tmp_path):
    # The child process runs the lesson's run (demo.CONFIG): interrupt that one after 3 epochs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child computes with one thread: so must the reference
    try:
        _fresh_process_run(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _fresh_process_run(tmp_path):
    recipe_path = tmp_path / "recipe.py"
    recipe_path.write_text(RECIPE)
    recipe = demo.load_recipe(recipe_path)
    last, final = tmp_path / "last.pt", tmp_path / "final.pt"
    model, optimizer, scheduler, train_loader, val_loader = demo.build()
    demo.fit(model, optimizer, scheduler, train_loader, val_loader, stop_after=3 * len(train_loader),
             on_checkpoint=lambda p: recipe.save_checkpoint(last, model, optimizer, scheduler, train_loader, p["epoch"]))
    model, optimizer, scheduler, train_loader, val_loader = demo.build()
    progress = demo.fit(model, optimizer, scheduler, train_loader, val_loader)
    reference = demo.full_state(model, optimizer, scheduler, train_loader, progress["epoch"])
    seconds, printed = demo.finish_in_fresh_process(recipe_path, last, final)
    assert "resumed at epoch 3" in printed and seconds > 0
    compared, differences = demo.compare_states(reference, torch.load(final, weights_only=True))
    assert differences == [] and compared > 10


def test_finish_in_fresh_process_reports_the_child_error(tmp_path):
    (tmp_path / "recipe.py").write_text("def resume(*args):\n    raise KeyError('no such entry')\n")
    with pytest.raises(RuntimeError, match="no such entry"):
        demo.finish_in_fresh_process(tmp_path / "recipe.py", tmp_path / "missing.pt", tmp_path / "final.pt")


def test_plot_resumes_draws_three_panels(interrupted):
    _, last, _, history = interrupted
    runs = {"exact resume": demo.resume_leaving_out(last, None, SMALL)}
    figure = demo.plot_resumes(history, runs, len(history) - len(runs["exact resume"][0]))
    assert len(figure.axes) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_during_save_destroys_a_torch_save_and_not_an_atomic_save(tmp_path):
    good = tmp_path / "last.pt"
    torch.save({"w": torch.arange(10)}, good)
    killed = demo.kill_during_save("torch.save", good, megabytes=80, grown_past=8_000_000)
    assert killed.attempts >= 1 and killed.seconds >= 0
    with pytest.raises((EOFError, RuntimeError)):
        torch.load(good, weights_only=True)

    torch.save({"w": torch.arange(10)}, good)
    demo.kill_during_save("atomic_save", good, megabytes=80, grown_past=8_000_000)
    assert torch.equal(torch.load(good, weights_only=True)["w"], torch.arange(10))
    leftovers = [p.name for p in tmp_path.iterdir() if p != good]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.tmp")


def test_kill_during_save_rejects_an_unknown_saver(tmp_path):
    with pytest.raises(ValueError, match="torch.save"):
        demo.kill_during_save("pickle", tmp_path / "x.pt")
