"""Weight sync from the trainer's model to a vLLM model, one layer at a time.

Trainer side (no vLLM needed): :func:`weight_chunks` yields the actor's weights under the
Hugging Face names vLLM's ``load_weights`` expects — LoRA merged into the base — one *unit* at a
time: a decoder layer (every parameter under ``….layers.N``), or one module outside the layers
(the embeddings, the final norm, the LM head). Under DeepSpeed ZeRO-3 each unit's partitions are
gathered (``deepspeed.zero.GatheredParameters``) only while its chunk is being consumed, so the
trainer never holds more than one unit in full: the whole model is never gathered for a sync.
:func:`exported` still gives everything at once (a file for a server), and :func:`save_weights`
writes it as one safetensors file.

vLLM side: :class:`InPlaceLoader` loads the chunks into a live vLLM model. On a GPU that is vLLM's
own ``model.load_weights``, chunk by chunk. On the CPU backend it is not enough, and this is why
the first attempt failed: after loading a checkpoint, the CPU ``UnquantizedLinearMethod`` re-packs
every linear layer's weight into a oneDNN / sgl-kernel layout held by the layer's ``cpu_linear``
closure and replaces ``layer.weight`` with an *empty* ``Parameter`` (``remove_weight=True`` in
``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``). The new Parameter has no
``weight_loader`` (hence TRL's ``AttributeError``), and writing into it — or reloading with
``reload_weights`` without re-packing — leaves the packed copy, which is what the forward pass
uses, stale. The embedding / LM-head layers keep their weight but also compute with a packed copy.
So on CPU the loader (1) re-creates each packed linear layer's full weight Parameter through its
quant method's ``create_weights`` (which re-attaches the right ``weight_loader``; the memory is
allocated but not touched until a chunk writes into it), (2) calls ``load_weights`` per chunk,
and (3) right after each chunk re-runs ``process_weights_after_loading`` on the layers that chunk
loaded, which re-packs them from the new values and drops their unpacked copy again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, groupby
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from align.core.io import atomic_path

WEIGHTS_FILE = "model.safetensors"

# the prefix up to the outermost all-digit segment: "model.layers.3" of "model.layers.3.mlp.x"
_LAYER = re.compile(r"^(.*?\.\d+)(?:\.|$)")

Chunk = list[tuple[str, torch.Tensor]]


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


def _partitioned(param: torch.nn.Parameter) -> bool:
    """A ZeRO-3 partition not gathered at the moment (e.g. by ``unwrap_model_for_generation``)."""
    return hasattr(param, "ds_id") and getattr(param.ds_status, "name", "") == "NOT_AVAILABLE"


@contextmanager
def gathered_params(params: Iterable[torch.nn.Parameter]):
    """``params`` in full inside the block: their ZeRO-3 partitions are gathered (read-only) and
    released on exit. A collective: every process must enter it with the same parameters."""
    partitioned = [p for p in params if _partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed  # lazy: deepspeed is optional (ZeRO-3 runs only)

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


@contextmanager
def gathered(model: torch.nn.Module):
    """Full parameters of the whole model inside the block (ZeRO-3 partitions gathered)."""
    with gathered_params(model.parameters()):
        yield


def layer_key(name: str) -> str:
    """The unit a weight travels in: its decoder layer (the prefix up to the outermost index,
    ``model.layers.3``; ``transformer.h.3`` for GPT-2), else its module (``model.embed_tokens``,
    ``lm_head``). Keyed on the index, so no per-architecture table of layer names is needed."""
    layer = _LAYER.match(name)
    return layer.group(1) if layer else name.rpartition(".")[0]


def _peft_wrappers(model: torch.nn.Module) -> tuple[str, ...]:
    """Names of PEFT wrapper modules (a LoRA layer, ``modules_to_save``): their parameters
    (base weight and adapters) must travel together, even outside the decoder layers."""
    return tuple(
        name
        for name, module in model.named_modules()
        if name and (hasattr(module, "base_layer") or hasattr(module, "original_module"))
    )


def weight_units(model: torch.nn.Module) -> list[list[tuple[str, torch.nn.Parameter]]]:
    """The model's named parameters grouped by :func:`layer_key` (a PEFT wrapper's parameters
    kept together), in ``named_parameters`` order: the same units on every process."""
    wrappers = _peft_wrappers(model)
    units: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        key = layer_key(name)
        if not _LAYER.match(name):
            key = next((w for w in wrappers if name.startswith(w + ".")), key)
        units.setdefault(key, []).append((name, param))
    return list(units.values())


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{parameter name of a LoRA layer's base weight: the layer}`` for unmerged layers."""
    from peft.tuners.lora import LoraLayer  # lazy: peft only for LoRA models

    return {
        f"{name}.base_layer.weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and not module.merged
    }


