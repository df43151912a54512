"""No silent toy fallbacks, in process: once a model path is given, each input a run lacks is named
(one line, every one of them); what stands in for one (critic_from_policy, PEI's reward model, an
LLM judge, a reward passed in code) does; and with no model path at all the tiny world still
fills in every input and runs, from its shipped config.

The command line side (exit status 2, one line, nothing loaded, the tiny world never built) is in
``test_user_errors.py`` (section 6).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from align.core.config import ConfigError, load_config
from align.ppo.config import PPOConfig, check_inputs
from rm.spec import tiny_reward, tiny_rule

TINY_RULE = [{"type": "rule", "rule": "tiny"}]
#: A PPO config naming every input (nothing is read: only the checks run on it).
FULL_PPO = {"policy": "p", "critic": "c", "rewards": TINY_RULE, "prompts": "x", "eval_prompts": "y"}


@pytest.fixture()
def tiny_cache(tiny_world, tmp_path, monkeypatch):
    """``ALIGN_CACHE`` holding the session's tiny world: what a run with no model path finds."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-world").symlink_to(tiny_world.root.resolve())
    monkeypatch.setenv("ALIGN_CACHE", str(cache))
    return tiny_world


def same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def shell_model(path: Path) -> str:
    """A directory that passes the model-directory checks (it is never loaded here)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"")
    return str(path)


# ------------------------------------------------------------------ ppo


def test_ppo_names_each_missing_input_once_a_model_path_is_given():
    check_inputs(PPOConfig(**FULL_PPO))  # complete
    for field in ("critic", "rewards", "prompts", "eval_prompts"):
        values = {**FULL_PPO, field: [] if field == "rewards" else None}
        expected = rf"^{field}: required once a model path is given \(policy: p\): expected "
        with pytest.raises(ConfigError, match=expected):
            check_inputs(PPOConfig(**values))
    check_inputs(PPOConfig(**{**FULL_PPO, "critic": None, "critic_from_policy": True}))
    # a critic (or reference) alone is a model path too: the policy is then required
    with pytest.raises(ConfigError, match=r"^policy: required .* \(critic: c\)"):
        check_inputs(PPOConfig(**{**FULL_PPO, "policy": None}))
    # everything missing at once: the first is named with what it expects, the rest listed
    with pytest.raises(ConfigError, match=r"critic_from_policy: true; .*\(also missing: rewards, "
                       r"prompts, eval_prompts\)$"):  # fmt: skip
        check_inputs(PPOConfig(policy="p"))


def test_ppo_defaults_are_for_real_models_and_the_tiny_config_sets_its_own():
    real, tiny = PPOConfig(policy="p"), load_config(PPOConfig, "tiny")
    assert (real.max_prompt_length, real.max_new_tokens) == (1024, 1024)
    assert real.rewards == []  # not given: required with a policy
    assert (tiny.max_prompt_length, tiny.max_new_tokens) == (128, 48)
    assert tiny.rewards == tiny_reward()  # no model path: the tiny world's rule


def test_ppo_with_no_model_path_runs_the_tiny_world(tiny_cache, tmp_path):
    from align.ppo.run import _resolve_paths, build_trainer

    small = ["--total_steps", "1", "--rollout_batch_size", "4", "--num_minibatches", "1",
             "--ppo_epochs", "1", "--micro_batch_size", "4", "--eval_max_prompts", "2",
             "--max_new_tokens", "12", "--save_every", "0", "--output_dir", str(tmp_path / "run")]
    cfg = load_config(PPOConfig, "tiny", small)  # fmt: skip
    paths = _resolve_paths(cfg)
    world = tiny_cache
    assert same(paths["policy"], world.policy) and same(paths["critic"], world.reward)
    assert same(paths["prompts"], world.data("prompts"))
    assert same(paths["eval_prompts"], world.data("eval_prompts"))
    metrics = build_trainer(cfg).train()
    assert metrics["objective/scores"] == metrics["objective/scores"]  # a number, not NaN
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


# ------------------------------------------------------------------ filter


def test_filter_needs_prompts_and_rewards_with_a_policy(tiny_cache):
    from align.filter.run import FilterConfig, check_inputs, resolve_defaults

    with pytest.raises(ConfigError, match=r"^prompts: required .*\(policy: p\).*also missing: "
                       r"rewards\)$"):  # fmt: skip
        check_inputs(FilterConfig(policy="p"))
    with pytest.raises(ConfigError, match=r"^rewards: required .*\(policy: p\)"):
        check_inputs(FilterConfig(policy="p", prompts="x"))
    check_inputs(FilterConfig(policy="p", prompts="x"), reward_given=True)  # run_filter(reward=)
    given = FilterConfig(policy="p", prompts="x", rewards=TINY_RULE)
    assert resolve_defaults(given) == given  # nothing filled in
    assert FilterConfig(policy="p").max_new_tokens == 1024
    tiny = resolve_defaults(FilterConfig())  # no policy: the tiny world
    assert same(tiny.policy, tiny_cache.policy) and same(tiny.prompts, tiny_cache.data("prompts"))
    assert tiny.rewards == tiny_rule()
    assert load_config(FilterConfig, "tiny").max_new_tokens == 48


# ------------------------------------------------------------------ eval gsb


def test_gsb_needs_a_baseline_prompts_and_a_judge():
    from eval.gsb_run import GSBConfig, check_inputs
    from eval.llm_judge import LLMJudgeConfig

    with pytest.raises(ConfigError, match=r"^baseline: required .*\(candidate: c\).*'tiny'.*"
                       r"also missing: prompts, rewards\)$"):  # fmt: skip
        check_inputs(GSBConfig(candidate="c"))
    check_inputs(GSBConfig(candidate="c", baseline="b", prompts="p", rewards=TINY_RULE))
    judge = LLMJudgeConfig(base_url="http://127.0.0.1:1/v1", model="judge")
    check_inputs(GSBConfig(candidate="c", baseline="b", prompts="p", llm_judge=judge))


# ------------------------------------------------------------------ pei


@pytest.fixture()
def pei_inputs(tmp_path) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"问题 {i}", "category": c, "reference": "x"} for i, c in enumerate("ab")]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    pairs = tmp_path / "pairs.jsonl"
    pair = {"prompt": "q", "chosen": "a", "rejected": "b", "category": "a"}
    pairs.write_text(json.dumps(pair) + "\n", encoding="utf-8")
    return {
        "policy": shell_model(tmp_path / "policy"),
        "rm": shell_model(tmp_path / "rm"),
        "prompts": str(prompts),
        "pairs": str(pairs),
        "out": str(tmp_path / "pei"),
    }


def test_pei_a_reward_model_stands_in_for_critic_and_rewards(pei_inputs):
    from align.pei.run import PEIConfig, prepare, round_ppo_config
    i = pei_inputs
    cfg = PEIConfig(
        output_dir=i["out"], reward_model=i["rm"], rm_pairs=i["pairs"], judge=TINY_RULE,
        ppo={"policy": i["policy"], "prompts": i["prompts"], "eval_prompts": i["prompts"]},
    )  # fmt: skip
    setup = prepare(cfg, lambda message: None)
    assert setup.base.critic == i["rm"] and setup.base.rewards[0].path == i["rm"]
    check_inputs(round_ppo_config(setup, 0, None))  # the round's PPO config is complete
    for change, line in (
        ({"judge": []}, r"^judge: required once a model path is given \(ppo.policy: "),
        ({"rm_pairs": None}, r"^rm_pairs: required once a model path is given"),
        ({"reward_model": "tiny"}, r"^reward_model: 'tiny' trains the tiny world's reward "
                                   r"model, but a model path is given \(ppo.policy: "),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=line):
            prepare(dataclasses.replace(cfg, **change), lambda message: None)


def test_pei_rounds_of_a_critic_free_estimator_carry_no_critic(pei_inputs):
    from align.pei.controller import Decision
    from align.pei.run import PEIConfig, prepare, round_ppo_config
    i = pei_inputs
    cfg = PEIConfig(
        output_dir=i["out"], reward_model=i["rm"], rm_pairs=i["pairs"], judge=TINY_RULE,
        ppo={"policy": i["policy"], "prompts": i["prompts"], "eval_prompts": i["prompts"],
             "advantage_estimator": "grpo", "samples_per_prompt": 2},
    )  # fmt: skip
    setup = prepare(cfg, lambda message: None)
    step = Path(i["out"], "round-0", "ppo", "checkpoints", "step-3")
    (step / "actor").mkdir(parents=True)  # round 0's last checkpoint: an actor, no critic
    weights = dict.fromkeys(setup.initial, 1 / len(setup.initial))
    decision = Decision(0, {}, {}, {}, {}, {}, weights, weights, 0.0, 0.1, 0.05, 0.0, False, None)
    later = round_ppo_config(setup, 1, decision)
    assert later.critic is None and later.policy == str(step / "actor")
    assert later.beta == 0.05 and not later.uses_critic()


def test_pei_with_no_model_path_fills_every_round_from_the_tiny_world(tiny_cache, tmp_path):
    from align.pei.run import PEIConfig, prepare, round_ppo_config
    out = tmp_path / "pei"
    cfg = PEIConfig.from_sources("tiny", ["--reward_model", "null", "--output_dir", str(out)])
    assert cfg.uses_tiny_world() and cfg.judge == tiny_reward()
    setup = prepare(cfg, lambda message: None)
    base, world = setup.base, tiny_cache
    assert same(base.policy, world.policy) and same(base.critic, world.reward)
    assert same(base.prompts, world.data("prompts")) and base.rewards == tiny_reward()
    assert setup.pairs  # the tiny world's held-out pairs
    check_inputs(round_ppo_config(setup, 0, None))  # inside run_ppo nothing is filled in


# ------------------------------------------------------------------ sft, rm train


def test_sft_and_ufrm_fill_in_only_without_a_model(tiny_cache, tmp_path):
    from align.sft.run import SFTRecipeConfig, _tiny_defaults
    from align.ufrm.run import fill_tiny_defaults
    from rm.ufrm import UFRMConfig

    world = tiny_cache
    out = str(tmp_path / "run")
    model, train, held = _tiny_defaults(SFTRecipeConfig(output_dir=out, bf16=False))
    assert same(model, world.policy) and train and held
    with pytest.raises(ConfigError, match=r"^train_data: required .*\(model: m\)"):
        _tiny_defaults(SFTRecipeConfig(output_dir=out, bf16=False, model="m"))
    ufrm = fill_tiny_defaults(UFRMConfig(output_dir=out, report_to="none"))
    assert same(ufrm.model, world.reward) and same(ufrm.train_data, world.data("prefs"))
    assert [Path(p).name for p in ufrm.eval_data] == ["eval_prefs.jsonl"]
    with pytest.raises(ConfigError, match=r"^train_data: required .*\(model: m\)"):
        fill_tiny_defaults(UFRMConfig(output_dir=out, report_to="none", model="m"))
