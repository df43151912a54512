"""Scalar-head models: reward models and critics (an LM body plus a linear head).

A reward model is ``AutoModelForSequenceClassification`` with one label: the chat LM without its
``lm_head`` plus a linear head on the last hidden state (the UFRM architecture). A critic is the
same model read at every token instead of the last one, so a critic initialised from a reward
model is simply that reward model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from align.core.models import check_model_dir
from align.core.tensors import gather_last


def require_safetensors(path: str | Path, field: str = "model") -> Path:
    """``path`` when it is a model directory with safetensors weights; else a one-line user
    error naming ``field`` and the directory (:func:`align.core.models.check_model_dir`).

    Pickled weights (``pytorch_model.bin``) can run arbitrary code when unpickled, so reward
    models are only ever loaded with ``use_safetensors=True``, after this check; the pickle
    file is never opened.
    """
    return check_model_dir(path, field)


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The linear head of a sequence-classification model: its one child module with parameters
    beside the body (``base_model``), whatever the architecture calls it (``score``,
    ``classifier``, a PEFT ``modules_to_save`` wrapper of either)."""
    body = model.base_model
    heads = [
        child
        for child in model.children()
        if child is not body and next(child.parameters(), None) is not None
    ]
    if len(heads) != 1:
        raise ValueError(
            f"{type(model).__name__}: expected one head module beside its body "
            f"'{model.base_model_prefix}', found {len(heads)}"
        )
    return heads[0]


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine (a frozen ZeRO-3 reward model: its
    hooks gather each layer's weights as it runs) and a PEFT wrapper (LoRA layers stay injected
    in it)."""
    if hasattr(model, "zero_optimization_stage"):  # only DeepSpeed engines have it
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T]`` float32 head outputs at every position of ``[B, T]`` inputs."""
    model = _unwrap_peft(model)
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    return score_head(model)(hidden)[..., 0].float()


def last_token_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[B]`` float32 scores read at the last attended token of right-padded ``[B, T]`` inputs
    (``attention_mask`` of any dtype: bool, integer or float).

    The head is applied here rather than trusting the model's own pooling, which finds the last
    token by ``input_ids != pad_token_id`` and so misses an EOS that shares the pad id.
    """
    model = _unwrap_peft(model)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return score_head(model)(gather_last(hidden, attention_mask))[:, 0].float()
