"""The run's stream of training mini-batches, each a function of the seed and its step only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch.utils.data import IterableDataset

from mtseg.data.seeds import QUEUE_SHUFFLE, TASK_SPLIT, rank_keys, seeded_generator
from mtseg.data.torchio_adapters import BlockQueue, with_random_state

#: ``draw(queues, generator)``: one mini-batch of indices from the task queues (the training mode's).
DrawMinibatch = Callable[[Mapping[str, BlockQueue], torch.Generator], dict[str, torch.Tensor]]


class MinibatchStream(IterableDataset):
    """A stream of training mini-batches, each a function of (seed, its step) only.

    The stream yields the mini-batches of steps ``start .. length - 1`` (endless when
    ``length`` is ``None``). It is cut into *intervals* of ``interval`` steps (one evaluation
    interval; the whole run when ``None``): each interval draws from fresh queues
    (``new_queues(k)`` for interval ``k``, their samplers seeded by ``(seed, k)``), and TorchIO's
    own shuffles use a random state of the stream's, seeded by ``(seed, k)`` and kept apart
    from the process's (:func:`~mtseg.data.torchio_adapters.with_random_state`). A run resumed at
    step ``s`` therefore gets exactly the mini-batches that the uninterrupted run got: the interval
    of ``s`` is replayed from its start (at most one evaluation interval of sampling, no training),
    the rest is drawn as usual.

    Args:
        new_queues: ``new_queues(k)``: the task queues of interval ``k``, in the experiment's task order.
        draw: One mini-batch from the queues with the interval's generator (the training mode's
            :meth:`~mtseg.training.mode.TrainingMode.draw_minibatch`).
        length: The run's steps, or ``None`` for an endless stream.
        start: The first step to yield (a resumed run's ``global_step``).
        interval: Steps per interval, or ``None`` for one interval.
        seed: The run's seed.
        rank: The process's rank under DDP (its own stream; rank 0's is the single-process stream).
    """

    def __init__(
        self,
        new_queues: Callable[[int], Mapping[str, BlockQueue]],
        draw: DrawMinibatch,
        length: int | None = None,
        start: int = 0,
        interval: int | None = None,
        seed: int = 0,
        rank: int = 0,
    ):
        if interval is not None and interval < 1:
            raise ValueError(f"interval must be positive or None, got {interval}")
        self.new_queues = new_queues
        self.draw = draw
        self.length = length
        self.start = start
        self.interval = interval
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        """The run's steps (``length``), also when resumed: Lightning counts a resumed epoch's batches
        from the restored step, so it expects exactly the ``length - start`` batches yielded."""
        if self.length is None:
            raise TypeError("an endless stream of mini-batches has no length")
        return self.length

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step, current = self.start, None
        while self.length is None or step < self.length:
            k = step // self.interval if self.interval else 0
            if k != current:
                current, generator = k, seeded_generator(self.seed, TASK_SPLIT, k, *rank_keys(self.rank))
                state = seeded_generator(self.seed, QUEUE_SHUFFLE, k, *rank_keys(self.rank)).get_state()
                queues, state = with_random_state(lambda: self.new_queues(k), state)  # TorchIO draws when it builds a queue
                for _ in range(k * (self.interval or 0), step):  # replay the interval up to a resumed step
                    _, state = with_random_state(lambda: self.draw(queues, generator), state)
            batch, state = with_random_state(lambda: self.draw(queues, generator), state)
            yield batch
            step += 1
