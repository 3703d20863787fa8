"""TROUBLESHOOTING.md: every message is reproduced on the installed PyTorch, every link exists.

Each entry of TROUBLESHOOTING.md is a ``### `` heading followed by a ```text block with the
message. ``REPRODUCE`` maps each heading's anchor to a function that triggers the error and
returns what PyTorch printed (``Type: message``); every line of the quoted message must appear
in it (spaces normalised). Every ``solutions/....ipynb#anchor`` link must name a notebook that
exists and a heading in it.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "TROUBLESHOOTING.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors_of(markdown: str) -> set[str]:
    return {slug(line.lstrip("#")) for line in markdown.splitlines() if re.match(r"^#{1,6} ", line)}


def entries() -> dict[str, str]:
    """``{anchor: quoted message}`` for every ``### `` entry."""
    found = {}
    for block in DOC.read_text(encoding="utf-8").split("\n### ")[1:]:
        heading, body = block.split("\n", 1)
        match = re.search(r"```text\n(.*?)\n```", body, re.S)
        assert match, f"entry {heading!r} has no ```text block with the message"
        found[slug(heading)] = match.group(1)
    return found


def error_text(function) -> str:
    try:
        function()
    except BaseException as error:  # noqa: BLE001 - the point is to see what is raised
        return f"{type(error).__name__}: {error}".rstrip(": ")
    raise AssertionError("no error was raised")


def warning_text(function) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        function()
    return "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.output = nn.Linear(8, 3)

    def forward(self, x):
        return self.output(torch.relu(self.hidden(x)))


