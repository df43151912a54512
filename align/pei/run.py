"""``align pei``: the PEI-RLHF loop (docs/methods.md §4) — PPO pre-training, then rounds of
evaluate → attribute → re-mix → improve, with its state on disk so a rerun resumes.

Run directory::

    config.yaml              the PEIConfig of the run
    sft_answers.jsonl        the SFT policy's answers to the eval prompts (generated once)
    rm/                      the tiny world's reward model (only with ``reward_model: tiny``)
    round-K/ppo/             PPO run of round K (metrics.jsonl, checkpoints/step-N/{actor,critic})
    round-K/answers.jsonl    the round's policy answers, with the judge's verdicts and the
                             reward of both answers
    round-K/evaluation.json  GSB, RM alignment (labelled and on-policy) and reward hacking per
                             sub-domain
    round-K/decision.json    tiers, steps, weights, β — written last: a round is complete with it
    baseline/                with ``baseline: true``: plain PPO on the same budget (ppo/,
                             answers.jsonl, evaluation.json, result.json written last)
    report.md, *.png         the report (rewritten after every round)

A rerun on the same directory skips every round with a ``decision.json``; a round that crashed
is redone, its PPO part resuming from that round's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from accelerate import PartialState

from align.core.checkpoints import latest_checkpoint
from align.core.config import (
    ConfigError,
    build,
    check_ranges,
    config_to_yaml,
    load_config,
    missing_inputs_error,
)
from align.core.config import help_field as _help
from align.core.data import load_records, messages_of, write_jsonl
from align.core.io import METRICS_FILE, atomic_write_json, atomic_write_text, replace_directory
from align.core.models import check_model_dir, load_options
from align.core.outputs import check_output_dir
from align.core.tracking import default_run_name
from align.filter.run import FilterConfig, run_filter
from align.pei.alignment import on_policy_alignment, overall, reward_hacking
from align.pei.controller import ARROWS, ControllerConfig, Decision, RoundMeasurements, decide
from align.ppo.config import PPOConfig, missing_inputs
from align.tiny.build import build_tiny_world
from eval.generation import generate_answers
from eval.gsb import summarize
from eval.llm_judge import LLMJudge, LLMJudgeConfig
from rm.spec import REWARDS_EXPECTED, RewardSpec, as_specs, tiny_reward
from rollouts.base import SamplingParams

#: Old spellings of PEIConfig fields, still read (with a warning, once each).
OLD_SPELLINGS = {"ppo_config": "ppo.config"}
#: The re-filter fields PEI sets every round (a value given for them would be ignored).
REFILTER_SET_BY_PEI = ("prompts", "policy", "rewards", "chat_format", "out", "seed")


@dataclass
class PEIConfig:
    """Every knob of ``align pei``; controller numbers default to docs/methods.md §4."""

    config_name: ClassVar[str] = "pei"  # --config tiny → align/configs/pei_tiny.yaml
    #: The shipped config a command line with no model path and no --config starts from.
    config_tiny_base: ClassVar[str] = "tiny"
    config_renames: ClassVar[dict[str, str]] = OLD_SPELLINGS

    rounds: int = _help("Improvement rounds after PPO pre-training (round 0).", 2, ge=0)
    ppo: PPOConfig = _help(
        "The PPO config of every round; a mapping given here may name its base file "
        "(ppo.config: PATH, or tiny for the shipped tiny-world one, as pei_tiny.yaml does). With "
        "no model path (ppo.policy, ppo.critic, ppo.reference, reward_model) the tiny world "
        "fills in its inputs; once one is given, every input is required.",
        factory=PPOConfig,
    )
    pretrain_steps: int | None = _help(
        "PPO steps of round 0; none = the PPO config's.", None, ge=1
    )
    round_steps: int | None = _help(
        "PPO steps of each improvement round; none = the PPO's.", None, ge=1
    )
    beta0: float = _help("KL weight of the pre-training round [P: 2 × 0.05].", 0.1, ge=0)
    reference: Literal["sft", "previous"] = _help(
        "Reference model of improvement rounds: sft or previous.", "sft"
    )
    reward_model: str | None = _help(
        "A reward-model directory used as PPO's reward and critic initialisation (and measured "
        "for RM alignment); 'tiny' (tiny world only) trains a UFRM on the tiny world's "
        "preferences into <output_dir>/rm once; none = the PPO config's rewards.",
        None,
    )
    judge: list[RewardSpec] = _help(
        "Reward sources the GSB judge scores both answers with (entries as ppo.rewards); "
        "required with a model path unless llm_judge is given; empty in the tiny world = its "
        "rule.",
        factory=list,
    )
    judge_margin: float = _help("Score differences within this margin are 'same'.", 0.05, ge=0)
    llm_judge: LLMJudgeConfig | None = _help(
        "Judge with a chat model instead of the rewards; none = the reward judge.", None
    )
    rm_pairs: str | None = _help(
        "Labelled preference pairs with categories for RM alignment; required with a model "
        "path; none in the tiny world = its held-out pairs.",
        None,
    )
    refilter: FilterConfig | None = _help(
        "Re-filter prompts before every improvement round with the current actor (the filter's "
        "settings: n, std_quantile, mean_quantiles, keep, rollout, ...; PEI sets prompts, "
        "policy, rewards, chat_format, out and seed itself); none = the same prompts every "
        "round; {} = the filter's defaults.",
        None,
    )
    refilter_categories: list[str] | None = _help(
        "Sub-domains re-filtered (the financial ones); the others keep every prompt; none = all.",
        None,
    )
    baseline: bool = _help(
        "After the loop, run plain PPO on the same budget — from SFT, the PPO config's β and "
        "the initial mixture, as many PPO steps as the rounds used — evaluate it like a round "
        "and compare it with PEI in the report.",
        False,
    )
    eval_prompts: str | None = _help(
        "Held-out prompts; none = the PPO config's (ppo.eval_prompts).", None
    )
    eval_max_prompts: int = _help("Held-out prompts evaluated per round (first N).", 300, ge=1)
    eval_batch_size: int = _help("Prompts per generation call in evaluation.", 64, ge=1)
    controller: ControllerConfig = _help(
        "The controller: tiers, weights, β and stopping (docs/methods.md §4).",
        factory=ControllerConfig,
    )
    output_dir: str = _help("Run directory (resumed when it holds completed rounds).", "runs/pei")
    seed: int = _help("Seed of every round (round K uses seed + K).", 0, ge=0)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.reference not in ("sft", "previous"):
            raise ValueError(f"reference: expected sft or previous, got {self.reference!r}")
        # settings given in code as mappings: the loader's checks
        if isinstance(self.ppo, Mapping):
            self.ppo = build(PEIConfig, {"ppo": self.ppo}).ppo
        if isinstance(self.controller, Mapping):
            self.controller = build(ControllerConfig, self.controller, "controller")
        if isinstance(self.refilter, Mapping):
            self.refilter = build(FilterConfig, self.refilter, "refilter")
        self.judge = as_specs(self.judge, "judge")
        if not self.judge and self.llm_judge is None and self.uses_tiny_world():
            self.judge = tiny_reward()  # empty = not given; a run with a model path requires it
        self._check_refilter()

    def uses_tiny_world(self) -> bool:
        """No model path given (ppo.policy, ppo.critic, ppo.reference, a reward_model
        directory): the tiny world fills in the inputs left empty. Once one is given, every
        input is the user's to give (no toy fallback)."""
        return self.ppo.uses_tiny_world() and self.reward_model in (None, "tiny")

    def _check_refilter(self) -> None:
        if self.refilter is None:
            return
        default = FilterConfig()
        for name in REFILTER_SET_BY_PEI:
            if getattr(self.refilter, name) != getattr(default, name):
                raise ValueError(
                    f"refilter.{name}: set by PEI every round; leave it out (PEI sets "
                    f"{', '.join(REFILTER_SET_BY_PEI)})"
                )

    def controller_config(self) -> ControllerConfig:
        return self.controller

    @classmethod
    def from_sources(cls, config: str | Path | None = None, overrides: list[str] = ()) -> PEIConfig:
        """YAML file (a path or a shipped name; optional) then ``--field value`` overrides."""
        return load_config(cls, config, overrides)

    def to_yaml(self) -> str:
        """The resolved config, the PPO config of the rounds included, as YAML."""
        return config_to_yaml(self)


