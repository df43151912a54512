"""Write an export: a standalone Hugging Face model directory that loads with
``from_pretrained`` and nothing from align.

- weights: a full model's safetensors files are copied as they are (no reload, so a 70B export
  needs no memory for the model); a LoRA adapter is merged into its base model (PEFT
  ``merge_and_unload``) and saved as safetensors. Nothing pickled is read or written.
- tokenizer: the run's one, with the run's chat format as its chat template.
- ``generation_config.json`` (causal LMs): the tokenizer's bos / eos / pad ids, and the run's
  sampling settings (temperature, top-p, top-k, answer length) when it sampled (PPO, PEI).
- ``quantize``: int8 / int4 weight-only quantization in the compressed-tensors format (the model
  is loaded once, so this needs its size in memory, unlike the plain copy), which
  vLLM and transformers load (:mod:`align.export.quantize`).
- a reward model's ``score_stats.json`` comes along (``{type: model, normalize: true}`` reads it).

The directory is filled next to ``out`` and renamed into place, so ``out`` is never half
written; a non-empty ``out`` is replaced only when asked.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from align.core.chat_formats import get_chat_format, save_tokenizer
from align.core.io import atomic_directory
from align.core.models import check_model_dir, load_pretrained
from align.core.outputs import check_output_dir
from align.export.locate import FIELD, Source, locate
from align.export.quantize import Scheme, quantize_directory, scheme_of

#: Files of a full model directory that make up the exported model (weights and config).
MODEL_FILES = ("config.json", "model.safetensors.index.json")
#: Files beside the weights that travel with the model.
EXTRA_FILES = ("score_stats.json",)
OUT = "--out"


@dataclass(frozen=True)
class Export:
    """What :func:`export_model` wrote."""

    out: Path
    model_dir: Path
    base_model: Path | None  # the base a LoRA adapter was merged into; None for a full model
    chat_format: str
    generation: dict | None  # generation_config.json's settings; None for a reward model
    scheme: Scheme | None = None  # the weight-only quantization written; None: weights as they are


def _is_inside(path: Path, ancestor: Path) -> bool:
    path, ancestor = path.resolve(), ancestor.resolve()
    return path == ancestor or ancestor in path.parents


def check_out(out: str | Path, models: list[Path], overwrite: bool) -> Path:
    """``out`` when the export may be written there: not a folder the exported model (or its
    base) lies in, empty or absent unless ``overwrite``, writable."""
    out = Path(out)
    for model in models:
        if _is_inside(model, out):
            raise ValueError(
                f"{OUT}: {out} holds the model being exported ({model}); choose another directory"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{OUT}: {out} is not empty; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{OUT}: {out} is a file; expected a directory")
    return check_output_dir(out, OUT)


def base_model_of(source: Source, base_model: str | Path | None) -> Path:
    """The base model directory of a LoRA adapter: ``base_model`` if given, else the one its
    ``adapter_config.json`` names (the policy the run started from)."""
    if base_model is not None:
        return check_model_dir(base_model, "--base_model")
    adapter = json.loads((source.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    named = adapter.get("base_model_name_or_path")
    if not named or not Path(named).is_dir():
        raise FileNotFoundError(
            f"{FIELD}: {source.model_dir}: the LoRA adapter's base model {named!r} is not a "
            "directory here; pass --base_model DIR"
        )
    return check_model_dir(named, "--base_model")


def _auto_class(task_type: str | None):
    """The transformers class a LoRA adapter's ``task_type`` was trained on."""
    # lazy: transformers' Auto classes (~2 s) stay off 'align --help'
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task_type == "SEQ_CLS":
        return AutoModelForSequenceClassification, {"num_labels": 1}
    return AutoModelForCausalLM, {}


