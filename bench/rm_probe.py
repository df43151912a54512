"""How much preference signal do the real pair sets carry, and what does a tiny RM see of them?

    python bench/rm_probe.py --tokenizer /tmp/tw3/tokenizer [--dev] [--max-lengths 128 256 512]

Independent of the reward-model code: on the same splits as ``bench/rm_ablation.py`` it fits
bag-of-words pairwise logistic regressions (Bradley–Terry on linear features: the score of a
response is ``w·φ(response)``, fit on ``φ(chosen) − φ(rejected)`` with random sign flips) and
reports their held-out accuracy, next to a length heuristic; it also measures the tokenizer's
coverage (characters per token, share of byte-fragment tokens) and how many conversations a
given ``max_length`` truncates, and which part of the conversation survives left truncation.
Prints one JSON line per (data set, measurement).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV
from transformers import AutoTokenizer

from align.core.chat_formats import get_chat_format
from align.core.data import messages_of

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rm_ablation import load_splits  # noqa: E402


def _pairwise_xy(vec, rows: list[dict], seed: int):
    """``X = φ(c) − φ(r)`` with half the rows flipped (label 0), so no intercept is needed."""
    diff = vec.transform([r["chosen"] for r in rows]) - vec.transform([r["rejected"] for r in rows])
    flip = np.array([random.Random(seed + i).random() < 0.5 for i in range(len(rows))])
    sign = np.where(flip, -1.0, 1.0)
    return diff.multiply(sign[:, None]).tocsr(), (~flip).astype(int)


def _analyzers(tokenizer) -> dict:
    """Feature extractors: character n-grams, words (English), and the RM tokenizer's tokens."""
    return {
        "char1-3": {"analyzer": "char", "ngram_range": (1, 3)},
        "word1-2": {"analyzer": "word", "ngram_range": (1, 2)},
        "rm-tokens": {
            "analyzer": lambda s: tokenizer.convert_ids_to_tokens(
                tokenizer(s, add_special_tokens=False)["input_ids"]
            )
        },
    }


def bow_accuracy(train: list[dict], held: list[dict], features: dict, seed: int = 0) -> dict:
    """Held-out accuracy of a pairwise logistic regression on TF-IDF features of the responses;
    the inverse regularisation ``C`` is chosen by 5-fold cross-validation on ``train`` only."""
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, **features)
    vec.fit([r[k] for r in train for k in ("chosen", "rejected")])
    x, y = _pairwise_xy(vec, train, seed)
    clf = LogisticRegressionCV(Cs=[0.01, 0.1, 1, 10, 100], cv=5, fit_intercept=False, max_iter=2000)
    clf.fit(x, y)
    xh, yh = _pairwise_xy(vec, held, seed + 10_000)
    return {
        "accuracy": float((clf.predict(xh) == yh).mean()),
        "train_accuracy": float((clf.predict(x) == y).mean()),
        "C": float(clf.C_[0]),
        "features": len(vec.vocabulary_),
    }


def _longer_wins(chosen: int, rejected: int) -> float:
    return 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0


def length_heuristic(rows: list[dict]) -> dict:
    """Share of pairs where the longer (in characters) response is the chosen one; ties half."""
    wins = [_longer_wins(len(r["chosen"]), len(r["rejected"])) for r in rows]
    return {"longer_wins": statistics.mean(wins), "ties": sum(w == 0.5 for w in wins)}


def coverage(rows: list[dict], tokenizer, chat_format: str, max_lengths: list[int]) -> dict:
    """Characters per token, share of tokens that are byte fragments (not a whole character),
    and per ``max_length``: share of conversations truncated and share whose whole answer,
    whole prompt (user turns) survive left truncation."""
    chat = get_chat_format(chat_format)
    lengths, answer_lengths, chars, tokens, fragments = [], [], 0, 0, 0
    for r in rows:
        messages = messages_of(r)
        text = chat.render(
            [*messages, {"role": "assistant", "content": r["chosen"]}], tokenizer=tokenizer
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(r["chosen"], add_special_tokens=False)["input_ids"]
        lengths.append(len(ids))
        answer_lengths.append(len(answer))
        chars += len(text)
        tokens += len(ids)
        fragments += sum("\ufffd" in tokenizer.decode([i]) for i in ids)
    out = {
        "chars_per_token": chars / tokens,
        "byte_fragment_share": fragments / tokens,
        "median_tokens": statistics.median(lengths),
        "p90_tokens": sorted(lengths)[int(0.9 * len(lengths))],
    }
    for m in max_lengths:
        out[f"truncated@{m}"] = sum(n > m for n in lengths) / len(lengths)
        # the answer's end is always kept; the whole conversation survives when n <= m
        out[f"answer_whole@{m}"] = sum(a + 8 <= m for a in answer_lengths) / len(lengths)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/rm_probe"))
    ap.add_argument("--hh-train", type=int, default=895)
    ap.add_argument("--hh-eval", type=int, default=300)
    ap.add_argument("--dev", action="store_true", help="Validation slice of the training part.")
    ap.add_argument("--max-lengths", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--chat-format", default="hf")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    splits = load_splits(a.hh_train, a.hh_eval, a.dev)
    for data in ("hh", "fiq"):
        train, held = splits[f"{data}_train"], splits[f"{data}_eval"]
        base = {"data": data, "n_train": len(train), "n_eval": len(held), "dev": a.dev}
        print(json.dumps({**base, "probe": "length", **length_heuristic(held)}), flush=True)
        cov = coverage(train + held, tok, a.chat_format, a.max_lengths)
        print(json.dumps({**base, "probe": "tokenizer", **cov}), flush=True)
        for name, features in _analyzers(tok).items():
            if data == "fiq" and name == "word1-2":
                continue  # Chinese has no spaces: word features are whole options
            result = bow_accuracy(train, held, features)
            print(json.dumps({**base, "probe": f"bow:{name}", **result}), flush=True)


if __name__ == "__main__":
    main()
