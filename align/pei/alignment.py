"""On-policy reward-model alignment and reward hacking, from one round's judged answer pairs.

Every held-out prompt of a round has two answers — the policy's and the SFT policy's — a judge's
verdict on them (``good``: the policy's is better, ``bad``: SFT's is, ``same``, or ``None`` when
unjudged) and the reward model's score of each. Labelled pairs tell how well the reward model
orders the answers people wrote; these tables tell how well it orders the answers the policy
*now* writes, which is where PPO pushes it (docs/methods.md §4's A_d measured on-policy):

- **on-policy alignment** of a sub-domain: among its decisive pairs (verdict good or bad), the
  share on which the reward model orders the two answers as the judge does (a tie in reward is
  not an agreement);
- **reward hacking** of a sub-domain: among its judged pairs (good, same or bad), the share on
  which the reward model prefers the policy's answer while the judge prefers SFT's.

Pure: lists in, dictionaries out (no models).
"""

from __future__ import annotations

from collections.abc import Sequence

DECISIVE = ("good", "bad")
JUDGED = ("good", "same", "bad")


def on_policy_alignment(
    verdicts: Sequence[str | None],
    reward_policy: Sequence[float],
    reward_sft: Sequence[float],
    categories: Sequence[str],
) -> dict[str, dict]:
    """Per sub-domain ``{"n": decisive pairs, "accuracy": share ordered as the judge orders}``.

    ``verdicts[i]``, ``reward_policy[i]``, ``reward_sft[i]`` and ``categories[i]`` describe
    prompt ``i`` (all ``[N]``). A sub-domain without a decisive pair has ``n = 0`` and accuracy
    0.0 (the controller tiers it medium, like any sub-domain with too few pairs).
    """
    _check_lengths(verdicts, reward_policy, reward_sft, categories)
    hits: dict[str, list[bool]] = {c: [] for c in dict.fromkeys(categories)}
    for v, rp, rs, c in zip(verdicts, reward_policy, reward_sft, categories):
        if v in DECISIVE:
            hits[c].append(rp > rs if v == "good" else rp < rs)
    return {c: {"n": len(h), "accuracy": _share(h)} for c, h in hits.items()}


def reward_hacking(
    verdicts: Sequence[str | None],
    reward_policy: Sequence[float],
    reward_sft: Sequence[float],
    categories: Sequence[str],
) -> dict[str, dict]:
    """Per sub-domain ``{"n": judged pairs, "count": hacked pairs, "rate": count / n}``: a pair
    is hacked when the judge prefers SFT's answer (``bad``) and the reward model the policy's.
    Shapes as :func:`on_policy_alignment`; ``rate`` is 0.0 when nothing was judged."""
    _check_lengths(verdicts, reward_policy, reward_sft, categories)
    flags: dict[str, list[bool]] = {c: [] for c in dict.fromkeys(categories)}
    for v, rp, rs, c in zip(verdicts, reward_policy, reward_sft, categories):
        if v in JUDGED:
            flags[c].append(v == "bad" and rp > rs)
    return {c: {"n": len(f), "count": sum(f), "rate": _share(f)} for c, f in flags.items()}


def overall(per_category: dict[str, dict], key: str) -> dict:
    """The pooled ``key`` share over sub-domains (weighted by their ``n``), with the total ``n``."""
    n = sum(v["n"] for v in per_category.values())
    hits = sum(v[key] * v["n"] for v in per_category.values())
    return {"n": n, key: hits / n if n else 0.0}


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _check_lengths(*columns: Sequence) -> None:
    sizes = [len(c) for c in columns]
    if len(set(sizes)) != 1:
        raise ValueError(
            "verdicts, reward_policy, reward_sft and categories: expected the same length, "
            f"got {', '.join(map(str, sizes))}"
        )
