"""The checkpoint doctor: what is in a checkpoint file, is it whole, and how do I load it?

Run it on a file or folder you were given::

    python -m helpers.doctor PATH [--model MODULE:FACTORY] [--json]

It reads ``torch.save`` files (zip or legacy format, any extension: ``.pt``, ``.pth``,
``.bin``, ``.ckpt``, ``.tar``), ``.safetensors`` files, sharded Hugging Face checkpoints
(``*.safetensors.index.json`` or ``pytorch_model.bin.index.json``), ``torch.distributed.checkpoint``
folders (``.metadata``) and accelerate ``save_state`` folders. It never runs code from the file:
tensors are read with ``weights_only=True``, safetensors through the JSON header, and the
classes a pickle needs are listed from its opcodes
(``torch.serialization.get_unsafe_globals_in_checkpoint``).

It reports the format; integrity (every zip record's CRC-32; where a file is cut short); the
layout (a bare state_dict, nested under which key, or a training checkpoint and which parts
it holds, and what an exact resume would still lack); where it came from when the keys tell
(``module.``, ``_orig_mod.``, Lightning, Hugging Face); tensor and parameter counts, bytes by
dtype and the devices it was saved from; and the few lines of code that load it into a plain
model. With ``--model MODULE:FACTORY`` (e.g. ``helpers.models:DigitsMLP``) it builds the model,
runs those lines, and reports missing / unexpected / mis-shaped keys with the fix.

Exit codes (also in ``--json`` as ``exit_code``):

- 0 ``loads``: the file is whole and loads with the printed code (into ``--model``, if given);
- 1 ``needs_changes``: whole, but it needs something first (allow-listing pickled classes, or
  the model does not fit the keys as they are);
- 2: a usage error (a wrong argument, a ``--model`` that can't be built);
- 3 ``damaged``: empty, truncated, or a CRC-32 mismatch;
- 4 ``not_a_checkpoint``: missing, or not a checkpoint format at all.

Each finding links to the entry of ``TROUBLESHOOTING.md`` that explains it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import pickletools
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from helpers import checkpoint_files as cf

__all__ = ["EXIT_CODES", "diagnose", "format_report", "main"]

EXIT_CODES = {"loads": 0, "needs_changes": 1, "damaged": 3, "not_a_checkpoint": 4}
TROUBLESHOOTING = "TROUBLESHOOTING.md"

# Entries of a training checkpoint, by the names common libraries use.
_PARTS = {
    "model": ("model", "state_dict", "model_state_dict", "module", "net"),
    "optimizer": ("optimizer", "optimizer_state_dict", "optimizer_states", "optim"),
    "scheduler": ("scheduler", "lr_scheduler", "lr_schedulers", "scheduler_state_dict"),
    "scaler": ("scaler", "grad_scaler", "amp_scaler", "scaler_state_dict", "amp"),
    "rng": ("rng_state", "rng_states", "rng_per_rank", "random_state", "rng"),
    "data position": ("data_generator_state", "sampler", "dataloader", "loops", "data_state"),
    "epoch/step": ("epoch", "step", "global_step", "iteration"),
}
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _link(anchor: str) -> str:
    return f"{TROUBLESHOOTING}#{anchor}"


# ---------------------------------------------------------------------------------------------
# Reading without running code
# ---------------------------------------------------------------------------------------------


def _legacy_globals(path: Path) -> list[str]:
    """The ``module.name`` globals the legacy format's object pickle (the 4th) names."""
    found: list[str] = []
    with open(path, "rb") as handle:
        for number in range(4):
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(handle):
                if number < 3:
                    continue
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    try:
        allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    except Exception:  # a private helper: if it moves, list everything that is not torch's
        allowed = set()
    return sorted({name for name in found if name not in allowed and not name.startswith("torch.") and name != "collections.OrderedDict"})


