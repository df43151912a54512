"""Evaluation (layer 2): judges, good/same/bad win rates per sub-domain, MCQ benchmarks, charts.

Modules (imported on first use, so ``import eval`` stays light):

- :mod:`eval.gsb` — GSB counts, rates and bootstrap intervals (``summarize`` → ``GSBReport``)
- :mod:`eval.judges` — the ``Judge`` protocol and ``RewardJudge``; :mod:`eval.llm_judge` —
  ``LLMJudge`` over an OpenAI-compatible chat API
- :mod:`eval.generation` — ``generate_answers`` through any rollout engine
- :mod:`eval.gsb_run` — ``compare`` (judge + summarise) and ``run_gsb`` (``align eval gsb``)
- :mod:`eval.mcq` / :mod:`eval.mcq_run` — FinanceIQ-style exams (``align eval mcq``)
- :mod:`eval.charts`, :mod:`eval.report` — PNG charts and the markdown report of a run directory
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "summarize": "eval.gsb",
    "GSBReport": "eval.gsb",
    "GSBRow": "eval.gsb",
    "Judge": "eval.judges",
    "RewardJudge": "eval.judges",
    "reward_judge_from_config": "eval.judges",
    "LLMJudge": "eval.llm_judge",
    "generate_answers": "eval.generation",
    "compare": "eval.gsb_run",
    "extract_choice": "eval.mcq",
    "MCQConfig": "eval.mcq_run",
    "evaluate_mcq": "eval.mcq_run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
