"""Reading checkpoint files safely, and saying what is wrong with one (lesson 04, the doctor).

Used by the loaders (:func:`load_checkpoint`, :func:`helpers.state_dicts.load_model_weights`)
and by the checkpoint doctor (``python -m helpers.doctor PATH``). Nothing here runs code from
a file: ``torch.save`` files are read with ``weights_only=True``, safetensors files through
their JSON header, and the pickle inside a file is only *disassembled* to list the classes it
names.

- :func:`file_format` tells what a file is from its first bytes and its name.
- :func:`verify_zip_crc` checks every record of a ``torch.save`` zip archive against its CRC-32
  (``torch.load`` does not, so a flipped byte would load as silently wrong weights).
- :func:`is_complete_checkpoint` is the cheap check (the zip directory only).
- :func:`load_checkpoint` loads a ``torch.save`` file (zip or the legacy format), a
  ``.safetensors`` file, or a sharded Hugging Face checkpoint (its ``*.index.json``), and turns
  every failure into a :class:`CheckpointError` that says what happened and what to do.
- :func:`explain_state_dict_mismatch` says why a state_dict does not fit a model.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "REASONS",
    "CheckpointError",
    "CheckpointWarning",
    "file_format",
    "verify_zip_crc",
    "is_complete_checkpoint",
    "load_checkpoint",
    "read_safetensors_header",
    "explain_state_dict_mismatch",
]

#: Every ``CheckpointError.reason``, with what it means. One vocabulary for all the loaders.
REASONS = {
    "missing": "the file (or a shard it names) does not exist, or a folder was given",
    "empty": "the file has 0 bytes: a save was interrupted before it wrote anything",
    "truncated": "the file ends too early: an interrupted save or an incomplete copy",
    "damaged": "the file is complete but its bytes are wrong (a CRC-32 mismatch, a broken record)",
    "not_a_checkpoint": "the file is something else (text, JSON, NumPy, a plain pickle, ...)",
    "pickled_objects": "the file holds pickled Python objects that weights_only=True refuses",
    "not_a_dict": "the file holds something other than a dict (e.g. a single tensor)",
    "missing_entries": "a required entry (e.g. 'optimizer') is not in the checkpoint",
    "no_state_dict": "no model state_dict could be found inside the checkpoint",
    "mismatch": "the weights do not fit the model or optimizer (keys, shapes or groups differ)",
    "missing_component": "you asked to restore a part (e.g. a scaler) the checkpoint lacks",
    "no_space": "a save failed because the disk is full; the previous checkpoint is intact",
    "error": "anything else",
}

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save(..., _use_new_zipfile_serialization=False) (PyTorch < 1.6): a pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_PREVIOUS = "Load the previous checkpoint instead (CheckpointManager.latest() finds it)."
_INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json", ".pt.index.json")


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved, loaded or applied.

    The message always says what happened and what to do about it. When it wraps an error
    from PyTorch or the operating system, that error is kept as ``__cause__``. ``reason`` is a
    short machine-readable tag, one of :data:`REASONS` (``"missing"``, ``"empty"``,
    ``"truncated"``, ``"damaged"``, ``"not_a_checkpoint"``, ``"pickled_objects"``,
    ``"not_a_dict"``, ``"missing_entries"``, ``"no_state_dict"``, ``"mismatch"``,
    ``"missing_component"``, ``"no_space"`` or ``"error"``).
    """

    #: Reasons that mean "this file is damaged; the previous checkpoint may be fine".
    DAMAGED = frozenset({"empty", "truncated", "damaged"})

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointWarning(UserWarning):
    """Something about a checkpoint deserves attention but did not stop the work.

    For example: a random number generator missing from a checkpoint (the resumed run will
    not repeat the original one exactly), a damaged file skipped by
    :meth:`~helpers.checkpointing.CheckpointManager.latest`, a prefix stripped to make keys fit,
    or a delete that failed during rotation.
    """


# ---------------------------------------------------------------------------------------------
# What is this file?
# ---------------------------------------------------------------------------------------------