class _MetadataUnpickler(pickle.Unpickler):
    """Reads a ``torch.distributed.checkpoint`` ``.metadata`` file, allowing only DCP's own classes."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint") or module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)) or value is torch.Size:
                return value
        if (module, name) == ("torch.serialization", "_get_layout"):  # looks up torch.strided by name
            return super().find_class(module, name)
        if module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            return super().find_class(module, name)  # the checkpoint_id it was saved to
        if module == "builtins" and name in ("set", "frozenset", "slice"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a class of torch.distributed.checkpoint's metadata")


def _read_dcp_metadata(folder: Path) -> Any:
    with open(folder / ".metadata", "rb") as handle:
        return _MetadataUnpickler(handle).load()


# ---------------------------------------------------------------------------------------------
# What the tensors and the keys say
# ---------------------------------------------------------------------------------------------


def _summary(tensors: Mapping[str, tuple[str, tuple, int]]) -> dict:
    """Counts from ``{name: (dtype, shape, nbytes)}``."""
    by_dtype: Counter = Counter()
    parameters = elements = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        count = 1
        for size in shape:
            count *= int(size)
        by_dtype[dtype] += nbytes
        elements += count
        floating = "float" in dtype or "bf16" in dtype.lower() or dtype.startswith(("F", "BF"))
        if floating and not name.endswith(_BUFFER_SUFFIXES):
            parameters += count
    return {
        "tensor_count": len(tensors),
        "elements": elements,
        "parameters": parameters,
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "bytes": sum(by_dtype.values()),
    }


def _flat_tensors(obj: Any, prefix: str = "") -> dict:
    out: dict = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = (str(obj.dtype).replace("torch.", ""), tuple(obj.shape), obj.element_size() * obj.nelement())
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(_flat_tensors(value, f"{prefix}{key}."))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            out.update(_flat_tensors(value, f"{prefix}{index}."))
    return out


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())
    )


def _find_weights(obj: Any) -> tuple[list[str], Mapping | None]:
    """The keys leading to the model state_dict inside ``obj`` (``[]`` for a bare one)."""
    found, path = obj, []
    for _ in range(4):
        if _is_state_dict(found):
            return path, found
        if not isinstance(found, Mapping):
            break
        key = next((k for k in ("model", "state_dict", "model_state_dict", "module", "net") if isinstance(found.get(k), Mapping)), None)
        if key is None:
            break
        found, path = found[key], path + [key]
    return path, None


def _origin(keys: list[str], obj: Any = None) -> tuple[list[str], str | None]:
    """Where the keys say the file came from, and the prefix to strip (if every key has one)."""
    notes, prefix = [], None
    if keys and all(k.startswith("module.") for k in keys):
        notes.append("DataParallel or DistributedDataParallel: every key starts with 'module.'")
        prefix = "module."
    if keys and all(k.startswith("_orig_mod.") for k in keys):
        notes.append("torch.compile: every key starts with '_orig_mod.'")
        prefix = "_orig_mod."
    if keys and all(k.startswith(("module._orig_mod.", "_orig_mod.module.")) for k in keys):
        prefix = keys[0].split(".")[0] + "." + keys[0].split(".")[1] + "."
    if isinstance(obj, Mapping) and ("pytorch-lightning_version" in obj or {"state_dict", "optimizer_states", "loops"} <= set(obj)):
        first = {k.split(".")[0] for k in keys}
        attribute = next(iter(first)) + "." if len(first) == 1 else None
        notes.append(
            "PyTorch Lightning: the weights are under 'state_dict'"
            + (f", with the LightningModule's attribute name {attribute!r} in front of every key" if attribute else "")
        )
        prefix = attribute or prefix
    return notes, prefix


# ---------------------------------------------------------------------------------------------
# The code that loads it
# ---------------------------------------------------------------------------------------------


def _model_lines(model_spec: str | None) -> list[str]:
    if model_spec is None:
        return ["model = MyModel()  # build your model here, with the settings it was saved with"]
    module, factory = model_spec.split(":", 1)
    return [f"from {module} import {factory}", f"model = {factory}()"]


def _state_dict_lines(report: dict) -> list[str]:
    """Lines that leave the plain model's state_dict in ``state_dict`` (``None``: no recipe)."""
    path = report["path"]
    fmt = report["format"]
    if fmt == "safetensors":
        return ["from safetensors.torch import load_file", f"state_dict = load_file({path!r})"]
    if fmt in ("sharded safetensors", "sharded torch.save"):
        loader = (
            ["from safetensors.torch import load_file"] if fmt == "sharded safetensors" else []
        )
        read = "load_file(index.parent / shard)" if fmt == "sharded safetensors" else (
            'torch.load(index.parent / shard, map_location="cpu", weights_only=True)'
        )
        return loader + [
            "import json",
            "from pathlib import Path",
            f"index = Path({path!r})",
            "state_dict = {}",
            'for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):',
            f"    state_dict.update({read})",
        ] + _prefix_lines(report)
    if fmt == "accelerate save_state folder":
        weights = report["layout"]["weights_file"]
        inner = dict(report, path=weights, format="safetensors" if weights.endswith(".safetensors") else "torch.save (zip)")
        inner["layout"] = {"kind": "state_dict", "key_path": []}
        return _state_dict_lines(inner)
    if fmt == "torch.distributed.checkpoint folder":
        top = report["layout"].get("key_path") or []
        return [
            "import torch.distributed.checkpoint as dcp",
            (f"state = {{{top[0]!r}: model.state_dict()}}" if top else "state = model.state_dict()"),
            f"dcp.load(state, checkpoint_id={path!r})  # one process: no process group needed",
            (f"state_dict = state[{top[0]!r}]" if top else "state_dict = state"),
        ]
    if fmt.startswith("torch.save"):
        lines = [f'checkpoint = torch.load({path!r}, map_location="cpu", weights_only=True)']
        key_path = report["layout"].get("key_path") or []
        lines.append("state_dict = checkpoint" + "".join(f"[{k!r}]" for k in key_path))
        return lines + _prefix_lines(report)
    return []


