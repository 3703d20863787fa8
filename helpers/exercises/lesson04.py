"""Checks for lesson 04, ``04_devices_and_multi_gpu_checkpoints``.

In the notebook: ``from helpers.exercises import lesson04 as ex``.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers.checkpointing import capture_rng_state, restore_rng_state
from helpers.checks import ExerciseSet, Wrong, watch_torch_load
from helpers.models import DigitsCNN, DigitsMLP

exercises = ExerciseSet("04_devices_and_multi_gpu_checkpoints")


def _first(items, n: int = 3) -> str:
    items = sorted(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


# ---- q1 -------------------------------------------------------------------------------------


class TwoLayerNet(nn.Module):
    """A small model whose layer names contain the letters of ``module.``: ``submodule`` and ``decoder``.

    Wrapped in DataParallel its keys become ``module.submodule.weight``, ``module.decoder.weight``,
    ...: removing ``module.`` with ``str.replace`` or ``str.lstrip`` damages them.
    """

    def __init__(self):
        super().__init__()
        self.submodule = nn.Linear(6, 5)
        self.decoder = nn.Linear(5, 3)

    def forward(self, x):
        return self.decoder(self.submodule(x).relu())


def _seeded_net(seed: int) -> TwoLayerNet:
    torch.manual_seed(seed)  # Exercise.evaluate restores the learner's random state afterwards
    return TwoLayerNet()


@exercises.exercise(
    "q1",
    "Load a DataParallel checkpoint into a plain model",
    hints=[
        "Every key starts with 'module.'. Remove exactly that prefix, at the start of the key only.",
        "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, 'module.') does it, but "
        "in place: call it on a copy, e.g. sd = dict(state_dict).",
        "Then model.load_state_dict(sd) (strict, so a mistake raises instead of loading nothing), "
        "and return model.",
    ],
)
def q1(load_dp_checkpoint: Callable[[nn.Module, dict], nn.Module]) -> str:
    """``load_dp_checkpoint(model, state_dict)`` loads a DataParallel state_dict into ``model`` and returns it."""
    source = _seeded_net(11)
    saved = nn.DataParallel(source).state_dict()
    keys_before = list(saved)
    values_before = {k: saved[k] for k in keys_before}
    target = _seeded_net(12)
    original = {k: v.clone() for k, v in target.state_dict().items()}
    try:
        result = load_dp_checkpoint(target, saved)
    except RuntimeError as error:
        if "Missing key(s)" in str(error) or "Unexpected key(s)" in str(error):
            raise Wrong(
                "load_state_dict raised: after your renaming the keys still don't match the model's "
                f"({_first(target.state_dict())}). Note that str.replace('module.', '') also changes "
                "'module.submodule.weight' into 'subweight', and str.lstrip('module.') strips letters, "
                "not a prefix ('module.decoder.weight' becomes 'coder.weight'). Remove the prefix only."
            ) from None
        raise
    if list(saved) != keys_before or any(saved[k] is not values_before[k] for k in keys_before):
        raise Wrong(
            "Your function changed the dict it was given (consume_prefix_in_state_dict_if_present edits "
            "in place). Work on a copy, e.g. sd = dict(state_dict), so the caller's checkpoint stays as it was."
        )
    if result is None:
        raise Wrong("Your function returned None: return the model after loading into it.")
    if isinstance(result, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise Wrong(
            "You returned the model wrapped in DataParallel. Its state_dict has 'module.' again, so the "
            "next save would repeat the problem: load into the plain model and return that."
        )
    if result is not target:
        raise Wrong("Load into the model you were given and return that same model, not a new one.")
    loaded = target.state_dict()
    want = source.state_dict()
    if all(torch.equal(loaded[k], original[k]) for k in loaded):
        raise Wrong(
            "The model still has its own weights: nothing was loaded. load_state_dict(..., strict=False) "
            "skips every key that does not match and raises no error. Strip the prefix first and load strictly."
        )
    not_loaded = [k for k in want if not torch.equal(loaded[k], want[k])]
    if not_loaded:
        raise Wrong(
            f"Some tensors were not loaded: {_first(not_loaded)}. Their keys were damaged by the renaming: "
            "str.replace('module.', '') also turns 'module.submodule.weight' into 'subweight', and "
            "str.lstrip('module.') strips letters, not a prefix ('module.decoder.weight' becomes "
            "'coder.weight'). Remove the prefix at the start only, and load with strict=True so mistakes raise."
        )
    return "All tensors loaded into the plain model, the prefix removed at the start only, the checkpoint untouched."


# ---- q2 -------------------------------------------------------------------------------------


def _where_cuda0_goes(map_location) -> str:
    """The device a storage saved from 'cuda:0' is restored to, under ``map_location`` (as torch.load does)."""
    if map_location is None:
        return "cuda:0"
    if isinstance(map_location, Mapping):
        for key, value in map_location.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise Wrong(
                    "In a map_location dict, keys and values are strings such as {'cuda:0': 'cuda:1'}; "
                    f"found {key!r}: {value!r} ({type(key).__name__}: {type(value).__name__})."
                )
        target = map_location.get("cuda:0", "cuda:0")
    elif isinstance(map_location, (str, torch.device)):
        target = map_location
    elif callable(map_location):
        raise Wrong(
            "torch.load also accepts a function, but for this exercise return a device string, a "
            "torch.device, or a dict such as {'cuda:0': 'cuda:1'}."
        )
    else:
        raise Wrong(
            f"map_location must be a device string, a torch.device or a dict, not a {type(map_location).__name__}."
        )
    try:
        device = torch.device(target)
    except RuntimeError:
        raise Wrong(f"{target!r} is not a device name: use 'cpu' or 'cuda:<index>'.") from None
    if device.type == "cuda" and device.index is None:
        raise Wrong(
            f"{target!r} without an index means the *current* CUDA device, which is cuda:0 unless the "
            "process called torch.cuda.set_device. Name the GPU: f'cuda:{local_rank}'."
        )
    return str(device)


@exercises.exercise(
    "q2",
    "Pick the map_location for each rank",
    hints=[
        "The checkpoint was saved by rank 0, from 'cuda:0'. Without a GPU everything goes to 'cpu'.",
        "With GPUs, rank r should put what was on cuda:0 onto its own GPU, cuda:r.",
        "return {'cuda:0': f'cuda:{local_rank}'} if use_cuda else 'cpu'",
    ],
)
def q2(map_location_for: Callable[[int, bool], object]) -> str:
    """``map_location_for(local_rank, use_cuda)``: where each rank loads a checkpoint saved from cuda:0."""
    for use_cuda in (False, True):
        for local_rank in (0, 1, 3):
            got = _where_cuda0_goes(map_location_for(local_rank, use_cuda))
            want = f"cuda:{local_rank}" if use_cuda else "cpu"
            if got == want:
                continue
            if not use_cuda:
                raise Wrong(
                    f"With use_cuda=False (no GPU), rank {local_rank} would load onto {got}: torch.load "
                    "raises on a machine without CUDA. Map everything to 'cpu'."
                )
            if got == "cpu":
                raise Wrong(
                    f"With GPUs, rank {local_rank} loads onto the CPU and must copy everything to its GPU "
                    f"afterwards. Load straight onto its own GPU, cuda:{local_rank}."
                )
            if got == "cuda:0" and local_rank != 0:
                raise Wrong(
                    f"Rank {local_rank} would load onto cuda:0, like every other rank: all copies land on "
                    "GPU 0 (which may run out of memory) and not where the rank computes. Use the rank's "
                    f"own GPU, cuda:{local_rank}."
                )
            raise Wrong(f"Rank {local_rank} with use_cuda={use_cuda} would load onto {got}, not {want}.")
    return "Each rank loads onto its own GPU, or onto the CPU when there is none."


# ---- q3 -------------------------------------------------------------------------------------


class FakeDist:
    """Stands in for ``torch.distributed`` in the q3 check: a rank number and a barrier that records calls."""

    def __init__(self, rank: int, world_size: int, path: Path):
        self._rank, self._world_size, self._path = rank, world_size, path
        self.barriers: list[bool] = []  # for each barrier() call: did the checkpoint file exist then?

    def get_rank(self, group=None) -> int:
        """This process's rank."""
        return self._rank

    def get_world_size(self, group=None) -> int:
        """The number of processes."""
        return self._world_size

    def is_initialized(self) -> bool:
        """Always True: the fake group is ready."""
        return True

    def barrier(self, group=None, **kwargs) -> None:
        """Record the call and whether the file already exists."""
        self.barriers.append(self._path.exists())


