"""Multiple-choice exams in the FinanceIQ / CMMLU / C-Eval CSV layout.

Data: ``DIR/<split>/*.csv``, one file per subject (category = the file name without ``.csv``
and without a ``_<split>`` suffix, as C-Eval names its files). Columns ``Question, A, B, C, D,
Answer`` (FinanceIQ, CMMLU; an unnamed leading index is ignored) or ``question, ..., answer``
(C-Eval; extra columns such as ``id`` and ``explanation`` are ignored).

Prompts are built exactly as FinanceIQ builds them (its ``gen_prompt`` / ``format_example``)::

    以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\\n\\n
    [k shots: 题目：{Q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{Answer}\\n\\n]
    题目：{Q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：

with the shots taken in file order from the ``dev`` split of the same subject and, like
FinanceIQ, the longest shots dropped while the prompt would exceed ``max_length`` tokens.

Two scorings: ``generate`` (generate through any rollout engine and extract the option letter
with :func:`align.core.answers.extract_choice`, the one reader the RL reward
``rm.rules.mcq_match`` uses too; no readable letter counts as wrong — FinanceIQ guesses at random
instead, which adds a quarter of those on average) and ``loglik`` (the option
whose letter, as the answer's first token(s), is most likely). Accuracy per category, the macro
average over categories (FinanceIQ's overall score) and the micro average over questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from align.core.answers import extract_choice  # noqa: F401  (re-exported: eval.extract_choice)
from align.core.data import DataError, check_record, read_table
from rollouts.base import right_pad

OPTIONS = ("A", "B", "C", "D")
HEADER = "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
_COLUMN_ALIASES = {"question": "Question", "answer": "Answer"}


@dataclass(frozen=True)
class MCQItem:
    """One question: ``options`` are the texts of A-D, ``answer`` one letter, ``row`` 1-based."""

    category: str
    question: str
    options: tuple[str, str, str, str]
    answer: str
    row: int


# ---------------------------------------------------------------- reading


def _normalise_columns(row: dict) -> dict:
    out = {}
    for name, value in row.items():
        key = _COLUMN_ALIASES.get(name, name) if name not in ("Question", "Answer") else name
        out.setdefault(key, value)
    return out


def category_of(path: Path, split: str) -> str:
    """The file stem less a ``_<split>`` suffix (C-Eval ``law_val.csv`` → ``law``)."""
    stem = path.stem
    suffix = f"_{split}"
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def read_mcq_csv(path: str | Path, category: str | None = None) -> list[MCQItem]:
    """Every row of one exam file, validated; a bad row raises
    :class:`~align.core.data.DataError`."""
    path = Path(path)
    items = []
    for i, raw in enumerate(read_table(path)):
        row = _normalise_columns(raw)
        if isinstance(row.get("Answer"), str):
            row["Answer"] = row["Answer"].strip()
        problems = check_record("mcq", {k: v for k, v in row.items() if k != "category"})
        if problems:
            name, expected, got = problems[0]
            raise DataError(path, i + 1, name, expected, got)
        items.append(
            MCQItem(
                category or path.stem,
                str(row["Question"]),
                tuple(str(row[o]) for o in OPTIONS),
                row["Answer"],
                i + 1,
            )
        )
    return items


def load_split(data_dir: str | Path, split: str) -> dict[str, list[MCQItem]]:
    """``{category: items}`` of ``DIR/<split>/*.csv``, categories sorted by name."""
    folder = Path(data_dir) / split
    if not folder.is_dir():
        found = sorted(p.name for p in Path(data_dir).iterdir()) if Path(data_dir).is_dir() else []
        raise FileNotFoundError(
            f"{folder}: no such split folder (expected DIR/{split}/*.csv; {data_dir} holds "
            f"{found or 'nothing'})"
        )
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.csv exam files")
    return {category_of(f, split): read_mcq_csv(f, category_of(f, split)) for f in files}


# ---------------------------------------------------------------- prompts


def format_example(item: MCQItem, include_answer: bool) -> str:
    """FinanceIQ's ``format_example``: the question, its options, ``答案是：`` (+ answer)."""
    text = "题目：" + item.question
    for letter, option in zip(OPTIONS, item.options):
        text += f"\n{letter}. {option}"
    text += "\n答案是："
    return text + (f"{item.answer}\n\n" if include_answer else "")


def build_prompt(
    subject: str,
    item: MCQItem,
    shots: Sequence[MCQItem] = (),
    count_tokens: Callable[[str], int] | None = None,
    max_length: int = 2048,
) -> str:
    """FinanceIQ's ``gen_prompt``: header, shots, question.

    With ``count_tokens``: when header + question alone exceed ``max_length`` tokens the prompt
    is the question alone; otherwise, while the shots take ``max_length - (header + question)``
    tokens or more, every shot of the greatest length is dropped.
    """
    header = HEADER.format(subject=subject)
    end = format_example(item, include_answer=False)
    examples = [format_example(s, include_answer=True) for s in shots]
    if count_tokens is None:
        return header + "".join(examples) + end
    fixed = count_tokens(header) + count_tokens(end)
    if fixed > max_length:
        return end
    sized = [(e, count_tokens(e)) for e in examples]
    while sized and sum(n for _, n in sized) >= max_length - fixed:
        longest = max(n for _, n in sized)
        sized = [(e, n) for e, n in sized if n != longest]
    return header + "".join(e for e, _ in sized) + end


# ---------------------------------------------------------------- scoring


@dataclass
class MCQResult:
    """Accuracy per category, macro (mean of categories) and micro (over questions) averages."""

    scoring: str
    per_category: dict[str, dict]
    macro: float
    micro: float
    n: int
    predictions: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_predictions: bool = False) -> dict:
        out = {
            "scoring": self.scoring,
            "per_category": self.per_category,
            "macro": self.macro,
            "micro": self.micro,
            "n": self.n,
        }
        if with_predictions:
            out["predictions"] = self.predictions
        return out

    def to_markdown(self, title: str | None = None) -> str:
        lines = [
            "| category | n | correct | accuracy % | no answer |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, c in self.per_category.items():
            lines.append(
                f"| {name} | {c['n']} | {c['correct']} | {100 * c['accuracy']:.2f} | "
                f"{c['no_answer']} |"
            )
        lines.append(f"| **macro average** | {self.n} | | **{100 * self.macro:.2f}** | |")
        lines.append(f"| micro average | {self.n} | | {100 * self.micro:.2f} | |")
        cut = sum(c.get("truncated_prompts", 0) for c in self.per_category.values())
        if cut:
            lines.append(f"\n{cut} prompts were longer than max_length and left-truncated.")
        return (f"### {title}\n\n" if title else "") + "\n".join(lines) + "\n"


def accuracy_summary(
    items: Sequence[MCQItem], predictions: Sequence[str | None], scoring: str
) -> MCQResult:
    """Per-category accuracy (a None prediction is wrong and counted as ``no_answer``)."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    if not items:
        raise ValueError("no questions to score")
    per: dict[str, dict] = {}
    for item, pred in zip(items, predictions):
        c = per.setdefault(item.category, {"n": 0, "correct": 0, "no_answer": 0})
        c["n"] += 1
        c["correct"] += int(pred == item.answer)
        c["no_answer"] += int(pred is None)
    for c in per.values():
        c["accuracy"] = c["correct"] / c["n"]
    macro = sum(c["accuracy"] for c in per.values()) / len(per)
    micro = sum(c["correct"] for c in per.values()) / len(items)
    return MCQResult(scoring, per, macro, micro, len(items))


def option_continuations(tokenizer, chat_template: bool) -> list[list[int]]:
    """Token ids of each letter as the first thing an answer says.

    Raw prompts end with ``答案是：``, so the letter itself; with a chat template, what the
    template puts before the assistant's text comes too (the xuanyuan formats render the reply
    as ``" " + text``): the rendered reply ``"X"`` after the generation prompt, up to the letter.
    """
    out = []
    for letter in OPTIONS:
        text = letter
        if chat_template:
            user = [{"role": "user", "content": "?"}]
            head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": letter}], tokenize=False
            )
            if full.startswith(head) and letter in full[len(head) :]:
                tail = full[len(head) :]
                text = tail[: tail.index(letter) + 1]
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


@torch.no_grad()
def option_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """``[N, K]`` log-likelihood of each continuation after each prompt (summed over its tokens).

    When the continuations differ only in their last token (``" A"`` … ``" D"`` share the space
    token in many vocabularies) one forward over prompt + shared prefix per prompt gives all K:
    the prefix's logprob plus the next-token logprob of each last token. Otherwise each
    prompt + continuation is scored on its own.
    """
    prefix = _shared_prefix(continuations)
    if all(len(c) == len(prefix) + 1 for c in continuations):
        last = torch.tensor([c[-1] for c in continuations])
        rows = []
        for i in range(0, len(prompt_ids), batch_size):
            chunk = [list(p) + prefix for p in prompt_ids[i : i + batch_size]]
            head, after = _prefix_and_next(model, chunk, len(prefix), pad_id)
            rows.append(head[:, None] + after[:, last])
        return torch.cat(rows)
    rows = [_continuation_logprobs(model, p, continuations, pad_id) for p in prompt_ids]
    return torch.stack(rows)


def _shared_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    prefix: list[int] = []
    for column in zip(*sequences):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return prefix


def _right_padded(model, sequences: Sequence[Sequence[int]], pad_id: int):
    """``[B, L, V]`` float32 log-softmax of the model over right-padded sequences."""
    device = next(model.parameters()).device
    ids, mask = right_pad(sequences, pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.long().to(device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _prefix_and_next(model, sequences, n_prefix: int, pad_id: int):
    """``(logprob of each sequence's last n_prefix tokens [B], next-token logprobs [B, V])``."""
    logprobs = _right_padded(model, sequences, pad_id)
    heads, nexts = [], []
    for b, seq in enumerate(sequences):
        end = len(seq)
        positions = torch.arange(end - n_prefix - 1, end - 1)
        tokens = torch.tensor(seq[end - n_prefix :], dtype=torch.long)
        heads.append(logprobs[b, positions, tokens].sum())
        nexts.append(logprobs[b, end - 1])
    return torch.stack(heads), torch.stack(nexts)


def _continuation_logprobs(model, prompt, continuations, pad_id: int) -> torch.Tensor:
    """``[K]``: sum of log p(continuation tokens | prompt, earlier continuation tokens)."""
    seqs = [list(prompt) + list(c) for c in continuations]
    logprobs = _right_padded(model, seqs, pad_id)
    out = []
    for k, c in enumerate(continuations):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c))
        out.append(logprobs[k, positions, torch.tensor(c)].sum())
    return torch.stack(out)