def _describe_non_checkpoint(head: bytes) -> str:
    """A guess at what a file that is not a checkpoint is, from its first bytes."""
    if head.startswith(b"\x93NUMPY"):
        return "It looks like a NumPy .npy file: load it with numpy.load."
    if head.startswith(b"\x89HDF"):
        return "It looks like an HDF5 file (e.g. Keras .h5)."
    if head.startswith(b"\x80"):
        return "It looks like a plain pickle file (pickle.dump): load it with pickle, only if you trust it."
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "It looks like a JSON file: read it with json.load."
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "Its first bytes are not those of any format this helper knows."
    return "It looks like a text file."


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length <= size - 8


def file_format(path: str | os.PathLike) -> str:
    """What ``path`` is: ``"zip"`` (``torch.save``), ``"legacy"`` (``torch.save`` before 1.6),
    ``"safetensors"``, ``"index"`` (a sharded checkpoint's ``*.index.json``), ``"folder"``,
    ``"missing"``, ``"empty"``, ``"cut_magic"`` (the first bytes of a checkpoint, then nothing)
    or ``"other"``. Reads at most the first 64 bytes; the extension does not matter except
    for ``*.index.json``.
    """
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty"
    if path.name.endswith(_INDEX_SUFFIXES):
        return "index"
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if len(head) < len(_LEGACY_MAGIC) and (_ZIP_MAGIC.startswith(head) or _LEGACY_MAGIC.startswith(head)):
        return "cut_magic"
    return "other"


# ---------------------------------------------------------------------------------------------
# Integrity
# ---------------------------------------------------------------------------------------------


def verify_zip_crc(path: str | os.PathLike, chunk: int = 1 << 20) -> str | None:
    """Check every record of a ``torch.save`` zip archive against the CRC-32 stored for it.

    Returns ``None`` when every record's bytes match, else where it is wrong, e.g.
    ``"record 'a/data/0' (bytes 598-622) fails its CRC-32 check"``. It reads the whole file once
    (``scripts/measure_crc_cost.py`` measured 0.60-0.71 s per GB, 5 runs on a 256 MB file already
    in the page cache, on the course's shared 2-core machine).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                where = f"record {info.filename!r} (bytes {info.header_offset}-{info.header_offset + info.compress_size + 30 + len(info.filename)})"
                try:
                    with archive.open(info) as record:
                        while record.read(chunk):
                            pass
                except zipfile.BadZipFile as error:
                    if "CRC" in str(error):
                        return f"{where} fails its CRC-32 check: its bytes changed after it was written"
                    return f"{where} is damaged ({error})"
                except (EOFError, OSError, ValueError) as error:
                    return f"{where} is damaged ({error or type(error).__name__})"
    except zipfile.BadZipFile as error:
        return f"not a readable zip archive ({error})"
    return None


def _legacy_problem(path: Path) -> str | None:
    """Where a legacy-format file is cut short, from its five pickles; ``None`` if they are whole.

    The legacy format is five pickles in a row (magic number, protocol, system info, the object,
    the storage keys), then the raw tensor data. ``pickletools.genops`` walks each pickle's
    opcodes without running any of them.
    """
    names = ("the magic number", "the protocol version", "the system info", "the object", "the storage keys")
    with open(path, "rb") as handle:
        for number, name in enumerate(names, 1):
            start = handle.tell()
            try:
                for _ in pickletools.genops(handle):
                    pass
            except Exception:
                return f"truncated inside pickle {number} of 5 ({name}, starting at byte {start})"
    return None


def _zip_problem(path: Path) -> str | None:
    """The zip directory check shared by :func:`is_complete_checkpoint` and the loader."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "truncated: no zip central directory at the end (an interrupted save)"
    except OSError as error:
        return f"unreadable ({error})"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "no data.pkl entry: a zip archive, but not one written by torch.save"
    return None