def _sample_state() -> dict:
    generator = torch.Generator().manual_seed(3)
    return {"model": {"w": torch.rand(3, 2, generator=generator)}, "step": 7}


@exercises.exercise(
    "q3",
    "Save on one rank only, then wait",
    hints=[
        "Only rank 0 (dist.get_rank() == 0) writes the file; every rank then calls dist.barrier().",
        "The barrier goes after the save and outside the `if`: a barrier that not every rank reaches "
        "waits forever.",
    ],
)
def q3(save_on_main: Callable[[dict, Path, object], object]) -> str:
    """``save_on_main(state, path, dist)``: rank 0 saves ``state`` to ``path``; all ranks wait at a barrier."""
    state = _sample_state()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "checkpoint.pt"
        worker = FakeDist(rank=1, world_size=2, path=path)
        save_on_main(state, path, worker)
        if any(folder.iterdir()):
            written = ", ".join(p.name for p in folder.iterdir())
            raise Wrong(
                f"Rank 1 wrote {written}. Only rank 0 should save: when every rank writes the same file, "
                "the writes collide and the file can end up torn. Use `if dist.get_rank() == 0:`."
            )
        main = FakeDist(rank=0, world_size=2, path=path)
        save_on_main(state, path, main)
        if not path.exists():
            others = [p.name for p in folder.iterdir()]
            if others:
                raise Wrong(f"Rank 0 should write exactly `path`; it wrote {', '.join(others)} instead.")
            if not main.barriers and not worker.barriers:
                raise Wrong(
                    "save_on_main ran, but it wrote nothing and called no barrier. Rank 0 saves `state` "
                    "to `path`, then every rank calls dist.barrier()."
                )
            raise Wrong("Rank 0 did not write `path`. Rank 0 is the one that saves.")
        extra = [p.name for p in folder.iterdir() if p != path]
        if extra:
            raise Wrong(f"Rank 0 left other files next to the checkpoint: {', '.join(extra)}. Write only `path`.")
        saved = torch.load(path, weights_only=True)
        if set(saved) != set(state) or saved["step"] != state["step"] or not torch.equal(saved["model"]["w"], state["model"]["w"]):
            raise Wrong("The file does not hold the `state` you were given: save that dict as it is.")
    if not worker.barriers:
        raise Wrong(
            "Rank 1 never called dist.barrier(). Every rank must reach the barrier (put it outside the "
            "`if`); otherwise rank 0 waits there forever, or rank 1 reads the file before it is written."
        )
    if not main.barriers:
        raise Wrong(
            "Rank 0 never called dist.barrier(), so the other ranks wait there forever. Call it on every rank."
        )
    if len(main.barriers) != len(worker.barriers):
        raise Wrong(
            f"Rank 0 called barrier() {len(main.barriers)} time(s) and rank 1 {len(worker.barriers)}: "
            "every rank must call it the same number of times, or one of them hangs."
        )
    if not main.barriers[-1]:
        raise Wrong(
            "Rank 0 reached the barrier before the file existed: the other ranks go on and may load a "
            "file that is not written yet. Save first, then call dist.barrier()."
        )
    return "Rank 0 saves, every rank waits at the barrier after the save."


