"""Online confidence-interval filtering inside PPO (``online_filter`` of :class:`PPOConfig`).

With ``samples_per_prompt >= 2`` each prompt's answers form a group. Every step:

1. draw ``rollout_batch_size`` prompts from the trainer's mixture sampler (as without the
   filter); their categories set the step's quota per category;
2. generate and score them (the trainer's ``make_experience``); a group is dropped when a sample
   could not be scored (``invalid``), when its score std is below the floor (``std``; σ = 0 too,
   with ``drop_zero_std``) or when its mean lies outside the interval(s) (``mean``) — the rules
   of ``align filter`` (:mod:`align.core.score_rules`), with quantiles taken over a running
   window of the last ``window`` valid groups (this round's included), not a fixed pool;
3. refill: draw replacements for the dropped groups from the categories that lost them (rows
   within a category as the mixture sampler draws them), generate, score and filter them, for
   at most ``max_rounds`` rounds and ``max_extra_prompts`` extra prompts per step;
4. what is still missing when the budget is spent is backfilled with that category's dropped
   groups, highest std first, so every step trains on exactly ``rollout_batch_size`` groups and
   each category keeps its share of the draw.

The scores are the ones PPO trains on (the weighted reward sum minus ``missing_eos_penalty``,
before clipping and normalisation); a ``calibration`` file must be on that scale. Dropped groups
have been through the policy, value and reference forwards with the rest of their round (the
price of reusing ``make_experience`` whole); only the kept rows train.

Several processes: each filters its own share, but the refill draws (one generator, the same on
every process) and the window are global, so the state the main process checkpoints is every
process's. Every process runs the same number of rounds (forwards under ZeRO-3 are collective):
one that needs nothing in a round generates one spare group. Logged per category: kept,
dropped per rule, backfilled, extra generations (completions beyond the unfiltered step's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from accelerate.utils import gather_object

from align.core.config import check_ranges
from align.core.config import help_field as _help
from align.core.mixture import largest_remainder
from align.core.score_rules import (
    Interval,
    calibrated_intervals,
    check_rule_fields,
    load_calibration,
    mean_interval,
    prompt_stats,
    std_threshold,
    survivor_masks,
)

#: Why a group was dropped, in the order the rules apply.
REASONS = ("invalid", "std", "mean")


@dataclass
class OnlineFilterConfig:
    """Drop uninformative prompt groups each PPO step and refill them (``align filter``'s rules,
    applied online). Needs ``samples_per_prompt >= 2``."""

    enabled: bool = _help("Filter prompt groups online (needs samples_per_prompt >= 2).", False)
    std_min: float | None = _help("Drop groups whose score std is below this.", None, ge=0)
    std_quantile: float | None = _help(
        "Drop groups whose std is below this quantile of the running window.", None, ge=0, le=1
    )
    mean_range: tuple[float, float] | None = _help("Keep groups with lo <= mean <= hi.", None)
    mean_quantiles: tuple[float, float] | None = _help(
        "Keep groups whose mean lies within these quantiles of the running window.", None
    )
    calibration: str | None = _help(
        "JSON of `align rm eval --out`: keep means in the score bins at least as accurate as "
        "overall (the rewards PPO trains on must be on that evaluation's scale).",
        None,
    )
    drop_zero_std: bool = _help(
        "Also drop groups whose scores are all equal (σ = 0), whatever the floor: they give no "
        "signal. The only rule when no other is given.",
        True,
    )
    window: int = _help(
        "Valid groups (the latest) the quantile rules are taken over; this round's included.",
        512,
        ge=1,
    )
    max_extra_prompts: int | None = _help(
        "Extra prompts a step may generate (samples_per_prompt answers each) to replace dropped "
        "groups; none = rollout_batch_size (at most twice an unfiltered step's generations); "
        "0 = no refill (dropped groups are backfilled).",
        None,
        ge=0,
    )
    max_rounds: int = _help("Refill rounds per step (engine calls after the first).", 4, ge=0)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_rule_fields(self)  # the same checks as align filter's

    @property
    def std_rule(self) -> dict:
        """The std floor's rule (keyword arguments of :func:`std_threshold`); {} = none."""
        return {k: getattr(self, k) for k in ("std_min", "std_quantile") if getattr(self, k)}

    @property
    def mean_rule(self) -> dict:
        """The mean rule (keyword arguments of :func:`mean_interval`); {} = none."""
        names = ("mean_range", "mean_quantiles")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


# ------------------------------------------------------------------ pure decisions


def group_scores(scores: torch.Tensor, dropped: torch.Tensor, n: int) -> np.ndarray:
    """``[G, n]`` float64 scores of ``G`` groups of ``n`` consecutive samples (``scores``,
    ``dropped``: ``[G·n]``), NaN where the reward source dropped the sample."""
    values = scores.detach().double().cpu().numpy().copy()
    values[dropped.cpu().numpy().astype(bool)] = np.nan
    return values.reshape(-1, n)