def _lora_delta(layer: torch.nn.Module) -> torch.Tensor | None:
    """ΔW of a LoRA layer's active adapters (``None`` without any)."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    return sum(layer.get_delta_weight(a) for a in adapters) if adapters else None


def _unit_weights(unit, lora: dict[str, torch.nn.Module] | None) -> Chunk:
    """``(hf_name, tensor)`` of one unit's (complete) parameters; with ``lora`` (a PEFT model),
    adapters added to their base weights, computed aside: the trainer's parameters are never
    merged and unmerged, which would drift them by rounding."""
    if lora is None:
        return [(name, param.detach()) for name, param in unit]
    out = []
    for name, param in unit:
        base = _base_name(name)
        if base is None:
            continue
        weight = param.detach()
        delta = _lora_delta(lora[name]) if name in lora else None
        out.append((base, weight if delta is None else weight + delta.to(weight)))
    return out


def weight_chunks(model: torch.nn.Module) -> Iterator[Chunk]:
    """The model's full weights as ``(hf_name, tensor)`` lists, one unit (:func:`weight_units`)
    at a time, LoRA merged. Under ZeRO-3 a unit is gathered while its chunk is in use and
    released when the next one is asked for: use each chunk before asking for the next (clone
    what must outlive it), and iterate on every process (each gather is a collective)."""
    lora = _lora_layers(model) if _is_peft(model) else None
    for unit in weight_units(model):
        with gathered_params(p for _, p in unit), torch.no_grad():
            yield _unit_weights(unit, lora)


def weight_metadata(model: torch.nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``(hf_name, dtype, full shape)`` of every tensor :func:`weight_chunks` yields, in the same
    order, without gathering anything (a ZeRO-3 partition knows its full ``ds_shape``)."""
    peft = _is_peft(model)
    out = []
    for unit in weight_units(model):
        for name, param in unit:
            base = _base_name(name) if peft else name
            if base is not None:
                out.append((base, param.dtype, tuple(getattr(param, "ds_shape", param.shape))))
    return out


