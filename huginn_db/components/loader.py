"""Micro-batches built ahead of the step: a DataLoader over the run's micro-batch index.

Item g is micro-batch g = step·grad_accum + micro of this rank, a pure function of g (the
corpus's index rule), so worker processes change when a batch is built, never which: resume,
world-size changes and 2 ranks × 1 micro-batch = 1 rank × 2 micro-batches hold as without them.
"""

from __future__ import annotations

import torch


class MicroBatches(torch.utils.data.Dataset):
    def __init__(self, corpus, batch_size: int, rank: int, world: int, grad_accum: int):
        self.corpus, self.batch_size, self.rank, self.world, self.grad_accum = (
            corpus,
            batch_size,
            rank,
            world,
            grad_accum,
        )

    def __getitem__(self, g: int) -> dict:
        step, micro = divmod(g, self.grad_accum)
        batch = self.corpus.train_batch(self.batch_size, step, micro, self.rank, self.world, self.grad_accum)
        return {**batch, "micro_batch": g}


def micro_batch_loader(corpus, train_cfg, rank: int, world: int, start_step: int, workers: int, pin: bool):
    """Micro-batches from `start_step` to the end of the run, in order (pinned where `pin`)."""
    accum = train_cfg.grad_accum
    return torch.utils.data.DataLoader(
        MicroBatches(corpus, train_cfg.micro_batch_size, rank, world, accum),
        batch_size=None,  # an item is already a micro-batch
        sampler=range(start_step * accum, train_cfg.max_steps * accum),
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )
