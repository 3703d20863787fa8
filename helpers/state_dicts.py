"""Load a model's weights from whatever checkpoint layout you were handed (lesson 04).

Checkpoints found in the wild differ in three ways, and :func:`load_model_weights` handles all
of them:

- **Where the weights sit.** A bare ``state_dict``, or a training checkpoint that nests it under
  ``"model"``, ``"state_dict"`` or ``"model_state_dict"`` (next to the optimizer, the epoch, ...).
- **A wrapper's prefix on every key.** ``nn.DataParallel`` and ``DistributedDataParallel`` keep
  your model as ``.module``, so a state_dict saved from the wrapper has ``module.`` in front of
  every key; ``torch.compile`` keeps it as ``._orig_mod`` and adds ``_orig_mod.``. Both can be
  there at once, in either order. The prefixes are removed with PyTorch's own
  ``torch.nn.modules.utils.consume_prefix_in_state_dict_if_present``, on a copy: the dict you
  pass in is never changed.
- **A Lightning checkpoint.** PyTorch Lightning keeps the weights under ``"state_dict"`` with
  the LightningModule's attribute name in front of every key (``model.``); the prefix that makes
  the keys fit your model is stripped, with a :class:`~helpers.checkpointing.CheckpointWarning`
  that says so.
- **The file format.** ``torch.save`` files (zip or legacy), ``.safetensors`` files and sharded
  Hugging Face checkpoints (their ``*.index.json``) all load, through
  :func:`~helpers.checkpoint_files.load_checkpoint`, which checks every record's CRC-32.
- **The device the tensors were saved from.** Files are always read with
  ``torch.load(..., weights_only=True)`` and a ``map_location`` (``"cpu"`` by default), so a file
  saved on a GPU loads on a machine without one.

Loading is strict: every key and shape must match. When they don't, a
:class:`~helpers.checkpointing.CheckpointError` with ``reason="mismatch"`` lists the first
missing, unexpected and mis-shaped keys, says what to do, and the model keeps the values it
had. The reasons are the same for every loader (``helpers.checkpoint_files.REASONS``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from helpers.checkpoint_files import CheckpointError, CheckpointWarning, explain_state_dict_mismatch, load_checkpoint

__all__ = [
    "WRAPPER_PREFIXES",
    "NESTED_KEYS",
    "extract_state_dict",
    "strip_wrapper_prefixes",
    "unwrap_model",
    "load_model_weights",
    "fitting_prefix",
    "state_dict_digest",
]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes wrappers add to every key: ``module.`` (DataParallel, DDP), ``_orig_mod.`` (torch.compile)."""

NESTED_KEYS = ("model", "state_dict", "model_state_dict")
"""Entries of a training checkpoint that commonly hold the model's state_dict, tried in this order."""


def _copy_state_dict(state_dict: Mapping[str, Any]) -> OrderedDict:
    """A new OrderedDict with the same tensors, and its own copy of ``_metadata`` if there is one."""
    copied = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        copied._metadata = OrderedDict((key, dict(value)) for key, value in metadata.items())
    return copied


def _looks_like_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    if not all(isinstance(key, str) for key in obj):
        return False
    # Values are tensors, except "<name>._extra_state" entries (a module's get_extra_state()).
    return all(isinstance(value, torch.Tensor) or key.endswith("_extra_state") for key, value in obj.items())


def _describe(obj: Any, limit: int = 8) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(key) for key in list(obj)[:limit]]
        more = f", ... ({len(obj) - limit} more)" if len(obj) > limit else ""
        return f"a {type(obj).__name__} with keys {', '.join(keys)}{more}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def _dict_entries(obj: Any) -> str:
    """", e.g. checkpoint['weights']" naming the entries of ``obj`` that hold dicts, if any."""
    if not isinstance(obj, Mapping):
        return ""
    names = [key for key, value in obj.items() if isinstance(value, Mapping)]
    return f", e.g. checkpoint[{names[0]!r}]" if names else ""


