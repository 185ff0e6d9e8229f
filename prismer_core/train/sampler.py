"""Which samples each step sees: a deterministic function of (seed, step, rank).

Each epoch is a fresh permutation of the samples drawn from ``(seed, epoch)``; step ``s``
takes the ``s``-th global batch of it, and rank ``r`` of ``world_size`` its ``r``-th slice,
so ranks never share a sample and a resumed run (or one with more loader workers) sees
exactly the batches an uninterrupted run would. Each sample also gets its own seed, which
drives its crop, flip and answer choice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import PrismerError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepSampler:
    """A batch sampler for :class:`torch.utils.data.DataLoader` yielding ``(index, seed)``
    pairs for steps ``start_step .. max_steps - 1`` (the last partial batch of an epoch is
    dropped so every step has the same global batch)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        max_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise PrismerError(
                f"the data holds {num_samples} samples, fewer than one global batch "
                f"({batch_size} per process × {world_size} processes): lower --batch-size"
            )
        self.num_samples, self.batch_size, self.max_steps = num_samples, batch_size, max_steps
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step
        self.steps_per_epoch = num_samples // self.global_batch
        self._permutation: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_samples))
        start = position * self.global_batch + self.rank * self.batch_size
        indices = self._permutation[1][start : start + self.batch_size]
        return [(int(i), sample_seed(self.seed, epoch, int(i))) for i in indices]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            yield self.batch(step)


class EvalSampler:
    """Every sample once, in order, split across ranks; seeds are the indices (no randomness
    is used by the evaluation transform anyway)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, limit: int | None = None) -> None:
        count = min(num_samples, limit) if limit else num_samples
        self.indices = list(range(rank, count, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield [(i, i) for i in self.indices[start : start + self.batch_size]]