# ------------------------------------------------------------------------ the loop


@dataclass
class Setup:
    """What every round shares: the base PPO config, the SFT policy, the data, the judge."""

    cfg: PEIConfig
    base: PPOConfig
    out: Path
    sft: Path
    eval_rows: list[dict]
    pairs: list[dict]
    initial: dict[str, float]
    prompts: list[dict]


@dataclass
class Progress:
    """Callbacks for a front end: ``message(text)`` between phases and ``ppo_step(round,
    step, total_steps, metrics)`` after every PPO step (round −1: the baseline)."""

    message: Callable[[str], None] = lambda text: None
    ppo_step: Callable[[int, int, int, dict], None] = lambda k, step, total, metrics: None


def run_pei(cfg: PEIConfig, progress: Progress | None = None) -> list[Decision]:
    """Run (or resume) the loop; returns every round's decision, the last one stopping."""
    progress = progress or Progress()
    setup = prepare(cfg, progress.message)
    decisions = completed_decisions(setup.out)
    if decisions:
        progress.message(f"resuming after round {decisions[-1].round}")
    while not _finished(decisions, cfg.rounds):
        k = len(decisions)
        decisions.append(run_round(setup, k, decisions, progress))
        if _is_main_process():
            write_report(setup, decisions)
    if cfg.baseline:
        result = run_baseline(setup, decisions, progress)
        if _is_main_process():
            write_report(setup, decisions)
            progress.message(_baseline_line(result, decisions[-1]))
    return decisions


