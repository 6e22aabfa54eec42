"""Independent random streams of one run, each seeded by the run's seed and keys naming what it is for.

Every random choice of sampling and augmentation draws from a generator of its own, seeded by
``(seed, stream key, ...)`` through NumPy's ``SeedSequence``: a stream never shifts when another
draws more or less, so a run is a function of its seed, and a resumed run can rebuild any stream.
The keys live here, together, so a new stream cannot take an old one's key by accident.
"""

from __future__ import annotations

import numpy as np
import torch

#: Class-balanced centres of a task's training queue: ``(seed, SAMPLING, task, interval, *rank_keys)``.
SAMPLING = 0
#: (1 was the former draw of the validation images; not reused, so old seeds keep their streams.)
#: Which tasks get a mini-batch's remainder samples: ``(seed, TASK_SPLIT, interval, *rank_keys)``.
TASK_SPLIT = 2
#: TorchIO's shuffles of the queues of one interval: ``(seed, QUEUE_SHUFFLE, interval, *rank_keys)``.
QUEUE_SHUFFLE = 3
#: The augmented training copies: ``(seed, AUGMENTATION, task, crc32(case_id), copy)``. It shares the
#: value 3 with :data:`QUEUE_SHUFFLE` (kept: changing it would change every augmented copy and so every
#: recorded result of a run with augmentation); the two streams never coincide, because their key
#: sequences differ in length (5 keys against 3 or 4) and ``SeedSequence`` hashes the whole sequence.
AUGMENTATION = 3


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded by ``seed`` and ``keys``, independent of every other combination."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def seed_integer(*keys: int) -> int:
    """A non-negative 63-bit integer seed from ``keys`` (for ``torch.manual_seed``)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def rank_keys(rank: int) -> tuple[int, ...]:
    """Extra seed keys of process ``rank`` under DDP: none for rank 0, whose streams are the single process's."""
    return () if rank == 0 else (rank,)