def write_merged(adapter_dir: Path, base_dir: Path, out: Path) -> None:
    """The base model with the LoRA adapter merged into its weights, saved (safetensors)."""
    from peft import PeftModel  # lazy: peft only for LoRA adapters

    task_type = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    auto, kwargs = _auto_class(task_type.get("task_type"))
    base = load_pretrained(auto, base_dir, "--base_model", **kwargs)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)


def copy_model_files(model_dir: Path, out: Path) -> None:
    """The config and every safetensors file of a full model directory (nothing pickled)."""
    names = [n for n in MODEL_FILES if (model_dir / n).is_file()]
    names += sorted(p.name for p in model_dir.glob("*.safetensors"))
    for name in names:
        shutil.copy2(model_dir / name, out / name)


def load_tokenizer(source: Source, base_dir: Path | None):
    """The run's tokenizer: beside the model, else beside a LoRA adapter's base model."""
    from transformers import AutoTokenizer  # lazy: as in _auto_class

    for directory in (source.model_dir, base_dir):
        if directory is not None and (directory / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(directory)
    raise ValueError(
        f"{FIELD}: {source.model_dir}: no tokenizer (tokenizer_config.json) to export with it"
    )


def generation_settings(tokenizer, sampling: dict) -> dict:
    """``generation_config.json`` fields: the tokenizer's special ids and the run's sampling
    (``do_sample`` with a temperature above 0; PPO's ``top_k: 0`` means no top-k, as in
    transformers)."""
    settings = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if "max_new_tokens" in sampling:
        settings["max_new_tokens"] = sampling["max_new_tokens"]
    if sampling.get("temperature", 0) > 0:
        settings["do_sample"] = True
        settings.update(
            {k: sampling[k] for k in ("temperature", "top_p", "top_k") if k in sampling}
        )
    return settings


def write_generation_config(out: Path, settings: dict) -> None:
    """``generation_config.json`` from the model's config and ``settings``."""
    from transformers import AutoConfig, GenerationConfig  # lazy: as in _auto_class

    config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(out))
    config.update(**settings)
    config._from_model_config = False  # set on purpose: transformers must not rebuild it
    config.save_pretrained(out)


def _is_causal_lm(directory: Path) -> bool:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def export_model(
    path: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    chat_format: str | None = None,
    base_model: str | Path | None = None,
    quantize: str = "none",
    group_size: int = 128,
) -> Export:
    """Export the model ``path`` stands for (a run, a checkpoint or a model directory; see
    :mod:`align.export.locate`) into ``out``. ``chat_format``: the template the tokenizer gets;
    none = the run's (``hf``, the tokenizer's own, when the run names none). ``base_model``:
    the base a LoRA adapter merges into; none = the one the adapter names. ``quantize``:
    ``int8`` / ``int4`` (groups of ``group_size``) writes round-to-nearest weight-only
    quantized weights (:mod:`align.export.quantize`); ``none`` the weights as they are."""
    scheme = scheme_of(quantize, group_size)
    source = locate(path)
    fmt = chat_format or source.chat_format or "hf"
    get_chat_format(fmt)  # an unknown name fails here, before anything is read or written
    base = base_model_of(source, base_model) if source.is_adapter else None
    out = check_out(out, [m for m in (source.model_dir, base) if m is not None], overwrite)
    tokenizer = load_tokenizer(source, base)
    generation = None
    with atomic_directory(out) as tmp:
        if base is None:
            copy_model_files(source.model_dir, tmp)
        else:
            write_merged(source.model_dir, base, tmp)
        if scheme is not None:
            quantize_directory(tmp, scheme)
        save_tokenizer(tokenizer, tmp, fmt)
        if _is_causal_lm(tmp):
            generation = generation_settings(tokenizer, source.sampling)
            write_generation_config(tmp, generation)
        for name in EXTRA_FILES:
            if (source.model_dir / name).is_file():
                shutil.copy2(source.model_dir / name, tmp / name)
    return Export(out, source.model_dir, base, fmt, generation, scheme)