def _is_main_process() -> bool:
    return PartialState().is_main_process


def _finished(decisions: list[Decision], rounds: int) -> bool:
    """Stopped by the controller, or past the round limit (a rerun may raise the limit)."""
    if not decisions:
        return False
    last = decisions[-1]
    if last.round >= rounds:
        return True
    return last.stop and not (last.stop_reason or "").startswith("round limit")


def completed_decisions(out: Path) -> list[Decision]:
    """The decisions of rounds 0, 1, … that finished (stops at the first missing one)."""
    found = []
    while (path := out / f"round-{len(found)}" / "decision.json").is_file():
        found.append(Decision(**json.loads(path.read_text(encoding="utf-8"))))
    return found


def _check_paths(cfg: PEIConfig, base: PPOConfig) -> None:
    """Before the tiny world, a model or a round: the run directory takes writes and every
    model directory the configs name is one (safetensors weights). One line on failure."""
    check_output_dir(cfg.output_dir, "output_dir")
    if cfg.reward_model and cfg.reward_model != "tiny":
        check_model_dir(cfg.reward_model, "reward_model")
    for name in ("policy", "critic", "reference"):
        if getattr(base, name) and not (name == "critic" and base.critic_from_policy):
            check_model_dir(getattr(base, name), f"ppo.{name}")


def _check_refilter_categories(cfg: PEIConfig, prompts: list[dict], path: Path) -> None:
    """Every category of ``refilter_categories`` has prompts in ``path`` (else a round would
    filter an empty pool)."""
    if cfg.refilter is None or not cfg.refilter_categories:
        return
    present = {r["category"] for r in prompts}
    unknown = sorted(set(cfg.refilter_categories) - present)
    if unknown:
        raise ValueError(
            f"refilter_categories: {unknown} match no prompt of {path} "
            f"(its categories: {sorted(present)})"
        )


def check_inputs(cfg: PEIConfig, base: PPOConfig) -> None:
    """With a model path given (``base``: the rounds' PPO config with ``eval_prompts`` and a
    reward-model directory applied), nothing comes from the tiny world: every PPO input,
    ``rm_pairs`` and a judge are required, and ``reward_model: tiny`` is refused. One line."""
    if cfg.uses_tiny_world():
        return
    given = next(
        ((f"ppo.{n}", getattr(cfg.ppo, n)) for n in ("policy", "critic", "reference")
         if getattr(cfg.ppo, n) is not None),
        ("reward_model", cfg.reward_model),
    )  # fmt: skip
    if cfg.reward_model == "tiny":
        raise ConfigError(
            f"reward_model: 'tiny' trains the tiny world's reward model, but a model path is "
            f"given ({given[0]}: {given[1]}); give a reward-model directory, or leave it out to "
            "use ppo.rewards and ppo.critic",
            "reward_model",
        )
    names = {"eval_prompts": "eval_prompts"}  # PEI's own field sets the PPO config's
    missing = [(names.get(n, f"ppo.{n}"), what) for n, what in missing_inputs(base)]
    if cfg.rm_pairs is None:
        missing.append(("rm_pairs", "labelled preference pairs {prompt | messages, chosen, "
                        "rejected, category} (RM alignment per sub-domain)"))  # fmt: skip
    if not cfg.judge and cfg.llm_judge is None:
        missing.append(("judge", f"{REWARDS_EXPECTED}, or llm_judge"))
    if missing:
        raise missing_inputs_error(given, missing)


