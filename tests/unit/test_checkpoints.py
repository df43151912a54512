"""Checkpoint lookup, retention, the resume decision, failed saves and loading only data
(no training)."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from align.core.checkpoints import (
    UnsafeCheckpointError,
    atomic_checkpoint,
    checkpoint_to_resume,
    checkpoints,
    load_data_only,
    prune_checkpoints,
    verify_data_only,
)


def make_run(tmp_path, steps):
    for step in steps:
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step}" / "state").write_text(str(step))
    (tmp_path / "checkpoints" / ".step-12.tmp").mkdir()  # an interrupted save: not a checkpoint
    return tmp_path


def test_checkpoints_sort_by_step_number_not_by_name(tmp_path):
    run = make_run(tmp_path, [2, 10, 4])
    assert [p.name for p in checkpoints(run)] == ["step-2", "step-4", "step-10"]


@pytest.mark.parametrize(
    "keep, left", [(None, [2, 4, 10]), (1, [10]), (2, [4, 10]), (5, [2, 4, 10])]
)
def test_prune_keeps_the_most_recent(tmp_path, keep, left):
    run = make_run(tmp_path, [2, 10, 4])
    removed = prune_checkpoints(run, keep)
    assert [p.name for p in checkpoints(run)] == [f"step-{s}" for s in left]
    assert len(removed) == 3 - len(left) and not any(p.exists() for p in removed)


def test_resume_decision(tmp_path):
    fresh = tmp_path / "fresh"
    assert checkpoint_to_resume(fresh, None, "PPO", "state") is None
    run = make_run(tmp_path / "run", [2, 4])
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume_from latest"):
        checkpoint_to_resume(run, None, "PPO", "state")
    assert checkpoint_to_resume(run, "latest", "PPO", "state").name == "step-4"
    step2 = run / "checkpoints" / "step-2"
    assert checkpoint_to_resume(run, str(step2), "PPO", "state") == step2
    with pytest.raises(FileNotFoundError, match="not a PPO checkpoint directory .no other."):
        checkpoint_to_resume(run, str(step2), "PPO", "other")
    with pytest.raises(FileNotFoundError, match="no checkpoints to resume from"):
        checkpoint_to_resume(fresh, "latest", "PPO", "state")


# --------------------------------------------------------------------------- failed saves


def test_a_failed_save_removes_its_temporary_directory_and_reraises(tmp_path):
    from accelerate import PartialState

    final = tmp_path / "checkpoints" / "step-3"
    state = PartialState()
    with pytest.raises(OSError, match="No space left"), atomic_checkpoint(state, final) as tmp:
        (tmp / "trainer_state.pt").write_bytes(b"\0" * 1000)
        raise OSError(28, "No space left on device")  # what a full disk raises midway
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the space is given back


def test_a_killed_saves_leftover_is_removed_at_the_next_save(tmp_path):
    from accelerate import PartialState

    run = make_run(tmp_path, [2])  # and .step-12.tmp, as a save killed at step 12 leaves it
    (run / "checkpoints" / ".step-12.tmp" / "accelerate").mkdir()
    (run / "checkpoints" / ".step-12.tmp" / "accelerate" / "optimizer.bin").write_bytes(b"x")
    assert checkpoint_to_resume(run, "latest", "PPO", "state").name == "step-2"  # ignored
    with atomic_checkpoint(PartialState(), run / "checkpoints" / "step-4", keep=None) as tmp:
        (tmp / "state").write_text("4")
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-2", "step-4"]
    assert (run / "checkpoints" / "step-4" / "state").read_text() == "4"
    assert (run / "checkpoints" / "step-4" / "accelerate").is_dir()


# --------------------------------------------------------------------------- fresh runs


def test_fresh_run_over_an_earlier_runs_metrics_is_refused(tmp_path):
    # a run killed during its first save: metrics of steps 0 and 1, no complete checkpoint
    (tmp_path / "checkpoints" / ".step-2.tmp").mkdir(parents=True)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0}\n{"step": 1}\n')
    with pytest.raises(ValueError) as caught:
        checkpoint_to_resume(tmp_path, None, "PPO", "trainer_state.pt")
    message = str(caught.value)
    assert "\n" not in message and str(metrics) in message
    assert "no checkpoint to resume from" in message and "another output_dir" in message
    metrics.write_text("")  # an empty file holds nothing to mix with
    assert checkpoint_to_resume(tmp_path, None, "PPO", "trainer_state.pt") is None


# --------------------------------------------------------------------------- only data


class CreatesAFile:
    """Unpickling this would call ``os.mkdir(path)``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def ppo_like_checkpoint(where):
    """The files of a PPO checkpoint, with PPO's own kinds of state (not trained)."""
    from align.core.core_algos import AdaptiveKLController, RunningMoments
    from align.core.mixture import MixtureSampler

    moments = RunningMoments()
    moments.update(torch.tensor([0.25, -1.5, 3.0]))
    sampler = MixtureSampler(["a", "b", "a", "c"], {"a": 0.5, "b": 0.25, "c": 0.25}, seed=7)
    sampler.sample(3)
    state = {
        "step": 4,
        "bad_steps": 0,
        "kl_ctl": AdaptiveKLController(0.05, 6.0, 1000).state_dict(),
        "score_stats": moments.state_dict(),
        "sampler": sampler.state_dict(),
    }
    (where / "accelerate").mkdir(parents=True)
    torch.save(state, where / "trainer_state.pt")
    rng = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state()}
    torch.save({**rng, "torch_manual_seed": torch.get_rng_state()}, where / "accelerate" / "x.pkl")
    return state


