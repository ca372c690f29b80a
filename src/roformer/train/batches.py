"""Fine-tuning batches: every epoch a fresh permutation of the examples, cut into batches and each batch into
micro-batches, as a pure function of the step (so the step is the data position and a resume replays the same
batches). The GLUE and Chinese fine-tunes share it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InvalidArgument

__all__ = ["epoch_batches"]


def epoch_batches(n: int, batch_size: int, grad_accum: int, epoch_seed: Callable[[int], int],
                  make_batch: Callable[[list[int]], dict]) -> tuple[Callable[[int, int], dict], int]:
    """``(batch_fn(step, micro), steps per epoch)``: update ``step`` of epoch e takes the next ``batch_size`` rows
    of ``randperm(n)`` drawn with seed ``epoch_seed(e)``, micro-batch ``micro`` its ``micro``-th of
    ``grad_accum`` parts, handed to ``make_batch(rows)``. An epoch has ``n // batch_size`` updates (at least one;
    a last partial batch is dropped)."""
    if n < 1 or batch_size < 1 or grad_accum < 1:
        raise InvalidArgument(f"need at least one example, batch size and micro-batch, got {n}, {batch_size}, "
                              f"{grad_accum}")
    steps_per_epoch = max(1, n // batch_size)

    def batch_fn(step: int, micro: int) -> dict:
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(epoch)))
        rows = order[i * batch_size : (i + 1) * batch_size].chunk(grad_accum)[micro]
        return make_batch(rows.tolist())

    return batch_fn, steps_per_epoch
