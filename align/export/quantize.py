"""Weight-only quantization of an export (``align export --quantize int8|int4``).

Round-to-nearest (RTN), symmetric, weights only (activations stay in the model's dtype):

- ``int8``: one scale per output channel (row) of every Linear layer;
- ``int4``: one scale per ``group_size`` consecutive input weights of a row.

The output head (``lm_head``, a reward model's ``score``) and the embeddings stay unquantized.
The directory is written in the compressed-tensors ``pack-quantized`` format (what
llm-compressor writes for W8A16 / W4A16): vLLM loads it as a quantized model (on a GPU both;
its CPU backend int4 only, in bfloat16), and transformers (with ``compressed-tensors``
installed) decompresses it on ``from_pretrained``. RTN needs no
calibration data and runs on CPU; calibrated methods (GPTQ, AWQ) are llm-compressor's and need a
GPU for models of real size (the command is in the README's export section).

Layer 3 (orchestration). May import: ``align.core``; transformers and compressed-tensors lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

#: ``--quantize`` values: none (the weights as they are), or bits of the weight-only scheme.
QUANTIZE_CHOICES = ("none", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
#: Linear layers left in full precision: the output heads (their error goes straight to logits).
KEEP_FULL = ("lm_head", "score")
#: compressed-tensors' storage format for weight-only int schemes (int32-packed; vLLM's WNA16).
FORMAT = "pack-quantized"
FIELD = "--quantize"


@dataclass(frozen=True)
class Scheme:
    """A weight-only RTN scheme: ``bits`` (8 or 4) and ``group_size`` (None: per channel)."""

    bits: int
    group_size: int | None


def scheme_of(quantize: str, group_size: int = 128) -> Scheme | None:
    """The scheme ``--quantize`` names (None for ``none``); one-line ValueError otherwise.
    ``group_size`` applies to int4 only (int8 is per channel)."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"{FIELD}: {quantize!r}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "none":
        return None
    if quantize == "int4" and group_size < 1:
        raise ValueError(f"--group_size: {group_size}: expected a positive integer")
    return Scheme(BITS[quantize], group_size if quantize == "int4" else None)


def rtn_scales(weight: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Symmetric RTN scales of ``weight`` [out, in], as compressed-tensors computes them:
    max |w| / ((2^bits - 1) / 2), the integer range [-2^(bits-1), 2^(bits-1) - 1] spread over
    [-max |w|, max |w|]. Returns [out, 1] per channel, [out, in / group_size] per group."""
    rows = weight.shape[0]
    groups = weight if scheme.group_size is None else weight.reshape(rows, -1, scheme.group_size)
    peak = groups.abs().amax(dim=-1).reshape(rows, -1)
    levels = (2**scheme.bits - 1) / 2  # 127.5 for int8, 7.5 for int4: compressed-tensors' range
    eps = torch.finfo(weight.dtype).eps
    return torch.clamp(peak / levels, min=eps)


def fake_quantize(weight: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """``weight`` [out, in] rounded to the scheme's grid and scaled back (what a quantized
    model computes with); an independent reference for tests."""
    scale = rtn_scales(weight, scheme)
    low, high = -(2 ** (scheme.bits - 1)), 2 ** (scheme.bits - 1) - 1
    rows = weight.shape[0]
    if scheme.group_size is None:
        return torch.clamp(torch.round(weight / scale), low, high) * scale
    groups = weight.reshape(rows, -1, scheme.group_size)
    q = torch.clamp(torch.round(groups / scale.unsqueeze(-1)), low, high) * scale.unsqueeze(-1)
    return q.reshape(weight.shape)


def quantized_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers the scheme quantizes (all but :data:`KEEP_FULL`), by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP_FULL
    }


def check_group_size(layers: dict[str, torch.nn.Linear], scheme: Scheme) -> None:
    """Every layer's input width is a multiple of the group size (one line naming a layer)."""
    if scheme.group_size is None:
        return
    for name, layer in layers.items():
        if layer.in_features % scheme.group_size:
            raise ValueError(
                f"--group_size: {scheme.group_size} does not divide {name}'s input width "
                f"{layer.in_features}; choose a divisor (e.g. 32, 64 or 128)"
            )


def _quantization_config(scheme: Scheme, ignore: list[str]):
    """compressed-tensors' config of the scheme: W{bits}A16, symmetric int, frozen."""
    # lazy: compressed-tensors loads only for quantized exports
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    weights = QuantizationArgs(
        num_bits=scheme.bits,
        type="int",
        symmetric=True,
        strategy="channel" if scheme.group_size is None else "group",
        group_size=scheme.group_size,
    )
    group = QuantizationScheme(targets=["Linear"], weights=weights)
    return QuantizationConfig(
        config_groups={"group_0": group},
        ignore=ignore,
        quantization_status="frozen",
        format=FORMAT,
    )


def _set_scales(layers: dict[str, torch.nn.Linear], scheme: Scheme) -> None:
    """Each layer's ``weight_scale`` (and zero ``weight_zero_point``) from its weight."""
    with torch.no_grad():
        for layer in layers.values():
            scale = rtn_scales(layer.weight.data, scheme)
            layer.weight_scale.data.copy_(scale.reshape(layer.weight_scale.shape))
            layer.weight_zero_point.data.zero_()


def quantize_directory(directory: Path, scheme: Scheme) -> None:
    """Replace the weights of the model directory ``directory`` (config.json + safetensors)
    with their ``scheme`` quantization in the compressed-tensors format, in place; the config
    gains its ``quantization_config``."""
    # lazy: transformers and compressed-tensors load only for quantized exports
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config
    from transformers import (  # lazy: as above
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    config = AutoConfig.from_pretrained(directory)
    causal = any(str(a).endswith("ForCausalLM") for a in config.architectures or [])
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    with torch.device("meta"):  # the layer shapes, checked before any weight is read
        check_group_size(quantized_layers(auto.from_config(config)), scheme)
    model = auto.from_pretrained(directory, dtype="auto", use_safetensors=True)
    layers = quantized_layers(model)
    ignore = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in layers
    ]
    apply_quantization_config(model, _quantization_config(scheme, ignore))
    _set_scales(layers, scheme)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMAT)
    compressor.compress_model(model)
    for old in directory.glob("model*.safetensors*"):
        old.unlink()
    model.save_pretrained(directory, safe_serialization=True)
    compressor.update_config(directory)
