"""``align data bucket``: compose documents into bucket instances and write per-bucket shards.

Generated from :class:`DataBucketConfig` and added to the ``data`` group by ``align/cli/app.py``.

Output directory::

    bucket-<L>.parquet   one row per instance: input_ids (L tokens, padded at the tail),
                         num_pad, doc_ids / starts / lengths of its pieces, categories
    metrics.json         the three ratios (bucketed and each fixed-length baseline), counts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from align.cli.config_command import Invocation, config_command
from align.core.config import check_ranges, help_field
from align.core.io import atomic_path, atomic_write_json
from align.core.outputs import check_output_dir
from align.pretrain.bucketing import (
    BucketConfig,
    Instance,
    bucket_pool,
    check_plan,
    fixed_length_chunks,
    materialize,
    plan_metrics,
)


def _documents(docs: Path, tokenizer_dir: Path | None, add_eos: bool) -> tuple[list, list]:
    """Token lists and categories: ``input_ids`` rows as they are, ``text`` rows tokenized."""
    from align.core.data import DataError, read_table  # lazy: loads datasets; off 'align --help'

    table = read_table(docs)
    if "input_ids" in table.column_names:
        return [list(t) for t in table["input_ids"]], _categories(table)
    if "text" not in table.column_names:
        raise DataError(docs, None, "text", "a 'text' or 'input_ids' column")
    if tokenizer_dir is None:
        raise typer.BadParameter("--tokenizer is needed to tokenize the 'text' column")
    # lazy: transformers and torch load only to tokenize (keeps 'align --help' fast)
    from transformers import AutoTokenizer

    from align.pretrain.run import read_documents

    rows = read_documents(docs)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = [tokenizer.eos_token_id] if add_eos else []
    ids = tokenizer([r["text"] for r in rows], add_special_tokens=False, verbose=False)["input_ids"]
    return [list(t) + eos for t in ids], [r["category"] for r in rows]


def _categories(table) -> list[str]:
    if "category" in table.column_names:
        return [c or "default" for c in table["category"]]
    return ["default"] * len(table)


def _write_parquet(rows: list[dict], path: Path) -> None:
    # lazy: pyarrow loads only to write shards (keeps 'align --help' fast)
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def write_shards(
    plan: list[Instance], tokens: list[list[int]], categories: list[str], pad_id: int, out: Path
) -> dict[int, int]:
    """One Parquet file per bucket; returns instances per bucket."""
    by_bucket: dict[int, list[dict]] = {}
    for inst in plan:
        ids, _ = materialize(inst, tokens, pad_id)
        by_bucket.setdefault(inst.size, []).append(
            {
                "input_ids": ids,
                "num_pad": inst.pad,
                "doc_ids": [p.doc for p in inst.pieces],
                "starts": [p.start for p in inst.pieces],
                "lengths": [p.length for p in inst.pieces],
                "categories": [categories[p.doc] for p in inst.pieces],
            }
        )
    for size, rows in by_bucket.items():
        _write_parquet(rows, out / f"bucket-{size}.parquet")
    return {size: len(rows) for size, rows in sorted(by_bucket.items())}


@dataclass
class DataBucketConfig:
    """``align data bucket``: documents → bucket instances → per-bucket shards."""

    config_renames: ClassVar[dict[str, str]] = {
        "buckets": "bucketing.buckets",
        "pad_threshold": "bucketing.pad_threshold",
        "pool_size": "bucketing.pool_size",
    }

    docs: str = field(
        metadata={"help": "Documents: {text, category?} or {input_ids, category?}."}
    )
    out: str = field(
        metadata={"help": "Directory for bucket-<L>.parquet shards and metrics.json."}
    )
    bucketing: BucketConfig = help_field(
        "Bucket lengths and composition (docs/methods.md §5).", factory=BucketConfig
    )
    tokenizer: str | None = help_field("Tokenizer directory for a 'text' column.", None)
    add_eos: bool = help_field("Append EOS to each tokenized text document.", True)
    pad_id: int | None = help_field("Padding id; none = the tokenizer's, else 0.", None, ge=0)

    def __post_init__(self) -> None:
        check_ranges(self)


def run_data_bucket(cfg: DataBucketConfig, invocation: Invocation) -> None:
    """Compose documents into multi-bucket instances (greedy, docs/methods.md §5); write per-bucket
    shards and the padding / truncation / concatenation ratios beside the fixed-length
    baseline at each bucket length."""
    check_output_dir(cfg.out, "out")  # before reading and tokenizing the documents
    bucketing, out = cfg.bucketing, Path(cfg.out)
    tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else None
    tokens, categories = _documents(Path(cfg.docs), tokenizer, cfg.add_eos)
    lengths = [len(t) for t in tokens]
    plan = []
    for start in track(range(0, len(lengths), bucketing.pool_size), description="bucketing pools"):
        ids = range(start, min(start + bucketing.pool_size, len(lengths)))
        plan += bucket_pool([lengths[i] for i in ids], ids, bucketing)
    check_plan(plan, lengths)
    out.mkdir(parents=True, exist_ok=True)
    counts = write_shards(plan, tokens, categories, _pad_id(cfg.pad_id, tokenizer), out)
    report = {
        "bucketed": plan_metrics(plan, len(lengths)).as_dict(),
        "fixed": {
            str(size): plan_metrics(fixed_length_chunks(lengths, size), len(lengths)).as_dict()
            for size in bucketing.buckets
        },
        "config": {
            "buckets": list(bucketing.buckets),
            "pad_threshold": bucketing.pad_threshold,
            "pool_size": bucketing.pool_size,
        },
    }
    atomic_write_json(out / "metrics.json", report)
    Console().print(_table(report, counts))


data_bucket = config_command(
    "bucket",
    lambda: DataBucketConfig,
    run_data_bucket,
    help="Compose documents into multi-bucket instances (greedy, docs/methods.md §5); write "
    "per-bucket shards and the padding / truncation / concatenation ratios beside the fixed-length "
    "baseline at each bucket length.",
    path=["data", "bucket"],
)


def _pad_id(pad_id: int | None, tokenizer_dir: Path | None) -> int:
    if pad_id is not None:
        return pad_id
    if tokenizer_dir is None:
        return 0
    from transformers import AutoTokenizer  # lazy: keeps 'align --help' fast

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _table(report: dict, counts: dict[int, int]):
    table = Table(title="instances: " + ", ".join(f"{n} × {s}" for s, n in counts.items()))
    for column in ("method", "padding %", "truncation %", "concatenation"):
        table.add_column(column)
    rows = [("bucketed", report["bucketed"])]
    rows += [(f"fixed {size}", m) for size, m in report["fixed"].items()]
    for name, m in rows:
        table.add_row(
            name,
            f"{100 * m['padding_ratio']:.2f}",
            f"{100 * m['truncation_ratio']:.2f}",
            f"{m['concatenation_ratio']:.2f}",
        )
    return table
