"""Loading a model partitioned under DeepSpeed ZeRO-3, so that no process holds all of it.

Under ZeRO-3 (an ``Accelerator`` whose DeepSpeed plugin is stage 3 exists, so transformers'
``is_deepspeed_zero3_enabled()`` is true) every parameter is split into one flat slice per
process. transformers' own ``from_pretrained`` builds the model partitioned (``zero.Init``) but
then maps the whole checkpoint in every process, and the main process reads all of it
(``_load_state_dict_into_zero3_model``): each process's resident memory grows by the whole model.

:func:`load_partitioned` instead

1. builds the model partitioned, without initialising weights (``zero.Init``);
2. initialises, under a gather, only the parameters the checkpoint lacks (a fresh scalar head
   when a sequence-classification model is loaded from a causal LM), seeded by the caller;
3. reads each parameter's own slice straight from the safetensors file into its partition
   with plain file reads (no memory map, no communication), so a process's memory grows by its
   partitions only.

A checkpoint whose layout is not the model's (transformers renames or fuses keys on load for some
older checkpoints), or a DeepSpeed set-up whose partitions are not plain local tensors (NVMe
offload, hpZ secondary partitions, quantized weights), goes through transformers' own path, with
a warning. Safetensors only, no remote code.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig
from transformers.integrations import is_deepspeed_zero3_enabled

log = logging.getLogger(__name__)

#: safetensors dtype names (the format's header) → torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: Keyword arguments of ``from_pretrained`` that belong to the model, not its config.
MODEL_KWARGS = ("dtype", "attn_implementation")


def zero3_enabled() -> bool:
    """Whether models load partitioned now (a ZeRO-3 DeepSpeed config is active)."""
    return is_deepspeed_zero3_enabled()


# ---------------------------------------------------------------- reading slices


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies: its file, dtype, shape and the byte offset of its first element."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _header(file: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file: an 8-byte little-endian header length, a JSON
    header ``{name: {dtype, shape, data_offsets: [begin, end]}}``, then the data."""
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start = 8 + length
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{file}: tensor {name} has dtype {info['dtype']}, not supported")
        out[name] = StoredTensor(
            file, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]),
            start + info["data_offsets"][0],
        )  # fmt: skip
    return out


def checkpoint_tensors(directory: Path) -> dict[str, StoredTensor]:
    """Every tensor of a model directory's safetensors weights (one file or an index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, StoredTensor] = {}
    for name in files:
        out.update(_header(directory / name))
    return out


def read_elements(stored: StoredTensor, start: int, out: torch.Tensor) -> None:
    """Elements ``start .. start + out.numel()`` of the flattened ``stored`` tensor into ``out``
    (1-D, contiguous, any dtype: converted after reading). Plain reads, so only the page cache,
    not this process, holds the file."""
    target = out if out.dtype == stored.dtype else torch.empty(out.numel(), dtype=stored.dtype)
    view = memoryview(target.view(torch.uint8).numpy()).cast("B")
    size = target.element_size()
    with stored.file.open("rb", buffering=0) as f:
        f.seek(stored.offset + start * size)
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{stored.file}: truncated safetensors file")
            done += n
    if target is not out:
        out.copy_(target)


def read_tensor(stored: StoredTensor) -> torch.Tensor:
    """The whole tensor (for buffers, which ZeRO-3 does not partition)."""
    out = torch.empty(stored.numel, dtype=stored.dtype)
    read_elements(stored, 0, out)
    return out.view(stored.shape)


# ---------------------------------------------------------------- matching names


def _checkpoint_key(name: str, stored: dict[str, StoredTensor], prefix: str) -> str | None:
    """The checkpoint key of model tensor ``name``: the same name, or without / with the base
    model prefix (a base model's checkpoint loaded into a model with a head, or back)."""
    candidates = [name]
    if prefix and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1 :])
    elif prefix:
        candidates.append(f"{prefix}.{name}")
    return next((c for c in candidates if c in stored), None)