def saved(tmp_path: Path, obj, name="checkpoint.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def with_prefix(prefix: str) -> dict:
    return {prefix + k: v for k, v in Net().state_dict().items()}


def child(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120)
    return done.stderr.strip().splitlines()[-1] if done.returncode else done.stdout


def trained_adam(model):
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return optimizer


def _can_not_get_attribute(tmp_path):
    child("import torch\nfrom torch import nn\nclass Net(nn.Module):\n    pass\ntorch.save(Net(), 'whole.pt')\n", tmp_path)
    return child("import torch\ntorch.load('whole.pt', weights_only=False)\n", tmp_path)


def _same_device(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: optimizer state on the CPU, parameters on the GPU")
    model = Net()
    optimizer = trained_adam(model)
    state = copy.deepcopy(optimizer.state_dict())
    fresh = Net()
    optimizer = torch.optim.Adam(fresh.parameters())
    optimizer.load_state_dict(state)  # state follows the parameters: on the CPU
    fresh.cuda()  # moved AFTER the optimizer was built and loaded
    fresh(torch.ones(1, 4, device="cuda")).sum().backward()
    return error_text(optimizer.step)


def _deserialize_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return error_text(lambda: torch.load(ROOT / "data" / "cuda_checkpoint" / "digits_mlp_cuda.pt", weights_only=True))


def _full_disk(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (CI and the course containers run as root)")
    try:
        return error_text(lambda: torch.save({"w": torch.zeros(100_000)}, mount / "big.pt"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fp16(tmp_path):
    model = Net().half()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(1, 4, dtype=torch.half)).sum()).backward()
    return error_text(lambda: scaler.unscale_(optimizer))


def _unscale_twice(tmp_path):
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(1, 4)).sum()).backward()
    scaler.unscale_(optimizer)
    return error_text(lambda: scaler.unscale_(optimizer))


def _scheduler_order(tmp_path):
    optimizer = torch.optim.SGD(Net().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    return warning_text(scheduler.step)


def _shared_memory(tmp_path):
    from safetensors.torch import save_file

    layer = nn.Linear(4, 4)
    return error_text(lambda: save_file({"encoder.weight": layer.weight, "decoder.weight": layer.weight}, tmp_path / "tied.safetensors"))


def _header(tmp_path):
    from safetensors.torch import load_file

    return error_text(lambda: load_file(saved(tmp_path, Net().state_dict(), "model.safetensors")))


def _parameter_groups(tmp_path):
    model = Net()
    state = trained_adam(model).state_dict()
    optimizer = torch.optim.Adam([{"params": model.hidden.parameters()}, {"params": model.output.parameters()}])
    return error_text(lambda: optimizer.load_state_dict(state))


REPRODUCE = {
    "weights-only-load-failed-a-whole-model": lambda t: error_text(lambda: torch.load(saved(t, Net()), weights_only=True)),
    "unsupported-global-numpy-arrays": lambda t: error_text(
        lambda: torch.load(saved(t, {"rng": __import__("numpy").random.get_state()}), weights_only=True)),
    "unsupported-global-argparsenamespace": lambda t: error_text(
        lambda: torch.load(saved(t, {"args": __import__("argparse").Namespace(lr=0.1)}), weights_only=True)),
    "missing-and-unexpected-keys-module": lambda t: error_text(lambda: Net().load_state_dict(with_prefix("module."))),
    "missing-and-unexpected-keys-_orig_mod": lambda t: error_text(lambda: Net().load_state_dict(with_prefix("_orig_mod."))),
    "missing-and-unexpected-keys-a-lightning-checkpoint": lambda t: error_text(lambda: Net().load_state_dict(with_prefix("model."))),
    "unexpected-keys-a-whole-training-checkpoint": lambda t: error_text(
        lambda: Net().load_state_dict({"model": Net().state_dict(), "optimizer": {}, "epoch": 3})),
    "size-mismatch-for": lambda t: error_text(lambda: Net().load_state_dict({**Net().state_dict(), **{
        "output.weight": torch.zeros(10, 8), "output.bias": torch.zeros(10)}})),
    "cant-get-attribute-net-on-module-__main__": _can_not_get_attribute,
    "attempting-to-deserialize-object-on-a-cuda-device": None,  # needs monkeypatch: see the test
    "expected-all-tensors-to-be-on-the-same-device": _same_device,
    "pytorchstreamreader-failed-finding-central-directory": lambda t: error_text(lambda: torch.load(
        (lambda p: (p.write_bytes(p.read_bytes()[:300]), p)[1])(saved(t, Net().state_dict())), weights_only=True)),
    "eoferror-with-no-message-an-empty-file": lambda t: error_text(
        lambda: torch.load((lambda p: (p.write_bytes(b""), p)[1])(t / "empty.pt"), weights_only=True)),
    "enforce-fail-at-inline_containercc-unexpected-pos-a-full-disk": _full_disk,
    "some-tensors-share-memory-safetensors": _shared_memory,
    "error-while-deserializing-header-a-torchsave-file-opened-with-safetensors": _header,
    "detected-call-of-lr_schedulerstep-before-optimizerstep": _scheduler_order,
    "keyerror-initial_lr": lambda t: error_text(
        lambda: torch.optim.lr_scheduler.StepLR(torch.optim.SGD(Net().parameters(), lr=0.1), 2, last_epoch=5)),
    "attempting-to-unscale-fp16-gradients": _fp16,
    "unscale_-has-already-been-called-on-this-optimizer": _unscale_twice,
    "expected-state_dict-to-be-dict-like-a-path": lambda t: error_text(lambda: Net().load_state_dict("model.pt")),
    "ordereddict-object-has-no-attribute-eval": lambda t: error_text(
        lambda: torch.load(saved(t, Net().state_dict()), weights_only=True).eval()),
    "loaded-state-dict-has-a-different-number-of-parameter-groups": _parameter_groups,
}


def normalise(text: str) -> str:
    return " ".join(text.replace("\x1b[1m", "").replace("\x1b[0m", "").split())


def test_there_are_at_least_20_entries_and_each_has_a_reproduction():
    found = entries()
    assert len(found) >= 20
    assert set(found) == set(REPRODUCE), (sorted(set(found) - set(REPRODUCE)), sorted(set(REPRODUCE) - set(found)))


@pytest.mark.parametrize("anchor", sorted(REPRODUCE))
def test_each_message_is_what_pytorch_prints_now(anchor, tmp_path, monkeypatch):
    quoted = entries()[anchor]
    if anchor == "attempting-to-deserialize-object-on-a-cuda-device":
        actual = _deserialize_cuda(tmp_path, monkeypatch)
    else:
        actual = REPRODUCE[anchor](tmp_path)
    for line in quoted.splitlines():
        if line.strip() and line.strip() != "...":
            assert normalise(line) in normalise(actual), f"{line!r} is not in what PyTorch printed:\n{actual}"


def notebook_anchors(path: Path) -> set[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return anchors_of("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))


def test_every_entry_links_a_lesson_section_that_exists():
    text = DOC.read_text(encoding="utf-8")
    for block in text.split("\n### ")[1:]:
        assert re.search(r"\]\((solutions/[^)#]+\.ipynb)#([^)]+)\)", block), f"no lesson link in {block.splitlines()[0]!r}"
    links = re.findall(r"\]\((solutions/[^)#]+\.ipynb)#([^)]+)\)", text)
    for notebook, anchor in links:
        path = ROOT / notebook
        assert path.is_file(), f"{notebook} does not exist"
        assert anchor in notebook_anchors(path), f"{notebook} has no heading with the anchor #{anchor}"
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors_of(text), f"TROUBLESHOOTING.md has no heading #{anchor}"


def test_each_entry_has_a_cause_and_a_fix_in_code():
    for block in DOC.read_text(encoding="utf-8").split("\n### ")[1:]:
        title = block.splitlines()[0]
        assert "**Cause:**" in block and "```python" in block, f"entry {title!r} needs a cause and a fix in code"
