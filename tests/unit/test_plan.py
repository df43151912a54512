"""The memory-plan math (``align.plan``): hand-computed values, parameter counts against real
models, peft and the published totals, and activation counts against what autograd saves."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from align.plan import memory as M
from align.plan import models as Mo
from align.plan.ppo import PPORun, ppo_items

GB = 10**9


def dims(params: int, **kw) -> M.ModelDims:
    base = dict(params=params, layers=1, hidden=1, heads=1, kv_heads=1, head_dim=1,
                intermediate=1, vocab=1)  # fmt: skip
    return M.ModelDims(**{**base, **kw})


# --------------------------------------------------------------------------- model states


def test_one_billion_parameters_bf16_adam_zero3_over_8_processes_is_16_bytes_over_8():
    # ZeRO paper: 2 (bf16 weights) + 2 (bf16 grads) + 12 (fp32 master, m, v) = 16 B/param;
    # stage 3 divides all of it by N = 8: 1e9 × 16 / 8 = 2e9 bytes per process
    states = M.state_bytes("float32", "bf16", deepspeed=True, zero_stage=3)
    assert (states.weights, states.grads, states.optimizer) == (2, 2, 12)
    w, g, o = M.trainable_model_bytes(dims(GB), states, zero_stage=3, processes=8)
    assert (w, g, o) == (0.25 * GB, 0.25 * GB, 1.5 * GB)
    assert w + g + o == 2 * GB


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (0, (2 * GB, 2 * GB, 12 * GB)),  # 16 GB, nothing partitioned
        (1, (2 * GB, 2 * GB, 1.5 * GB)),  # optimizer states / 8
        (2, (2 * GB, 0.25 * GB, 1.5 * GB)),  # + gradients / 8
        (3, (0.25 * GB, 0.25 * GB, 1.5 * GB)),  # + weights / 8
    ],
)
def test_zero_stages_partition_what_the_paper_says(stage, expected):
    states = M.StateBytes(2, 2, 12)
    assert M.trainable_model_bytes(dims(GB), states, stage, 8) == expected


def test_plain_pytorch_adamw_keeps_its_states_in_the_parameter_dtype():
    assert M.state_bytes("float32", None, deepspeed=False, zero_stage=0) == M.StateBytes(4, 4, 8)
    assert M.state_bytes("bfloat16", None, deepspeed=False, zero_stage=0) == M.StateBytes(2, 2, 4)
    # DeepSpeed without mixed precision: stage 3 reuses fp32 weights as the master copy,
    # stages 1-2 clone their partition
    assert M.state_bytes("float32", None, True, 3) == M.StateBytes(4, 4, 8)
    assert M.state_bytes("float32", None, True, 2) == M.StateBytes(4, 4, 12)


def test_lora_trains_only_the_adapters_and_zero3_keeps_small_tensors_whole():
    # 1e9 frozen + 1e6 LoRA params, stage 3 over 4, 1e5 of them in small (persistent) tensors
    d = dims(GB + 10**6, trainable=10**6, small_params=10**5)
    w, g, o = M.trainable_model_bytes(d, M.StateBytes(2, 2, 12), 3, 4)
    assert w == (10**5 + (GB + 10**6 - 10**5) / 4) * 2
    assert (g, o) == (10**6 * 2 / 4, 10**6 * 12 / 4)


def test_frozen_models_are_sharded_only_under_zero3():
    d = dims(8 * GB)
    assert M.frozen_model_bytes(d, 2, zero_stage=3, processes=8) == 2 * GB
    assert M.frozen_model_bytes(d, 2, zero_stage=2, processes=8) == 16 * GB


def test_reduce_bucket_on_a_gpu_and_as_host_rss_sees_it():
    assert M.zero_buffer_bytes(3, 500_000_000, 2, trainable=10**6, host=False) == 1e9
    assert M.zero_buffer_bytes(3, 500_000_000, 2, trainable=10**6, host=True) == 2e6
    assert M.zero_buffer_bytes(0, 500_000_000, 2, trainable=10**6, host=False) == 0


# --------------------------------------------------------------------------- activations


LLAMA2_7B = M.ModelDims(params=6_738_415_616, layers=32, hidden=4096, heads=32, kv_heads=32,
                        head_dim=128, intermediate=11008, vocab=32000)  # fmt: skip


def test_layer_activations_of_llama2_7b_in_bf16_by_hand():
    # norms 2·(4 + 2·2)·4096 = 65,536 (float32 input, normalised values, scaled output);
    # attention 2·(2·4096 + 2·4096) + 4·32 = 32,896 (q, k, v, output; log-sum-exp per head);
    # MLP 2·4·11008 = 88,064 → 186,496 bytes per token (≈ 45.5h; Korthikanti's GPT layer: 34h)
    assert M.layer_activation_bytes(LLAMA2_7B, 2, seq=2048) == 186_496
    # eager keeps o_proj's input apart (3·4096 + 2·4096 at 2 bytes = 40,960), repeats no K/V
    # (MHA), and 32 heads × 2048 × (4 + 2) bytes of scores
    eager = M.layer_activation_bytes(LLAMA2_7B, 2, seq=2048, attention="eager")
    assert eager == 65_536 + 40_960 + 32 * 2048 * 6 + 88_064


def test_checkpointing_keeps_each_layer_input_and_one_layer():
    full = M.stored_activation_bytes(LLAMA2_7B, 2, batch=1, seq=1000, checkpointing=False)
    ckpt = M.stored_activation_bytes(LLAMA2_7B, 2, batch=1, seq=1000, checkpointing=True)
    norm = 8 * 4096  # the final norm
    assert full == 1000 * (32 * 186_496 + norm)
    assert ckpt == 1000 * (32 * 2 * 4096 + 186_496 + norm)


def test_kv_cache_of_llama2_7b_is_half_a_megabyte_per_token():
    # 2 (K, V) × 32 layers × 4096 × 2 bytes = 524,288 bytes per token
    assert M.kv_cache_bytes(LLAMA2_7B, sequences=1, seq=4096, e=2) == 2 * M.GIB


def test_logits_peaks_by_hand():
    # training: b·T·V·(2e + 20) — fp32 28 bytes, bf16 24 bytes per logit
    assert M.training_logits_bytes(2, 10, 100, 4) == 2 * 10 * 100 * 28
    assert M.training_logits_bytes(2, 10, 100, 2) == 2 * 10 * 100 * 24
    # scoring: fp32 logits, scaled copy and exp temporary; bf16 upcasts one row at a time
    assert M.scoring_logits_bytes(3, 10, 100, 4) == 3 * 1000 * 12
    assert M.scoring_logits_bytes(3, 10, 100, 2) == 3 * 1000 * 2 + 1000 * 12


def test_peak_is_the_resident_items_plus_the_largest_phase():
    items = [M.Item("a", 10), M.Item("g", 5, "generation"), M.Item("t", 4, "training"),
             M.Item("t2", 3, "training")]  # fmt: skip
    assert M.peak(items) == (17, "training")
    assert M.phase_totals(items) == {"generation": 15, "scoring": 10, "training": 17}
    assert M.peak([M.Item("a", 10)]) == (10, "always")


def test_sleeping_vllm_counts_only_while_generating_and_lora_has_no_reference():
    small = dims(10**6, layers=2, hidden=64, heads=2, kv_heads=2, head_dim=32,
                 intermediate=128, vocab=100)  # fmt: skip
    from align.plan.ppo import VLLM

    awake = PPORun(small, small, None, vllm=VLLM(2, kv_cache_bytes=1e6), engine="vllm")
    asleep = PPORun(small, small, None, vllm=VLLM(2, kv_cache_bytes=1e6, sleep_mode=True),
                    engine="vllm")  # fmt: skip
    phases = {i.name: i.phase for i in ppo_items(awake)}
    assert phases["vLLM weights"] == "always"
    assert {i.name: i.phase for i in ppo_items(asleep)}["vLLM weights"] == "generation"
    assert not any("reference" in i.name for i in ppo_items(awake))
    by_name = {i.name: i.bytes for i in ppo_items(awake)}
    assert by_name["vLLM weights"] == 2e6 and by_name["vLLM KV cache"] == 1e6


# --------------------------------------------------------------------------- counting parameters

TINY = {
    "llama": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, vocab_size=500),
    "qwen2": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, vocab_size=500,
                  tie_word_embeddings=True),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2, vocab_size=500, n_positions=128,
                 bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=2, vocab_size=500),
}  # fmt: skip


def _config(model_type: str, **extra):
    config = AutoConfig.for_model(model_type, **TINY[model_type], **extra)
    config.pad_token_id = 0
    return config


@pytest.mark.parametrize("model_type", list(TINY))
def test_parameter_count_from_config_equals_the_real_model(model_type):
    config = _config(model_type)
    real = AutoModelForCausalLM.from_config(config)
    assert Mo.model_dims(config).params == sum(p.numel() for p in real.parameters())
    config.num_labels = 1
    scalar = AutoModelForSequenceClassification.from_config(config)
    expected = sum(p.numel() for p in scalar.parameters())
    assert Mo.model_dims(config, head="scalar").params == expected


def test_layer_and_small_parameter_counts_by_hand():
    d = Mo.model_dims(_config("llama"), persistence_threshold=4096)
    # one layer: q 64·64, k 64·32, v 64·32, o 64·64, gate/up/down 3·64·176, 2 norms of 64
    assert d.layer_params == 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 176 + 2 * 64
    # tensors of at most 4096 elements: q, k, v, o and the norms of 2 layers, the final norm
    assert d.small_params == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 2 * 64) + 64
    assert (d.hidden, d.heads, d.kv_heads, d.head_dim, d.gated_mlp) == (64, 2, 1, 32, True)
    assert not Mo.model_dims(_config("gpt_neox")).gated_mlp


@pytest.mark.parametrize(("head", "task"), [("causal", "CAUSAL_LM"), ("scalar", "SEQ_CLS")])
def test_lora_parameters_equal_peft(head, task):
    from peft import LoraConfig, get_peft_model

    config = _config("llama")
    config.num_labels = 1
    cls = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type=task)
    model = get_peft_model(cls.from_config(config), lora)
    d = Mo.model_dims(config, head, lora_rank=8)
    assert d.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert d.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-3-8b", 8_030_261_248),
        ("llama-3-70b", 70_553_706_496),
        ("qwen2-0.5b", 494_032_768),
        ("qwen2-1.5b", 1_543_714_304),
        ("qwen2.5-7b", 7_615_616_512),
        ("qwen2.5-72b", 72_706_203_648),
    ],
)
def test_known_shapes_have_their_published_parameter_counts(name, published):
    assert Mo.model_dims(Mo.shape_config(name)).params == published


def test_a_path_that_is_neither_a_directory_nor_a_shape_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^policy: /nowhere/sft-7b is neither a model directory"):
        Mo.read_config("/nowhere/sft-7b", "policy")
    with pytest.raises(ValueError, match="--shape critic=NAME"):
        Mo.read_config(tmp_path, "critic")  # a directory without config.json


# --------------------------------------------------------------------------- against autograd


def _saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass of one forward (parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, logits_to_keep=1)
    return sum(seen.values())


@pytest.mark.parametrize(
    ("model_type", "attention", "dtype"),
    [("llama", "sdpa", torch.float32), ("llama", "sdpa", torch.bfloat16),
     ("llama", "eager", torch.float32), ("llama", "eager", torch.bfloat16),
     ("qwen2", "sdpa", torch.float32)],
)  # fmt: skip
def test_layer_activations_match_what_autograd_saves(model_type, attention, dtype):
    config = AutoConfig.for_model(model_type, **{**TINY[model_type], "hidden_size": 256,
                                  "intermediate_size": 688, "num_attention_heads": 8,
                                  "num_key_value_heads": 4})  # fmt: skip
    config._attn_implementation = attention
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    batch, seq = 2, 96
    measured = _saved_activation_bytes(model, torch.randint(0, 500, (batch, seq)))
    e = torch.finfo(dtype).bits // 8
    planned = M.stored_activation_bytes(Mo.model_dims(config), e, batch, seq, False, attention)
    assert planned == pytest.approx(measured, rel=0.06)


def test_checkpointed_activations_match_what_autograd_saves():
    config = AutoConfig.for_model("llama", **{**TINY["llama"], "hidden_size": 512,
                                  "num_attention_heads": 8, "num_key_value_heads": 4})  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).train()
    model.gradient_checkpointing_enable()
    batch, seq = 2, 64
    measured = _saved_activation_bytes(model, torch.randint(0, 500, (batch, seq)))
    # the forward keeps the layers' inputs and the final norm; the one recomputed layer of the
    # plan appears only in the backward pass
    d = Mo.model_dims(config)
    planned = M.stored_activation_bytes(d, 4, batch, seq, True)
    recomputed = batch * seq * M.layer_activation_bytes(d, 4, seq)
    assert planned - recomputed == pytest.approx(measured, rel=0.15)


def test_frozen_models_offloaded_or_sharded_and_a_server_on_the_main_node():
    from align.plan.ppo import VLLM, RewardModel

    big = dims(8 * GB, layers=2, hidden=64, heads=2, kv_heads=2, head_dim=32, intermediate=128,
               vocab=100, layer_params=10**6)  # fmt: skip
    rewards = (RewardModel("rewards[0]", big),)
    base = dict(actor=big, critic=big, reference=big, rewards=rewards, dtype="bfloat16")

    def by_name(run):
        return {i.name: (i.bytes, i.phase) for i in ppo_items(run)}

    # no DeepSpeed: whole copies, all run long
    plain = by_name(PPORun(**base))
    assert plain["reference"] == (16 * GB, "always")
    assert plain["reward model rewards[0]"] == (16 * GB, "always")
    # ZeRO-3 over 8: both are frozen engines, partitioned
    zero3 = by_name(PPORun(**base, deepspeed=True, zero_stage=3, processes=8,
                           mixed_precision="bf16"))  # fmt: skip
    assert zero3["reference"] == (2 * GB, "always")
    assert zero3["reward model rewards[0]"] == (2 * GB, "always")
    # offloaded: one whole model on the device while scoring (none on a host run)
    offloaded = by_name(PPORun(**base, offload_frozen=True))
    assert offloaded["reference / reward model rewards[0]"] == (16 * GB, "scoring")
    assert "reference" in by_name(PPORun(**base, offload_frozen=True, host=True))
    # the vLLM server align starts takes its share of the main node's GPUs all run long, and
    # ZeRO-3 syncs it one layer at a time
    server = VLLM(2, gpu_memory_utilization=0.35, server_on_this_node=True)
    items = by_name(PPORun(**base, engine="vllm-server", vllm=server, device_memory=80 * M.GIB,
                           deepspeed=True, zero_stage=3, processes=8,
                           mixed_precision="bf16"))  # fmt: skip
    assert items["vLLM server align starts"] == (0.35 * 80 * M.GIB, "always")
    assert items["weight sync: one layer gathered"] == (2 * 10**6, "generation")
    assert items["reserve: CUDA, NCCL, fragmentation"] == (2 * M.GIB, "always")
    assert "reserve: runtime on the host" not in by_name(PPORun(**base, host=True, reserve=0))