def join_gathers(model: torch.nn.Module) -> None:
    """Take part in the gathers of a :func:`weight_chunks` pass another process runs (one that
    sends the weights while this one has nothing to send): one gather per unit, same order."""
    if not any(_partitioned(p) for p in model.parameters()):
        return
    for unit in weight_units(model):
        with gathered_params(p for _, p in unit):
            pass


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` of the model's full weights, LoRA merged; use inside
    :func:`exported` (or :func:`gathered`) so that ZeRO-3 tensors outlive their unit."""
    return chain.from_iterable(weight_chunks(model))


@contextmanager
def exported(model: torch.nn.Module):
    """``with exported(actor) as weights:`` a list of ``(hf_name, tensor)`` of the whole model,
    gathered and merged at once — for tools and tests; engine syncs stream
    :func:`weight_chunks` instead."""
    with gathered(model), torch.no_grad():
        yield list(hf_weights(model))


def save_weights(weights: Iterable[tuple[str, torch.Tensor]], directory: Path) -> Path:
    """One safetensors file of ``weights`` in ``directory``, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in weights}
    final = directory / WEIGHTS_FILE
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp))
    return final


def load_saved_weights(path: str | Path) -> list[tuple[str, torch.Tensor]]:
    return list(load_file(str(path)).items())


# ------------------------------------------------------------------ vLLM side


def _packed_linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Linear layers whose weight the CPU backend moved into a packed copy (empty ``weight``)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod  # lazy: vllm optional

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "quant_method", None), UnquantizedLinearMethod)
        and hasattr(m, "cpu_linear")
        and m.weight.numel() == 0
    }


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


def _repack(layers: Iterable[torch.nn.Module]) -> None:
    """Re-run the CPU packing of the linear and embedding layers among ``layers`` from their
    current weights (a linear layer's unpacked weight is dropped again)."""
    # lazy: vllm is optional (this side runs inside the vLLM worker)
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    for m in layers:
        method = getattr(m, "quant_method", None)
        if isinstance(method, UnquantizedLinearMethod | UnquantizedEmbeddingMethod):
            method.process_weights_after_loading(m)


def _modules_sharing_weights(model: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """``{module name: every module holding one of its own parameters}`` (itself included). A
    tied LM head is often a module of its own holding the input embedding's weight (vLLM's
    ``ParallelLMHead.tie_weights``), and on CPU it computes with its own packed copy: loading the
    embedding must re-pack it too."""
    named = list(model.named_modules(remove_duplicate=False))
    holders: dict[int, list[torch.nn.Module]] = {}
    for _, module in named:
        for param in module.parameters(recurse=False):
            same = holders.setdefault(id(param), [])
            if all(m is not module for m in same):
                same.append(module)
    return {
        name: [m for p in module.parameters(recurse=False) for m in holders[id(p)]] or [module]
        for name, module in named
    }


class InPlaceLoader:
    """Loads HF-named weights into a live vLLM ``model``, any number of chunks, then
    :meth:`finish`. On GPU each chunk is ``model.load_weights``. On CPU (see the module
    docstring) packed linear layers get a full-size weight on creation — allocated, untouched
    until a chunk writes into it — and the layers a chunk loaded are re-packed right after it,
    so only about one chunk's unpacked weights exist at any time; :meth:`finish` re-packs layers
    no chunk reached and raises naming them (they would compute with uninitialised weights)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.on_cpu = any(hasattr(m, "cpu_linear") for m in model.modules())
        self.unpacked = _packed_linear_layers(model)
        for layer in self.unpacked.values():
            _restore_weight_parameter(layer)
        self.loaded = 0
        self.names_unknown = False  # a model whose load_weights does not say what it loaded
        self.sharing = _modules_sharing_weights(model) if self.on_cpu else {}

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load one chunk; returns how many vLLM parameters it set."""
        with torch.no_grad():
            names = self.model.load_weights(weights)
        if names is None:
            self.names_unknown = True
            return 0
        if self.on_cpu and not self.names_unknown:
            modules = {n.rpartition(".")[0] for n in names}
            shared = (self.sharing.get(m) or [self.model.get_submodule(m)] for m in modules)
            layers = {id(x): x for group in shared for x in group}  # tied ones included
            _repack(layers.values())
            for m in modules:
                self.unpacked.pop(m, None)
        self.loaded += len(names)
        return len(names)

    def finish(self) -> int:
        """Re-pack what is left (everything, when the model did not name what it loaded);
        returns the number of vLLM parameters loaded in all."""
        if not self.on_cpu:
            return self.loaded
        if self.names_unknown:
            _repack(self.model.modules())
            return self.loaded
        missed, self.unpacked = list(self.unpacked), {}
        _repack(self.model.get_submodule(m) for m in missed)
        if missed:
            raise RuntimeError(
                f"weight sync: no weights reached {len(missed)} layer(s) of the vLLM model, "
                f"e.g. {missed[:3]} (the trainer's model and the engine's differ)"
            )
        return self.loaded


@contextmanager
def loading_in_place(model: torch.nn.Module):
    """``with loading_in_place(model) as loader:`` call ``loader.load(chunk)`` any number of
    times (:class:`InPlaceLoader`); finished on exit."""
    loader = InPlaceLoader(model)
    yield loader
    loader.finish()


def load_weights_in_place(
    model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]
) -> int:
    """Load HF-named ``weights`` (whole layers at a time) into a live vLLM ``model``; returns
    how many parameters it set. The weights are loaded layer by layer (:func:`layer_key`), so on
    CPU the unpacked copies of one layer exist at a time."""
    with loading_in_place(model) as loader:
        for _, chunk in groupby(weights, key=lambda item: layer_key(item[0])):
            loader.load(list(chunk))
    return loader.loaded
