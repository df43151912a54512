"""MCQ benchmarks: the answer extractor, FinanceIQ's prompts, rule policies with known scores, and
the tiny policy end to end on the real FinanceIQ files (``../shared/data/financeiq``)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from align.core.data import DataError
from eval.mcq import build_prompt, extract_choice, format_example, load_split
from eval.mcq_run import MCQConfig, build_prompts, evaluate_mcq
from rollouts.base import RolloutBatch

DATA = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
FINANCEIQ = DATA / "financeiq"
needs_financeiq = pytest.mark.skipif(
    not (FINANCEIQ / "dev").is_dir(), reason=f"FinanceIQ data not found at {FINANCEIQ}"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("答案是：C", "C"),
        ("C", "C"),
        ("选C。", "C"),
        ("正确答案为 C", "C"),
        ("(C)", "C"),
        ("（C）", "C"),
        ("C.", "C"),
        ("B. 因为A选项的说法不完整", "B"),
        ("答案：B", "B"),
        ("答案为（A）", "A"),
        ("本题答案选B", "B"),
        ("答案应该是 D", "D"),
        ("正确的选项是D", "D"),
        ("选项B正确", "B"),
        ("C项当选", "C"),
        ("根据题意，应选D", "D"),
        ("A不正确，B不正确，C正确", "C"),
        ("这是CPA考试的常见题，答案：B", "B"),  # the C and A of "CPA" are not options
        ("答案是A，不对，答案应该是C", "C"),  # the last explicit answer wins
        ("The answer is D.", "D"),
        ("分析：该做法符合规定，B", "B"),  # the only letter mentioned
        ("A和C都有道理", None),  # several letters, none chosen
        ("A、B、C、D都不对", None),
        ("选项A、B、C的说法都有问题吗", None),
        ("我不知道", None),
        ("", None),
        ("CPA", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


# ---------------------------------------------------------------- prompts

ROW = {"Question": "下列哪项属于货币政策工具？", "A": "税收", "B": "存款准备金率", "C": "财政补贴",
       "D": "国债发行", "Answer": "B"}  # fmt: skip


def _write_csv(path: Path, rows: list[dict], header=("", "Question", "A", "B", "C", "D", "Answer")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow([i if h == "" else r[h] for h in header])


def test_zero_and_five_shot_prompts_follow_financeiq_exactly(tmp_path):
    rows = [{**ROW, "Question": f"问题{k}", "Answer": "ABCDA"[k]} for k in range(5)]
    _write_csv(tmp_path / "dev" / "经济师.csv", rows)
    _write_csv(tmp_path / "test" / "经济师.csv", [ROW])
    item = load_split(tmp_path, "test")["经济师"][0]
    zero = build_prompt("经济师", item)
    assert zero == (
        "以下是关于经济师的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：下列哪项属于货币政策工具？\n"
        "A. 税收\nB. 存款准备金率\nC. 财政补贴\nD. 国债发行\n答案是："
    )
    shots = load_split(tmp_path, "dev")["经济师"]
    five = build_prompt("经济师", item, shots)
    examples = "".join(
        f"题目：问题{k}\nA. 税收\nB. 存款准备金率\nC. 财政补贴\nD. 国债发行\n"
        f"答案是：{'ABCDA'[k]}\n\n"
        for k in range(5)
    )
    header = "以下是关于经济师的单项选择题，请直接给出正确答案的选项。\n\n"
    assert five == header + examples + zero[len(header) :]
    cfg = MCQConfig(data=str(tmp_path), split="test", shots=5)
    assert build_prompts(cfg).texts == [five]


def test_shots_are_dropped_longest_first_past_the_budget():
    """FinanceIQ's rule with characters as tokens: header+question = 31+61, shots 30/40/40."""
    item = read_row(ROW)
    shots = [read_row({**ROW, "Question": "问" * q}) for q in (1, 11, 11)]
    count = len
    fixed = count("以下是关于X的单项选择题，请直接给出正确答案的选项。\n\n") + count(
        format_example(item, False)
    )
    sizes = [count(format_example(s, True)) for s in shots]
    assert sizes[1] == sizes[2] > sizes[0]
    # budget leaves room for all three shots: nothing dropped
    everything = build_prompt("X", item, shots, count, fixed + sum(sizes) + 1)
    assert everything.count("题目：") == 4
    # one token short: both longest shots go at once (FinanceIQ drops every shot of that length)
    fewer = build_prompt("X", item, shots, count, fixed + sum(sizes))
    assert fewer.count("题目：") == 2 and "题目：问\n" in fewer
    # header + question alone over budget: the question alone
    assert build_prompt("X", item, shots, count, fixed - 1) == format_example(item, False)


def read_row(row: dict):
    from eval.mcq import MCQItem

    return MCQItem("X", row["Question"], tuple(row[o] for o in "ABCD"), row["Answer"], 1)


def test_bad_rows_name_file_row_and_field(tmp_path):
    _write_csv(tmp_path / "test" / "税务师.csv", [ROW, {**ROW, "Answer": "E"}])
    with pytest.raises(DataError, match=r"税务师.csv: row 2: field 'Answer': expected one of"):
        load_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="no such split folder"):
        load_split(tmp_path, "val")


def test_ceval_layout_reads_with_lowercase_columns_and_split_suffix(tmp_path):
    header = ("id", "question", "A", "B", "C", "D", "answer", "explanation")
    row = {"id": 0, "question": ROW["Question"], **{o: ROW[o] for o in "ABCD"}, "answer": "B",
           "explanation": "…"}  # fmt: skip
    _write_csv(tmp_path / "val" / "banking_val.csv", [row], header)
    items = load_split(tmp_path, "val")["banking"]
    assert items[0].answer == "B" and items[0].question == ROW["Question"]
    assert items[0].category == "banking"


