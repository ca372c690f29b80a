"""The shared fine-tuning batches: each epoch a permutation, micro-batches that make up the batch, a pure function
of the step, and the same rows the GLUE and Chinese recipes drew before they shared it (their reports stay
reproducible)."""

import torch

from roformer.train.batches import epoch_batches


def test_each_epoch_is_a_permutation_cut_into_batches_and_micro_batches():
    batch_fn, steps = epoch_batches(23, 5, 1, lambda epoch: 7 + epoch, lambda rows: rows)
    assert steps == 4  # the partial fifth batch of each epoch is dropped
    for epoch in range(3):
        rows = [r for i in range(steps) for r in batch_fn(epoch * steps + i, 0)]
        assert len(rows) == 20 and len(set(rows)) == 20 and set(rows) <= set(range(23))
    assert batch_fn(0, 0) != batch_fn(steps, 0)  # another order the next epoch
    assert batch_fn(9, 0) == batch_fn(9, 0)  # a pure function of the step
    split, _ = epoch_batches(23, 6, 3, lambda epoch: 7 + epoch, lambda rows: rows)
    whole, _ = epoch_batches(23, 6, 1, lambda epoch: 7 + epoch, lambda rows: rows)
    assert [r for m in range(3) for r in split(5, m)] == whole(5, 0)
    assert epoch_batches(3, 8, 1, lambda e: e, len)[1] == 1  # fewer examples than a batch: one update an epoch


def test_the_rows_are_those_the_recipes_drew_before():
    n, batch, seed = 50, 8, 2
    for epoch_seed, accum in ((lambda e: seed * 1009 + e, 2), (lambda e: 1000 * seed + e, 1)):
        batch_fn, steps = epoch_batches(n, batch, accum, epoch_seed, lambda rows: rows)
        for step in range(3 * steps):
            epoch, i = divmod(step, steps)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(epoch)))
            for micro in range(accum):
                assert batch_fn(step, micro) == order[i * batch : (i + 1) * batch].chunk(accum)[micro].tolist()
