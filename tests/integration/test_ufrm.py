"""UFRM trainer on the tiny world's reward backbone: TRL equality, views, gradients, bad input."""

from __future__ import annotations

import copy
import logging

import pytest
import torch


@pytest.fixture(scope="module")
def rm_pieces(tiny_world):
    from rm.ufrm import load_reward_model

    model, tok = load_reward_model(tiny_world.reward)
    return model, tok


def _records(n: int = 2):
    return [
        {
            "prompt": "请问复利怎么计算？",
            "chosen": "本息=本金×(1+r)^n。",
            "rejected": "不知道。",
            "category": "金融计算",
        },
        {
            "prompt": "什么是基金？",
            "chosen": "基金是集合投资工具。",
            "rejected": "基金是银行。",
            "category": "金融百科",
            "margin": 0.5,
        },
        {
            "prompt": "保险有什么用？",
            "chosen": "转移风险。",
            "rejected": "赚钱。",
            "category": "保险",
        },
    ][:n]


def _trainer(model, tok, tmp_path, cls=None, **kw):
    from datasets import Dataset

    from rm.ufrm import UFRMConfig, UFRMTrainer, encode_pairs

    data, _ = encode_pairs(_records(3), tok, "hf", 64)
    args = UFRMConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_length=64,
        per_device_train_batch_size=2,
        **kw,
    )
    cls = cls or UFRMTrainer
    if cls is not UFRMTrainer:
        from trl import RewardConfig

        args = RewardConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            max_length=64,
            per_device_train_batch_size=2,
        )
    return cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.remove_columns("category").to_list()),
        processing_class=tok,
    )


def _batch(trainer, n=2):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_bt_only_equals_trl_reward_trainer(rm_pieces, tmp_path):
    from trl import RewardTrainer

    model, tok = rm_pieces
    ours = _trainer(copy.deepcopy(model), tok, tmp_path / "a", irl_weight=0.0, cl_weight=0.0)
    trl = _trainer(copy.deepcopy(model), tok, tmp_path / "b", cls=RewardTrainer)
    batch = _batch(ours)
    assert "margin" in batch  # the second record has a margin: TRL subtracts it too
    losses, grads = [], []
    for t in (ours, trl):
        t.model.train()
        t.model.zero_grad()
        loss = t.compute_loss(t.model, dict(batch))
        loss.backward()
        losses.append(loss.item())
        grads.append(_grads(t.model))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7)


def test_all_terms_reach_backbone_head_and_projection(rm_pieces, tmp_path):
    model, tok = rm_pieces
    t = _trainer(copy.deepcopy(model), tok, tmp_path)
    t.model.train()
    loss = t.compute_loss(t.model, _batch(t, 2))
    loss.backward()
    g = dict(t.model.named_parameters())
    assert g["score.weight"].grad.abs().sum() > 0
    assert g["model.embed_tokens.weight"].grad.abs().sum() > 0
    assert g["model.layers.0.self_attn.q_proj.weight"].grad.abs().sum() > 0
    assert t.cl_proj.weight.grad.abs().sum() > 0
    metrics = t._metrics["train"]
    assert {
        "loss_bt",
        "loss_irl",
        "loss_cl",
        "accuracy",
        "margin",
        "reward_mean",
        "reward_std",
    } <= set(metrics)


def test_total_is_sum_of_logged_terms(rm_pieces, tmp_path):
    model, tok = rm_pieces
    t = _trainer(copy.deepcopy(model), tok, tmp_path, irl_weight=0.5, cl_weight=0.0)
    t.model.eval()  # deterministic
    loss = t.compute_loss(t.model, _batch(t, 2))
    m = t._metrics["eval"]
    assert loss.item() == pytest.approx(m["loss_bt"][-1] + 0.5 * m["loss_irl"][-1], rel=1e-5)


def test_simcse_views_differ_in_train_and_coincide_in_eval(rm_pieces, tmp_path):
    model, tok = rm_pieces
    t = _trainer(copy.deepcopy(model), tok, tmp_path)
    h = torch.randn(4, model.config.hidden_size)
    t.model.train()
    a, b = t.cl_views(h)
    assert not torch.allclose(a, b)
    t.model.eval()
    a, b = t.cl_views(h)
    torch.testing.assert_close(a, b)


def test_one_pair_batch_disables_contrastive_term_with_warning(rm_pieces, tmp_path, caplog):
    model, tok = rm_pieces
    t = _trainer(copy.deepcopy(model), tok, tmp_path)
    t.model.train()
    with caplog.at_level(logging.WARNING, logger="rm.ufrm"):
        loss = t.compute_loss(t.model, _batch(t, 1))
    assert torch.isfinite(loss)
    assert "contrastive term is disabled" in caplog.text
    assert "loss_cl" not in t._metrics["train"]


