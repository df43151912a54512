"""Weight sync from the trainer's model to a vLLM model.

Trainer side (no vLLM needed): :func:`exported` gives the actor's full weights under the
Hugging Face names vLLM's ``load_weights`` expects — LoRA merged into the base, ZeRO-3 partitions
gathered — and :func:`save_weights` writes them as one safetensors file for a server to load.

vLLM side: :func:`load_weights_in_place` loads them into a live vLLM model. On a GPU that is
vLLM's own ``model.load_weights``. On the CPU backend it is not enough, and this is why the first
attempt failed: after loading a checkpoint, the CPU ``UnquantizedLinearMethod`` re-packs every
linear layer's weight into a oneDNN / sgl-kernel layout held by the layer's ``cpu_linear``
closure and replaces ``layer.weight`` with an *empty* ``Parameter`` (``remove_weight=True`` in
``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``). The new Parameter has no
``weight_loader`` (hence TRL's ``AttributeError``), and writing into it — or reloading with
``reload_weights`` without re-packing — leaves the packed copy, which is what the forward pass
uses, stale. The embedding / LM-head layers keep their weight but also compute with a packed copy.
So on CPU we (1) re-create each packed linear layer's full weight Parameter through its quant
method's ``create_weights`` (which re-attaches the right ``weight_loader``), (2) call
``load_weights``, and (3) re-run ``process_weights_after_loading`` on the linear and embedding
layers, which re-packs from the new values. Nothing is re-allocated beyond one layer's weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from align.core.io import atomic_path

WEIGHTS_FILE = "model.safetensors"


# ------------------------------------------------------------------ trainer side


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "peft_config")


def _base_name(name: str) -> str | None:
    """A PEFT parameter name → the base model's name; ``None`` for weights vLLM must not see
    (adapters, and the frozen originals of ``modules_to_save``)."""
    if "lora_" in name or ".original_module." in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "").replace(".modules_to_save.default", "")


@contextmanager
def gathered(model: torch.nn.Module):
    """Full parameters inside the block: ZeRO-3 partitions are gathered (read-only)."""
    # only partitions not already gathered (e.g. by unwrap_model_for_generation)
    params = [
        p
        for p in model.parameters()
        if hasattr(p, "ds_id") and getattr(p.ds_status, "name", "") == "NOT_AVAILABLE"
    ]
    if not params:
        yield
        return
    import deepspeed  # lazy: deepspeed is optional (ZeRO-3 runs only)

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def _lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name of a LoRA layer's base weight: ΔW of its active adapters}``."""
    from peft.tuners.lora import LoraLayer  # lazy: peft only for LoRA models

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters:
                delta = sum(module.get_delta_weight(a) for a in adapters)
                deltas[f"{name}.base_layer.weight"] = delta
    return deltas


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` of the model's full weights, LoRA adapters added to their base
    weights (computed aside: the trainer's parameters are never merged and unmerged, which would
    drift them by rounding). Use inside :func:`exported` so ZeRO-3 tensors are complete."""
    if not _is_peft(model):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    deltas = _lora_deltas(model)
    for name, param in model.named_parameters():
        base = _base_name(name)
        if base is not None:
            weight = param.detach()
            yield base, weight + deltas[name].to(weight) if name in deltas else weight


@contextmanager
def exported(model: torch.nn.Module):
    """``with exported(actor) as weights:`` a list of ``(hf_name, tensor)``, gathered and merged."""
    with gathered(model), torch.no_grad():
        yield list(hf_weights(model))


def save_weights(weights: Iterable[tuple[str, torch.Tensor]], directory: Path) -> Path:
    """One safetensors file of ``weights`` in ``directory``, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in weights}
    final = directory / WEIGHTS_FILE
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp))
    return final


def load_saved_weights(path: str | Path) -> list[tuple[str, torch.Tensor]]:
    return list(load_file(str(path)).items())


# ------------------------------------------------------------------ vLLM side


def _packed_linear_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Linear layers whose weight the CPU backend moved into a packed copy (empty ``weight``)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod  # lazy: vllm optional

    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "quant_method", None), UnquantizedLinearMethod)
        and hasattr(m, "cpu_linear")
        and m.weight.numel() == 0
    ]


def _restore_weight_parameter(layer: torch.nn.Module) -> None:
    """Give a packed linear layer back a full-size weight Parameter with its weight loader."""
    from vllm.model_executor.layers.linear import WEIGHT_LOADER_V2_SUPPORTED  # lazy: vllm optional

    method = layer.quant_method
    v2 = type(method).__name__ in WEIGHT_LOADER_V2_SUPPORTED
    method.create_weights(
        layer,
        layer.input_size_per_partition,
        layer.output_partition_sizes,
        layer.input_size,
        layer.output_size,
        layer.params_dtype,
        weight_loader=layer.weight_loader_v2 if v2 else layer.weight_loader,
    )


def _repack(model: torch.nn.Module) -> None:
    """Re-run the CPU packing of linear and embedding layers from their current weights."""
    # lazy: vllm is optional (this side runs inside the vLLM worker)
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for m in model.modules():
        method = getattr(m, "quant_method", None)
        if isinstance(method, UnquantizedLinearMethod | UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(m)


@contextmanager
def loading_in_place(model: torch.nn.Module):
    """Inside the block, ``model.load_weights`` updates a live vLLM model (call it any number of
    times). On CPU, packed layers are unpacked on entry and re-packed on exit (see the module
    docstring); on GPU this adds nothing."""
    on_cpu = any(hasattr(m, "cpu_linear") for m in model.modules())
    for layer in _packed_linear_layers(model):
        _restore_weight_parameter(layer)
    try:
        with torch.no_grad():
            yield
    finally:
        if on_cpu:
            _repack(model)


def load_weights_in_place(
    model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]
) -> int:
    """Load HF-named ``weights`` into a live vLLM ``model``; returns how many names it took."""
    with loading_in_place(model):
        loaded = model.load_weights(weights)
    return len(loaded) if loaded is not None else 0
