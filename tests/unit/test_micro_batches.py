"""Micro-batches by token budget: the packing, the split to a common count, and trimming the
all-padding columns of a micro-batch (which must not change a logprob or a value)."""

from __future__ import annotations

import pytest
import torch

from align.core.tensors import pack_by_token_budget, split_to_count
from align.ppo.trainer import ActorCritic, Experience, build_sequences


def padded_cost(group: torch.Tensor, p: list[int], c: list[int]) -> int:
    rows = group.tolist()
    return len(rows) * (max(p[i] for i in rows) + max(c[i] for i in rows))


def test_packing_by_hand():
    # totals p+c = [8, 2, 8, 6, 1]; longest first, ties in order: rows 0, 2, 3, 1, 4
    p, c = [3, 1, 2, 4, 1], [5, 1, 6, 2, 0]
    groups = pack_by_token_budget(torch.tensor(p), torch.tensor(c), budget=16)
    # [0] costs 1×(3+5)=8; +2 → 2×(3+6)=18 > 16, so 2 starts anew; +3 → 2×(4+6)=20 > 16;
    # [3] 1×(4+2)=6, +1 → 2×(4+2)=12 ≤ 16; +4 → 3×(4+2)=18 > 16
    assert [g.tolist() for g in groups] == [[0], [2], [3, 1], [4]]


def test_packing_partitions_the_rows_within_the_budget():
    gen = torch.Generator().manual_seed(0)
    p = torch.randint(1, 20, (50,), generator=gen)
    c = torch.randint(0, 30, (50,), generator=gen)
    for budget in (49, 64, 200, 1000):
        groups = pack_by_token_budget(p, c, budget)
        assert sorted(torch.cat(groups).tolist()) == list(range(50))
        assert all(padded_cost(g, p.tolist(), c.tolist()) <= budget for g in groups)
        # greedy: no micro-batch could have taken the next one's first row
        for g, nxt in zip(groups, groups[1:]):
            assert padded_cost(torch.cat([g, nxt[:1]]), p.tolist(), c.tolist()) > budget
    assert len(pack_by_token_budget(p, c, 10**6)) == 1


def test_a_row_over_the_budget_is_a_micro_batch_alone():
    groups = pack_by_token_budget(torch.tensor([2, 30, 2]), torch.tensor([2, 30, 2]), budget=8)
    assert [g.tolist() for g in groups] == [[1], [0, 2]]


def test_split_to_count_by_hand_and_its_limits():
    groups = [torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5])]
    # 5 rows → [0, 1, 2] + [3, 4]; then the 3 rows → [0, 1] + [2]
    out = split_to_count(groups, 4)
    assert [g.tolist() for g in out] == [[0, 1], [2], [3, 4], [5]]
    assert [g.tolist() for g in split_to_count(groups, 2)] == [[0, 1, 2, 3, 4], [5]]
    with pytest.raises(ValueError, match="cannot split 2 groups of 6 rows into 7"):
        split_to_count(groups, 7)
    with pytest.raises(ValueError, match="into 1"):
        split_to_count(groups, 1)


def experience(prompts: list[list[int]], completions: list[list[int]]) -> Experience:
    ids, attn, pos, mask = build_sequences(prompts, completions, pad_id=0)
    n, t = mask.shape
    gen = torch.Generator().manual_seed(0)
    return Experience(
        ids,
        attn,
        pos,
        mask,
        *(torch.randn(n, t, generator=gen) for _ in range(3)),
        scores=torch.arange(n, dtype=torch.float32),
    )


def test_trimming_drops_only_all_padding_columns():
    exp = experience([[5, 6, 7, 8], [9], [3, 4]], [[10, 11], [12, 13, 14, 15, 16], [17]])
    assert exp.input_ids.shape == (3, 4 + 5)
    # rows 1 and 2 alone: prompts of 1 and 2 tokens, completions of 5 and 1
    part = exp.select(torch.tensor([1, 2]))
    prompt, completion = part.lengths()
    assert prompt.tolist() == [1, 2] and completion.tolist() == [5, 1]
    trimmed = part.trimmed()
    assert trimmed.input_ids.tolist() == [[0, 9, 12, 13, 14, 15, 16], [3, 4, 17, 0, 0, 0, 0]]
    assert torch.equal(trimmed.position_ids, part.position_ids[:, 2:])
    assert torch.equal(trimmed.old_logprobs, part.old_logprobs)  # all 5 completion columns kept
    # rows 0 and 2: completions of 2 and 1 → 2 completion columns, prompts of 4 and 2
    short = exp.select(torch.tensor([0, 2])).trimmed()
    assert short.input_ids.tolist() == [[5, 6, 7, 8, 10, 11], [0, 0, 3, 4, 17, 0]]
    assert torch.equal(short.values, exp.values[[0, 2], :2])
    assert torch.equal(short.scores, torch.tensor([0.0, 2.0]))


def test_trimming_changes_no_logprob_or_value(random_lm):
    """The same rows through actor and critic with and without their padding columns."""
    from transformers import LlamaForSequenceClassification

    config = random_lm.config.__class__(**{**random_lm.config.to_dict(), "num_labels": 1})
    torch.manual_seed(1)
    model = ActorCritic(random_lm, LlamaForSequenceClassification(config).eval())
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    completions = [[20, 21], [22, 23, 24, 25, 26, 27], [28]]
    exp = experience(prompts, completions)
    part = exp.select(torch.tensor([1, 2]))  # 3 of the 6 prompt columns are padding in both
    trimmed = part.trimmed()
    assert trimmed.input_ids.shape[1] < part.input_ids.shape[1]
    with torch.no_grad():
        logprobs, _, values = model(part, 0.7)
        trimmed_logprobs, _, trimmed_values = model(trimmed, 0.7)
    mask = part.mask
    torch.testing.assert_close(trimmed_logprobs[mask], logprobs[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(trimmed_values[mask], values[mask], atol=1e-5, rtol=0)
    assert logprobs.dtype == values.dtype == torch.float32


def test_a_budget_below_one_whole_sample_is_refused():
    from align.ppo.config import PPOConfig

    expected = r"max_tokens_per_micro_batch: expected at least max_prompt_length \+ max_new_tokens"
    with pytest.raises(ValueError, match=expected + " = 60, got 59"):
        PPOConfig(max_prompt_length=40, max_new_tokens=20, max_tokens_per_micro_batch=59)
    assert PPOConfig(max_prompt_length=40, max_new_tokens=20, max_tokens_per_micro_batch=60)