def test_encode_counts_identical_and_truncated(world_tokenizer):
    from rm.ufrm import encode_pairs

    recs = _records(3)
    recs.append({"prompt": "同一个？", "chosen": "是。", "rejected": "是。", "category": "保险"})
    recs.append({"prompt": "长" * 400, "chosen": "对。", "rejected": "错。", "category": "保险"})
    data, stats = encode_pairs(recs, world_tokenizer, "hf", 48)
    assert (stats.pairs, stats.kept, stats.identical, stats.truncated) == (5, 4, 1, 1)
    long_row = data[3]
    assert len(long_row["chosen_ids"]) == 48
    # left truncation keeps the end of the answer, where the score is read
    full = world_tokenizer(
        __import__("align.core.chat_formats", fromlist=["x"])
        .get_chat_format("hf")
        .render(
            [{"role": "user", "content": "长" * 400}, {"role": "assistant", "content": "对。"}],
            tokenizer=world_tokenizer,
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert long_row["chosen_ids"] == full[-48:]
    assert data["margin"] == [0.0, 0.5, 0.0, 0.0]


def test_empty_response_is_a_data_error(tmp_path):
    from align.core.data import DataError, load_records, write_jsonl

    write_jsonl(
        [{"prompt": "问", "chosen": "答", "rejected": " ", "category": "c"}], tmp_path / "p.jsonl"
    )
    with pytest.raises(DataError, match="rejected"):
        load_records(tmp_path / "p.jsonl", "prefs")


def test_config_rejects_bad_values(tmp_path):
    from rm.ufrm import UFRMConfig

    with pytest.raises(ValueError, match="cl_temperature"):
        UFRMConfig(output_dir=str(tmp_path), cl_temperature=0.0)
    with pytest.raises(ValueError, match="replay_share"):
        UFRMConfig(output_dir=str(tmp_path), replay_share=1.0)


def _token_bt_oracle(model, chosen: list[list[int]], rejected: list[list[int]]) -> float:
    """Token-level BT by a slow loop over unpadded sequences (docs/methods.md §2): per pair, the
    mean of -log σ(v_c,t - v_r,t) from the first differing token to the later end, a finished
    sequence holding its last value."""
    from rm.model import token_scores

    def values(ids):
        t = torch.tensor([ids])
        return token_scores(model, t, torch.ones_like(t))[0].tolist()

    losses = []
    for c, r in zip(chosen, rejected, strict=True):
        vc, vr = values(c), values(r)
        end = max(len(c), len(r))
        first = next((t for t in range(end) if t >= min(len(c), len(r)) or c[t] != r[t]), end - 1)
        terms = [
            -torch.nn.functional.logsigmoid(
                torch.tensor(vc[min(t, len(c) - 1)] - vr[min(t, len(r) - 1)])
            ).item()
            for t in range(first, end)
        ]
        losses.append(sum(terms) / len(terms))
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_token_level_bt_through_training(rm_pieces, tiny_world, tmp_path):
    """The trainer's token-level loss equals a slow per-pair oracle on a real batch, and a
    token-level run learns the tiny world's preferences (held-out accuracy far above 50%)."""
    from datasets import Dataset

    from align.core.data import load_records
    from rm.evaluate import summarize
    from rm.ufrm import UFRMConfig, UFRMTrainer, encode_pairs, score_encoded

    model, tok = rm_pieces
    prefs = list(load_records(tiny_world.data("prefs"), "prefs"))[::9][:128]
    held = list(load_records(tiny_world.data("eval_prefs"), "prefs"))[::3]
    train, _ = encode_pairs(prefs, tok, "hf", 128)
    held_enc, _ = encode_pairs(held, tok, "hf", 128)
    args = UFRMConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_length=128,
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=3e-4,
        irl_weight=0.0,
        cl_weight=0.0,
        token_level=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    t = UFRMTrainer(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=Dataset.from_list(train.remove_columns("category").to_list()),
        processing_class=tok,
    )
    rows = [t.train_dataset[i] for i in range(4)]
    t.model.eval()
    with torch.no_grad():
        loss = t.compute_loss(t.model, t.data_collator(rows)).item()
        oracle = _token_bt_oracle(
            t.model, [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows]
        )
    assert loss == pytest.approx(oracle, rel=1e-4)

    before = summarize(*score_encoded(t.model, held_enc, tok.pad_token_id), held_enc["category"])
    t.train()
    after = summarize(*score_encoded(t.model, held_enc, tok.pad_token_id), held_enc["category"])
    logged = [h["loss_bt"] for h in t.state.log_history if "loss_bt" in h]
    assert logged and "loss_irl" not in t.state.log_history[0]
    assert after["accuracy"] >= 0.75 > before["accuracy"] + 0.1, (before["accuracy"], after)