def test_checkpoint_state_loads_as_data_only_bitwise(tmp_path):
    state = ppo_like_checkpoint(tmp_path / "step-4")
    verify_data_only(tmp_path / "step-4")
    loaded = load_data_only(tmp_path / "step-4" / "trainer_state.pt")
    assert loaded["kl_ctl"] == state["kl_ctl"] and loaded["step"] == 4
    for key in ("mean", "m2"):
        assert torch.equal(loaded["score_stats"][key], state["score_stats"][key])
    generator = state["sampler"]["generator"]
    assert torch.equal(loaded["sampler"]["generator"], generator)
    assert loaded["sampler"]["weights"] == state["sampler"]["weights"]


@pytest.mark.parametrize(
    "name, protocol",
    [
        ("trainer_state.pt", None),  # torch's zip format
        ("accelerate/random_states_0.pkl", 0),  # a plain pickle, oldest protocol
        ("accelerate/pytorch_model/notes", 2),  # any name: recognised by its content
    ],
)
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, name, protocol):
    ckpt = tmp_path / "run" / "checkpoints" / "step-4"
    ppo_like_checkpoint(ckpt)
    marker = tmp_path / "created-by-the-pickle"
    crafted = ckpt / name
    crafted.parent.mkdir(parents=True, exist_ok=True)
    payload = {"step": 4, "x": CreatesAFile(marker)}
    if protocol is None:
        torch.save(payload, crafted)
    else:
        crafted.write_bytes(pickle.dumps(payload, protocol=protocol))
    for resume_from in ("latest", str(ckpt)):
        with pytest.raises(UnsafeCheckpointError) as caught:
            checkpoint_to_resume(tmp_path / "run", resume_from, "PPO", "trainer_state.pt")
        message = str(caught.value)
        assert message.startswith(f"{crafted}: refused to load") and "\n" not in message
        assert "weights_only=False" not in message  # not torch's advice to load it anyway
    with pytest.raises(UnsafeCheckpointError):
        load_data_only(crafted)
    assert not marker.exists()


def test_deepspeed_checkpoint_records_are_data(tmp_path):
    """DeepSpeed's ZeRO optimizer shard pickles its loss scaler, ZeRO stage and fragment
    addresses (seen in ZeRO-2/3 saves on this stack): allowed in a DeepSpeed checkpoint."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    shard = {
        "loss_scaler": LossScaler(1.0),
        "zero_stage": ZeroStageEnum(2),
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        "single_partition_of_fp32_groups": [torch.arange(4.0)],
    }
    name = "accelerate/pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    (tmp_path / name).parent.mkdir(parents=True)
    torch.save(shard, tmp_path / name)
    verify_data_only(tmp_path)
    (tmp_path / "accelerate" / "pytorch_model" / "extra.pt").write_bytes(
        pickle.dumps(CreatesAFile(tmp_path / "m"), protocol=2)
    )
    with pytest.raises(UnsafeCheckpointError, match="extra.pt: refused"):
        verify_data_only(tmp_path)
    assert not (tmp_path / "m").exists()
