"""Batches of bucketed instances: constant tokens per step, one bucket per step, every rank alike.

docs/methods.md §5: "constant tokens per step, a shuffled list of per-bucket batches, the same
bucket on every rank at a step". For a bucket of length ``L`` a global batch holds
``tokens_per_step / L`` instances, split evenly across ranks. Each epoch, every bucket's instances
are shuffled and cut into global batches; the list of all batches is shuffled with a generator
seeded by ``(seed, epoch)``, which every rank builds identically, so at step ``k`` every rank reads
its own slice of the same global batch. A bucket's share of the steps is exactly its share of the
batches; the order is random. Instances that do not fill a last global batch are left out of that
epoch (counted in :attr:`BucketBatchSampler.dropped`); they are reshuffled into the next one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch


def global_batch_sizes(
    buckets: Sequence[int], tokens_per_step: int, world_size: int
) -> dict[int, int]:
    """Instances per global batch for each bucket; ``ValueError`` unless ``tokens_per_step`` is a
    multiple of ``L × world_size`` for every bucket ``L``."""
    sizes = {}
    for length in sorted(set(buckets)):
        if tokens_per_step % (length * world_size):
            raise ValueError(
                f"tokens_per_step: expected a multiple of bucket length × processes "
                f"({length} × {world_size}), got {tokens_per_step}"
            )
        sizes[length] = tokens_per_step // length
    return sizes


class BucketBatchSampler:
    """Yields, for one rank, lists of instance indices: one global batch's slice per step.

    ``instance_buckets[i]`` is the bucket length of instance ``i``. Usable as a ``DataLoader``
    ``batch_sampler``; do not let a distributed wrapper re-shard it (it is already per rank).
    """

    def __init__(
        self,
        instance_buckets: Sequence[int],
        tokens_per_step: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected in [0, {world_size}), got {rank}")
        self.by_bucket: dict[int, list[int]] = defaultdict(list)
        for index, length in enumerate(instance_buckets):
            self.by_bucket[int(length)].append(index)
        self.batch_size = global_batch_sizes(list(self.by_bucket), tokens_per_step, world_size)
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[tuple[int, list[int]]]:
        """``[(bucket, indices)]`` for this epoch, in step order (identical on every rank)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = []
        for length in sorted(self.by_bucket):
            members = self.by_bucket[length]
            order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
            size = self.batch_size[length]
            for start in range(0, len(order) - size + 1, size):
                batches.append((length, order[start : start + size]))
        steps = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in steps]

    @property
    def dropped(self) -> int:
        """Instances left out of each epoch (remainders of the per-bucket global batches)."""
        return sum(len(m) % self.batch_size[b] for b, m in self.by_bucket.items())

    def step_buckets(self) -> list[int]:
        """The bucket length of each step of this epoch."""
        return [length for length, _ in self.global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.global_batches():
            per_rank = len(indices) // self.world_size
            yield indices[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:
        return sum(len(m) // self.batch_size[b] for b, m in self.by_bucket.items())
