"""``align pei`` end to end on the tiny world: killed during round 2, rerun, checked on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from align.pei.run import PEIConfig, per_category_head

REFILTERED = ["金融计算", "合规与风险管理"]


def small_prompt_set(world, out: Path) -> Path:
    """20 RL prompts per sub-domain (keeps the per-round re-filter quick)."""
    rows = [json.loads(line) for line in world.data("prompts").open()]
    per: dict[str, list] = {}
    for r in rows:
        per.setdefault(r["category"], []).append(r)
    path = out / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for v in per.values() for r in v[:20])
    )
    return path


def pei_config(world, out: Path, prompts: Path) -> dict:
    """Two improvement rounds of one tiny PPO step each, re-filtering two sub-domains' prompts
    before each, then the plain-PPO baseline; the untrained reward backbone as RM (its alignment
    is whatever it is: the loop, not the learning, is under test here)."""
    return {
        "refilter": {"n": 2, "keep": 10, "max_new_tokens": 12, "batch_size": 40},
        "refilter_categories": REFILTERED,
        "rounds": 2,
        "output_dir": str(out),
        "pretrain_steps": 2,
        "round_steps": 1,
        "reward_model": str(world.reward),
        "rm_pairs": str(world.data("eval_prefs")),
        "judge": [{"type": "python", "fn": "align.tiny.reward:tiny_world_reward"}],
        "eval_max_prompts": 24,
        "controller": {"early_stop": False},
        "baseline": True,
        "ppo": {
            "config": "tiny",  # the tiny world's learning rates; paths given, so no fallback
            "policy": str(world.policy),
            "prompts": str(prompts),
            "eval_prompts": str(world.data("eval_prompts")),
            "rollout_batch_size": 8,
            "num_minibatches": 1,
            "micro_batch_size": 8,
            "max_new_tokens": 24,
            "save_every": 1,
            "eval_max_prompts": 6,
        },
    }


def pei_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "align.cli", "pei", "--config", str(config)]


# The first run dies by SIGKILL at the moment round 2's evaluation starts — after its PPO saved
# its step — deterministically, whatever the machine's speed (a polling killer raced it on a fast
# CI machine and lost).
CRASH_IN_ROUND_TWO = """
import os, signal, sys
import align.pei.run as pei_run
from align.cli.app import main

evaluate_round = pei_run.evaluate_round

def crash_in_round_two(setup, actor, rdir):
    if rdir.name == "round-2":
        os.kill(os.getpid(), signal.SIGKILL)
    return evaluate_round(setup, actor, rdir)