def _prefix_lines(report: dict) -> list[str]:
    prefix = report.get("strip_prefix")
    if not prefix:
        return []
    if prefix in ("module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."):
        return [
            "from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present",
            f"consume_prefix_in_state_dict_if_present(state_dict, {prefix!r})",
        ]
    return [f"state_dict = {{k[len({prefix!r}):]: v for k, v in state_dict.items() if k.startswith({prefix!r})}}"]


def loading_code(report: dict, model_spec: str | None = None) -> str | None:
    """The lines that load the file of ``report`` into a plain model (``None`` when none can)."""
    body = _state_dict_lines(report)
    if not body:
        return None
    return "\n".join(["import torch", *_model_lines(model_spec), *body, "model.load_state_dict(state_dict)"])


# ---------------------------------------------------------------------------------------------
# Diagnosis
# ---------------------------------------------------------------------------------------------


def _new_report(path: Path) -> dict:
    return {
        "path": str(path),
        "format": None,
        "integrity": {"ok": None, "checked": "", "problem": None},
        "layout": {},
        "origin": [],
        "strip_prefix": None,
        "tensors": None,
        "devices": [],
        "pickled_classes": [],
        "findings": [],
        "code": None,
        "model_check": None,
        "verdict": None,
        "exit_code": None,
    }


def _finding(report: dict, text: str, anchor: str | None = None) -> None:
    report["findings"].append({"text": text, "link": _link(anchor) if anchor else None})


def _layout(report: dict, obj: Any) -> None:
    """Fill in layout, origin and prefix from a loaded object."""
    key_path, weights = _find_weights(obj)
    layout: dict = {"key_path": key_path}
    if weights is None:
        layout["kind"] = "tensor" if isinstance(obj, torch.Tensor) else "no state_dict found"
        if isinstance(obj, Mapping):
            layout["top_level_keys"] = [str(k) for k in list(obj)[:20]]
        report["layout"] = layout
        return
    if not key_path:
        layout["kind"] = "state_dict"
    else:
        parts = {
            part: [name for name in names if name in obj]
            for part, names in _PARTS.items()
        }
        present = {part: names for part, names in parts.items() if names}
        layout["kind"] = "training checkpoint" if len(present) > 1 else "nested state_dict"
        layout["holds"] = present
        if layout["kind"] == "training checkpoint":
            lacks = [part for part in ("optimizer", "scheduler", "scaler", "rng", "data position", "epoch/step") if part not in present]
            layout["exact_resume_lacks"] = lacks
    report["layout"] = layout
    keys = list(weights)
    notes, prefix = _origin(keys, obj)
    report["origin"] += notes
    report["strip_prefix"] = prefix
    report["tensors"] = _summary(_flat_tensors(weights))


