"""Multi-bucket composition of pretraining instances, the fixed-length baseline, and their metrics.

docs/methods.md §5 (XuanYuan2 report; the bucketing paper, arXiv 2407.07495). Pure: works on
document *lengths* and returns plans; :func:`materialize` turns a plan into token rows.

A plan is a list of :class:`Instance`. An instance has a size (a bucket length) and the
:class:`Piece` s laid end to end in it, each a token range ``[start, end)`` of one document; the
rest of the instance is padding, always at its tail. A document appears in one piece unless it is
*split* (longer than the largest bucket) or *cut* (a prefix used to fill an instance); either way
its pieces cover it exactly once, in order, and it counts towards the truncation ratio.

Greedy algorithm (our reconstruction of the paper's prose, [P] where marked), per pool of
``pool_size`` documents:

1. Documents longer than the largest bucket are split into largest-bucket chunks (each one a full
   instance) and a remainder that joins the pool.
2. Take the longest remaining piece; the instance is the smallest bucket that holds it.
3. Fill the free space best-fit-decreasing: repeatedly add the longest piece that still fits.
4. If the free share is still above ``pad_threshold`` [P 0.1] and pieces remain, fill the free
   space with a prefix of the shortest remaining piece; its remainder goes back to the pool.
5. Pad the rest. Padding is therefore at most ``pad_threshold`` of an instance, except in the
   pool's last instances, when nothing is left to fill them with.

Metrics (paper's definitions): padding ratio ``Σ pad / Σ instance length``; truncation ratio =
share of documents cut or split; concatenation ratio = documents per instance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_BUCKETS = (2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class Piece:
    """Tokens ``[start, end)`` of document ``doc``."""

    doc: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Instance:
    """One training row: ``pieces`` end to end, then ``pad`` padding tokens, ``size`` in all."""

    size: int
    pieces: tuple[Piece, ...]

    @property
    def used(self) -> int:
        return sum(p.length for p in self.pieces)

    @property
    def pad(self) -> int:
        return self.size - self.used


@dataclass(frozen=True)
class BucketConfig:
    """Knobs of :func:`bucket_documents`."""

    buckets: tuple[int, ...] = field(
        default=DEFAULT_BUCKETS, metadata={"help": "Instance lengths [S: 2k/4k/8k/16k]."}
    )
    pad_threshold: float = field(
        default=0.1,
        metadata={"help": "Largest free share left as padding before a cut fills it [P]."},
    )
    pool_size: int = field(
        default=10_000, metadata={"help": "Documents composed together (one greedy pass) [P]."}
    )

    def __post_init__(self) -> None:
        buckets = tuple(sorted(int(b) for b in self.buckets))
        if not buckets or buckets[0] <= 0 or len(set(buckets)) != len(buckets):
            raise ValueError(f"buckets: expected distinct positive lengths, got {self.buckets}")
        object.__setattr__(self, "buckets", buckets)
        if not 0 <= self.pad_threshold < 1:
            raise ValueError(f"pad_threshold: expected in [0, 1), got {self.pad_threshold}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size: expected >= 1, got {self.pool_size}")


# --------------------------------------------------------------------------- the piece pool


class _LengthPool:
    """Multiset of pieces keyed by length, with O(log L) "longest piece of length <= x" and
    "shortest piece" queries (a Fenwick tree of counts over lengths 1..max_length)."""

    def __init__(self, max_length: int) -> None:
        self.size = max_length
        self.tree = [0] * (max_length + 1)
        self.stacks: dict[int, list[Piece]] = {}
        self.count = 0

    def _add(self, length: int, delta: int) -> None:
        while length <= self.size:
            self.tree[length] += delta
            length += length & -length

    def _prefix(self, length: int) -> int:
        total = 0
        while length > 0:
            total += self.tree[length]
            length -= length & -length
        return total

    def _kth(self, k: int) -> int:
        """Smallest length whose prefix count reaches ``k`` (1-based)."""
        pos, step = 0, 1 << self.size.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.size and self.tree[nxt] < k:
                pos, k = nxt, k - self.tree[nxt]
            step >>= 1
        return pos + 1

    def push(self, piece: Piece) -> None:
        self.stacks.setdefault(piece.length, []).append(piece)
        self._add(piece.length, 1)
        self.count += 1

    def _pop_length(self, length: int) -> Piece:
        stack = self.stacks[length]
        piece = stack.pop()
        if not stack:
            del self.stacks[length]
        self._add(length, -1)
        self.count -= 1
        return piece

    def pop_longest_at_most(self, limit: int) -> Piece | None:
        below = self._prefix(min(limit, self.size))
        return self._pop_length(self._kth(below)) if below else None

    def pop_shortest(self) -> Piece:
        return self._pop_length(self._kth(1))


# --------------------------------------------------------------------------- composition


def smallest_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ``>= length`` (``buckets`` sorted ascending)."""
    for size in buckets:
        if size >= length:
            return size
    raise ValueError(f"a piece of {length} tokens is longer than the largest bucket {buckets[-1]}")


def _split_long(doc: int, length: int, largest: int) -> tuple[list[Instance], Piece | None]:
    """Full largest-bucket instances for a long document, and its remainder piece (or None)."""
    full = [
        Instance(largest, (Piece(doc, s, s + largest),))
        for s in range(0, length - largest + 1, largest)
    ]
    done = len(full) * largest
    return full, (Piece(doc, done, length) if done < length else None)