pei_run.evaluate_round = crash_in_round_two
sys.argv = ["align", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def pei_run(tiny_world, tmp_path_factory):
    """The run directory after: start, SIGKILL once round 2's PPO has saved its step, rerun."""
    root = tmp_path_factory.mktemp("pei")
    out = root / "run"
    config = root / "pei.yaml"
    prompts = small_prompt_set(tiny_world, root)
    config.write_text(yaml.safe_dump(pei_config(tiny_world, out, prompts), allow_unicode=True))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = root / "first.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads it while it runs
        first = subprocess.run(
            [sys.executable, "-c", CRASH_IN_ROUND_TWO, *pei_command(config)[3:]],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=900,
        )
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert (out / "round-2" / "ppo" / "checkpoints" / "step-1").is_dir()
    before = {p: p.stat().st_mtime_ns for p in out.glob("round-[01]/**/*") if p.is_file()}
    assert not (out / "round-2" / "decision.json").exists()
    second = subprocess.run(
        pei_command(config), capture_output=True, text=True, env=env, timeout=900
    )
    assert second.returncode == 0, second.stdout + second.stderr
    return out, before, second.stdout


@pytest.mark.slow
def test_improvement_rounds_train_on_refiltered_prompts(pei_run):
    out, _, _ = pei_run
    original = [json.loads(line) for line in (out.parent / "prompts.jsonl").open()]
    for k in (1, 2):
        config = yaml.safe_load((out / f"round-{k}" / "ppo" / "config.yaml").read_text())
        assert config["prompts"] == str(out / f"round-{k}" / "prompts.jsonl")
        rows = [
            {key: v for key, v in json.loads(line).items() if v is not None}  # loader's Nones
            for line in (out / f"round-{k}" / "prompts.jsonl").open()
        ]
        kept = [json.loads(line) for line in (out / f"round-{k}" / "filter" / "kept.jsonl").open()]
        assert len(kept) == 10 and {r["category"] for r in kept} <= set(REFILTERED)
        untouched = [r for r in original if r["category"] not in REFILTERED]
        assert rows[: len(untouched)] == untouched  # other sub-domains keep every prompt
        assert [r["id"] for r in rows[len(untouched) :]] == [r["id"] for r in kept]


def decisions(out: Path) -> list[dict]:
    return [json.loads((out / f"round-{k}" / "decision.json").read_text()) for k in range(3)]


@pytest.mark.slow
def test_rerun_resumes_at_round_two_without_redoing_round_one(pei_run):
    out, before, stdout = pei_run
    assert "resuming after round 1" in stdout
    assert "round 0: PPO" not in stdout and "round 1: PPO" not in stdout
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # no file of rounds 0 and 1 was rewritten
    metrics = (out / "round-2" / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [0, 1]  # step 1 not logged twice
    assert decisions(out)[2]["stop_reason"] == "round limit (2)"


@pytest.mark.slow
def test_rounds_chain_models_beta_and_mixture(pei_run, tiny_world):
    out, _, _ = pei_run
    d = decisions(out)
    configs = [
        yaml.safe_load((out / f"round-{k}" / "ppo" / "config.yaml").read_text()) for k in range(3)
    ]
    assert [c["beta"] for c in configs] == [0.1, 0.05, 0.025]
    assert [c["total_steps"] for c in configs] == [2, 1, 1]
    assert configs[0]["policy"] == str(tiny_world.policy)
    for k in (1, 2):
        previous = out / f"round-{k - 1}" / "ppo" / "checkpoints"
        last = max(previous.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        assert configs[k]["policy"] == str(last / "actor")
        assert configs[k]["critic"] == str(last / "critic")
        assert configs[k]["reference"] == str(tiny_world.policy)  # the reference stays SFT
        assert configs[k]["category_weights"] == pytest.approx(d[k - 1]["weights"])
        assert d[k]["beta_used"] == d[k - 1]["next_beta"]
    assert sum(configs[0]["category_weights"].values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_gain_is_the_net_win_rate_of_the_recorded_verdicts(pei_run):
    out, _, _ = pei_run
    for k, d in enumerate(decisions(out)):
        rows = [json.loads(line) for line in (out / f"round-{k}" / "answers.jsonl").open()]
        assert len(rows) == 24 and len({r["category"] for r in rows}) == 6  # 4 per sub-domain
        for category, gain in d["gain"].items():
            counts = Counter(r["verdict"] for r in rows if r["category"] == category)
            judged = counts["good"] + counts["same"] + counts["bad"]
            assert gain == pytest.approx((counts["good"] - counts["bad"]) / judged, abs=1e-12)
        # Fewer than 30 eval prompts per sub-domain: every PPO tier is medium (docs/methods.md §4).
        assert set(d["ppo_tiers"].values()) == {"medium"}


@pytest.mark.slow
def test_alignment_is_the_pairwise_accuracy_per_category(pei_run, tiny_world):
    from rm.functions import LocalRewardModel

    out, _, _ = pei_run
    pairs = [json.loads(line) for line in tiny_world.data("eval_prefs").open()]
    prompts = [p.get("prompt") or p["messages"] for p in pairs]
    model = LocalRewardModel.from_pretrained(tiny_world.reward, batch_size=1)  # no padding at all
    chosen = model(prompts, [p["chosen"] for p in pairs])
    rejected = model(prompts, [p["rejected"] for p in pairs])
    hits: dict[str, list[bool]] = {}
    for p, c, r in zip(pairs, chosen, rejected):
        hits.setdefault(p["category"], []).append(c > r)
    alignment = json.loads((out / "rm_alignment.json").read_text())
    assert alignment == {
        c: {"n": len(h), "accuracy": pytest.approx(sum(h) / len(h), abs=1e-12)}
        for c, h in hits.items()
    }
    rm_tiers = decisions(out)[0]["rm_tiers"]
    for category, v in alignment.items():
        tier = "good" if v["accuracy"] >= 0.7 else "medium" if v["accuracy"] >= 0.6 else "bad"
        assert rm_tiers[category] == tier


@pytest.mark.slow
def test_report_links_charts_that_exist(pei_run):
    out, _, _ = pei_run
    report = (out / "report.md").read_text()
    for png in ("gsb_by_round.png", "reward_hacking.png", "mixture.png", "training.png"):
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.count("## Round ") == 3
    assert "## PEI vs plain PPO (4 PPO steps each)" in report


@pytest.mark.slow
def test_on_policy_alignment_and_hacking_follow_the_recorded_rewards(pei_run, tiny_world):
    from rm.functions import LocalRewardModel

    out, _, _ = pei_run
    rows = [json.loads(line) for line in (out / "round-1" / "answers.jsonl").open()]
    # the recorded rewards are the reward model's scores of both answers (unpadded, one by one)
    eval_rows = per_category_head(
        [json.loads(line) for line in tiny_world.data("eval_prompts").open()], 24
    )
    model = LocalRewardModel.from_pretrained(tiny_world.reward, batch_size=1)
    prompts = [r.get("prompt") or r["messages"] for r in eval_rows]
    assert model(prompts, [r["answer"] for r in rows]) == pytest.approx(
        [r["reward"] for r in rows], abs=1e-4
    )
    assert model(prompts, [r["sft_answer"] for r in rows]) == pytest.approx(
        [r["sft_reward"] for r in rows], abs=1e-4
    )
    # recounted from the recorded verdicts and rewards
    evaluation = json.loads((out / "round-1" / "evaluation.json").read_text())
    decision = decisions(out)[1]
    for category, v in evaluation["rm_alignment_on_policy"].items():
        mine = [r for r in rows if r["category"] == category]
        decisive = [r for r in mine if r["verdict"] in ("good", "bad")]
        agree = [
            r for r in decisive
            if (r["reward"] > r["sft_reward"]) == (r["verdict"] == "good")
            and r["reward"] != r["sft_reward"]
        ]  # fmt: skip
        assert v == {
            "n": len(decisive),
            "accuracy": pytest.approx(len(agree) / len(decisive) if decisive else 0.0),
        }
        assert decision["alignment_on_policy"][category] == pytest.approx(v["accuracy"])
        hacked = [r for r in mine if r["verdict"] == "bad" and r["reward"] > r["sft_reward"]]
        assert evaluation["reward_hacking"][category]["count"] == len(hacked)
        # 4 decisive pairs at most (< min_decisive_pairs): min falls back to the labelled value
        assert decision["alignment"][category] == decision["alignment_labelled"][category]


@pytest.mark.slow
def test_baseline_is_plain_ppo_from_sft_on_the_same_budget(pei_run, tiny_world):
    out, _, stdout = pei_run
    config = yaml.safe_load((out / "baseline" / "ppo" / "config.yaml").read_text())
    assert config["total_steps"] == 2 + 1 + 1  # PEI's rounds: 2, 1, 1
    assert config["policy"] == str(tiny_world.policy) and config["reference"] is None
    assert config["beta"] == 0.05  # the PPO config's own β (tiny), not β₀
    assert config["category_weights"] == pytest.approx(decisions(out)[0]["weights_before"])
    result = json.loads((out / "baseline" / "result.json").read_text())
    evaluation = json.loads((out / "baseline" / "evaluation.json").read_text())
    assert result["overall_gain"] == evaluation["gsb"]["overall"]["rates"]["net_win"]
    assert "baseline (plain PPO, 4 steps, β = 0.05): net win vs SFT" in stdout


def test_per_category_head_round_robins():
    rows = [{"category": c, "i": i} for c in "aab" for i in range(3)]
    picked = per_category_head(rows, 4)
    assert [r["category"] for r in picked] == ["a", "b", "a", "b"]


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="reference"):
        PEIConfig(reference="last")
    with pytest.raises(ValueError, match="unknown field 'controller.tiers'.*'tiering'"):
        PEIConfig(controller={"tiers": 3})
    with pytest.raises(ValueError, match="unknown field 'round' .*did you mean 'rounds'"):
        PEIConfig.from_sources(None, ["--round", "2"])
    with pytest.raises(ValueError, match="refilter.policy: set by PEI"):
        PEIConfig(refilter={"policy": "x"})


@pytest.mark.parametrize("config", ["tiny", "recipes/configs/pei_7b_zero3.yaml"])
def test_shipped_configs_parse(config):
    from align.ppo.config import PPOConfig

    root = Path(__file__).resolve().parents[2]
    path = config if config == "tiny" else root / config
    cfg = PEIConfig.from_sources(path)
    assert isinstance(cfg.ppo, PPOConfig) and cfg.ppo.total_steps > 0
    base = "tiny" if config == "tiny" else root / "recipes/configs/ppo_7b_zero3.yaml"
    assert cfg.ppo == PPOConfig.from_sources(base)  # ppo.config: the rounds' PPO config


def test_lora_runs_are_refused_with_a_clear_error(tmp_path):
    from align.pei.run import prepare

    cfg = PEIConfig(output_dir=str(tmp_path), ppo={"lora_r": 8})
    with pytest.raises(ValueError, match="lora_r: PEI carries full"):
        prepare(cfg, lambda message: None)