def is_complete_checkpoint(path: str | os.PathLike) -> str | None:
    """Check cheaply, without loading any tensor, that a ``torch.save`` file was written to the end.

    Returns ``None`` when the file looks complete, otherwise a short reason (``"empty (0
    bytes)"``, ``"truncated: ..."``, ...). It reads only the zip archive's directory, which
    ``torch.save`` writes last, and checks that the pickle entry (``data.pkl``) is listed. It
    cannot see damage in the middle of a file; :func:`load_checkpoint` can (it checks every
    record's CRC-32).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error})"
    if size == 0:
        return "empty (0 bytes): an interrupted save"
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != _ZIP_MAGIC:
                return "not a torch.save zip archive"
    except OSError as error:
        return f"unreadable ({error})"
    return _zip_problem(path)


# ---------------------------------------------------------------------------------------------
# safetensors and sharded checkpoints
# ---------------------------------------------------------------------------------------------


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a ``.safetensors`` file (names, dtypes, shapes, offsets), and a check.

    Returns the header dict; ``"__metadata__"`` (if any) stays in it. Raises
    :class:`CheckpointError` (``"truncated"``) when the file is shorter than its header says.
    Reads only the header: no tensor data, no code.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): a safetensors file starts with an 8-byte header length.", reason="truncated")
        (length,) = struct.unpack("<Q", raw)
        text = handle.read(length)
    if len(text) < length:
        raise CheckpointError(
            f"{path} is truncated ({size:,} bytes): its header alone should be {length:,} bytes. "
            "The file was copied or downloaded only in part: get it again.",
            reason="truncated",
        )
    try:
        header = json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"{path} is damaged: its safetensors header is not valid JSON ({error}).", reason="damaged") from error
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size < 8 + length + end:
        raise CheckpointError(
            f"{path} is truncated ({size:,} bytes; its header says {8 + length + end:,}): the file was "
            "copied or downloaded only in part, or a save was interrupted. Get it again.",
            reason="truncated",
        )
    return header


def _load_safetensors(path: Path, map_location: Any) -> dict:
    from safetensors.torch import load_file

    read_safetensors_header(path)  # a clear error for a truncated file first
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    return dict(load_file(path, device=device))


def _load_index(path: Path, map_location: Any, verify_crc: bool) -> dict:
    """Merge the shards a Hugging Face ``*.index.json`` names into one state_dict."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path} is not a sharded-checkpoint index: it needs a 'weight_map' entry that maps each "
            f"tensor name to its shard file ({error!r}).",
            reason="not_a_checkpoint",
        ) from error
    shards = sorted(set(weight_map.values()))
    absent = [name for name in shards if not (path.parent / name).is_file()]
    if absent:
        raise CheckpointError(
            f"{path} names {len(shards)} shard file(s), and {len(absent)} of them are not in {path.parent}: "
            f"{', '.join(absent[:5])}. Copy every shard next to the index file.",
            reason="missing",
        )
    merged: dict = {}
    for name in shards:
        merged.update(load_checkpoint(path.parent / name, map_location=map_location, verify_crc=verify_crc))
    lost = sorted(set(weight_map) - set(merged))
    if lost:
        raise CheckpointError(
            f"The shards of {path} lack {len(lost)} tensor(s) the index lists, e.g. {lost[0]!r}: "
            "a shard is from another save. Get the whole checkpoint again.",
            reason="damaged",
        )
    return merged


def _index_hint(folder: Path) -> str:
    names = [p.name for p in sorted(folder.iterdir()) if p.name.endswith(_INDEX_SUFFIXES) or p.suffix == ".safetensors"][:1]
    return f" To load the weights in it, pass {folder / names[0]}." if names else ""


# ---------------------------------------------------------------------------------------------
# load_checkpoint
# ---------------------------------------------------------------------------------------------


def _nearby_checkpoints(folder: Path, limit: int = 5) -> str:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix in {".pt", ".pth", ".ckpt", ".bin", ".safetensors"})
    except OSError:
        return ""
    if not names:
        return f" The folder {folder} exists but holds no checkpoint files."
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return f" The folder {folder} holds: {shown}."


def _truncated(path: Path, size: int, where: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is truncated ({size:,} bytes; {where}): a save was interrupted, or the file was "
        f"copied only in part. {_PREVIOUS}",
        reason="truncated",
    )