def _fill(pool: _LengthPool, first: Piece, cfg: BucketConfig) -> Instance:
    """Steps 2-5 for one instance opened by ``first``."""
    size = smallest_bucket(first.length, cfg.buckets)
    pieces, free = [first], size - first.length
    while free and (piece := pool.pop_longest_at_most(free)) is not None:
        pieces.append(piece)
        free -= piece.length
    if free > cfg.pad_threshold * size and pool.count:
        shortest = pool.pop_shortest()  # longer than `free`, or it would have fitted
        cut = shortest.start + free
        pieces.append(Piece(shortest.doc, shortest.start, cut))
        pool.push(Piece(shortest.doc, cut, shortest.end))
    return Instance(size, tuple(pieces))


def bucket_pool(lengths: Sequence[int], doc_ids: Sequence[int], cfg: BucketConfig) -> list:
    """Compose one pool: documents ``doc_ids`` with token counts ``lengths``."""
    largest = cfg.buckets[-1]
    pool, instances = _LengthPool(largest), []
    for doc, length in zip(doc_ids, lengths):
        if length <= 0:
            raise ValueError(f"document {doc}: expected at least one token, got {length}")
        if length > largest:
            full, rest = _split_long(doc, length, largest)
            instances += full
            if rest is None:
                continue
            pool.push(rest)
        else:
            pool.push(Piece(doc, 0, length))
    while pool.count:
        instances.append(_fill(pool, pool.pop_longest_at_most(largest), cfg))
    return instances


def bucket_documents(lengths: Sequence[int], cfg: BucketConfig | None = None) -> list[Instance]:
    """The greedy multi-bucket plan for documents of ``lengths`` tokens, pool by pool."""
    cfg = cfg or BucketConfig()
    instances = []
    for start in range(0, len(lengths), cfg.pool_size):
        ids = range(start, min(start + cfg.pool_size, len(lengths)))
        instances += bucket_pool([lengths[i] for i in ids], ids, cfg)
    return instances


def fixed_length_chunks(lengths: Sequence[int], length: int) -> list[Instance]:
    """Baseline: concatenate the documents in order and chunk into ``length``-token instances;
    only the last instance is padded."""
    if length <= 0:
        raise ValueError(f"length: expected > 0, got {length}")
    instances, pieces, free = [], [], length
    for doc, n in enumerate(lengths):
        start = 0
        while start < n:
            take = min(free, n - start)
            pieces.append(Piece(doc, start, start + take))
            start, free = start + take, free - take
            if not free:
                instances.append(Instance(length, tuple(pieces)))
                pieces, free = [], length
    if pieces:
        instances.append(Instance(length, tuple(pieces)))
    return instances


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class BucketMetrics:
    """The paper's three ratios (as fractions, not percent) and counts."""

    padding_ratio: float
    truncation_ratio: float
    concatenation_ratio: float
    documents: int
    instances: int
    tokens: int
    pad_tokens: int
    instances_per_bucket: dict[int, int]

    def as_dict(self) -> dict:
        out = dict(vars(self))
        out["instances_per_bucket"] = {str(k): v for k, v in self.instances_per_bucket.items()}
        return out


def plan_metrics(instances: Sequence[Instance], n_documents: int) -> BucketMetrics:
    """Padding, truncation and concatenation ratios of a plan over ``n_documents`` documents."""
    if not instances or n_documents <= 0:
        raise ValueError("plan_metrics: expected a non-empty plan of a non-empty corpus")
    pieces_per_doc = Counter(p.doc for inst in instances for p in inst.pieces)
    total = sum(inst.size for inst in instances)
    pad = sum(inst.pad for inst in instances)
    return BucketMetrics(
        padding_ratio=pad / total,
        truncation_ratio=sum(1 for c in pieces_per_doc.values() if c > 1) / n_documents,
        concatenation_ratio=n_documents / len(instances),
        documents=n_documents,
        instances=len(instances),
        tokens=total - pad,
        pad_tokens=pad,
        instances_per_bucket=dict(sorted(Counter(inst.size for inst in instances).items())),
    )


def check_plan(instances: Sequence[Instance], lengths: Sequence[int]) -> None:
    """Raise ``ValueError`` unless every token of every document appears exactly once, the pieces
    of a document are in order, and no instance overflows its size."""
    seen: dict[int, list[Piece]] = {}
    for k, inst in enumerate(instances):
        if inst.used > inst.size:
            raise ValueError(f"instance {k}: {inst.used} tokens in a {inst.size} bucket")
        for piece in inst.pieces:
            if piece.length <= 0:
                raise ValueError(f"instance {k}: empty piece {piece}")
            seen.setdefault(piece.doc, []).append(piece)
    for doc, n in enumerate(lengths):
        pieces = sorted(seen.pop(doc, []), key=lambda p: p.start)
        cursor = 0
        for piece in pieces:
            if piece.start != cursor:
                raise ValueError(f"document {doc}: tokens {cursor}..{piece.start} lost or repeated")
            cursor = piece.end
        if cursor != n:
            raise ValueError(f"document {doc}: covers {cursor} of {n} tokens")
    if seen:
        raise ValueError(f"pieces of unknown documents {sorted(seen)}")


# --------------------------------------------------------------------------- tokens


def materialize(
    instance: Instance, documents: Sequence[Sequence[int]], pad_id: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, doc_index)`` of one instance, both of length ``size``; padding has
    ``pad_id`` and document index -1."""
    ids: list[int] = []
    owner: list[int] = []
    for piece in instance.pieces:
        ids.extend(documents[piece.doc][piece.start : piece.end])
        owner.extend([piece.doc] * piece.length)
    ids.extend([pad_id] * instance.pad)
    owner.extend([-1] * instance.pad)
    return ids, owner
