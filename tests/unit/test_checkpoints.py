"""Checkpoint lookup, retention and the resume decision (no training)."""

from __future__ import annotations

import pytest

from align.core.checkpoints import checkpoint_to_resume, checkpoints, prune_checkpoints


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
