"""The architecture matrix: every entry point on a tiny random model of every architecture.

Each architecture of :data:`align.tiny.random_models.ARCHITECTURES` gets a random-init policy
(hidden 64, 2 layers, the tiny world's tokenizer and chat template) and a reward model made from it
(``AutoModelForSequenceClassification``, one label), built once for the module. Every cell runs
an entry point in-process with every path given explicitly and checks a result that can fail:
finite losses and the expected metric rows, checkpoints that reload to the trainer's outputs,
held-out losses equal to an independent plain-torch computation on the saved model, batched
scores equal to unbatched ones, and vLLM's greedy tokens and logprobs equal to transformers' after
an in-place weight sync.

Nothing here names a model's attributes: a failure means align assumed one somewhere.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from align.core.data import load_records, messages_of
from align.tiny.random_models import ARCHITECTURES, save_random_model, tiny_tokenizer

pytestmark = pytest.mark.slow  # every cell trains or generates (about a second each)

#: Sizes of every cell: small enough for ~1 s per cell on 2 cores.
PROMPTS, EVAL_PROMPTS, PAIRS, EVAL_PAIRS = 8, 4, 16, 8
NEW_TOKENS, PROMPT_TOKENS = 8, 64


@dataclass(frozen=True)
class Models:
    """One architecture's model directories."""

    architecture: str
    policy: Path  # random-init causal LM, the tiny world's tokenizer
    reward: Path  # the policy's body + a one-logit head (sequence classification)


@dataclass(frozen=True)
class Data:
    """Small record files cut from the tiny world."""

    prompts: Path
    eval_prompts: Path
    prefs: Path
    eval_prefs: Path
    sft: Path
    eval_sft: Path
    docs: Path
    eval_docs: Path
    mcq: Path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _spread(rows: list, n: int) -> list:
    """``n`` rows taken evenly through ``rows`` (the tiny world's files are sorted by category)."""
    step = len(rows) // n
    return rows[::step][:n]


def _conversation(record: dict, answer: str) -> dict:
    messages = [*messages_of(record), {"role": "assistant", "content": answer}]
    return {"messages": messages, "category": record["category"]}


def _document(record: dict) -> dict:
    return {"text": f"问：{messages_of(record)[-1]['content']}\n答：{record['chosen']}",
            "category": record["category"]}  # fmt: skip