def drop_reasons(
    mean: np.ndarray,
    std: np.ndarray,
    valid: np.ndarray,
    floor: float,
    intervals: Sequence[Interval],
    drop_zero_std: bool,
) -> list[str | None]:
    """Per group (``[G]`` inputs): the first rule of :data:`REASONS` it fails, None if it
    passes (:func:`align.core.score_rules.survivor_masks`)."""
    std_ok, mean_ok = survivor_masks(mean, std, valid, floor, intervals, drop_zero_std)
    reasons: list[str | None] = []
    for ok, s_ok, m_ok in zip(valid, std_ok, mean_ok):
        reasons.append(None if m_ok else "invalid" if not ok else "std" if not s_ok else "mean")
    return reasons


def take_groups(
    categories: Sequence[str], passed: Sequence[bool], open_slots: dict[str, int]
) -> list[bool]:
    """Which groups fill a slot: passing groups, in order, while their category has one open
    (``open_slots`` is updated)."""
    taken = []
    for c, ok in zip(categories, passed):
        take = bool(ok) and open_slots.get(c, 0) > 0
        if take:
            open_slots[c] -= 1
        taken.append(take)
    return taken


def backfill(candidates: Sequence[tuple[str, float]], deficits: Mapping[str, int]) -> list[int]:
    """Indices into ``candidates`` (``(category, std)`` of dropped groups, NaN std = invalid)
    filling ``deficits`` per category: highest std first, invalid last, ties in order."""
    chosen = []
    for c, need in deficits.items():
        mine = [i for i, (cat, _) in enumerate(candidates) if cat == c]
        mine.sort(key=lambda i: -candidates[i][1] if candidates[i][1] == candidates[i][1] else 1)
        if len(mine) < need:
            raise RuntimeError(f"category {c!r}: {need} groups to backfill, only {len(mine)}")
        chosen += mine[:need]
    return sorted(chosen)


def split_budget(deficits: Mapping[str, int], budget: int) -> dict[str, int]:
    """Prompts to draw per category: the deficits, scaled down pro rata (largest remainder)
    when they exceed ``budget``."""
    total = sum(deficits.values())
    if total <= budget:
        return {c: d for c, d in deficits.items() if d > 0}
    share = largest_remainder(dict(sorted(deficits.items())), max(budget, 0))
    return {c: k for c, k in share.items() if k > 0}


def draw_in_categories(
    probs: torch.Tensor, categories: Sequence[str], wanted: Mapping[str, int], generator
) -> list[int]:
    """Row indices: ``wanted[c]`` rows of each category ``c`` (sorted), drawn with replacement
    with the mixture sampler's row probabilities ``probs`` ``[R]`` restricted to ``c``."""
    rows: list[int] = []
    for c in sorted(wanted):
        mask = torch.tensor([k == c for k in categories], dtype=torch.bool)
        p = torch.where(mask, probs, torch.zeros_like(probs))
        if p.sum() <= 0:  # a category with weight 0 still has rows: uniform over them
            p = mask.double()
        rows += torch.multinomial(p, wanted[c], replacement=True, generator=generator).tolist()
    return rows


# ------------------------------------------------------------------ experience rows


def _padded(value: torch.Tensor, left: int, right: int, fill: int) -> torch.Tensor:
    """``value`` ``[N, W]`` with ``left`` / ``right`` columns of ``fill`` added."""
    out = value.new_full((value.shape[0], left + value.shape[1] + right), fill)
    out[:, left : left + value.shape[1]] = value
    return out


def concat_experiences(pieces: Sequence, pad_id: int):
    """One experience from several (the same dataclass, fields ``None`` or tensors): rows
    stacked, prompt columns left-padded and completion columns right-padded to the widest.

    Fields as wide as ``input_ids`` (``[N, P+T]``, P >= 1: a prompt is never empty) are over
    prompt and completion; other 2-D fields are ``[N, T]`` over completion tokens; 1-D fields
    (``[N]``) are stacked as they are. Padding: ``pad_id`` in ``input_ids``, 0 / False elsewhere
    (no attention, no mask: every logprob and loss of the rows is unchanged)."""
    if len(pieces) == 1:
        return pieces[0]
    width = max(p.mask.shape[1] for p in pieces)
    prompt = max(p.input_ids.shape[1] - p.mask.shape[1] for p in pieces)
    out = {}
    for f in fields(pieces[0]):
        if getattr(pieces[0], f.name) is None:
            out[f.name] = None
            continue
        parts = []
        for p in pieces:
            value, t = getattr(p, f.name), p.mask.shape[1]
            fill = pad_id if f.name == "input_ids" else 0
            if value.dim() == 2 and value.shape[1] == p.input_ids.shape[1]:
                value = _padded(value, prompt - (value.shape[1] - t), width - t, fill)
            elif value.dim() == 2:
                value = _padded(value, 0, width - t, fill)
            parts.append(value)
        out[f.name] = torch.cat(parts)
    return type(pieces[0])(**out)