def _diagnose_torch_file(report: dict, path: Path, kind: str) -> None:
    report["format"] = "torch.save (zip)" if kind == "zip" else "torch.save (legacy format, before PyTorch 1.6)"
    size = path.stat().st_size
    if kind == "zip":
        problem = cf._zip_problem(path)
        if problem and problem.startswith("no data.pkl"):
            report["format"] = "zip archive (not torch.save)"
            _finding(report, f"{path.name} is a zip archive without data.pkl: not written by torch.save.")
            report["verdict"] = "not_a_checkpoint"
            return
        report["integrity"]["checked"] = "zip directory and the CRC-32 of every record"
        problem = problem or cf.verify_zip_crc(path)
    else:
        report["integrity"]["checked"] = "the five pickles of the legacy format, then a full load"
        problem = cf._legacy_problem(path)
    if problem:
        report["integrity"].update(ok=False, problem=problem)
        anchor = "pytorchstreamreader-failed-finding-central-directory" if "central directory" in problem or "truncated" in problem else None
        _finding(report, f"Damaged ({size:,} bytes): {problem}. Use an earlier copy of this checkpoint.", anchor)
        report["verdict"] = "damaged"
        return

    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if kind == "zip" else _legacy_globals(path)
    report["pickled_classes"] = sorted(unsafe)
    if unsafe:
        report["integrity"]["ok"] = True
        whole = any("Module" in name or name.startswith("__main__.") for name in unsafe) or not any(
            name.startswith(("numpy", "argparse")) for name in unsafe
        )
        if any(name.startswith("numpy") for name in unsafe):
            anchor = "unsupported-global-numpy-arrays"
        elif any(name.startswith("argparse") for name in unsafe):
            anchor = "unsupported-global-argparsenamespace"
        else:
            anchor = "weights-only-load-failed-a-whole-model"
        _finding(
            report,
            "It holds pickled Python objects that torch.load(weights_only=True) refuses: "
            + ", ".join(unsafe[:8])
            + (". A whole model saved with torch.save(model): load it once, in the code that defined "
               "the class, only if you trust the file, and save model.state_dict() instead." if whole else
               ". Allow-list them (if you trust the file) with torch.serialization.safe_globals([...])."),
            anchor,
        )
        report["layout"] = {"kind": "pickled objects (e.g. a whole model)" if whole else "needs allow-listed classes"}
        report["verdict"] = "needs_changes"
        return

    devices: list[str] = []

    def record(storage, location):
        devices.append(location)
        return storage

    try:
        obj = torch.load(path, map_location=record, weights_only=True)
    except Exception:
        try:  # the loader's own explanation
            cf.load_checkpoint(path)
        except cf.CheckpointError as error:
            report["integrity"].update(ok=error.reason not in cf.CheckpointError.DAMAGED, problem=str(error))
            report["verdict"] = "damaged" if error.reason in cf.CheckpointError.DAMAGED else "needs_changes"
            _finding(report, str(error))
            return
        raise
    report["integrity"]["ok"] = True
    report["devices"] = sorted(set(devices))
    if any(d != "cpu" for d in devices):
        _finding(
            report,
            f"Saved from {', '.join(sorted(set(devices)))}: load it with map_location='cpu' on a machine without that device.",
            "attempting-to-deserialize-object-on-a-cuda-device",
        )
    _layout(report, obj)