@dataclass
class LoadPlan:
    """Model tensor name → checkpoint key, and the parameters the checkpoint lacks."""

    keys: dict[str, str]
    missing: list[str]
    body_missing: list[str]  # missing ones in the base model: the layout is not the model's


def plan_load(model: torch.nn.Module, stored: dict[str, StoredTensor]) -> LoadPlan:
    """Match the model's parameters (tied ones once) and buffers with checkpoint keys. A
    missing parameter outside the base model (a head) is to be initialised; one inside it
    means the checkpoint needs transformers' key conversion."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    keys, missing = {}, []
    for name, _ in model.named_parameters():
        key = _checkpoint_key(name, stored, prefix)
        if key is None:
            missing.append(name)
        else:
            keys[name] = key
    for name, _ in model.named_buffers():
        if (key := _checkpoint_key(name, stored, prefix)) is not None:
            keys[name] = key  # persistent buffers; non-persistent ones are computed
    in_body = model.base_model is not model
    body = [n for n in missing if in_body and n.startswith(prefix + ".")]
    return LoadPlan(keys, missing, body)


# ---------------------------------------------------------------- building partitioned


def _release_freed_heap() -> None:
    """Give freed heap pages back to the OS (glibc). On a CPU-only machine ``zero.Init``
    allocates each module whole, receives rank 0's copy, keeps a slice and frees the rest; glibc
    keeps most of that freed memory in its heap (its mmap threshold rises with the sizes freed),
    and the process would look as if it held far more than its partitions."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def _trimming_after_each_module(init):
    """Run :func:`_release_freed_heap` after ``init`` partitions each module (CPU only: on an
    accelerator the whole-module buffers are device memory)."""
    if init.local_device.type != "cpu" or _libc() is None:
        yield
        return
    original = init._post_init_method

    def post_init(module):
        original(module)
        _release_freed_heap()

    init._post_init_method = post_init
    try:
        yield
    finally:
        init._post_init_method = original