def merge_infos(infos: Sequence[dict], rows: Sequence[torch.Tensor]) -> dict:
    """The per-sample entries of ``make_experience``'s infos at ``rows`` (``[k]`` indices per
    piece), stacked: tensors and lists of one entry per sample, dicts of them. The
    ``logprob_gap`` ``(sum, count, max)`` covers every generated sample."""
    out = {}
    for key, first in infos[0].items():
        values = [info[key] for info in infos]
        if key == "logprob_gap":
            out[key] = (
                sum(v[0] for v in values),
                sum(v[1] for v in values),
                torch.stack([v[2] for v in values]).max(),
            )
        elif isinstance(first, dict):
            out[key] = {
                name: torch.cat([v[name][r.to(v[name].device)] for v, r in zip(values, rows)])
                for name in first
            }
        elif isinstance(first, torch.Tensor):
            out[key] = torch.cat([v[r.to(v.device)] for v, r in zip(values, rows)])
        elif isinstance(first, list):
            out[key] = [v[i] for v, r in zip(values, rows) for i in r.tolist()]
        else:
            out[key] = first
    return out


# ------------------------------------------------------------------ one step


@dataclass
class _Round:
    """One engine call's groups: their experience and what the rules decided (``[G]`` lists)."""

    exp: object
    info: dict
    categories: list[str]
    stds: np.ndarray
    reasons: list[str | None]
    taken: list[bool]


