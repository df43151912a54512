"""PPO's rollout-engine settings: flat fields, the dotted/nested spellings, the factory options,
and the engine-vs-trainer logprob gap, the server command (fast; no engine starts)."""

from __future__ import annotations

import json

import pytest
import torch

from align.ppo.config import PPOConfig


def test_dotted_nested_and_flat_spellings_mean_the_same_field(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("rollout: {engine: vllm, vllm: {dtype: bfloat16}}\n", encoding="utf-8")
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("rollout.engine: vllm-server\n", encoding="utf-8")
    assert PPOConfig.from_sources(nested).rollout.engine == "vllm"
    assert PPOConfig.from_sources(nested).rollout.vllm.dtype == "bfloat16"
    assert PPOConfig.from_sources(dotted).rollout.engine == "vllm-server"
    cfg = PPOConfig.from_sources(None, ["--rollout.engine", "vllm", "--rollout.sync_every", "2"])
    assert (cfg.rollout.engine, cfg.rollout.sync_every) == ("vllm", 2)
    # a mapping-valued field keeps its mapping (it is not flattened)
    cfg = PPOConfig.from_sources(None, ["--category_weights", "{保险: 2}"])
    assert cfg.category_weights == {"保险": 2}


def test_old_flat_spellings_still_work_and_warn(tmp_path, monkeypatch):
    monkeypatch.setattr("align.core.config._warned", set())  # warned once per process
    old = tmp_path / "old.yaml"
    old.write_text("rollout_engine: vllm\nvllm_dtype: bfloat16\nsync_every: 3\n", encoding="utf-8")
    with pytest.warns(FutureWarning, match="old spelling"):
        cfg = PPOConfig.from_sources(old, ["--vllm_server_timeout_s", "5"])
    assert (cfg.rollout.engine, cfg.rollout.vllm.dtype, cfg.rollout.sync_every) == (
        "vllm", "bfloat16", 3)  # fmt: skip
    assert cfg.rollout.server.timeout_s == 5.0


@pytest.mark.filterwarnings("ignore::align.core.config.ConfigWarning")
def test_engine_settings_are_validated(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("rollout_engine: hf\nrollout.engine: vllm\n", encoding="utf-8")
    with pytest.raises(ValueError, match="rollout.engine: given twice"):
        PPOConfig.from_sources(both)
    with pytest.raises(ValueError, match="rollout.engine: expected one of hf, vllm, vllm-server"):
        PPOConfig.from_sources(None, ["--rollout.engine", "sglang"])
    with pytest.raises(ValueError, match="rollout.sync_every: expected >= 1"):
        PPOConfig.from_sources(None, ["--rollout.sync_every", "0"])
    with pytest.raises(ValueError, match="rollout.server.url: expected http"):
        PPOConfig.from_sources(None, ["--rollout.server.url", "localhost:8000"])
    with pytest.raises(ValueError, match=r"rollout.vllm.gpu_memory_utilization: .*\(0, 1\]"):
        PPOConfig.from_sources(None, ["--rollout.vllm.gpu_memory_utilization", "1.5"])
    with pytest.raises(ValueError, match="rollout.server.weight_sync: expected one of auto, nccl"):
        PPOConfig.from_sources(None, ["--rollout.server.weight_sync", "rsync"])
    with pytest.raises(ValueError, match="'rollout.engin' of RolloutConfig; did you mean 'engine'"):
        PPOConfig.from_sources(None, ["--rollout.engin", "vllm"])


def test_engine_options_from_the_rollout_config():
    from align.ppo.run import engine_options
    from rollouts.config import RolloutConfig, ServerOptions, VLLMOptions

    assert engine_options(PPOConfig()) == {"batch_size": 64}
    vllm = VLLMOptions(gpu_memory_utilization=0.5, max_model_len=512, kv_cache_memory_bytes=2**28)
    cfg = PPOConfig(rollout=RolloutConfig(engine="vllm", vllm=vllm), seed=3)
    assert engine_options(cfg) == {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": 512,
        "dtype": "auto",
        "enable_sleep_mode": False,
        "kv_cache_memory_bytes": 2**28,
        "seed": 3,  # unset: the run's seed
        "enforce_eager": None,
    }
    server = ServerOptions(url="http://127.0.0.1:8000", weight_sync="gloo",
                           sync_address="10.0.0.2", server_workers=4)  # fmt: skip
    cfg = PPOConfig(rollout=RolloutConfig(engine="vllm-server", server=server))
    options = engine_options(cfg)
    assert (options["url"], options["weight_sync"], options["sync_address"]) == (
        "http://127.0.0.1:8000", "gloo", "10.0.0.2")  # fmt: skip
    assert "dtype" not in options  # a running server's own settings apply
    # fields reach the engine's options by name
    assert ServerOptions(**options) == server
    with pytest.raises(ValueError, match="vllm: options of a server align starts"):
        RolloutConfig(engine="vllm-server", server=server, vllm=VLLMOptions(dtype="float16"))


def test_logprob_gap_is_mean_and_max_over_completion_tokens():
    from align.ppo.trainer import PPOTrainer
    from rollouts.base import RolloutBatch

    batch = RolloutBatch([[1], [1]], [[5, 6, 7], [8]], [[-1.0, -2.0, -0.5], [-0.25]],
                         ["stop", "length"])  # fmt: skip
    trainer = torch.tensor([[-1.5, -2.0, -0.4], [-1.0, 7.0, 7.0]])  # [2, T=3]; 7.0 = padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    total, count, peak = PPOTrainer._logprob_gap(batch, trainer, mask)
    # |−1 + 1.5| + |−2 + 2| + |−0.5 + 0.4| + |−0.25 + 1| = 0.5 + 0 + 0.1 + 0.75 = 1.35 over 4
    assert count == 4
    assert torch.isclose(total, torch.tensor(1.35)) and torch.isclose(peak, torch.tensor(0.75))


def test_tensor_parallel_colocated_engines_across_processes_are_refused(monkeypatch):
    pytest.importorskip("vllm")
    from rollouts.vllm_engine import VLLMOptions

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 for a vLLM engine inside"):
        VLLMOptions(tensor_parallel_size=2).colocated_kwargs()
    kwargs = VLLMOptions().colocated_kwargs()  # one replica per training process
    assert kwargs["distributed_executor_backend"] == "external_launcher"


def test_cpu_thread_binding_splits_the_cores(monkeypatch):
    from rollouts.vllm_engine import cpu_thread_binding

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert cpu_thread_binding(2) == "0,1|2,3"
    with pytest.raises(ValueError, match="tensor_parallel_size 8: only 5 CPU cores"):
        cpu_thread_binding(8)


@pytest.mark.parametrize(
    "weight_sync, backend", [("gloo", "align_gloo"), ("nccl", "nccl"), ("file", None)]
)
def test_server_command_asks_for_the_weight_transfer_backend(weight_sync, backend):
    pytest.importorskip("vllm")
    from rollouts.vllm_engine import VLLMOptions
    from rollouts.vllm_server import server_command
    from rollouts.vllm_worker_ext import EXTENSION

    cmd = server_command("/m", 8000, VLLMOptions(), weight_sync)
    assert cmd[cmd.index("--worker-extension-cls") + 1] == EXTENSION
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    if backend is None:
        assert "--weight-transfer-config" not in cmd
    else:
        config = json.loads(cmd[cmd.index("--weight-transfer-config") + 1])
        assert config == {"backend": backend}