def _diagnose_safetensors(report: dict, path: Path) -> None:
    report["format"] = "safetensors"
    report["integrity"]["checked"] = "the header, and that the file is as long as it says (safetensors has no CRC)"
    try:
        header = cf.read_safetensors_header(path)
    except cf.CheckpointError as error:
        report["integrity"].update(ok=False, problem=str(error))
        report["verdict"] = "damaged"
        _finding(report, str(error))
        return
    report["integrity"]["ok"] = True
    meta = header.pop("__metadata__", None) or {}
    tensors = {k: (v["dtype"], tuple(v["shape"]), v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()}
    report["tensors"] = _summary(tensors)
    report["layout"] = {"kind": "state_dict", "key_path": []}
    if meta.get("format") == "pt":
        report["origin"].append("Hugging Face style metadata ({'format': 'pt'}), e.g. save_pretrained")
    notes, prefix = _origin(list(tensors))
    report["origin"] += notes
    report["strip_prefix"] = prefix
    report["devices"] = ["cpu (safetensors files do not record a device)"]


def _diagnose_index(report: dict, path: Path) -> None:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        report["format"] = "JSON (not a sharded-checkpoint index)"
        _finding(report, f"{path.name} has no 'weight_map': not a sharded-checkpoint index ({error!r}).")
        report["verdict"] = "not_a_checkpoint"
        return
    shards = sorted(set(weight_map.values()))
    safetensors = all(name.endswith(".safetensors") for name in shards)
    report["format"] = "sharded safetensors" if safetensors else "sharded torch.save"
    report["origin"].append("Hugging Face sharded checkpoint (save_pretrained with max_shard_size)")
    report["integrity"]["checked"] = f"each of the {len(shards)} shard(s)"
    tensors: dict = {}
    for name in shards:
        shard = path.parent / name
        sub = diagnose(shard)
        if sub["verdict"] != "loads":
            report["integrity"].update(ok=False, problem=f"shard {name}: " + "; ".join(f["text"] for f in sub["findings"]))
            report["verdict"] = "damaged" if sub["verdict"] in ("damaged", "not_a_checkpoint") else sub["verdict"]
            _finding(report, f"Shard {name}: " + ("missing next to the index." if not shard.exists() else report["integrity"]["problem"]))
            return
        if safetensors:
            header = cf.read_safetensors_header(shard)
            header.pop("__metadata__", None)
            tensors.update({k: (v["dtype"], tuple(v["shape"]), v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()})
        else:
            tensors.update(_flat_tensors(cf.load_checkpoint(shard)))
    lost = sorted(set(weight_map) - set(tensors))
    if lost:
        report["integrity"].update(ok=False, problem=f"{len(lost)} tensor(s) of the index are in no shard, e.g. {lost[0]!r}")
        report["verdict"] = "damaged"
        _finding(report, report["integrity"]["problem"])
        return
    report["integrity"]["ok"] = True
    report["tensors"] = _summary(tensors)
    report["layout"] = {"kind": "state_dict", "key_path": [], "shards": shards}
    notes, prefix = _origin(list(tensors))
    report["origin"] += notes
    report["strip_prefix"] = prefix


def _diagnose_dcp(report: dict, folder: Path) -> None:
    report["format"] = "torch.distributed.checkpoint folder"
    report["integrity"]["checked"] = ".metadata (written last: the commit marker) and the shard files it names"
    try:
        metadata = _read_dcp_metadata(folder)
    except Exception as error:
        report["integrity"].update(ok=False, problem=f".metadata could not be read ({error})")
        report["verdict"] = "damaged"
        _finding(report, f"{folder}/.metadata is damaged or from an incompatible PyTorch ({error}).")
        return
    tensors, other = {}, []
    for key, item in metadata.state_dict_metadata.items():
        props = getattr(item, "properties", None)
        size = getattr(item, "size", None)
        if props is not None and size is not None:
            count = 1
            for s in size:
                count *= int(s)
            dtype = str(props.dtype).replace("torch.", "")
            tensors[key] = (dtype, tuple(size), count * torch.empty((), dtype=props.dtype).element_size())
        else:
            other.append(key)
    files = {getattr(info, "relative_path", None) for info in (getattr(metadata, "storage_data", None) or {}).values()}
    absent = sorted(name for name in files if name and not (folder / name).is_file())
    if absent:
        report["integrity"].update(ok=False, problem=f"shard file(s) missing: {', '.join(absent[:5])}")
        report["verdict"] = "damaged"
        _finding(report, f"The .metadata names {len(files)} shard file(s) and {len(absent)} are missing: {', '.join(absent[:5])}.")
        return
    report["integrity"]["ok"] = True
    tops = sorted({k.split(".")[0] for k in tensors})
    model_top = next((t for t in ("model", "state_dict") if t in tops), None)
    key_path = [model_top] if model_top else []
    weights = {k[len(model_top) + 1:] if model_top else k: v for k, v in tensors.items() if not model_top or k.startswith(model_top + ".")}
    report["layout"] = {"kind": "training checkpoint" if len(tops) > 1 and model_top else "state_dict", "key_path": key_path, "top_level_keys": tops}
    report["tensors"] = _summary(weights)
    report["weight_keys"] = sorted(weights)


def _diagnose_accelerate(report: dict, folder: Path, names: set) -> None:
    report["format"] = "accelerate save_state folder"
    report["origin"].append("Hugging Face accelerate Accelerator.save_state()")
    weights = next((n for n in ("model.safetensors", "pytorch_model.bin") if n in names), None)
    holds = {
        "model": [weights] if weights else [],
        "optimizer": sorted(n for n in names if n.startswith("optimizer")),
        "scheduler": sorted(n for n in names if n.startswith("scheduler")),
        "scaler": sorted(n for n in names if n == "scaler.pt"),
        "rng": sorted(n for n in names if n.startswith("random_states")),
        "data position": sorted(n for n in names if n.startswith(("sampler", "dl_state_dict"))),
    }
    report["layout"] = {
        "kind": "training checkpoint",
        "holds": {k: v for k, v in holds.items() if v},
        "exact_resume_lacks": [k for k, v in holds.items() if not v],
        "weights_file": str(folder / weights) if weights else None,
    }
    if weights is None:
        report["integrity"] = {"ok": False, "checked": "the folder's files", "problem": "no model.safetensors or pytorch_model.bin"}
        report["verdict"] = "damaged"
        _finding(report, "The folder has no model weights (model.safetensors or pytorch_model.bin).")
        return
    for name in sorted(names):
        if name.endswith((".bin", ".pt", ".pkl", ".safetensors")):
            sub = diagnose(folder / name)
            if sub["verdict"] == "damaged":
                report["integrity"] = {"ok": False, "checked": "every file in the folder", "problem": f"{name}: {sub['integrity']['problem']}"}
                report["verdict"] = "damaged"
                _finding(report, f"{name} is damaged: {sub['integrity']['problem']}")
                return
            if name.startswith("random_states") and sub["pickled_classes"]:
                _finding(
                    report,
                    f"{name} holds NumPy's RNG state as an ndarray ({', '.join(sub['pickled_classes'][:3])}): "
                    "weights_only=True refuses it unless you allow-list those globals.",
                    "unsupported-global-numpy-arrays",
                )
            if name == weights:
                report["tensors"] = sub["tensors"]
                report["devices"] = sub["devices"]
    report["integrity"].update(ok=True, checked="every file in the folder")


def _diagnose_folder(report: dict, folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    if ".metadata" in names:
        return _diagnose_dcp(report, folder)
    if any(n.startswith("random_states_") for n in names) or ({"optimizer.bin"} & names and ({"model.safetensors", "pytorch_model.bin"} & names)):
        return _diagnose_accelerate(report, folder, names)
    index = next((n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if n in names), None)
    single = next((n for n in ("model.safetensors", "pytorch_model.bin") if n in names), None)
    if index or single:
        inner = diagnose(folder / (index or single))
        report.update({k: v for k, v in inner.items() if k not in ("findings",)})
        report["findings"] = inner["findings"]
        if "config.json" in names:
            report["origin"].append("Hugging Face model folder (config.json next to the weights)")
        return None
    if any(n.endswith(".distcp") for n in names):
        report["format"] = "torch.distributed.checkpoint folder"
        report["integrity"] = {"ok": False, "checked": ".metadata", "problem": "no .metadata: the save did not finish"}
        report["verdict"] = "damaged"
        _finding(report, "Shard files (.distcp) but no .metadata: the save did not finish (DCP writes .metadata last). Use an earlier checkpoint.")
        return None
    report["format"] = "folder"
    report["verdict"] = "not_a_checkpoint"
    _finding(report, f"{folder} is a folder with no checkpoint format this tool knows. It holds: {', '.join(sorted(names)[:10]) or 'nothing'}.")
    return None


def diagnose(path: str | os.PathLike, model_spec: str | None = None) -> dict:
    """Examine the checkpoint at ``path`` (a file or folder) and return the report as a dict.

    Never runs code from the file. ``model_spec`` (``"module:factory"``) builds a model and tries
    the loading code on it; its result is ``report["model_check"]``. ``report["verdict"]`` is one
    of :data:`EXIT_CODES`' keys and ``report["exit_code"]`` its number.
    """
    path = Path(path)
    report = _new_report(path)
    kind = cf.file_format(path)
    if kind == "missing":
        report["format"] = "missing"
        report["verdict"] = "not_a_checkpoint"
        _finding(report, f"{path} does not exist. Check the path and the current folder ({Path.cwd()}).")
    elif kind == "folder":
        _diagnose_folder(report, path)
    elif kind == "empty":
        report["format"] = "empty file"
        report["integrity"] = {"ok": False, "checked": "size", "problem": "0 bytes"}
        report["verdict"] = "damaged"
        _finding(report, f"{path.name} is empty (0 bytes): a save was interrupted before it wrote anything.", "eoferror-with-no-message-an-empty-file")
    elif kind == "cut_magic":
        report["format"] = "the first bytes of a checkpoint"
        report["integrity"] = {"ok": False, "checked": "size", "problem": f"truncated after {path.stat().st_size} byte(s)"}
        report["verdict"] = "damaged"
        _finding(report, f"{path.name} stops after {path.stat().st_size} byte(s): an interrupted save.", "pytorchstreamreader-failed-finding-central-directory")
    elif kind in ("zip", "legacy"):
        _diagnose_torch_file(report, path, kind)
    elif kind == "safetensors":
        _diagnose_safetensors(report, path)
    elif kind == "index":
        _diagnose_index(report, path)
    else:
        with open(path, "rb") as handle:
            head = handle.read(64)
        report["format"] = "not a checkpoint"
        report["verdict"] = "not_a_checkpoint"
        _finding(report, f"{path.name} is not a checkpoint: {cf._describe_non_checkpoint(head)}")

    if report["verdict"] is None:
        report["code"] = loading_code(report, model_spec)
        if report["code"] is None:
            report["verdict"] = "needs_changes"
            _finding(report, "No model state_dict found in it: " + json.dumps(report["layout"])[:300])
        else:
            report["verdict"] = "loads"
        if report["strip_prefix"]:
            anchor = {
                "module.": "missing-and-unexpected-keys-module",
                "_orig_mod.": "missing-and-unexpected-keys-_orig_mod",
            }.get(report["strip_prefix"], "missing-and-unexpected-keys-a-lightning-checkpoint")
            _finding(report, f"Every weight key starts with {report['strip_prefix']!r}: the code below strips it.", anchor)
        if model_spec is not None and report["code"] is not None:
            report["model_check"] = try_loading(report, model_spec)
            if not report["model_check"]["loads"]:
                report["verdict"] = "needs_changes"
    report["exit_code"] = EXIT_CODES[report["verdict"]]
    return report


def build_model(model_spec: str) -> torch.nn.Module:
    """Build the model named by ``"module:factory"`` (``factory`` is a class or a function)."""
    if ":" not in model_spec:
        raise ValueError(f"--model needs MODULE:FACTORY, e.g. helpers.models:DigitsMLP; got {model_spec!r}.")
    module_name, factory = model_spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    model = getattr(module, factory)()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{model_spec}() returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def try_loading(report: dict, model_spec: str) -> dict:
    """Run the report's loading code on the model ``model_spec`` builds; say what does not fit."""
    lines = report["code"].splitlines()
    namespace: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec("\n".join(lines[:-1]), namespace)  # everything up to load_state_dict
    except Exception as error:
        return {"loads": False, "problem": f"the loading code failed: {type(error).__name__}: {error}", "fix": None}
    model, state_dict = namespace["model"], namespace["state_dict"]
    problem = cf.explain_state_dict_mismatch(model, state_dict)
    if problem:
        fix = "Build the model with the same class and settings as the one that was saved."
        if "Hint:" in problem:
            fix = problem.split("Hint:", 1)[1].strip()
        return {"loads": False, "problem": problem, "fix": fix, "link": _link("size-mismatch-for") if "Shape mismatches" in problem else _link("missing-and-unexpected-keys-module")}
    exec(lines[-1], namespace)
    return {"loads": True, "problem": None, "fix": None}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 10_000 else f"{n / 1e6:,.2f} MB"


def format_report(report: dict) -> str:
    """The report as text for a person: what it is, whether it is whole, and how to load it."""
    lines = [f"Checkpoint doctor: {report['path']}", f"  Format:     {report['format']}"]
    integrity = report["integrity"]
    if integrity.get("ok") is not None:
        state = "OK" if integrity["ok"] else f"PROBLEM: {integrity['problem']}"
        lines.append(f"  Integrity:  {state} (checked: {integrity['checked']})")
    layout = report["layout"]
    if layout.get("kind"):
        where = "".join(f"[{k!r}]" for k in layout.get("key_path") or [])
        lines.append(f"  Layout:     {layout['kind']}" + (f", the weights under checkpoint{where}" if where else ""))
        if layout.get("holds"):
            lines.append("              holds: " + ", ".join(f"{part} ({', '.join(map(str, names))})" for part, names in layout["holds"].items()))
        if layout.get("exact_resume_lacks"):
            lines.append("              an exact resume would still lack: " + ", ".join(layout["exact_resume_lacks"]))
    for note in report["origin"]:
        lines.append(f"  Origin:     {note}")
    tensors = report["tensors"]
    if tensors:
        lines.append(
            f"  Tensors:    {tensors['tensor_count']} ({tensors['elements']:,} numbers; about {tensors['parameters']:,} parameters, "
            "not counting BatchNorm statistics)"
        )
        lines.append("  Bytes:      " + ", ".join(f"{dtype} {_size(n)}" for dtype, n in tensors["bytes_by_dtype"].items()))
    if report["devices"]:
        lines.append(f"  Saved from: {', '.join(report['devices'])}")
    if report["pickled_classes"]:
        lines.append(f"  Needs:      {', '.join(report['pickled_classes'])} (pickled classes; weights_only=True refuses them)")
    for finding in report["findings"]:
        lines.append(f"  - {finding['text']}" + (f"\n    See {finding['link']}" if finding["link"] else ""))
    if report["code"]:
        lines.append("\nTo load it into a plain model:\n")
        lines.extend("    " + line for line in report["code"].splitlines())
    check = report["model_check"]
    if check is not None:
        if check["loads"]:
            lines.append("\nTried with --model: it loads, every key and shape matches.")
        else:
            lines.append("\nTried with --model: it does NOT load as it is.\n" + check["problem"])
            if check.get("fix"):
                lines.append(f"Fix: {check['fix']}")
            if check.get("link"):
                lines.append(f"See {check['link']}")
    lines.append(f"\nVerdict: {report['verdict']} (exit code {report['exit_code']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m helpers.doctor PATH [--model MODULE:FACTORY] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.doctor",
        description="Say what a checkpoint file holds, whether it is whole, and print the code that loads it.",
        epilog="Exit codes: 0 loads, 1 needs changes, 2 usage error, 3 damaged, 4 not a checkpoint.",
    )
    parser.add_argument("path", help="a checkpoint file or folder")
    parser.add_argument("--model", metavar="MODULE:FACTORY", help="build this model and try loading into it, e.g. helpers.models:DigitsMLP")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.model is not None:
        try:
            build_model(args.model)
        except Exception as error:
            print(f"Could not build the model {args.model!r}: {type(error).__name__}: {error}", file=sys.stderr)
            return 2
    report = diagnose(args.path, args.model)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
