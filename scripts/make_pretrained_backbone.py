"""Regenerate the course's pretrained backbone, data/pretrained_backbone/digits_cnn_0to4.safetensors.

    python scripts/make_pretrained_backbone.py            # a few seconds on one CPU core
    python scripts/make_pretrained_backbone.py --out /tmp/backbone.safetensors

Trains a DigitsCNN (width 16, 5 outputs) on the digits 0-4 of the training split that
helpers.data uses (seed 0, 20 % held out), with every batch moved by a random shift of up to one
pixel, then saves its state_dict with safetensors and prints the file's SHA-256. Lesson 07 uses it
as a pretrained backbone for the digits 5-9, which it has never seen.

Deterministic: seeded, one CPU thread, deterministic algorithms. On the same machine and PyTorch
version, running it again writes the same bytes (data/pretrained_backbone/README.md says where
this was checked). Another PyTorch version or CPU may round differently and give other bytes; then
update BACKBONE_SHA256 in helpers/pretrained.py and the README together with the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers.data import make_loaders  # noqa: E402
from helpers.environment import seed_everything  # noqa: E402
from helpers.models import DigitsCNN  # noqa: E402
from helpers.pretrained import BACKBONE_CLASSES, BACKBONE_FILE, BACKBONE_SHA256, random_shift, sha256_of  # noqa: E402

DEFAULTS = dict(width=16, epochs=30, lr=3e-3, batch_size=32, max_shift=1, seed=0)


def train_backbone(
    width: int = 16,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 32,
    max_shift: int = 1,
    seed: int = 0,
    log=print,
) -> tuple[DigitsCNN, dict[str, str]]:
    """Train the backbone; return it (in eval mode) and the metadata to store with it.

    Runs on one CPU thread with deterministic algorithms (and puts both settings back afterwards).
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(width, epochs, lr, batch_size, max_shift, seed, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(width, epochs, lr, batch_size, max_shift, seed, log):
    seed_everything(seed)
    shifts = torch.Generator().manual_seed(seed + 1)
    train_loader, val_loader = make_loaders(batch_size=batch_size, seed=seed, classes=BACKBONE_CLASSES)
    model = DigitsCNN(num_classes=len(BACKBONE_CLASSES), width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, y in train_loader:
            x = random_shift(x, shifts, max_shift)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"epoch {epoch + 1}/{epochs}: training loss {total / len(train_loader.dataset):.4f}")
    model.eval()
    x_val, y_val = val_loader.dataset.tensors
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        shifted = random_shift(x_val, torch.Generator().manual_seed(seed + 2), max_shift)
        accuracy_shifted = (model(shifted).argmax(1) == y_val).float().mean().item()
    log(f"held-out digits 0-4: accuracy {accuracy:.3f}, shifted by up to {max_shift} px {accuracy_shifted:.3f}")
    metadata = {
        "architecture": "helpers.models.DigitsCNN",
        "width": str(width),
        "num_classes": str(len(BACKBONE_CLASSES)),
        "classes": ",".join(map(str, BACKBONE_CLASSES)),
        "data": "UCI handwritten digits (CC BY 4.0), training split of helpers.data.make_loaders(seed=0), digits 0-4",
        "training": f"Adam lr={lr}, batch {batch_size}, {epochs} epochs, random shifts of up to {max_shift} px, seed {seed}",
        "val_accuracy": f"{accuracy:.4f}",
        "val_accuracy_shifted": f"{accuracy_shifted:.4f}",
        "torch": torch.__version__,
        "script": "scripts/make_pretrained_backbone.py",
    }
    return model, metadata


def save_backbone(model: nn.Module, metadata: dict[str, str], path: str | Path) -> str:
    """Write the state_dict with its metadata as safetensors; return the file's SHA-256.

    The metadata goes in as one JSON string with sorted keys, under the single header key
    ``course``: safetensors writes several metadata keys in an arbitrary order, which would make
    the bytes (and the checksum) change from run to run.
    """
    import json

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"course": json.dumps(metadata, sort_keys=True)})
    return sha256_of(path)


def main(argv: list[str] | None = None) -> None:
    """Command line: train, save, print the checksum and compare it with the recorded one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "pretrained_backbone" / BACKBONE_FILE)
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    args = parser.parse_args(argv)
    model, metadata = train_backbone(epochs=args.epochs)
    digest = save_backbone(model, metadata, args.out)
    print(f"{digest}  {args.out}")
    if digest == BACKBONE_SHA256:
        print("Identical to the recorded checksum (helpers/pretrained.py).")
    else:
        print(
            "Differs from the recorded checksum in helpers/pretrained.py. If you meant to replace the "
            "shipped file, update BACKBONE_SHA256 there and the table in data/pretrained_backbone/README.md."
        )


if __name__ == "__main__":
    main()