def _write_mcq(folder: Path) -> Path:
    """A FinanceIQ-layout benchmark: 2 categories × 2 questions in ``test/``."""
    (folder / "test").mkdir(parents=True)
    questions = {
        "银行": [("存款准备金率提高会使货币供应量？", "增加", "减少", "不变", "不确定", "B"),
                 ("国债的发行主体是？", "企业", "商业银行", "中央政府", "地方政府", "C")],
        "证券": [("股票的市盈率等于？", "股价/每股收益", "股价×每股收益", "收益/资产",
                  "负债/资产", "A"),
                 ("债券价格与市场利率的关系是？", "同向", "无关", "不确定", "反向", "D")],
    }  # fmt: skip
    for category, rows in questions.items():
        with (folder / "test" / f"{category}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
            writer.writerows([k, *row] for k, row in enumerate(rows))
    return folder


@pytest.fixture(scope="module")
def data(tiny_world, tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("matrix-data")

    def rows(name: str) -> list[dict]:
        return read_jsonl(tiny_world.data(name))

    prefs, eval_prefs = _spread(rows("prefs"), PAIRS), _spread(rows("eval_prefs"), EVAL_PAIRS)
    eval_prompts = _spread(rows("eval_prompts"), EVAL_PROMPTS)
    return Data(
        prompts=_write_jsonl(root / "prompts.jsonl", _spread(rows("prompts"), PROMPTS)),
        eval_prompts=_write_jsonl(root / "eval_prompts.jsonl", eval_prompts),
        prefs=_write_jsonl(root / "prefs.jsonl", prefs),
        eval_prefs=_write_jsonl(root / "eval_prefs.jsonl", eval_prefs),
        sft=_write_jsonl(root / "sft.jsonl", [_conversation(r, r["chosen"]) for r in prefs]),
        eval_sft=_write_jsonl(
            root / "eval_sft.jsonl", [_conversation(r, r["chosen"]) for r in eval_prefs]
        ),
        docs=_write_jsonl(root / "docs.jsonl", [_document(r) for r in prefs]),
        eval_docs=_write_jsonl(root / "eval_docs.jsonl", [_document(r) for r in eval_prefs]),
        mcq=_write_mcq(root / "mcq"),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: hidden-64 ops gain nothing from a second one, and on shared cores
    OpenMP workers spinning for a core made this module ~5× more CPU (measured on GPT-2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    return tiny_tokenizer(tiny_world.tokenizer)


def save_reward_model(policy: Path, out: Path, tokenizer, seed: int = 1) -> Path:
    """The policy's body with a fresh one-logit head, saved (safetensors) with the tokenizer."""
    config = AutoConfig.from_pretrained(policy)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(policy, config=config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=ARCHITECTURES)
def models(request, tokenizer, tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp(request.param)
    policy = save_random_model(request.param, root / "policy", tokenizer=tokenizer)
    return Models(request.param, policy, save_reward_model(policy, root / "reward", tokenizer))


def reward_entry(models: Models) -> list[dict]:
    return [{"type": "model", "path": str(models.reward)}]


# ---------------------------------------------------------------- checks shared by the cells


def sample_ids(tokenizer) -> torch.Tensor:
    """``[1, T]`` a chat-formatted tiny-world prompt and answer."""
    messages = [{"role": "user", "content": "本金10000元，年利率2%，3年后本息合计多少元？"},
                {"role": "assistant", "content": "本息=10612.08元。"}]  # fmt: skip
    return torch.tensor([tokenizer.apply_chat_template(messages)["input_ids"]])


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=ids).logits.float()
    finally:
        model.train(was_training)


@torch.no_grad()
def plain_nll(model, sequences: list[list[int]], labels: list[list[int]]) -> float:
    """Token-mean next-token NLL over labelled positions (-100 = not counted), one unpadded
    sequence at a time with the model's plain logits: the oracle of the trainers' fused heads."""
    total, count = 0.0, 0
    for ids, lab in zip(sequences, labels):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        target = torch.tensor(lab[1:])
        keep = target != -100
        logprobs = torch.log_softmax(logits[keep], -1).gather(1, target[keep, None])
        total -= logprobs.sum().item()
        count += int(keep.sum())
    return total / count


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def metric_rows(out: Path) -> list[dict]:
    return read_jsonl(out / "metrics.jsonl")


# ---------------------------------------------------------------- PPO


def ppo_config(models: Models, data: Data, out: Path, **fields):
    from align.ppo.config import PPOConfig

    values = dict(
        policy=str(models.policy),
        prompts=str(data.prompts),
        eval_prompts=str(data.eval_prompts),
        rewards=reward_entry(models),
        output_dir=str(out),
        rollout_batch_size=4,
        max_new_tokens=NEW_TOKENS,
        max_prompt_length=PROMPT_TOKENS,
        total_steps=2,
        micro_batch_size=4,
        save_every=0,
        eval_max_prompts=EVAL_PROMPTS,
        actor_lr=1e-3,
        critic_lr=1e-3,
        seed=0,
    )
    return PPOConfig(**{**values, **fields})


def train_ppo(cfg, trainer=None):
    """Train (``trainer``, or one built from ``cfg``); returns the trainer (its models stay
    usable) and the metric rows."""
    from align.ppo.run import build_trainer, close_engine

    trainer = trainer or build_trainer(cfg)
    try:
        trainer.train()
    finally:
        close_engine(trainer)
    return trainer, metric_rows(Path(cfg.output_dir))


def check_ppo_metrics(rows: list[dict]) -> None:
    """Step 0 (evaluation before training), then one row per step with finite losses; the held-out
    score at the start and the end."""
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        for name in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores"):
            assert math.isfinite(row[name]), (name, row[name])
    assert math.isfinite(rows[0]["eval/score"]) and math.isfinite(rows[-1]["eval/score"])


def trained_models(trainer):
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return unwrapped.actor, unwrapped.critic


def check_critic_checkpoint(critic, saved: torch.nn.Module, ids: torch.Tensor) -> None:
    """The saved critic scores every token as the trainer's critic does."""
    from rm.model import token_scores

    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = token_scores(critic.eval(), ids, mask)
        torch.testing.assert_close(token_scores(saved.eval(), ids, mask), expected)


def test_ppo_critic_from_reward_model(models, data, tokenizer, tmp_path):
    cfg = ppo_config(models, data, tmp_path / "run", critic=str(models.reward))
    trainer, rows = train_ppo(cfg)
    check_ppo_metrics(rows)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    actor, critic = trained_models(trainer)
    ids = sample_ids(tokenizer)
    saved = AutoModelForCausalLM.from_pretrained(checkpoint / "actor")
    torch.testing.assert_close(logits_of(saved, ids), logits_of(actor, ids))
    assert not torch.equal(  # it trained: the saved actor is not the initial policy
        logits_of(saved, ids), logits_of(AutoModelForCausalLM.from_pretrained(models.policy), ids)
    )
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint / "critic")
    check_critic_checkpoint(critic, reloaded, ids)


def test_ppo_critic_from_policy(models, data, tokenizer, tmp_path):
    from align.ppo.run import build_trainer

    cfg = ppo_config(models, data, tmp_path / "run", critic_from_policy=True)
    trainer = build_trainer(cfg)
    actor, critic = trained_models(trainer)
    body, policy_body = critic.base_model.state_dict(), actor.base_model.state_dict()
    assert body.keys() == policy_body.keys()  # the critic starts as the policy's body
    assert all(torch.equal(body[k], policy_body[k]) for k in body)
    trainer, rows = train_ppo(cfg, trainer)
    check_ppo_metrics(rows)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    actor, critic = trained_models(trainer)
    ids = sample_ids(tokenizer)
    saved = AutoModelForCausalLM.from_pretrained(checkpoint / "actor")
    torch.testing.assert_close(logits_of(saved, ids), logits_of(actor, ids))
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint / "critic")
    check_critic_checkpoint(critic, reloaded, ids)


def test_ppo_lora(models, data, tokenizer, tmp_path):
    from peft import PeftModel

    cfg = ppo_config(models, data, tmp_path / "run", critic=str(models.reward), lora_r=4)
    trainer, rows = train_ppo(cfg)
    check_ppo_metrics(rows)
    assert trainer.reference is None  # the actor with its adapters disabled
    assert rows[0]["params/actor_trainable"] < rows[0]["params/actor_total"] / 2
    actor, _ = trained_models(trainer)
    ids = sample_ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(models.policy)
    saved = PeftModel.from_pretrained(base, tmp_path / "run" / "checkpoints" / "step-2" / "actor")
    torch.testing.assert_close(logits_of(saved, ids), logits_of(actor, ids))
    with actor.disable_adapter():  # the reference is still the initial policy
        initial = AutoModelForCausalLM.from_pretrained(models.policy)
        torch.testing.assert_close(logits_of(actor, ids), logits_of(initial, ids))


# ---------------------------------------------------------------- reward models


def test_rm_train(models, data, tmp_path):
    from align.ufrm.run import run
    from rm.evaluate import evaluate_reward_model
    from rm.ufrm import UFRMConfig

    cfg = UFRMConfig(
        model=str(models.reward),
        train_data=str(data.prefs),
        eval_data=[str(data.eval_prefs)],
        output_dir=str(tmp_path / "rm"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=128,
        eval_batch_size=EVAL_PAIRS,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
    )
    summary = run(cfg)
    (stage,) = summary["stages"]
    assert math.isfinite(stage["train_loss"]) and stage["data"]["kept"] == PAIRS
    losses = [r["loss"] for r in stage["log_history"] if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    result = stage["eval"][str(data.eval_prefs)]
    assert result["n"] == EVAL_PAIRS and 0 <= result["accuracy"] <= 1
    # the saved model scores the held-out pairs exactly as the run reported
    again = evaluate_reward_model(summary["final"], data.eval_prefs, max_length=128)
    assert again["accuracy"] == result["accuracy"]
    assert again["chosen_mean"] == pytest.approx(result["chosen_mean"], abs=1e-6)


def test_rm_eval(models, data):
    """Batched, padded scores (align's pooling) equal the model's own pooled logits, one pair
    at a time without padding."""
    from rm.evaluate import evaluate_reward_model
    from rm.ufrm import encode_pairs, load_reward_model

    result = evaluate_reward_model(models.reward, data.eval_prefs, max_length=128, batch_size=4)
    model, tok = load_reward_model(models.reward)
    records = load_records(data.eval_prefs, "prefs").to_list()
    encoded, _ = encode_pairs(records, tok, "hf", 128, use_margin=False)
    with torch.no_grad():
        chosen, rejected = ([model(input_ids=torch.tensor([ids])).logits[0, 0].item()
                             for ids in encoded[column]]
                            for column in ("chosen_ids", "rejected_ids"))  # fmt: skip
    assert result["n"] == EVAL_PAIRS == len(chosen)
    assert result["accuracy"] == sum(c > r for c, r in zip(chosen, rejected)) / EVAL_PAIRS
    assert result["chosen_mean"] == pytest.approx(sum(chosen) / EVAL_PAIRS, abs=1e-5)
    assert result["rejected_mean"] == pytest.approx(sum(rejected) / EVAL_PAIRS, abs=1e-5)


# ---------------------------------------------------------------- filter and evaluation


def test_filter(models, data, tmp_path):
    from align.filter.run import FilterConfig, run_filter

    out = tmp_path / "kept.jsonl"
    cfg = FilterConfig(
        prompts=str(data.prompts),
        policy=str(models.policy),
        rewards=reward_entry(models),
        n=2,
        max_new_tokens=NEW_TOKENS,
        max_prompt_length=PROMPT_TOKENS,
        batch_size=PROMPTS,
        keep=4,
        out=str(out),
        seed=0,
    )
    result = run_filter(cfg)
    assert result.generated == PROMPTS and result.n_prompts == PROMPTS
    load_records(out, "prompts")  # a valid prompts file
    kept = read_jsonl(out)
    inputs = {r["id"]: r for r in read_jsonl(data.prompts)}
    assert 1 <= len(kept) <= 4 and [r["id"] for r in kept] == [r["id"] for r in result.kept]
    for row in kept:  # the input fields, and the scores
        assert {k: row[k] for k in inputs[row["id"]]} == inputs[row["id"]]
        assert math.isfinite(row["score_mean"]) and row["score_std"] > 0


def test_eval_gsb(models, data, tokenizer, tmp_path):
    from eval.gsb_run import GSBConfig, run_gsb

    candidate = save_random_model(
        models.architecture, tmp_path / "candidate", tokenizer=tokenizer, seed=1
    )
    cfg = GSBConfig(
        candidate=str(candidate),
        baseline=str(models.policy),
        prompts=str(data.eval_prompts),
        rewards=reward_entry(models),
        max_new_tokens=NEW_TOKENS,
        n_boot=50,
        out=str(tmp_path / "gsb"),
    )
    result = run_gsb(cfg)
    overall = result.report.overall
    counts = Counter(result.verdicts)
    assert (overall.good, overall.same, overall.bad) == (counts["good"], counts["same"],
                                                         counts["bad"])  # fmt: skip
    assert overall.n == EVAL_PROMPTS and overall.win_rate == overall.good / EVAL_PROMPTS
    assert 0 <= overall.win_rate <= 1 and sum(r.n for r in result.report.rows) == EVAL_PROMPTS
    answers = read_jsonl(tmp_path / "gsb" / "answers.jsonl")
    assert [a["verdict"] for a in answers] == result.verdicts
    for a in answers:  # the reward judge: equal answers score equally
        assert a["verdict"] == "same" or a["candidate"] != a["baseline"]


def test_eval_mcq(models, data):
    """Generate and loglik scoring; the batched (right-padded) loglik letters equal an unbatched
    plain-logits computation."""
    from eval.generation import encode_prompts
    from eval.gsb_run import load_policy
    from eval.mcq import OPTIONS, option_continuations
    from eval.mcq_run import MCQConfig, build_prompts, evaluate_mcq

    cfg = MCQConfig(data=str(data.mcq), scoring="both", max_new_tokens=NEW_TOKENS, batch_size=4)
    model, tok = load_policy(str(models.policy))
    results = evaluate_mcq(model, tok, cfg)
    for scoring, result in results.items():
        assert result.n == 4 and len(result.per_category) == 2, scoring
        correct = sum(p["prediction"] == p["answer"] for p in result.predictions)
        assert result.micro == pytest.approx(correct / 4)
    assert {p["prediction"] for p in results["loglik"].predictions} <= set(OPTIONS)
    ids, _ = encode_prompts(tok, build_prompts(cfg, tok).texts, True)
    expected = []
    with torch.no_grad():
        for prompt in ids:
            scores = []
            for continuation in option_continuations(tok, True):
                seq = torch.tensor([list(prompt) + list(continuation)])
                logprobs = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
                start = len(prompt) - 1
                scores.append(sum(logprobs[start + k, t].item()
                                  for k, t in enumerate(continuation)))  # fmt: skip
            expected.append(OPTIONS[max(range(4), key=scores.__getitem__)])
    assert [p["prediction"] for p in results["loglik"].predictions] == expected


# ---------------------------------------------------------------- SFT and pretraining


def test_sft(models, data, tmp_path):
    from align.sft.data import encode_sft_records
    from align.sft.run import SFTRecipeConfig, run

    cfg = SFTRecipeConfig(
        model=str(models.policy),
        train_data=[str(data.sft)],
        eval_data=str(data.eval_sft),
        output_dir=str(tmp_path / "sft"),
        max_length=128,
        epoch_size=8,
        num_train_epochs=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=EVAL_PAIRS,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    summary = run(cfg)
    assert math.isfinite(summary["train_loss"])
    after = summary["held_out_after"]
    assert all(math.isfinite(v) for v in after["per_category"].values())
    # the held-out loss the run reports is the saved model's, computed here with plain logits
    final = AutoModelForCausalLM.from_pretrained(summary["final"]).eval()
    tok = AutoTokenizer.from_pretrained(summary["final"])
    records = [r for r in load_records(data.eval_sft, "sft").to_list()
               if r["category"] in summary["categories"]]  # fmt: skip
    encoded, _ = encode_sft_records(records, tok, "hf", 128, summary["categories"])
    oracle = plain_nll(final, encoded["input_ids"], encoded["labels"])
    assert after["loss"] == pytest.approx(oracle, rel=1e-4)
    assert after["loss"] != pytest.approx(summary["held_out_before"]["loss"], rel=1e-4)


def test_pretrain(models, data, tmp_path):
    from align.pretrain.run import PretrainConfig, run

    bucket = 64
    cfg = PretrainConfig(
        model=str(models.policy),
        docs=str(data.docs),
        eval_docs=str(data.eval_docs),
        output_dir=str(tmp_path / "pretrain"),
        buckets=[bucket],
        tokens_per_step=4 * bucket,
        learning_rate=1e-3,
        dynamic_mix=False,
    )
    summary = run(cfg)
    rows = metric_rows(tmp_path / "pretrain")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert summary["steps"] >= 1 and len(losses) == summary["steps"]
    assert all(math.isfinite(x) for x in losses)
    # the held-out loss (TRL's fused LM head) equals plain logits of the saved model
    final = AutoModelForCausalLM.from_pretrained(summary["final"]).eval()
    tok = AutoTokenizer.from_pretrained(summary["final"])
    docs = [r for r in read_jsonl(data.eval_docs) if r["category"] in summary["categories"]]
    ids = [(tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:bucket]
           for d in docs]  # fmt: skip
    oracle = plain_nll(final, ids, ids)
    assert summary["held_out_after"]["all"] == pytest.approx(oracle, rel=1e-4)


# ---------------------------------------------------------------- vLLM


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _vllm_available(), reason="vllm is not installed")
def test_vllm_engine_generates_and_syncs_in_place(models, tokenizer, tmp_path):
    """Greedy tokens and logprobs equal transformers' on the policy, then, after an in-place
    weight sync from another model of the architecture with LoRA adapters (merged by the sync),
    equal that model's; the trainer's models still work beside the engine."""
    from peft import LoraConfig, get_peft_model

    from rollouts.base import SamplingParams
    from rollouts.factory import make_engine
    from rollouts.hf_generate import GenerateEngine

    texts = ("本金10000元", "持有1000股股票，每股分红0.2元", "国债", "你好")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True)["input_ids"]
               for text in texts]  # fmt: skip
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    # eager: transformers' reference attention (its sdpa path drops Gemma 2's attention logit
    # softcapping, which vLLM applies: 2e-4 apart once the LoRA adapters below enlarge the logits)
    policy = AutoModelForCausalLM.from_pretrained(models.policy, attn_implementation="eager")
    other_dir = save_random_model(models.architecture, tmp_path / "other", tokenizer=tokenizer,
                                  seed=1)  # fmt: skip
    other = AutoModelForCausalLM.from_pretrained(other_dir, attn_implementation="eager")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    other = get_peft_model(other, lora).eval()  # random A and B: the adapters change the outputs
    policy.eval()

    engine = make_engine(
        "vllm", models.policy, tokenizer, dtype="float32", kv_cache_memory_bytes=2**26
    )
    try:
        for model in (policy, other):
            if model is other:
                engine.sync_weights(other)
            ours = engine.generate(prompts, greedy)
            reference = GenerateEngine.from_tokenizer(model, tokenizer).generate(prompts, greedy)
            assert ours.completion_ids == reference.completion_ids
            for a, b in zip(ours.logprobs, reference.logprobs):
                torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
        assert engine.sync_count == 1
    finally:
        engine.close()
    # a model of the architecture still loads, and the ones loaded before still run
    AutoModelForCausalLM.from_pretrained(models.policy)
    logits_of(policy, torch.tensor([prompts[0]]))
