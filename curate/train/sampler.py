"""Which pairs each batch holds, and where a run is: the one sampler behind every pair source.

Each epoch is a permutation drawn from (seed, epoch) alone, and so are the epoch's flips, so any
position of any epoch is restored without replaying the ones before it. Only whole optimizer
steps are yielded (Adaptive-DPO normalises over the batch); with world_size > 1, rank r takes
every world_size-th batch. The position is kept in global batches, so a run saved under one
number of processes resumes under another that can reach it.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

# The keys a restored position must agree on, besides the position itself.
SETTINGS = ("seed", "pairs", "batch_size", "pairs_per_step", "flip", "shuffle")


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one stream (an epoch, a step) of a run seeded with ``seed``: every stream of the
    trainer is mixed this one way, so streams of nearby seeds never coincide."""
    return seed * 1_000_003 + stream


def epoch_batches(n_pairs: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Batches per epoch of one process: whole optimizer steps only, so an epoch ends at the same
    pair under any split of a step's pairs between processes and accumulation (the permutation's
    last n mod (batch x accum x processes) pairs sit that epoch out)."""
    return n_pairs // (batch_size * world_size * grad_accum) * grad_accum


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of n pairs in one epoch: a permutation drawn from (seed, epoch) alone."""
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(stream_seed(seed, epoch))
    return torch.randperm(n, generator=gen).tolist()


def epoch_flips(n: int, seed: int, epoch: int) -> np.ndarray:
    """Whether each of n pairs (both of its images) is flipped in one epoch: a stream apart from the order's."""
    gen = torch.Generator().manual_seed(stream_seed(seed, epoch) * 2 + 1)
    return torch.randint(0, 2, (n,), generator=gen).bool().numpy()


class PairSampler:
    """Positions of the pairs of each batch of n_pairs, with an exact, restorable place (state_dict)."""

    def __init__(self, n_pairs: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, flip: bool = False,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        self.n_pairs, self.batch_size, self.seed, self.shuffle, self.flip = n_pairs, batch_size, seed, shuffle, flip
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.batches_per_epoch = epoch_batches(n_pairs, batch_size, world_size, grad_accum)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n_pairs} trainable pairs do not fill one step of {batch_size} x {grad_accum} "
                             f"accumulation x {world_size} processes; lower the batch size or add pairs")
        self.epoch, self.cursor = 0, 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless (positions of a batch's pairs, this epoch's flip of every pair); epochs follow each other."""
        while True:
            order = epoch_order(self.n_pairs, self.seed, self.epoch, self.shuffle)
            flips = (epoch_flips(self.n_pairs, self.seed, self.epoch) if self.flip
                     else np.zeros(self.n_pairs, bool))
            while self.cursor < self.batches_per_epoch:
                start = (self.cursor * self.world_size + self.rank) * self.batch_size
                self.cursor += 1  # advanced before yielding: state_dict() names the next batch
                yield np.asarray(order[start:start + self.batch_size]), flips
            self.epoch, self.cursor = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """The position in global batches (rank r's cursor c is the world_size * c-th global batch) and
        the settings a resumed run must share."""
        return {"epoch": self.epoch, "global_batches": self.cursor * self.world_size, "world_size": self.world_size,
                "grad_accum": self.grad_accum, "seed": self.seed, "pairs": self.n_pairs,
                "batch_size": self.batch_size, "pairs_per_step": self.batch_size * self.world_size * self.grad_accum,
                "flip": self.flip, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict, extra: dict | None = None) -> None:
        """Restore a position saved under any number of processes; ``extra`` settings (e.g. a digest of
        the pairs) must agree too. A ValueError names the first setting that differs."""
        mine = {**self.state_dict(), **(extra or {})}
        for key in (*SETTINGS, *(extra or {})):
            if state.get(key) != mine[key]:
                raise ValueError(f"the data position was saved with {key}={state.get(key)!r}, this source has "
                                 f"{mine[key]!r}; resume with the same pairs, selection options and batch size")
        done = int(state["global_batches"])
        if done % self.world_size:
            raise ValueError(f"the data position was saved {done} batches into epoch {state['epoch']} under "
                             f"{state['world_size']} processes, which {self.world_size} processes cannot reach; "
                             f"resume with {state['world_size']}")
        self.epoch, self.cursor = int(state["epoch"]), done // self.world_size
