"""Models trained with attention logit soft-capping load with the attention that applies it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.core.models import load_pretrained, uses_attention_softcapping
from align.tiny.random_models import save_random_model


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return save_random_model("gemma2", tmp_path_factory.mktemp("gemma2") / "m")


def test_softcapping_is_read_from_the_config(gemma2, tmp_path):
    assert uses_attention_softcapping(gemma2)
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"text_config": {"attn_logit_softcapping": 50}}))
    assert uses_attention_softcapping(nested)
    (nested / "config.json").write_text(json.dumps({"attn_logit_softcapping": None}))
    assert not uses_attention_softcapping(nested)


def test_gemma2_loads_eager_unless_told_and_eager_differs_from_sdpa(gemma2):
    default = load_pretrained(AutoModelForCausalLM, gemma2, "policy").eval()
    assert default.config._attn_implementation == "eager"
    sdpa = load_pretrained(AutoModelForCausalLM, gemma2, "policy", attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"



def test_with_a_small_cap_eager_and_sdpa_disagree(gemma2, tmp_path):
    """Why eager: sdpa leaves the capping out (a cap of 0.5 makes it visible)."""
    capped = tmp_path / "capped"
    capped.mkdir()
    for f in gemma2.iterdir():
        (capped / f.name).write_bytes(f.read_bytes())
    config = json.loads((capped / "config.json").read_text())
    (capped / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": 0.5}))
    eager = load_pretrained(AutoModelForCausalLM, capped, "policy").eval()
    sdpa = load_pretrained(AutoModelForCausalLM, capped, "policy", attn_implementation="sdpa")
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        gap = (eager(ids).logits - sdpa.eval()(ids).logits).abs().max().item()
    assert gap > 2e-5  # measured 2e-4; float noise between the two is ~4e-7 (cap 50)


def test_a_model_without_softcapping_keeps_transformers_default(tmp_path):
    llama = save_random_model("llama", tmp_path / "llama")
    assert not uses_attention_softcapping(llama)
    model = load_pretrained(AutoModelForCausalLM, llama, "policy")
    plain = AutoModelForCausalLM.from_pretrained(llama)
    assert model.config._attn_implementation == plain.config._attn_implementation
