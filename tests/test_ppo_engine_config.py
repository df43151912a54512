"""PPO's rollout-engine settings: flat fields, the dotted/nested spellings, the factory options,
and the engine-vs-trainer logprob gap (fast; no vLLM)."""

from __future__ import annotations

import pytest
import torch

from align.ppo_config import PPOConfig


def test_dotted_nested_and_flat_spellings_mean_the_same_field(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("rollout: {engine: vllm}\nvllm: {dtype: bfloat16}\n", encoding="utf-8")
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("rollout.engine: vllm-server\n", encoding="utf-8")
    assert PPOConfig.from_sources(nested).rollout_engine == "vllm"
    assert PPOConfig.from_sources(nested).vllm_dtype == "bfloat16"
    assert PPOConfig.from_sources(dotted).rollout_engine == "vllm-server"
    cfg = PPOConfig.from_sources(None, ["--rollout.engine", "vllm", "--sync_every", "2"])
    assert (cfg.rollout_engine, cfg.sync_every) == ("vllm", 2)
    # a mapping-valued field keeps its mapping (it is not flattened)
    cfg = PPOConfig.from_sources(None, ["--category_weights", "{保险: 2}"])
    assert cfg.category_weights == {"保险": 2}


def test_engine_settings_are_validated(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("rollout_engine: hf\nrollout.engine: vllm\n", encoding="utf-8")
    with pytest.raises(ValueError, match="rollout_engine: given twice"):
        PPOConfig.from_sources(both)
    with pytest.raises(ValueError, match="rollout_engine: expected one of hf, vllm, vllm-server"):
        PPOConfig(rollout_engine="sglang")
    with pytest.raises(ValueError, match="sync_every: expected >= 1"):
        PPOConfig(sync_every=0)
    with pytest.raises(ValueError, match="vllm_server_url: expected http"):
        PPOConfig(vllm_server_url="localhost:8000")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        PPOConfig(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"unknown PPOConfig fields \['rollout.engin'\]"):
        PPOConfig.from_sources(None, ["--rollout.engin", "vllm"])


def test_engine_options_from_flat_fields():
    from align.ppo_run import engine_options

    assert engine_options(PPOConfig()) == {"batch_size": 64}
    cfg = PPOConfig(rollout_engine="vllm", vllm_gpu_memory_utilization=0.5, vllm_max_model_len=512,
                    vllm_kv_cache_bytes=2**28, seed=3)  # fmt: skip
    assert engine_options(cfg) == {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": 512,
        "dtype": "auto",
        "enable_sleep_mode": False,
        "kv_cache_memory_bytes": 2**28,
        "seed": 3,
    }
    cfg = PPOConfig(rollout_engine="vllm-server", vllm_server_url="http://127.0.0.1:8000")
    assert engine_options(cfg) == {"url": "http://127.0.0.1:8000", "timeout_s": 300.0}


def test_logprob_gap_is_mean_and_max_over_completion_tokens():
    from align.ppo import PPOTrainer
    from rollouts.base import RolloutBatch

    batch = RolloutBatch([[1], [1]], [[5, 6, 7], [8]], [[-1.0, -2.0, -0.5], [-0.25]],
                         ["stop", "length"])  # fmt: skip
    trainer = torch.tensor([[-1.5, -2.0, -0.4], [-1.0, 7.0, 7.0]])  # [2, T=3]; 7.0 = padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    total, count, peak = PPOTrainer._logprob_gap(batch, trainer, mask)
    # |−1 + 1.5| + |−2 + 2| + |−0.5 + 0.4| + |−0.25 + 1| = 0.5 + 0 + 0.1 + 0.75 = 1.35 over 4
    assert count == 4
    assert torch.isclose(total, torch.tensor(1.35)) and torch.isclose(peak, torch.tensor(0.75))