# ---------------------------------------------------------------- rule policies


class RulePolicy:
    """A real RolloutEngine that answers by rule: it reads the last question of the prompt and
    says ``答案是：X`` (the oracle looks X up; the constant policy always says ``A``)."""

    def __init__(self, tokenizer, answers: dict[str, str] | None = None, constant: str = "A"):
        self.tokenizer, self.answers, self.constant = tokenizer, answers, constant
        self.calls = 0

    def sync_weights(self, model) -> None:  # no weights: a rule
        pass

    def generate(self, prompt_token_ids, sampling, n=1) -> RolloutBatch:
        self.calls += 1
        completions = []
        for ids in prompt_token_ids:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            question = text.rsplit("题目：", 1)[1].split("\nA. ", 1)[0]
            letter = self.answers[question] if self.answers is not None else self.constant
            reply = f"答案是：{letter}" if self.answers is not None else letter
            ids_out = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
            completions.append(ids_out + [self.tokenizer.eos_token_id])
        return RolloutBatch(
            [list(p) for p in prompt_token_ids],
            completions,
            [[0.0] * len(c) for c in completions],
            ["stop"] * len(completions),
        )


def _csv_answers(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """(question, answer) per file, read with the csv module (independent of eval.mcq)."""
    out = {}
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            out[path.stem] = [(r["Question"], r["Answer"].strip()) for r in csv.DictReader(f)]
    return out


@needs_financeiq
@pytest.mark.parametrize("shots", [0, 5])
def test_oracle_scores_100_and_constant_scores_its_exact_share(world_tokenizer, shots):
    truth = _csv_answers(FINANCEIQ / "dev")
    answers = {q: a for rows in truth.values() for q, a in rows}
    cfg = MCQConfig(data=str(FINANCEIQ), split="dev", shots=shots, batch_size=7)
    oracle = evaluate_mcq(RulePolicy(world_tokenizer, answers), world_tokenizer, cfg)["generate"]
    assert oracle.n == 50 and oracle.macro == 1.0 and oracle.micro == 1.0
    assert all(c["accuracy"] == 1.0 for c in oracle.per_category.values())

    constant = RulePolicy(world_tokenizer, constant="A")
    result = evaluate_mcq(constant, world_tokenizer, cfg)["generate"]
    share = {k: sum(a == "A" for _, a in rows) / len(rows) for k, rows in truth.items()}
    assert {k: c["accuracy"] for k, c in result.per_category.items()} == share
    assert result.macro == pytest.approx(sum(share.values()) / len(share))
    n_a = sum(a == "A" for rows in truth.values() for _, a in rows)
    assert result.micro == pytest.approx(n_a / 50)
    assert constant.calls == 8  # 50 prompts in batches of 7


# ---------------------------------------------------------------- the tiny policy


@pytest.fixture(scope="module")
def tiny_policy(tiny_world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_world.policy).eval()


def test_loglik_scores_equal_an_independent_unbatched_computation(tiny_policy, world_tokenizer):
    from eval.mcq import option_continuations, option_logprobs

    tok = world_tokenizer
    texts = ["以下是题目\n答案是：", "你好", "题目：国债？\nA. 一\nB. 二\nC. 三\nD. 四\n答案是："]
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": t}],
               add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
               for t in texts]  # fmt: skip
    conts = option_continuations(tok, chat_template=True)
    # the xuanyuan-6b template answers " X": the tokens differ only in the last position here
    assert {len(c) for c in conts} == {2} and len({c[0] for c in conts}) == 1
    fast = option_logprobs(tiny_policy, prompts, conts, tok.pad_token_id, batch_size=2)
    other = [[c[-1], conts[0][0]] for c in conts]  # differ in the first token: the other path
    general = option_logprobs(tiny_policy, prompts, other, tok.pad_token_id)
    for got, continuations in ((fast, conts), (general, other)):
        slow = torch.tensor([[_sum_logprob(tiny_policy, p, c) for c in continuations]
                             for p in prompts])  # fmt: skip
        torch.testing.assert_close(got, slow, atol=1e-5, rtol=0)


@torch.no_grad()
def _sum_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """log p(continuation | prompt), one unpadded sequence at a time."""
    logprobs = torch.log_softmax(model(torch.tensor([prompt + continuation])).logits[0], -1)
    return sum(logprobs[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(continuation))


@needs_financeiq
@pytest.mark.slow
def test_tiny_policy_end_to_end_on_financeiq_with_a_report(tiny_world, tmp_path):
    from click.testing import CliRunner

    from align.cli.app import cli

    out = tmp_path / "run"
    args = ["eval", "mcq", "--data", str(FINANCEIQ), "--split", "test-sample", "--shots", "5",
            "--policy", str(tiny_world.policy), "--scoring", "both", "--limit", "1",
            "--max_new_tokens", "6", "--max_length", "256", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((out / "mcq.json").read_text(encoding="utf-8"))
    for scoring in ("generate", "loglik"):
        r = data["results"][scoring]
        assert r["n"] == 10 and len(r["per_category"]) == 10
        preds = r["predictions"]
        correct = sum(p["prediction"] == p["answer"] for p in preds)
        assert r["micro"] == pytest.approx(correct / 10)
        per = r["per_category"]
        assert r["macro"] == pytest.approx(sum(c["accuracy"] for c in per.values()) / 10)
    assert all(p["prediction"] in "ABCD" for p in data["results"]["loglik"]["predictions"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "![Multiple-choice benchmark](plots/mcq.png)" in report
    assert (out / "plots" / "mcq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