@functools.cache
def _libc():
    """glibc, when this is glibc (``find_library`` runs a subprocess: looked up once)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def _partitioned_construction() -> Iterator[None]:
    """Modules built inside are partitioned as they are built, their weights left
    uninitialised (they are read from the checkpoint next)."""
    # lazy: deepspeed only under ZeRO-3; transformers' helpers for its own zero.Init path
    import deepspeed
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import deepspeed_config
    from transformers.modeling_utils import set_zero3_state

    init = deepspeed.zero.Init(config_dict_or_path=deepspeed_config())
    # set_zero3_state: from_config must not open a second zero.Init and re-initialise
    with no_init_weights(), init, _trimming_after_each_module(init), set_zero3_state():
        yield


def _skeleton(auto_class: Any, config) -> torch.nn.Module:
    """The model on the meta device (names and shapes only, no memory)."""
    # lazy: transformers' switch that keeps from_config out of zero.Init
    from transformers.modeling_utils import set_zero3_state

    with set_zero3_state(), torch.device("meta"):
        return auto_class.from_config(config)


def _partition_rank(param: torch.nn.Parameter) -> int:
    # lazy: deepspeed only under ZeRO-3
    import deepspeed.comm as dist

    return dist.get_rank(group=param.ds_process_group)


def _fill_partition(param: torch.nn.Parameter, stored: StoredTensor, name: str) -> None:
    """This process's slice of ``param`` from the checkpoint: elements ``rank·P .. rank·P+P``
    of the flattened tensor (P = the partition size; the last one is zero-padded)."""
    if tuple(param.ds_shape) != stored.shape:
        raise ValueError(
            f"{stored.file.parent}: {name} has shape {list(stored.shape)} in the checkpoint, "
            f"the model expects {list(param.ds_shape)}"
        )
    size = param.ds_tensor.ds_numel
    part = param.ds_tensor.data
    start = _partition_rank(param) * size
    n = max(0, min(size, param.ds_numel - start))
    with torch.no_grad():
        if n:
            read_elements(stored, start, part[:n])
        part[n:].zero_()


def _initialise_missing(model: torch.nn.Module, missing: list[str]) -> None:
    """The model's own initialisation of the modules owning ``missing`` parameters, gathered,
    on rank 0 (the caller seeds it), then re-partitioned."""
    # lazy: deepspeed only under ZeRO-3
    import deepspeed

    owners = {name.rpartition(".")[0] for name in missing}
    for owner in sorted(owners):
        module = model.get_submodule(owner)
        params = list(module.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
            if deepspeed.comm.get_rank() == 0:
                model._init_weights(module)


def _supported_partitions(model: torch.nn.Module) -> bool:
    """Every partition a plain local tensor this loader can write into."""
    for param in model.parameters():
        if getattr(param, "ds_secondary_tensor", None) is not None:
            return False  # hpZ: a second copy would go stale
        part = getattr(param, "ds_tensor", None)
        if part is None or getattr(part, "final_location", None) is not None:
            return False  # not partitioned, or swapped to NVMe
        if hasattr(part, "ds_quant_scale"):
            return False
    return True


def load_partitioned(auto_class: Any, directory: Path, **kwargs: Any) -> torch.nn.Module:
    """``auto_class.from_pretrained(directory, **kwargs)`` under ZeRO-3, each process reading
    only its own partitions (see the module docstring). ``kwargs``: ``dtype``,
    ``attn_implementation`` and config fields (``num_labels=1``). Under ZeRO-3 the parameters
    take the DeepSpeed config's precision (bf16 / fp16 / fp32), as with transformers' loader.
    Seed the caller's RNG for a deterministic fresh head."""
    kwargs.pop("use_safetensors", None)  # safetensors is all this loader reads
    model_kwargs = {k: kwargs.pop(k) for k in MODEL_KWARGS if kwargs.get(k) is not None}
    if kwargs.get("trust_remote_code"):  # a remote class may not build under zero.Init alone
        return _transformers_fallback(auto_class, directory, "remote code", kwargs | model_kwargs)
    config = AutoConfig.from_pretrained(directory, **kwargs)
    stored = checkpoint_tensors(directory)
    plan = plan_load(_skeleton(auto_class, config), stored)
    if plan.body_missing:
        reason = f"its checkpoint lacks {plan.body_missing[:3]} (keys transformers renames)"
        return _transformers_fallback(auto_class, directory, reason, kwargs | model_kwargs)
    with _partitioned_construction():
        model = auto_class.from_config(config, **model_kwargs)
    model.tie_weights()
    if not _supported_partitions(model):
        del model
        reason = "this DeepSpeed set-up's partitions are not plain local tensors"
        return _transformers_fallback(auto_class, directory, reason, kwargs | model_kwargs)
    _initialise_missing(model, plan.missing)
    _fill(model, plan, stored)
    _release_freed_heap()
    return model.eval()


def _fill(model: torch.nn.Module, plan: LoadPlan, stored: dict[str, StoredTensor]) -> None:
    """Every parameter's partition and every stored buffer from the checkpoint."""
    for name, param in model.named_parameters():
        if name in plan.keys:
            _fill_partition(param, stored[plan.keys[name]], plan.keys[name])
    for name, buffer in model.named_buffers():
        if name in plan.keys:  # buffers are not partitioned: whole in every process
            with torch.no_grad():
                buffer.copy_(read_tensor(stored[plan.keys[name]]).to(buffer.dtype))


def _transformers_fallback(auto_class: Any, directory: Path, reason: str, kwargs: dict):
    log.warning(
        "%s: loaded through transformers' ZeRO-3 path (every process reads the whole "
        "checkpoint): %s",
        directory,
        reason,
    )
    return auto_class.from_pretrained(directory, use_safetensors=True, **kwargs)
