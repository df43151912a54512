"""``align data bucket``: compose documents into bucket instances and write per-bucket shards.

Registered by ``align/cli/app.py`` on the ``data`` sub-app::

    data_app.command("bucket")(data_bucket)

Output directory::

    bucket-<L>.parquet   one row per instance: input_ids (L tokens, padded at the tail),
                         num_pad, doc_ids / starts / lengths of its pieces, categories
    metrics.json         the three ratios (bucketed and each fixed-length baseline), counts
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import typer

from align.pretrain.bucketing import (
    DEFAULT_BUCKETS,
    BucketConfig,
    Instance,
    bucket_pool,
    check_plan,
    fixed_length_chunks,
    materialize,
    plan_metrics,
)


def parse_buckets(text: str) -> tuple[int, ...]:
    """``"2048,4096"`` → ``(2048, 4096)``; ``typer.BadParameter`` otherwise."""
    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated token counts, got {text!r}") from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"expected positive token counts, got {text!r}")
    return values


def _documents(docs: Path, tokenizer_dir: Path | None, add_eos: bool) -> tuple[list, list]:
    """Token lists and categories: ``input_ids`` rows as they are, ``text`` rows tokenized."""
    from align.core.data import DataError, read_table

    table = read_table(docs)
    if "input_ids" in table.column_names:
        return [list(t) for t in table["input_ids"]], _categories(table)
    if "text" not in table.column_names:
        raise DataError(docs, None, "text", "a 'text' or 'input_ids' column")
    if tokenizer_dir is None:
        raise typer.BadParameter("--tokenizer is needed to tokenize the 'text' column")
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def data_bucket(
    docs: Path = typer.Option(..., help="Documents: {text, category?} or {input_ids, category?}."),
    out: Path = typer.Option(..., help="Directory for bucket-<L>.parquet shards and metrics.json."),
    buckets: str = typer.Option(
        ",".join(map(str, DEFAULT_BUCKETS)), help="Instance lengths, comma-separated."
    ),
    pad_threshold: float = typer.Option(0.1, help="Largest padded share before a cut fills it."),
    pool_size: int = typer.Option(10_000, help="Documents composed together."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory for a 'text' column."),
    add_eos: bool = typer.Option(True, help="Append EOS to each tokenized text document."),
    pad_id: int | None = typer.Option(None, help="Padding id; default the tokenizer's, else 0."),
) -> None:
    """Compose documents into multi-bucket instances (greedy, METHODS §5); write per-bucket
    shards and the padding / truncation / concatenation ratios beside the fixed-length
    baseline at each bucket length."""
    from rich.console import Console
    from rich.progress import track

    cfg = BucketConfig(parse_buckets(buckets), pad_threshold, pool_size)
    tokens, categories = _documents(docs, tokenizer, add_eos)
    lengths = [len(t) for t in tokens]
    plan = []
    for start in track(range(0, len(lengths), cfg.pool_size), description="bucketing pools"):
        ids = range(start, min(start + cfg.pool_size, len(lengths)))
        plan += bucket_pool([lengths[i] for i in ids], ids, cfg)
    check_plan(plan, lengths)
    out.mkdir(parents=True, exist_ok=True)
    counts = write_shards(plan, tokens, categories, _pad_id(pad_id, tokenizer), out)
    report = {
        "bucketed": plan_metrics(plan, len(lengths)).as_dict(),
        "fixed": {
            str(size): plan_metrics(fixed_length_chunks(lengths, size), len(lengths)).as_dict()
            for size in cfg.buckets
        },
        "config": {
            "buckets": list(cfg.buckets),
            "pad_threshold": pad_threshold,
            "pool_size": pool_size,
        },
    }
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "metrics.json")
    Console().print(_table(report, counts))


def _pad_id(pad_id: int | None, tokenizer_dir: Path | None) -> int:
    if pad_id is not None:
        return pad_id
    if tokenizer_dir is None:
        return 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _table(report: dict, counts: dict[int, int]):
    from rich.table import Table

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