def load_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    required: Iterable[str] = (),
    *,
    verify_crc: bool = True,
) -> dict:
    """Load a checkpoint file safely: ``torch.save`` (zip or legacy), ``.safetensors``, or a sharded index.

    ``torch.save`` files are loaded with ``torch.load(..., weights_only=True)``: tensors,
    numbers, strings and plain containers load; pickled Python objects (a whole model, a
    custom class) are refused, because unpickling an untrusted file can run arbitrary code.
    A ``.safetensors`` file (any extension) loads with ``safetensors.torch.load_file``; a
    sharded Hugging Face checkpoint loads from its ``model.safetensors.index.json`` or
    ``pytorch_model.bin.index.json`` (every shard, merged into one dict).

    ``map_location`` is passed to ``torch.load`` (default ``"cpu"``: a GPU checkpoint loads on
    a machine without a GPU). ``required`` names entries the dict must have (e.g.
    ``("model", "optimizer")``).

    ``verify_crc=True`` (the default) first checks every record of a zip archive against its
    CRC-32, which ``torch.load`` does not do: a damaged file is an error, never silently wrong
    weights. It reads the file once more: ``scripts/measure_crc_cost.py`` measured it adding
    0.55-0.70 s per GB to a load (5 paired runs, a 256 MB file in the page cache, the course's
    shared 2-core machine; the load itself took 1.0-1.1 s per GB there). Pass
    ``verify_crc=False`` to skip it for very large files you trust.

    Raises :class:`CheckpointError`, with what happened and what to do (``reason`` from
    :data:`REASONS`), when the file is missing, empty, not a checkpoint at all (text, JSON,
    NumPy, ...), truncated (at any byte, in either ``torch.save`` format), damaged (a CRC-32
    mismatch), holds pickled Python objects, is not a dict, or lacks a ``required`` entry.
    """
    path = Path(path)
    required = [required] if isinstance(required, str) else list(required)
    kind = file_format(path)

    if kind == "missing":
        folder = path.parent
        if folder.is_dir():
            where = _nearby_checkpoints(folder)
        else:
            where = f" The folder {folder} does not exist either: check the path and the current folder ({Path.cwd()})."
        raise CheckpointError(f"No checkpoint at {path}: the file does not exist.{where}", reason="missing")
    if kind == "folder":
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file. Pass the path of a .pt file inside it"
            f" (or use CheckpointManager({str(path)!r}).latest()).{_nearby_checkpoints(path)}{_index_hint(path)}"
            " To see what the folder holds, run: python -m helpers.doctor " + str(path),
            reason="missing",
        )
    size = path.stat().st_size
    if kind == "empty":
        raise CheckpointError(
            f"{path} is empty (0 bytes): a save was interrupted before it wrote anything "
            f"(torch.save truncates the file first). The checkpoint that was there is lost. {_PREVIOUS}",
            reason="empty",
        )
    if kind == "cut_magic":
        raise _truncated(path, size, "it stops inside the first bytes of a checkpoint")
    if kind == "index":
        obj = _load_index(path, map_location, verify_crc)
        return _check_dict(path, obj, required)
    if kind == "safetensors":
        return _check_dict(path, _load_safetensors(path, map_location), required)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if kind == "other":
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: files written by torch.save start with the "
            f"zip signature PK\\x03\\x04, and this one starts with {head[:8]!r}. "
            f"{_describe_non_checkpoint(head)} Check that you picked the right file.",
            reason="not_a_checkpoint",
        )
    if kind == "zip":
        problem = _zip_problem(path)
        if problem is not None and problem.startswith("no data.pkl"):
            raise CheckpointError(
                f"{path} is a zip archive, but not one written by torch.save (it has no data.pkl "
                "entry). Check that you picked the right file.",
                reason="not_a_checkpoint",
            )
        if problem is not None:
            raise _truncated(path, size, "no zip central directory at the end")
        if verify_crc:
            damage = verify_zip_crc(path)
            if damage is not None:
                raise CheckpointError(
                    f"{path} is damaged: {damage}. Loading it would give wrong weights without any "
                    f"error (torch.load does not check CRCs). {_PREVIOUS}",
                    reason="damaged",
                )
    else:  # legacy format
        problem = _legacy_problem(path)
        if problem is not None:
            raise _truncated(path, size, problem)

    obj = _torch_load(path, head, size, kind, map_location)
    return _check_dict(path, obj, required)


