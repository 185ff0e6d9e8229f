"""Which samples each step sees: a deterministic function of (seed, step, rank).

Each epoch draws from ``(seed, epoch)`` a fresh permutation of the samples of each group,
cuts each into global batches, and shuffles the order of those batches. By default all
samples form one group, so tasks mix in every batch in proportion to the data. With one
group per task (``prismer train --group-by-task``) a batch holds one task only, but a task
with few samples then gets few steps (on the demo, captions trained badly that way); that it
spared short VQA texts the padding to caption length no longer matters, since the collator
decodes rows in length buckets. With ``--group-by-image`` the indices are images (each
brings all its rows).
Step ``s`` takes the ``s``-th global batch and rank ``r`` of ``world_size`` its ``r``-th
slice, so ranks never share a sample and a resumed run (or one with more loader workers)
sees exactly the batches an uninterrupted run would. Each sample also gets its own seed,
which drives its crop, flip and answer choice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import PrismerError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepSampler:
    """A batch sampler for :class:`torch.utils.data.DataLoader` yielding ``(index, seed)``
    pairs for steps ``start_step .. max_steps - 1``. ``groups`` (one label per sample, e.g.
    its task) keeps batches within a group; the last partial batch of each group is dropped
    in each epoch so every step has the same global batch."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        max_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        groups: Sequence[str] | None = None,
    ) -> None:
        self.global_batch = batch_size * world_size
        labels = list(groups) if groups is not None else [""] * num_samples
        if len(labels) != num_samples:
            raise ValueError("groups must give one label per sample")
        self.groups = [np.flatnonzero(np.asarray(labels) == g) for g in dict.fromkeys(labels)]
        self.steps_per_epoch = sum(len(g) // self.global_batch for g in self.groups)
        if self.steps_per_epoch == 0:
            raise PrismerError(
                f"the data holds {num_samples} samples, fewer than one global batch of a task "
                f"({batch_size} per process × {world_size} processes): lower --batch-size"
            )
        self.num_samples, self.batch_size, self.max_steps = num_samples, batch_size, max_steps
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _batches_of(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch, in order."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for members in self.groups:
                shuffled = members[rng.permutation(len(members))]
                whole = len(shuffled) // self.global_batch * self.global_batch
                batches.extend(shuffled[:whole].reshape(-1, self.global_batch))
            self._epoch = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch[1]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        chunk = self._batches_of(epoch)[position]
        indices = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
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