# ---- q4 -------------------------------------------------------------------------------------


@exercises.exercise(
    "q4",
    "Move a model and a batch to a device",
    hints=[
        "model.to(device) moves the parameters and buffers in place (and returns the model).",
        "tensor.to(device) does not change the tensor: it returns a new one. Keep the result.",
        "return model.to(device), (x.to(device), y.to(device))",
    ],
)
def q4(to_device: Callable[[nn.Module, Sequence[torch.Tensor], object], tuple]) -> str:
    """``to_device(model, (x, y), device)`` returns ``(model, (x, y))`` with everything on ``device``."""
    device = torch.device("meta")  # a device every machine has: tensors with a shape but no data
    model = DigitsCNN()
    batch = (torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    result = to_device(model, batch, device)
    if not isinstance(result, tuple) or len(result) != 2:
        raise Wrong("Return a pair: (model, (x, y)).")
    new_model, new_batch = result
    if not isinstance(new_model, nn.Module):
        raise Wrong(f"The first item should be the model, not a {type(new_model).__name__}.")
    if not isinstance(new_batch, (tuple, list)) or len(new_batch) != 2:
        raise Wrong("The second item should be the batch as a pair (x, y).")
    left_params = [n for n, p in new_model.named_parameters() if p.device != device]
    left_buffers = [n for n, b in new_model.named_buffers() if b.device != device]
    if left_params:
        raise Wrong(f"The model's parameters are still on {next(new_model.parameters()).device}: call model.to(device).")
    if left_buffers:
        raise Wrong(
            f"The parameters moved but the buffers did not ({_first(left_buffers, 2)}): BatchNorm's "
            "running statistics must move too. model.to(device) moves both."
        )
    x, y = new_batch
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise Wrong("The batch should hold two tensors, x and y.")
    if x.device != device or y.device != device:
        left = [name for name, t in (("x", x), ("y", y)) if t.device != device]
        verb = "are" if len(left) == 2 else "is"
        raise Wrong(
            f"{' and '.join(left)} {verb} still on {x.device if x.device != device else y.device}. Unlike model.to(), "
            "tensor.to(device) returns a *new* tensor and leaves the original where it was: return the result."
        )
    if x.shape != batch[0].shape or y.shape != batch[1].shape or y.dtype != batch[1].dtype:
        raise Wrong("The batch changed shape or dtype on the way: move it with .to(device) only.")
    return "Model (parameters and buffers) and both tensors are on the device."


# ---- q5 -------------------------------------------------------------------------------------


def _draws() -> tuple:
    """A few numbers from each global generator: what a restored random state decides."""
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def _rank_state(seed: int) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return capture_rng_state()


def _q5_case(folder: Path) -> tuple[Path, dict]:
    """A DDP checkpoint of two ranks, as lesson 04's section 6 saves it, and what it holds."""
    torch.manual_seed(5)
    model = DigitsMLP(hidden=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    optimizer.step()
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 6,
        "world_size": 2,
        "rng_per_rank": [_rank_state(100), _rank_state(101)],
    }
    path = folder / "ddp_checkpoint.pt"
    torch.save(checkpoint, path)
    return path, checkpoint


@exercises.exercise(
    "q5",
    "Resume one rank of a DDP run",
    hints=[
        "torch.load(path, map_location=map_location, weights_only=True) gives the checkpoint dict.",
        "Load checkpoint['model'] into model and checkpoint['optimizer'] into optimizer; call model.train().",
        "restore_rng_state(checkpoint['rng_per_rank'][rank]) restores this rank's generators. "
        "'epoch' is the last epoch that finished: training goes on at checkpoint['epoch'] + 1.",
    ],
)
def q5(load_ddp_checkpoint: Callable[..., object]) -> str:
    """``load_ddp_checkpoint(path, model, optimizer, rank, map_location)`` returns the epoch to start from."""
    with tempfile.TemporaryDirectory() as tmp:
        path, saved = _q5_case(Path(tmp))
        torch.manual_seed(0)
        model = DigitsMLP(hidden=8).eval()               # a new job's model: other weights, eval mode
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        locations = []

        def map_location(storage, location):
            locations.append(location)
            return storage

        _rank_state(999)                                 # where a new process's generators would be
        with watch_torch_load() as unsafe_loads:
            start = load_ddp_checkpoint(path, model, optimizer, 1, map_location)
        got = _draws()
    restore_rng_state(saved["rng_per_rank"][1])
    want_rank1 = _draws()
    restore_rng_state(saved["rng_per_rank"][0])
    want_rank0 = _draws()
    if any(unsafe_loads):
        raise Wrong("You loaded with weights_only=False, which runs any code pickled in the file. Use weights_only=True.")
    if not locations:
        raise Wrong(
            "The map_location you were given was not used: pass it to torch.load(path, map_location=map_location, "
            "weights_only=True), so each rank loads onto its own device."
        )
    loaded = model.state_dict()
    if not all(torch.equal(loaded[k], saved["model"][k]) for k in saved["model"]):
        raise Wrong("The model does not hold the checkpoint's weights: model.load_state_dict(checkpoint['model']).")
    state = optimizer.state_dict()["state"]
    if not state or not all(
        torch.equal(state[i]["exp_avg"], saved["optimizer"]["state"][i]["exp_avg"]) for i in saved["optimizer"]["state"]
    ):
        raise Wrong(
            "The optimizer does not hold the checkpoint's state (Adam's moments): "
            "optimizer.load_state_dict(checkpoint['optimizer'])."
        )
    if not model.training:
        raise Wrong("The model is still in eval mode: call model.train() before training goes on (dropout must be on).")
    if got == want_rank0:
        raise Wrong(
            "You restored rank 0's random state on rank 1. Each rank draws its own dropout masks: "
            "restore checkpoint['rng_per_rank'][rank]."
        )
    if got != want_rank1:
        raise Wrong(
            "The random generators are not where rank 1 left them. Restore them last, with "
            "restore_rng_state(checkpoint['rng_per_rank'][rank]) (nothing that draws random numbers after it)."
        )
    if isinstance(start, bool) or not isinstance(start, int):
        raise Wrong(f"Return the epoch to start training from, as an int; your function returned {start!r}.")
    if start == saved["epoch"]:
        raise Wrong(
            f"You returned {start}, the epoch that already finished: training would repeat it. "
            "Return checkpoint['epoch'] + 1."
        )
    if start != saved["epoch"] + 1:
        raise Wrong(f"The checkpoint says epoch {saved['epoch']} finished; training goes on at {saved['epoch'] + 1}, not {start}.")
    return "Weights, optimizer, training mode and this rank's own random state restored; training goes on at the next epoch."