class OnlineFilter:
    """The filter's state (the refill draws' generator, the running window) and one step's
    filtered experience (:meth:`experience`, called by the trainer instead of drawing and
    generating once)."""

    def __init__(
        self, cfg: OnlineFilterConfig, categories: Sequence[str], rollout_batch_size: int, seed: int
    ) -> None:
        self.cfg, self.categories = cfg, list(categories)
        self.generator = torch.Generator().manual_seed(seed + 7_919)  # refills: their own stream
        self.window = np.zeros((0, 2))  # [W, 2]: (mean, std) of the latest valid groups
        self.calibrated = (
            calibrated_intervals(*load_calibration(cfg.calibration)) if cfg.calibration else None
        )
        extra = cfg.max_extra_prompts
        self.max_extra = rollout_batch_size if extra is None else extra
        self.last_thresholds: tuple[float, list[Interval]] = (float("-inf"), [])

    # -------------------------------------------------------------- window and thresholds

    def observe(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Append valid groups' ``mean`` / ``std`` (``[G]`` each) to the window, keep the last
        ``window``."""
        self.window = np.concatenate([self.window, np.stack([mean, std], 1)])[-self.cfg.window :]

    def thresholds(self) -> tuple[float, list[Interval]]:
        """``(std floor, mean intervals)`` over the window, as ``align filter`` over its pool."""
        floor = std_threshold(self.window[:, 1], **self.cfg.std_rule)
        if self.calibrated is not None:
            return floor, self.calibrated
        return floor, [mean_interval(self.window[:, 0], **self.cfg.mean_rule)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "window": torch.tensor(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.window = state["window"].numpy().astype(np.float64)

    # -------------------------------------------------------------- the step

    def experience(self, trainer, times: dict) -> tuple[object, dict]:
        """This process's share of the step: ``(Experience, info)`` as ``make_experience``
        returns them, over exactly the groups of an unfiltered draw per category; ``info``
        gains ``online_filter`` (the step's global counts, for the log)."""
        index = trainer._my_share(trainer.sampler.sample(trainer.cfg.rollout_batch_size))
        open_slots = Counter(self.categories[i] for i in index)
        quotas = dict(open_slots)
        budget = self.max_extra // trainer.accelerator.num_processes
        rounds: list[_Round] = []
        while index:
            rounds.append(self._round(trainer, index, times, open_slots))
            index = self._refill(trainer, split_budget(open_slots, budget), len(rounds))
            budget -= len(index)
        return self._assemble(trainer, rounds, open_slots, quotas)

    def _round(self, trainer, index: list[int], times: dict, open_slots: Counter) -> _Round:
        """Generate and score ``index``'s prompts, judge their groups, take what fills a slot."""
        rows = [trainer.prompts[i] for i in index]
        round_times: dict[str, float] = {}
        exp, info = trainer.make_experience(
            rows, [trainer.prompt_ids[i] for i in index], round_times
        )
        for k, v in round_times.items():  # every round's time counts
            times[k] = times.get(k, 0.0) + v
        scores = group_scores(exp.scores, info["dropped"], trainer.cfg.samples_per_prompt)
        mean, std, valid = prompt_stats(scores)
        for m, s in gather_object([(mean[valid].tolist(), std[valid].tolist())]):  # rank order
            self.observe(np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64))
        self.last_thresholds = self.thresholds()
        reasons = drop_reasons(mean, std, valid, *self.last_thresholds, self.cfg.drop_zero_std)
        categories = [r["category"] for r in rows]
        taken = take_groups(categories, [r is None for r in reasons], open_slots)
        return _Round(exp, info, categories, std, reasons, taken)

    def _refill(self, trainer, wanted: dict[str, int], done: int) -> list[int]:
        """This process's refill draw; [] when the rounds are spent or no process wants any.
        Every process draws every process's refills in rank order from the same generator, so
        the generator stays the same everywhere."""
        if done > self.cfg.max_rounds:
            return []
        everyone = gather_object([wanted])
        if not any(everyone):
            return []
        probs, mine = trainer.sampler.probs, []
        for rank, want in enumerate(everyone):
            drawn = draw_in_categories(probs, self.categories, want, self.generator)
            if not drawn:  # needs nothing: one spare group keeps the processes' rounds in step
                drawn = torch.multinomial(probs, 1, generator=self.generator).tolist()
            if rank == trainer.accelerator.process_index:
                mine = drawn
        return mine

    def _assemble(self, trainer, rounds: list[_Round], open_slots: Counter, quotas: dict):
        """The taken groups plus the backfill, as one experience (rounds in order)."""
        n = trainer.cfg.samples_per_prompt
        pool = [(k, g) for k, r in enumerate(rounds) for g, t in enumerate(r.taken) if not t]
        candidates = [(rounds[k].categories[g], float(rounds[k].stds[g])) for k, g in pool]
        filled = [pool[i] for i in backfill(candidates, {c: d for c, d in open_slots.items() if d})]
        chosen = [[g for g, t in enumerate(r.taken) if t] for r in rounds]
        for k, g in filled:
            chosen[k].append(g)
        rows = [
            torch.tensor([g * n + j for g in sorted(gs) for j in range(n)], dtype=torch.long)
            for gs in chosen
        ]
        pieces = [r.exp.select(i.to(r.exp.mask.device)) for r, i in zip(rounds, rows) if len(i)]
        exp = concat_experiences(pieces, trainer.tokenizer.pad_token_id)
        info = merge_infos([r.info for r in rounds], rows)
        info["online_filter"] = self._metrics(rounds, filled, n, quotas)
        return exp, info

    def _metrics(self, rounds: list[_Round], filled: list, n: int, quotas: dict) -> dict:
        """Global counts of the step (sums over processes), per category and in total."""
        names = ("kept", *(f"dropped_{r}" for r in REASONS), "backfilled", "extra_generations")
        counts = Counter({f"{name}/{c}": 0 for c in quotas for name in names})
        for k, r in enumerate(rounds):
            for c, reason, taken in zip(r.categories, r.reasons, r.taken):
                counts[f"kept/{c}"] += taken
                if reason is not None:
                    counts[f"dropped_{reason}/{c}"] += 1
                if k > 0:
                    counts[f"extra_generations/{c}"] += n
        for k, g in filled:
            counts[f"backfilled/{rounds[k].categories[g]}"] += 1
        counts["generated"] = n * sum(len(r.categories) for r in rounds)
        total: Counter = Counter()
        for part in gather_object([dict(counts)]):
            total.update(part)
        out = {f"filter/{k}": float(v) for k, v in sorted(total.items())}
        for name in names:
            out[f"filter/{name}"] = float(
                sum(v for k, v in total.items() if k.startswith(f"{name}/"))
            )
        out["filter/rounds"] = float(len(rounds))
        out.update(threshold_metrics(*self.last_thresholds))
        return out


def threshold_metrics(floor: float, intervals: Sequence[Interval]) -> dict[str, float]:
    """The last round's thresholds for the log: the std floor and the outer mean bounds, each
    only when finite (no rule: nothing logged)."""
    bounds = {
        "filter/std_floor": floor,
        "filter/mean_lo": min((lo for lo, _ in intervals), default=float("-inf")),
        "filter/mean_hi": max((hi for _, hi in intervals), default=float("inf")),
    }
    return {k: float(v) for k, v in bounds.items() if np.isfinite(v)}


def online_filter_of(cfg, categories: Sequence[str]) -> OnlineFilter | None:
    """The filter a :class:`~align.ppo.config.PPOConfig` asks for (``cfg.online_filter``), over
    the prompts' ``categories``; None when it is off."""
    if not cfg.online_filter.enabled:
        return None
    return OnlineFilter(cfg.online_filter, categories, cfg.rollout_batch_size, cfg.seed)
