"""Make data/cuda_checkpoint/: a small training checkpoint whose tensors were saved from CUDA.

    python scripts/make_cuda_checkpoint.py            # real CUDA tensors if a GPU is here, else relabel
    python scripts/make_cuda_checkpoint.py --method relabel

Lesson 04 loads this file on a machine without a GPU, to show the error PyTorch raises and the
``map_location`` fix. The checkpoint is ``{"model": state_dict, "optimizer": state_dict,
"epoch": 2}`` of a ``DigitsMLP(hidden=16)`` trained for two epochs on the course's digits. The
training always runs on the CPU (so the values are the same whichever way the file is made);
then the state is saved from CUDA in one of two ways:

- ``cuda`` (needs a GPU): the model is moved to ``cuda:0`` and the optimizer state loaded into an
  optimizer over the CUDA parameters, then ``torch.save`` writes it: a genuine GPU checkpoint.
- ``relabel`` (any machine): ``torch.save`` records each storage's device as a *location tag*
  (the string ``'cuda:0'`` or ``'cpu'`` inside ``data.pkl``); that tag is all ``torch.load`` uses
  to decide where a tensor goes. The script registers, with the public
  ``torch.serialization.register_package``, a tagger that returns ``'cuda:0'`` for exactly the
  storages that would live on the GPU in the ``cuda`` method (the parameters and Adam's moment
  estimates; Adam's ``step`` counters stay on the CPU there too). The tensor bytes are the same.

It writes ``digits_mlp_cuda.pt`` and ``README.md`` (provenance: the method, the versions, the
date and the file's SHA-256). ``torch.save`` puts a random serialization id in every file, so
each run gives a different SHA-256: the README always records the one of the file beside it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import platform
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone without installing the helpers

import torch  # noqa: E402
from torch.serialization import register_package  # noqa: E402

from helpers.data import make_loaders  # noqa: E402
from helpers.environment import seed_everything  # noqa: E402
from helpers.models import DigitsMLP  # noqa: E402
from helpers.training import evaluate, train_one_epoch  # noqa: E402

OUT = ROOT / "data" / "cuda_checkpoint"
FILE_NAME = "digits_mlp_cuda.pt"
HIDDEN = 16
EPOCHS = 2

# Storages (by address) that the relabelling tagger reports as living on cuda:0; empty outside a save.
_RELABEL: set[int] = set()


def _relabel_tag(storage) -> str | None:
    if storage.device.type == "cpu" and storage.data_ptr() in _RELABEL:
        return "cuda:0"
    return None  # not ours: let PyTorch's own taggers answer


def _no_deserializer(storage, location):
    return None  # loading is left entirely to PyTorch's own deserializers


register_package(0, _relabel_tag, _no_deserializer)  # priority 0 runs before PyTorch's 'cpu' tagger


def train_on_cpu() -> tuple[DigitsMLP, torch.optim.Optimizer, float]:
    """Two epochs of a DigitsMLP(hidden=16) on the digits, on the CPU; returns model, optimizer, accuracy."""
    seed_everything(0)
    model = DigitsMLP(hidden=HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_loader, val_loader = make_loaders(batch_size=64, seed=0)
    for _ in range(EPOCHS):
        train_one_epoch(model, train_loader, optimizer)
    return model, optimizer, evaluate(model, val_loader)


def save_with_real_cuda(model, optimizer, path: Path) -> None:
    """Move the model and the optimizer state to cuda:0 and save them: a genuine GPU checkpoint."""
    cpu_optimizer_state = optimizer.state_dict()
    model = model.to("cuda:0")
    cuda_optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    cuda_optimizer.load_state_dict(cpu_optimizer_state)  # moves the moments to the parameters' device
    torch.save({"model": model.state_dict(), "optimizer": cuda_optimizer.state_dict(), "epoch": EPOCHS}, path)


def save_relabelled(model, optimizer, path: Path) -> None:
    """Save from the CPU, with the tensors that would be on the GPU tagged 'cuda:0' in the file."""
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": EPOCHS}
    on_gpu = list(checkpoint["model"].values())
    for state in checkpoint["optimizer"]["state"].values():
        on_gpu += [state["exp_avg"], state["exp_avg_sq"]]  # "step" stays on the CPU, as with CUDA
    _RELABEL.update(t.untyped_storage().data_ptr() for t in on_gpu)
    try:
        torch.save(checkpoint, path)
    finally:
        _RELABEL.clear()


def location_tags(path: Path) -> dict[str, int]:
    """How many storages in the file carry each location tag (read with torch.load's own hook)."""
    tags: dict[str, int] = {}

    def record(storage, location):
        tags[location] = tags.get(location, 0) + 1
        return storage

    torch.load(path, map_location=record, weights_only=True)
    return tags


README = """# A checkpoint saved from CUDA tensors

`{file}` ({size:,} bytes) is the checkpoint lesson 04 loads on a machine without a GPU, to show
the error `torch.load` raises there and the `map_location` fix.

- **Contents:** `{{"model": state_dict, "optimizer": state_dict, "epoch": {epochs}}}` of
  `helpers.models.DigitsMLP(hidden={hidden})`, trained for {epochs} epochs with Adam (lr 0.01) on the
  course's digits (`data/digits/`, CC BY 4.0), validation accuracy {accuracy:.1%}.
- **Location tags in the file:** {tags}.
- **How it was made:** {how}
- **Made with:** torch {torch}, Python {python}, on {date}, by `python scripts/make_cuda_checkpoint.py{args}`.
- **SHA-256:** `{sha256}`
- **Licence:** the weights are the course's own work (trained on the CC BY 4.0 digits); use them
  as you like.

`torch.save` puts a random serialization id in every file, so running the script again gives a
different SHA-256; the script rewrites this README to match. `tests/test_state_dicts.py` checks
that the file matches the checksum above, that on a machine without CUDA `torch.load` refuses
it with "Attempting to deserialize object on a CUDA device", and that `map_location="cpu"` loads it.
"""

HOW = {
    "cuda": (
        "**genuine CUDA tensors**: the model and the optimizer state were moved to `cuda:0` on "
        "a machine with a GPU ({device}) and saved from there."
    ),
    "relabel": (
        "**on a machine without a GPU, by relabelling.** `torch.save` writes each storage's "
        "device as a *location tag* (`'cuda:0'`, `'cpu'`) into `data.pkl`, and that tag is all "
        "`torch.load` looks at to decide where a tensor goes. The script registered a tagger with "
        "the public `torch.serialization.register_package` that returns `'cuda:0'` for the "
        "storages that live on the GPU in a real GPU run (the parameters and Adam's `exp_avg` / "
        "`exp_avg_sq`; Adam keeps its `step` counters on the CPU), so the file carries the same "
        "tags a save from `cuda:0` writes. No GPU computed anything in it. Run the script on a "
        "machine with a GPU to replace it with a genuine one."
    ),
}


def main(argv: list[str] | None = None) -> Path:
    """Make the checkpoint and its README; returns the checkpoint's path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("auto", "cuda", "relabel"), default="auto",
                        help="cuda: save real CUDA tensors (needs a GPU); relabel: tag CPU storages as "
                             "cuda:0; auto (default): cuda when a GPU is visible, else relabel")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    args = parser.parse_args(argv)
    method = args.method
    if method == "auto":
        method = "cuda" if torch.cuda.is_available() else "relabel"
    if method == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--method cuda needs a CUDA GPU and none is visible; use --method relabel.")

    model, optimizer, accuracy = train_on_cpu()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / FILE_NAME
    (save_with_real_cuda if method == "cuda" else save_relabelled)(model, optimizer, path)
    assert zipfile.is_zipfile(path)

    tags = location_tags(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    (args.out / "README.md").write_text(README.format(
        file=FILE_NAME,
        size=path.stat().st_size,
        epochs=EPOCHS,
        hidden=HIDDEN,
        accuracy=accuracy,
        tags=", ".join(f"{count} storages tagged `{tag}`" for tag, count in sorted(tags.items())),
        how=HOW[method].format(device=torch.cuda.get_device_name(0) if method == "cuda" else ""),
        torch=torch.__version__,
        python=platform.python_version(),
        date=_dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        args="" if args.method == "auto" else f" --method {args.method}",
        sha256=sha256,
    ))
    print(f"{sha256}  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  ({method}; tags {tags})")
    return path


if __name__ == "__main__":
    main()