def strip_wrapper_prefixes(
    state_dict: Mapping[str, Any], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> OrderedDict:
    """A copy of ``state_dict`` without the wrapper prefixes that *every* key starts with.

    Strips ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile), repeatedly and in
    any order, so ``module._orig_mod.`` and ``_orig_mod.module.`` both go. A prefix is removed only
    when all keys have it, so a model whose own layer happens to be called ``module`` next to
    other layers keeps its keys. Uses ``consume_prefix_in_state_dict_if_present`` (which edits
    in place) on a copy: the dict you pass is left as it was.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"strip_wrapper_prefixes needs a state_dict (a dict), got {type(state_dict).__name__}.")
    stripped = _copy_state_dict(state_dict)
    while (prefix := _common_wrapper_prefix(stripped, prefixes)) is not None:
        consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def _common_wrapper_prefix(state_dict: Mapping[str, Any], prefixes: tuple[str, ...]) -> str | None:
    """The first of ``prefixes`` that every key of ``state_dict`` starts with, if any."""
    if not state_dict:
        return None
    return next((p for p in prefixes if all(key.startswith(p) for key in state_dict)), None)


def extract_state_dict(checkpoint: Any, *, strip_prefixes: bool = True) -> OrderedDict:
    """The model's state_dict inside ``checkpoint``, as a new dict (``checkpoint`` is not changed).

    ``checkpoint`` is what ``torch.load`` returned: a bare state_dict, or a dict that holds one
    under ``"model"``, ``"state_dict"`` or ``"model_state_dict"`` (searched in that order, and
    again inside it, so ``{"model": {"state_dict": ...}}`` works too). With ``strip_prefixes``
    (the default) the wrapper prefixes ``module.`` and ``_orig_mod.`` are removed when every key
    has them (see :func:`strip_wrapper_prefixes`).

    Raises :class:`~helpers.checkpointing.CheckpointError` when no state_dict can be found, and
    says what the checkpoint holds instead.
    """
    if isinstance(checkpoint, nn.Module):
        raise CheckpointError(
            f"extract_state_dict got a model ({type(checkpoint).__name__}), not a checkpoint. "
            "Pass model.state_dict(), or the dict that torch.load(path, weights_only=True) returned.",
            reason="no_state_dict",
        )
    found, seen = checkpoint, 0
    while not _looks_like_state_dict(found):
        inner = None
        if isinstance(found, Mapping):
            inner = next((found[key] for key in NESTED_KEYS if isinstance(found.get(key), Mapping)), None)
        if inner is None or seen >= 3:
            raise CheckpointError(
                f"Found no model state_dict in this checkpoint: it is {_describe(found)}. "
                "A state_dict maps parameter names (such as 'hidden.weight') to tensors; training "
                f"checkpoints usually keep it under one of {', '.join(map(repr, NESTED_KEYS))}. "
                f"Look at the checkpoint's keys and pass the entry that holds the weights{_dict_entries(found)}.",
                reason="no_state_dict",
            )
        found, seen = inner, seen + 1
    return strip_wrapper_prefixes(found) if strip_prefixes else _copy_state_dict(found)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside any DataParallel, DistributedDataParallel or torch.compile wrappers.

    The wrapped model and the wrapper share their parameters, so loading weights into the
    unwrapped model loads them into the wrapper too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unwrap_model needs a torch.nn.Module, got {type(model).__name__}.")
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def fitting_prefix(keys: Iterable[str], expected: Iterable[str]) -> str | None:
    """The prefix (such as Lightning's ``"model."``) whose keys, without it, are exactly ``expected``.

    Tries the first one, two and three dotted parts of every key. Keys without the prefix (e.g.
    a Lightning module's loss function or a teacher model) are ignored. ``None`` when no prefix
    makes the keys fit.
    """
    keys, expected = list(keys), set(expected)
    candidates = []
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(len(parts), 4)):
            prefix = ".".join(parts[:depth]) + "."
            if prefix not in candidates:
                candidates.append(prefix)
    for prefix in candidates:
        if {k[len(prefix):] for k in keys if k.startswith(prefix)} == expected:
            return prefix
    return None


def load_model_weights(
    model: nn.Module, source: Any, map_location: Any = "cpu", *, verify_crc: bool = True
) -> nn.Module:
    """Load the weights in ``source`` into ``model`` strictly, whatever the checkpoint's layout; returns ``model``.

    ``source`` is a file path (``torch.save``, ``.safetensors`` or a sharded ``*.index.json``,
    read through :func:`~helpers.checkpoint_files.load_checkpoint` with ``weights_only=True``,
    which explains missing, empty, truncated or damaged files; ``verify_crc`` is passed on) or an object you already loaded (``map_location`` is then
    not used: ``load_state_dict`` copies each tensor onto the device of the model's own).

    Handles a bare state_dict or one nested under ``"model"`` / ``"state_dict"`` /
    ``"model_state_dict"``; keys prefixed with ``module.`` (DataParallel / DDP) and/or
    ``_orig_mod.`` (torch.compile); a Lightning checkpoint's attribute prefix (``model.``;
    stripped only when that makes the keys fit, with a ``CheckpointWarning`` saying so); and a
    ``model`` that is itself wrapped in any of those. The dict you pass is never changed.

    Raises :class:`~helpers.checkpointing.CheckpointError` (``reason="mismatch"``) when the keys
    or shapes still don't match: the message lists the first missing, unexpected and mis-shaped keys and what to do,
    and nothing is loaded, so the model keeps its values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"load_model_weights needs the model to load into first, got {type(model).__name__}. "
            "Call it as load_model_weights(model, path_or_checkpoint)."
        )
    if isinstance(source, (str, os.PathLike)):
        checkpoint = load_checkpoint(source, map_location=map_location, verify_crc=verify_crc)
        origin = f"the file {os.fspath(source)}"
    else:
        checkpoint = source
        origin = "the checkpoint you passed"

    target = unwrap_model(model)
    expected = target.state_dict()
    as_saved = extract_state_dict(checkpoint, strip_prefixes=False)
    state_dict = as_saved
    # Strip one wrapper prefix at a time, and stop as soon as the keys fit the model (a model
    # whose own keys all start with "module." keeps them).
    while set(state_dict) != set(expected):
        prefix = _common_wrapper_prefix(state_dict, WRAPPER_PREFIXES)
        if prefix is None:
            break
        state_dict = _copy_state_dict(state_dict)
        consume_prefix_in_state_dict_if_present(state_dict, prefix)
    if set(state_dict) != set(expected):
        prefix = fitting_prefix(state_dict, expected)
        if prefix is not None:
            others = [k for k in state_dict if not k.startswith(prefix)]
            state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
            ignored = f"; ignored {len(others)} other entr{'y' if len(others) == 1 else 'ies'} ({', '.join(others[:3])})" if others else ""
            warnings.warn(
                f"Loaded the weights under the prefix {prefix!r} from {origin}: every key there, without "
                f"the prefix, fits {type(target).__name__} (a PyTorch Lightning checkpoint puts the "
                f"LightningModule's attribute name in front of each key){ignored}.",
                CheckpointWarning,
                stacklevel=2,
            )

    problem = explain_state_dict_mismatch(expected, state_dict)
    if problem:
        stripped = ""
        if set(state_dict) != set(as_saved):
            stripped = " (after removing the wrapper prefix from its keys)"
        raise CheckpointError(
            f"Could not load the weights from {origin} into {type(target).__name__}{stripped}.\n"
            f"{problem}\n"
            "Nothing was loaded: the model still has the values it had before. Build the model "
            "with the same class and settings as the one that was saved, or rename the keys "
            "that differ before loading (lesson 01).",
            reason="mismatch",
        )
    target.load_state_dict(state_dict, strict=True)
    return model


def state_dict_digest(state_dict: Mapping[str, Any]) -> str:
    """A SHA-256 hex digest of a state_dict's names, dtypes, shapes and values (on any device).

    Two state_dicts have the same digest exactly when they hold the same keys with bit-identical
    tensors, so processes (e.g. the ranks of a DDP run) can compare their weights by exchanging
    one short string. Key order does not matter.
    """
    if isinstance(state_dict, nn.Module):
        raise TypeError("state_dict_digest needs a state_dict: pass model.state_dict(), not the model.")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict_digest needs a state_dict (a dict), got {type(state_dict).__name__}.")
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode("utf-8") + b"\0")
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