def _torch_load(path: Path, head: bytes, size: int, kind: str, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with every error it raises turned into a CheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        detail = next(
            (line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line),
            text.splitlines()[0] if text else "",
        ).split(" was not an allowed global")[0]
        if "GLOBAL" not in text and "Unsupported" not in text:
            if kind == "legacy":
                raise _truncated(path, size, "in the pickled data") from error
            raise CheckpointError(
                f"{path} is damaged: PyTorch could not read the pickle inside it ({detail}). {_PREVIOUS}",
                reason="damaged",
            ) from error
        raise CheckpointError(
            f"{path} holds pickled Python objects, not just tensors and plain values (PyTorch "
            f"said: {detail}). That is typical of a whole model saved with torch.save(model, ...). "
            "torch.load(weights_only=True) refuses them on purpose: unpickling can run any code "
            "the file's author chose. Save model.state_dict() instead. If you made the file "
            "yourself and trust it, lesson 02 shows how to allow-list the class with "
            "torch.serialization.add_safe_globals, or to switch weights_only off for trusted files only. "
            f"python -m helpers.doctor {path} lists every class it needs.",
            reason="pickled_objects",
        ) from error
    except (EOFError, struct.error, IndexError) as error:
        raise _truncated(path, size, "it ends in the middle of the tensor data") from error
    except RuntimeError as error:
        text = str(error)
        if "central directory" in text or (kind == "legacy" and ("EOF" in text or "size" in text or "read" in text)):
            raise _truncated(path, size, "it ends before the data it describes") from error
        if "Attempting to deserialize object on" in text:
            raise CheckpointError(
                f"{path} was saved from a GPU that this machine does not have ({text.splitlines()[0]}). "
                "Load it with map_location='cpu' (lesson 04).",
                reason="error",
            ) from error
        if "PytorchStreamReader" in text or "zip archive" in text:
            raise CheckpointError(
                f"{path} is damaged: PyTorch could not read the zip archive inside it "
                f"({text.splitlines()[0]}). {_PREVIOUS}",
                reason="damaged",
            ) from error
        raise
    except OSError as error:
        raise CheckpointError(
            f"{path} could not be read ({error}). If the permissions are fine, the file is damaged "
            f"or cut short. {_PREVIOUS}",
            reason="damaged",
        ) from error


def _check_dict(path: Path, obj: Any, required: list[str]) -> dict:
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        hint = (
            " It holds a single tensor: it was saved with torch.save(tensor, ...)."
            if isinstance(obj, torch.Tensor)
            else ""
        )
        raise CheckpointError(
            f"{path} holds a {kind}, not a dict, so it is not a checkpoint made by this course's "
            f"helpers.{hint} Save a dict such as {{'model': model.state_dict(), ...}}, or load this "
            "file with torch.load(path, weights_only=True) and use the object directly.",
            reason="not_a_dict",
        )
    missing = [name for name in required if name not in obj]
    if missing:
        has = ", ".join(repr(k) for k in list(obj)[:12]) + (", ..." if len(obj) > 12 else "")
        names = ", ".join(repr(m) for m in missing)
        looks_like_state_dict = obj and all(isinstance(v, torch.Tensor) for v in obj.values())
        hint = (
            " It looks like a bare state_dict (only tensors): load it with "
            "model.load_state_dict(...) or load_model_state(model, ...)."
            if looks_like_state_dict
            else " It was not made by training_checkpoint(), or by a different version of the code."
        )
        raise CheckpointError(
            f"{path} has no {names} entr{'y' if len(missing) == 1 else 'ies'}. "
            f"It has: {has}.{hint}",
            reason="missing_entries",
        )
    return obj


# ---------------------------------------------------------------------------------------------
# Does a state_dict fit a model?
# ---------------------------------------------------------------------------------------------


def _shape(value: Any) -> tuple | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _whole_prefix(keys: list[str], target: set[str]) -> str | None:
    """The prefix (up to three dotted parts) that every one of ``keys`` has, and without which they are exactly ``target``."""
    parts = keys[0].split(".")
    for depth in range(1, min(len(parts), 4)):
        prefix = ".".join(parts[:depth]) + "."
        if all(k.startswith(prefix) for k in keys) and {k[len(prefix):] for k in keys} == target:
            return prefix
    return None


def _prefix_hint(model_keys: list[str], file_keys: list[str]) -> str | None:
    """A hint when the two key sets differ only by a prefix such as ``module.`` or ``_orig_mod.``."""
    if not model_keys or not file_keys:
        return None
    prefix = _whole_prefix(file_keys, set(model_keys))
    if prefix is not None:
        return (
            f"Hint: every key in the file starts with {prefix!r} and matches the model without "
            f"it (the file was saved from a wrapped model: DataParallel/DDP add 'module.', "
            f"torch.compile adds '_orig_mod.', a Lightning module its attribute name). Strip it with torch.nn.modules.utils."
            f"consume_prefix_in_state_dict_if_present(state_dict, {prefix!r}) (lesson 04)."
        )
    prefix = _whole_prefix(model_keys, set(file_keys))
    if prefix is not None:
        return (
            f"Hint: every key of the model starts with {prefix!r} and matches the file without "
            f"it (the model is wrapped: DataParallel/DDP add 'module.', torch.compile adds "
            f"'_orig_mod.'). Load into the unwrapped model (model.module or model._orig_mod), "
            f"or save from the unwrapped model (lesson 04)."
        )
    return None


def _listing(keys: list[str], limit: int) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def explain_state_dict_mismatch(
    model_or_state_dict: torch.nn.Module | Mapping[str, Any],
    state_dict: Mapping[str, Any],
    limit: int = 5,
) -> str | None:
    """Say, readably, why ``state_dict`` does not fit a model; ``None`` when it fits exactly.

    ``model_or_state_dict`` is the model (or its ``state_dict()``) you want to load into;
    ``state_dict`` is what the file holds. Returns ``None`` when both have exactly the same keys
    and every tensor has the same shape. Otherwise a message with the counts and the first
    ``limit`` keys of each kind: *missing* (in the model, not in the file), *unexpected* (in the
    file, not in the model) and *shape mismatches* (``key: file shape vs model shape``), plus a
    one-line hint when all keys differ only by a prefix such as ``module.`` or ``_orig_mod.``.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        expected = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        expected = model_or_state_dict
    else:
        raise TypeError(
            "explain_state_dict_mismatch needs a model or its state_dict() first, got "
            f"{type(model_or_state_dict).__name__}."
        )
    if isinstance(state_dict, torch.nn.Module):
        raise TypeError(
            "The second argument must be a state_dict (a dict of tensors), not a model: pass "
            "other_model.state_dict()."
        )
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"The second argument must be a state_dict (a dict), got {type(state_dict).__name__}.")

    model_keys = list(expected.keys())
    file_keys = list(state_dict.keys())
    file_set, model_set = set(file_keys), set(model_keys)
    missing = [k for k in model_keys if k not in file_set]
    unexpected = [k for k in file_keys if k not in model_set]
    shapes = []
    for key in model_keys:
        if key in file_set:
            want, got = _shape(expected[key]), _shape(state_dict[key])
            if want is not None and got is not None and want != got:
                shapes.append((key, got, want))
    if not (missing or unexpected or shapes):
        return None

    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else ('es' if word.endswith('mismatch') else 's')}"

    lines = [
        "The state_dict does not fit the model: "
        + ", ".join(
            [
                count(len(missing), "missing key"),
                count(len(unexpected), "unexpected key"),
                count(len(shapes), "shape mismatch"),
            ]
        )
        + f" (the model has {len(model_keys)} entries, the file {len(file_keys)})."
    ]
    if missing:
        lines.append(f"Missing (in the model, not in the file): {_listing(missing, limit)}")
    if unexpected:
        lines.append(f"Unexpected (in the file, not in the model): {_listing(unexpected, limit)}")
    if shapes:
        lines.append("Shape mismatches (file vs model):")
        for key, got, want in shapes[:limit]:
            lines.append(f"  {key}: file {list(got)} vs model {list(want)}")
        if len(shapes) > limit:
            lines.append(f"  ... ({len(shapes) - limit} more)")
    hint = _prefix_hint(model_keys, file_keys)
    if hint:
        lines.append(hint)
    elif not (model_set & file_set):
        nested = [k for k in ("model", "model_state_dict", "state_dict") if isinstance(state_dict.get(k), Mapping)]
        if nested:
            lines.append(
                f"Hint: this looks like a whole training checkpoint, not a state_dict: pass "
                f"checkpoint[{nested[0]!r}] instead."
            )
        else:
            lines.append("Hint: no key matches at all: is this a checkpoint of a different model?")
    elif shapes and not (missing or unexpected):
        lines.append(
            "Hint: same layers, different sizes: build the model with the settings it was saved "
            "with (e.g. the hidden size or the number of classes in the checkpoint's config)."
        )
    return "\n".join(lines)
