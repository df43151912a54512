"""Model sizes for memory plans: parameters counted exactly from a ``config.json``, any
architecture transformers knows, by building the model on the meta device (no weights are read
or allocated); and a few well-known shapes to plan with before the weights are at hand.

The shapes are the published ``config.json`` values of each model (the fields that decide the
parameter count and the activations); their parameter counts match the published totals
(``tests/unit/test_plan.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from align.plan.memory import DEEPSPEED_PERSISTENCE_THRESHOLD, ModelDims

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 8192,
           "rope_theta": 500000.0}  # fmt: skip
_QWEN2 = {"model_type": "qwen2", "vocab_size": 151936, "max_position_embeddings": 32768}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 152064, "max_position_embeddings": 32768}

#: Well-known shapes (their ``config.json`` fields), by the name ``--shape ROLE=NAME`` takes.
SHAPES: dict[str, dict] = {
    "llama-2-7b": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8},
    "llama-3-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "qwen2-0.5b": {**_QWEN2, "hidden_size": 896, "intermediate_size": 4864,
                   "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                   "tie_word_embeddings": True},
    "qwen2-1.5b": {**_QWEN2, "hidden_size": 1536, "intermediate_size": 8960,
                   "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                   "tie_word_embeddings": True},
    "qwen2.5-7b": {**_QWEN25, "hidden_size": 3584, "intermediate_size": 18944,
                   "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "tie_word_embeddings": False},
    "qwen2.5-72b": {**_QWEN25, "hidden_size": 8192, "intermediate_size": 29568,
                    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "tie_word_embeddings": False},
}  # fmt: skip

#: The linear layer types LoRA adapts (transformers' GPT-2 uses ``Conv1D``, weight ``[in, out]``).
LINEAR_TYPES = (torch.nn.Linear, Conv1D)
#: Heads peft leaves out of ``all-linear`` (output layers and sequence-classification heads).
HEAD_NAMES = ("lm_head", "embed_out", "score", "classifier")


def shape_config(name: str):
    """The transformers config of a well-known shape (:data:`SHAPES`)."""
    fields = dict(SHAPES[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def read_config(source: str | Path, field: str):
    """The transformers config of ``source``: a model directory (its ``config.json``) or the
    name of a known shape. A one-line ValueError naming ``field`` otherwise."""
    if str(source).lower() in SHAPES:
        return shape_config(str(source).lower())
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            values = json.loads((path / "config.json").read_text(encoding="utf-8"))
            return AutoConfig.for_model(values.pop("model_type"), **values)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"{field}: {path}/config.json: not a transformers config ({error})"
            ) from None
    known = ", ".join(SHAPES)
    raise ValueError(
        f"{field}: {source} is neither a model directory (with config.json) nor a known shape "
        f"({known}); give a directory, or --shape {field}=NAME"
    )


def build_on_meta(config, head: str) -> torch.nn.Module:
    """The model of ``config`` on the meta device: ``head`` "causal" (a causal LM) or "scalar"
    (sequence classification with one label: a reward model or critic)."""
    config = _copy(config)
    config.architectures = None
    with torch.device("meta"):
        if head == "scalar":
            config.num_labels = 1
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def _copy(config):
    return type(config).from_dict(config.to_dict())


def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings once), as ``model.parameters()`` yields them."""
    return sum(p.numel() for p in model.parameters())


def lora_params(model: torch.nn.Module, rank: int, targets: str | Sequence[str]) -> int:
    """Parameters LoRA adds to ``model``: ``r·(in + out)`` for each adapted linear layer.
    ``targets``: ``"all-linear"`` (every linear layer but the output and scalar heads, as peft
    does) or module names matched on their last component(s)."""
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, LINEAR_TYPES) or not _targeted(name, targets):
            continue
        if isinstance(module, Conv1D):
            fan_in, fan_out = module.weight.shape
        else:
            fan_out, fan_in = module.weight.shape
        total += rank * (fan_in + fan_out)
    return total


def _targeted(name: str, targets: str | Sequence[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    if targets == "all-linear":
        return last not in HEAD_NAMES
    wanted = [targets] if isinstance(targets, str) else list(targets)
    return any(name == t or name.endswith("." + t) for t in wanted)


def head_params(model: torch.nn.Module) -> int:
    """Parameters of a sequence-classification head (trained in full under LoRA)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return count_params(head)
    return 0


def small_params(model: torch.nn.Module, threshold: int = DEEPSPEED_PERSISTENCE_THRESHOLD) -> int:
    """Parameters in tensors of at most ``threshold`` elements (ZeRO-3 keeps them whole)."""
    return sum(p.numel() for p in model.parameters() if p.numel() <= threshold)


def layer_params(model: torch.nn.Module) -> int:
    """Parameters of one decoder layer: the first entry of the model's longest ``ModuleList``
    (no attribute names assumed)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        return 0
    return count_params(max(lists, key=len)[0])


def _gated(model: torch.nn.Module) -> bool:
    return any(n.rsplit(".", 1)[-1] in ("gate_proj", "gate_up_proj", "w1") for n, _ in
               model.named_modules())  # fmt: skip


def model_dims(
    config,
    head: str = "causal",
    lora_rank: int = 0,
    lora_targets: str | Sequence[str] = "all-linear",
    persistence_threshold: int = DEEPSPEED_PERSISTENCE_THRESHOLD,
) -> ModelDims:
    """:class:`ModelDims` of ``config`` with a causal-LM or scalar ``head``; with ``lora_rank``
    the trainable parameters are the adapters (plus a scalar head)."""
    model = build_on_meta(config, head)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    trainable = None
    if lora_rank:
        trainable = lora_params(model, lora_rank, lora_targets) + head_params(model)
    return ModelDims(
        params=count_params(model) + (trainable or 0),
        layers=text.num_hidden_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=intermediate or 4 * hidden,
        vocab=text.vocab_size,
        gated_mlp=_gated(model),
        trainable=trainable,
        small_params=small_params(model, persistence_threshold),
        layer_params=layer_params(model),
    )