def _use_reward_model(base: PPOConfig, rm: str) -> None:
    """``rm`` as the rounds' reward (stored z-scores when ``align rm train`` wrote them) and
    critic initialisation (unless a critic is given)."""
    normalize = Path(rm, "score_stats.json").is_file()  # written by align rm train
    base.rewards = [RewardSpec(type="model", path=rm, normalize=normalize, name="rm")]
    base.critic = base.critic or rm


def _with_paths(base: PPOConfig, paths: dict) -> PPOConfig:
    """``base`` naming every resolved model and data path (the tiny world's included), so each
    round's PPO config is complete."""
    critic = None if base.critic_from_policy else base.critic or str(paths["critic"])
    return dataclasses.replace(
        base,
        policy=str(paths["policy"]),
        critic=critic,
        prompts=str(paths["prompts"]),
        eval_prompts=str(paths["eval_prompts"]),
    )


def prepare(cfg: PEIConfig, progress: Callable[[str], None]) -> Setup:
    out = Path(cfg.output_dir)
    base = dataclasses.replace(cfg.ppo)
    if base.lora_r:
        raise ValueError(
            "lora_r: PEI carries full actor and critic checkpoints from round to round; LoRA "
            "runs (lora_r > 0) are not supported by align pei yet"
        )
    _check_paths(cfg, base)
    if cfg.eval_prompts:
        base.eval_prompts = cfg.eval_prompts
    if cfg.reward_model and cfg.reward_model != "tiny":
        _use_reward_model(base, cfg.reward_model)
    check_inputs(cfg, base)
    # lazy: align.ppo.run loads transformers' model classes (seconds): after the checks, and
    # kept off 'align pei --help'
    from align.ppo.run import _resolve_paths, load_prompts

    paths = _resolve_paths(base)
    # the data before anything is written or trained: a bad file fails the run at once
    prompts = load_prompts(paths["prompts"], "prompts", base.default_category)
    _check_refilter_categories(cfg, prompts, paths["prompts"])
    eval_rows = per_category_head(
        load_prompts(paths["eval_prompts"], "eval_prompts", base.default_category),
        cfg.eval_max_prompts,
    )
    pairs = load_records(_pairs_path(cfg), "prefs", default_category=base.default_category)
    pairs = pairs.to_list()
    if _is_main_process():
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
    if cfg.reward_model == "tiny":
        _use_reward_model(base, str(_tiny_reward_model(out, cfg.seed, progress)))
    base = _with_paths(base, paths)
    initial = _initial(base, prompts)
    return Setup(cfg, base, out, paths["policy"], eval_rows, pairs, initial, prompts)


def per_category_head(rows: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` rows, taken round-robin over categories (each keeps its file order), so
    every sub-domain is evaluated even when the file is sorted by category."""
    queues: dict[str, list[dict]] = {}
    for r in rows:
        queues.setdefault(r["category"], []).append(r)
    picked: list[dict] = []
    for i in range(max(map(len, queues.values()), default=0)):
        picked += [q[i] for q in queues.values() if i < len(q)]
    return picked[:limit]


def _pairs_path(cfg: PEIConfig) -> Path:
    if cfg.rm_pairs:
        return Path(cfg.rm_pairs)
    world, _ = build_tiny_world()
    return world.data("eval_prefs")


def _initial(base: PPOConfig, prompts: list[dict]) -> dict[str, float]:
    """Round 0's mixture shares: the PPO config's category weights, or equal."""
    categories = sorted({r["category"] for r in prompts})
    weights = base.category_weights or {c: 1.0 for c in categories}
    total = sum(weights.get(c, 0.0) for c in categories)
    return {c: weights.get(c, 0.0) / total for c in categories}


def _tiny_reward_model(out: Path, seed: int, progress: Callable[[str], None]) -> Path:
    """Train (once) a UFRM on the tiny world's preferences; returns its directory."""
    # lazy: these load trl and peft, needed only when the tiny reward model is trained
    from align.ufrm.run import run as run_ufrm
    from rm.ufrm import UFRMConfig

    final = out / "rm" / "model"
    if (final / "score_stats.json").is_file():
        return final
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "reward_model: tiny trains the reward model in a single process; run `align pei` "
            "once without a multi-process launch (or pass a reward-model directory)"
        )
    progress("training the tiny world's reward model (UFRM, once)")
    work = out / "rm" / ".train"
    shutil.rmtree(work, ignore_errors=True)
    summary = run_ufrm(
        UFRMConfig(
            output_dir=str(work),
            num_train_epochs=1,
            per_device_train_batch_size=8,
            learning_rate=1e-4,
            max_length=192,
            report_to="none",
            gradient_checkpointing=False,
            seed=seed,
        )
    )
    replace_directory(Path(summary["final"]), final)  # the model appears whole or not at all
    shutil.rmtree(work, ignore_errors=True)
    return final


def run_round(setup: Setup, k: int, decisions: list[Decision], progress: Progress) -> Decision:
    """PPO (resuming inside the round if it crashed), evaluation, decision — for round ``k``.
    Every process trains; the main process evaluates and decides, the others read its decision."""
    from align.ppo.run import run_ppo  # lazy: loads transformers; off 'align pei --help'

    previous = decisions[-1] if decisions else None
    ppo_cfg = round_ppo_config(setup, k, previous)
    if setup.cfg.refilter and previous is not None:
        state = PartialState()
        if state.is_main_process:
            progress.message(f"round {k}: re-filtering prompts with the round {k - 1} actor")
            refilter_prompts(setup, k, Path(ppo_cfg.policy), Path(ppo_cfg.prompts))
        state.wait_for_everyone()
    if ppo_cfg.resume_from is None:  # killed before its first checkpoint: the round restarts
        state = PartialState()
        if state.is_main_process:
            (Path(ppo_cfg.output_dir) / METRICS_FILE).unlink(missing_ok=True)
        state.wait_for_everyone()
    total = ppo_cfg.total_steps
    progress.message(f"round {k}: PPO, {total} steps, β = {ppo_cfg.beta:g}")
    run_ppo(ppo_cfg, lambda step, metrics: progress.ppo_step(k, step, total, metrics))
    path = setup.out / f"round-{k}" / "decision.json"
    state = PartialState()
    if state.is_main_process:
        decision = _evaluate_and_decide(setup, k, ppo_cfg, previous, progress)
        atomic_write_json(path, decision.to_dict())
        progress.message(_summary_line(decision))
    state.wait_for_everyone()
    return Decision(**json.loads(path.read_text(encoding="utf-8")))


def _evaluate_and_decide(
    setup: Setup, k: int, ppo_cfg: PPOConfig, previous: Decision | None, progress: Progress
) -> Decision:
    actor = latest_checkpoint(ppo_cfg.output_dir) / "actor"
    progress.message(f"round {k}: evaluating against the SFT policy")
    measured = evaluate_round(setup, actor, setup.out / f"round-{k}")
    return decide(
        k,
        measured,
        ppo_cfg.category_weights,
        setup.initial,
        ppo_cfg.beta,
        previous.overall_gain if previous else None,
        setup.cfg.rounds,
        setup.cfg.controller,
    )


def ppo_budget(cfg: PEIConfig, base: PPOConfig, decisions: list[Decision]) -> int:
    """PPO steps the rounds of ``decisions`` used: round 0's and each improvement round's."""
    first = cfg.pretrain_steps or base.total_steps
    return sum(first if d.round == 0 else cfg.round_steps or base.total_steps for d in decisions)


def run_baseline(setup: Setup, decisions: list[Decision], progress: Progress) -> dict:
    """Plain PPO on PEI's budget: from SFT with the PPO config's β and the initial mixture, as
    many steps as the rounds used, then evaluated as a round is (``baseline/``). Returns
    ``result.json`` ({steps, beta, overall_gain, gain}); kept when a rerun has the same budget."""
    from align.ppo.run import run_ppo  # lazy: loads transformers; off 'align pei --help'

    bdir = setup.out / "baseline"
    steps = ppo_budget(setup.cfg, setup.base, decisions)
    result_path = bdir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text(encoding="utf-8"))
        if result["steps"] == steps:
            return result
    ppo_cfg = baseline_ppo_config(setup, steps)
    state = PartialState()
    if state.is_main_process and ppo_cfg.resume_from is None:
        shutil.rmtree(bdir, ignore_errors=True)  # another budget's run, or a crashed first step
    state.wait_for_everyone()
    progress.message(f"baseline: plain PPO, {steps} steps, β = {ppo_cfg.beta:g}")
    run_ppo(ppo_cfg, lambda step, metrics: progress.ppo_step(-1, step, steps, metrics))
    if state.is_main_process:
        actor = latest_checkpoint(ppo_cfg.output_dir) / "actor"
        progress.message("baseline: evaluating against the SFT policy")
        measured = evaluate_round(setup, actor, bdir)
        result = {
            "steps": steps,
            "beta": ppo_cfg.beta,
            "overall_gain": measured.overall_gain,
            "gain": measured.gain,
        }
        atomic_write_json(result_path, result)
    state.wait_for_everyone()
    return json.loads(result_path.read_text(encoding="utf-8"))


def baseline_ppo_config(setup: Setup, steps: int) -> PPOConfig:
    """Round 0's PPO config with the PPO config's own β and ``steps`` steps (resuming when a
    checkpoint of this budget exists)."""
    out = setup.out / "baseline" / "ppo"
    same_budget = _saved_steps(out) == steps
    return dataclasses.replace(
        setup.base,
        output_dir=str(out),
        seed=setup.cfg.seed,
        resume_from="latest" if same_budget and any(out.glob("checkpoints/step-*")) else None,
        policy=str(setup.sft),
        reference=None,
        category_weights=setup.initial,
        total_steps=steps,
        run_name=f"{default_run_name(setup.base.run_name, setup.out)}/baseline",
    )


def _saved_steps(ppo_dir: Path) -> int | None:
    """``total_steps`` of the PPO run saved in ``ppo_dir`` (its config.yaml), if any."""
    path = ppo_dir / "config.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8")).get("total_steps")


def round_ppo_config(setup: Setup, k: int, previous: Decision | None) -> PPOConfig:
    """Round 0 starts from SFT with β₀ and the initial mixture; round k continues the actor and
    critic of round k−1 with the β and mixture the controller chose."""
    cfg, base = setup.cfg, setup.base
    out = setup.out / f"round-{k}" / "ppo"
    changes: dict = {
        "output_dir": str(out),
        "seed": cfg.seed + k,
        "resume_from": "latest" if any(out.glob("checkpoints/step-*")) else None,
        "run_name": f"{default_run_name(base.run_name, setup.out)}/round-{k}",
    }
    if previous is None:
        changes.update(
            policy=str(setup.sft),
            reference=None,
            beta=cfg.beta0,
            category_weights=setup.initial,
            total_steps=cfg.pretrain_steps or base.total_steps,
        )
    else:
        last = latest_checkpoint(setup.out / f"round-{k - 1}" / "ppo")
        changes.update(
            policy=str(last / "actor"),
            critic=str(last / "critic") if base.uses_critic() else None,  # grpo etc.: none
            critic_from_policy=False,
            reference=str(setup.sft if cfg.reference == "sft" else last / "actor"),
            beta=previous.next_beta,
            category_weights=previous.weights,
            total_steps=cfg.round_steps or base.total_steps,
        )
        if cfg.refilter:
            changes["prompts"] = str(setup.out / f"round-{k}" / "prompts.jsonl")
    return dataclasses.replace(base, **changes)


def refilter_prompts(setup: Setup, k: int, actor: Path, out: Path) -> None:
    """Write the round's prompt set: the re-filtered sub-domains' kept prompts (confidence-interval
    filter, docs/methods.md §3, sampled by ``actor`` and scored by PPO's reward) plus every prompt
    of the other sub-domains. Kept when it already exists (a resumed round trains on the same
    set)."""
    if out.is_file():
        return
    cfg = setup.cfg
    chosen = set(cfg.refilter_categories or {r["category"] for r in setup.prompts})
    pool = [r for r in setup.prompts if r["category"] in chosen]
    work = out.parent / "filter"
    write_jsonl(pool, work / "pool.jsonl")
    result = run_filter(
        dataclasses.replace(
            cfg.refilter,
            seed=cfg.seed + k,
            prompts=str(work / "pool.jsonl"),
            policy=str(actor),
            rewards=setup.base.rewards,
            chat_format=setup.base.chat_format,
            out=str(work / "kept.jsonl"),
        )
    )
    stats = ("score_mean", "score_std")
    kept = [{key: v for key, v in r.items() if key not in stats} for r in result.kept]
    rows = [r for r in setup.prompts if r["category"] not in chosen] + kept
    if not rows:  # not written: a rerun would keep an empty prompt set
        raise ValueError(
            f"refilter: round {k} kept none of the {len(pool)} prompts of the re-filtered "
            f"categories {sorted(chosen)} and no other category is left; loosen the "
            "filter (std_quantile, mean_quantiles, keep) or re-filter fewer categories"
        )
    write_jsonl(rows, out)


def evaluate_round(setup: Setup, actor: Path, rdir: Path) -> RoundMeasurements:
    """GSB of ``actor`` vs SFT per sub-domain (G_d) and the RM's alignment per sub-domain (A_d);
    writes ``answers.jsonl`` and ``evaluation.json`` into ``rdir``."""
    from rm.functions import reward_inputs  # lazy: loads transformers; off 'align pei --help'

    rows = setup.eval_rows
    sft_answers = _sft_answers(setup)
    answers = _answers(actor, setup)
    categories = [r["category"] for r in rows]
    prompts, columns = reward_inputs(rows)
    verdicts = _judge(setup.cfg).judge(prompts, answers, sft_answers, categories, **columns)
    gsb = summarize(verdicts, categories, seed=setup.cfg.seed)
    alignment = rm_alignment(setup)
    r_policy, r_sft, scored = _ppo_reward(setup, prompts, answers, sft_answers, categories, columns)
    # a pair the reward could not score (a dropped sample) counts in neither table
    kept = [v if ok else None for v, ok in zip(verdicts, scored)]
    on_policy = on_policy_alignment(kept, r_policy, r_sft, categories)
    hacking = reward_hacking(kept, r_policy, r_sft, categories)
    write_jsonl(
        [
            {"id": r.get("id"), "category": c, "answer": a, "sft_answer": b, "verdict": v}
            | {"reward": rp if ok else None, "sft_reward": rs if ok else None}
            for r, c, a, b, v, rp, rs, ok in zip(
                rows, categories, answers, sft_answers, verdicts, r_policy, r_sft, scored
            )
        ],
        rdir / "answers.jsonl",
    )
    evaluation = {
        "gsb": gsb.to_dict(),
        "rm_alignment": alignment,
        "rm_alignment_on_policy": on_policy,
        "reward_hacking": hacking,
        "reward_hacking_overall": overall(hacking, "rate"),
    }
    atomic_write_json(rdir / "evaluation.json", evaluation)
    per_category = {row.category: row for row in gsb.rows}
    return RoundMeasurements(
        gain={c: row.net_win_rate for c, row in per_category.items()},
        gain_counts={c: row.n for c, row in per_category.items()},
        alignment={c: v["accuracy"] for c, v in alignment.items()},
        alignment_counts={c: v["n"] for c, v in alignment.items()},
        overall_gain=gsb.overall.net_win_rate,
        on_policy_alignment={c: v["accuracy"] for c, v in on_policy.items()},
        on_policy_counts={c: v["n"] for c, v in on_policy.items()},
    )


def _ppo_reward(
    setup: Setup,
    prompts: list,
    answers: list[str],
    sft_answers: list[str],
    categories: list[str],
    columns: dict,
) -> tuple[list[float], list[float], list[bool]]:
    """PPO's reward of the policy's and SFT's answer to every eval prompt (one scoring pass over
    answers the round already has): ``(r_policy [N], r_sft [N], scored [N])``."""
    # lazy: these load transformers, kept off 'align pei --help'
    from eval.judges import RewardJudge
    from rm.functions import rewards_from_config

    judge = RewardJudge(rewards_from_config(setup.base.rewards))
    r_policy, r_sft, valid = judge.scores(prompts, answers, sft_answers, categories, **columns)
    return r_policy.tolist(), r_sft.tolist(), valid.tolist()


def rm_alignment(setup: Setup) -> dict[str, dict]:
    """Accuracy (r_chosen > r_rejected) of PPO's reward on the labelled pairs, per category.
    The reward does not change between rounds, so it is measured once (``rm_alignment.json``)."""
    # lazy: these load transformers, kept off 'align pei --help'
    from eval.judges import RewardJudge
    from rm.functions import reward_inputs, rewards_from_config

    path = setup.out / "rm_alignment.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    pairs = setup.pairs
    prompts, columns = reward_inputs(pairs)
    del columns["chosen"], columns["rejected"]
    r_c, r_r, valid = RewardJudge(rewards_from_config(setup.base.rewards)).scores(
        prompts,
        [p["chosen"] for p in pairs],
        [p["rejected"] for p in pairs],
        [p["category"] for p in pairs],
        **columns,
    )
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, c, r, ok in zip(pairs, r_c.tolist(), r_r.tolist(), valid.tolist()):
        if ok:
            hits[p["category"]].append(c > r)
    result = {c: {"n": len(h), "accuracy": sum(h) / len(h)} for c, h in sorted(hits.items())}
    atomic_write_json(path, result)
    return result


def _judge(cfg: PEIConfig):
    if cfg.llm_judge:
        return LLMJudge.from_config(cfg.llm_judge)
    from eval.judges import RewardJudge  # lazy: loads transformers; off 'align pei --help'

    return RewardJudge.from_config(cfg.judge, margin=cfg.judge_margin)


def _answers(model_dir: Path, setup: Setup) -> list[str]:
    """Greedy answers of the policy in ``model_dir`` to the eval prompts."""
    # lazy: transformers' Auto classes (~2 s) stay off 'align pei --help'
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    options = load_options(setup.base.dtype, setup.base.attn_implementation)  # as PPO loads
    # the main process alone evaluates: a plain load (never a partitioned one, which every
    # process would have to join)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, **options)
    model.eval()
    sampling = SamplingParams(max_new_tokens=setup.base.max_new_tokens, temperature=0.0)
    return generate_answers(
        model,
        tokenizer,
        setup.eval_rows,
        sampling,
        batch_size=setup.cfg.eval_batch_size,
        max_prompt_tokens=setup.base.max_prompt_length,
    )


def _sft_answers(setup: Setup) -> list[str]:
    """The SFT policy's answers: generated once per run directory (and again if the eval prompts
    or the generation settings change)."""
    path = setup.out / "sft_answers.jsonl"
    keys = [_prompt_key(r, setup) for r in setup.eval_rows]
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if [r.get("key") for r in rows] == keys:
            return [r["answer"] for r in rows]
    answers = _answers(setup.sft, setup)
    write_jsonl([{"key": k, "answer": a} for k, a in zip(keys, answers)], path)
    return answers


def _prompt_key(row: dict, setup: Setup) -> str:
    what = [messages_of(row), setup.base.max_new_tokens, setup.base.max_prompt_length]
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:16]


def _summary_line(d: Decision) -> str:
    moves = ", ".join(f"{c} {ARROWS[s]}" for c, s in d.steps.items() if s)
    stop = f"; stop: {d.stop_reason}" if d.stop else ""
    return (
        f"round {d.round}: net win vs SFT {d.overall_gain:+.1%}; "
        f"{moves or 'no changes'}; next β {d.next_beta:g}{stop}"
    )


def _baseline_line(result: dict, last: Decision) -> str:
    return (
        f"baseline (plain PPO, {result['steps']} steps, β = {result['beta']:g}): net win vs SFT "
        f"{result['overall_gain']:+.1%}; PEI after round {last.round}: {last.overall_gain:+.1%} "
        f"({last.overall_gain - result['overall_gain']:+.1%})"
    )


def write_report(setup: Setup, decisions: list[Decision]) -> Path:
    from align.pei.report import write_pei_report  # lazy: loads matplotlib

    return write_pei_report(setup.out, decisions)
