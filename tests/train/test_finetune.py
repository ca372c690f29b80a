"""The shared fine-tuning loop: what it trains equals a plain PyTorch loop written from its documented recipe
(epoch permutations, linear warm-up and decay, AdamW with decay on matrices, clipping at 1), a finished fine-tune
is reused only by the same run, and too few examples are one clear error."""

import json
import math

import pytest
import torch
from torch import nn

from roformer.train.finetune import FineTune, finetune

N, FEATURES, CLASSES = 40, 6, 3


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(FEATURES, 8, dtype=torch.float64)
        self.norm = nn.LayerNorm(8, dtype=torch.float64)
        self.out = nn.Linear(8, CLASSES, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.hidden(x))))


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, FEATURES, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (N,), generator=g)


def reference(settings: FineTune, seed: int, order_seed) -> nn.Module:
    """The documented recipe in plain PyTorch: the model drawn after manual_seed(seed); each epoch a randperm
    seeded by order_seed(epoch), cut into batches (a last partial one dropped); lr peak * u / w over the first
    w = max(1, T // 10) updates u, then peak * (T - u) / (T - w); AdamW (betas 0.9/0.999, eps 1e-8, weight decay
    0.01 on matrices only); gradients clipped to norm 1."""
    x, y = data()
    torch.manual_seed(seed)
    model = Classifier()
    per_epoch = N // settings.batch_size
    total = settings.epochs * per_epoch
    warmup = max(1, total // 10)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.01}, {"params": vectors, "weight_decay": 0.0}],
                            lr=settings.lr)
    u = 0
    for epoch in range(settings.epochs):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(order_seed(epoch)))
        for b in range(per_epoch):
            u += 1
            rows = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            for group in opt.param_groups:
                group["lr"] = settings.lr * (u / warmup if u <= warmup else (total - u) / (total - warmup))
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            loss.backward()
            norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
            if 1.0 / (norm + 1e-6) < 1.0:
                for p in model.parameters():
                    p.grad.mul_(1.0 / (norm + 1e-6))
            opt.step()
            opt.zero_grad()
    return model


def run_finetune(run_dir, settings: FineTune, seed: int, order_seed, resume=False, calls=None):
    x, y = data()
    made = []

    def make_model():
        made.append(Classifier())
        return made[-1]

    def eval_fn(net):
        return {"accuracy": 100.0 * float((net(x).argmax(-1) == y).double().mean())}

    result = finetune(run_dir, {"task": "synthetic"}, settings, seed, make_model=make_model, examples=N,
                      make_batch=lambda rows: {"x": x[rows], "y": y[rows]},
                      loss_fn=lambda net, b: (nn.functional.cross_entropy(net(b["x"]), b["y"]), len(b["y"])),
                      eval_fn=eval_fn, order_seed=order_seed, resume=resume,
                      finish=lambda model, final, owner: {**final, "weights": [p.tolist() for p in model.parameters()]})
    return result, made


@pytest.mark.parametrize("epochs,batch_size,seed", [(3, 8, 0), (2, 16, 5), (1, 40, 1)])
def test_finetune_trains_what_the_documented_recipe_trains(tmp_path, epochs, batch_size, seed):
    settings = FineTune(epochs=epochs, batch_size=batch_size, lr=0.05)
    order_seed = lambda epoch: 1009 * seed + epoch  # noqa: E731
    result, made = run_finetune(tmp_path / "ft", settings, seed, order_seed)
    expected = reference(settings, seed, order_seed)
    for got, want in zip(made[0].parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert json.loads((tmp_path / "ft" / "result.json").read_text()) == result
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = N // batch_size
    assert [r["step"] for r in records if "eval/accuracy" in r] == [per_epoch * (e + 1) for e in range(epochs)]


def test_a_finished_finetune_is_reused_only_by_the_same_run(tmp_path):
    settings = FineTune(epochs=1, batch_size=8, lr=0.05)
    first, _ = run_finetune(tmp_path / "ft", settings, 0, lambda e: e)
    again, made = run_finetune(tmp_path / "ft", settings, 0, lambda e: e, resume=True)
    assert again == first and made == []  # nothing built, nothing trained
    with pytest.raises(ValueError, match="cannot resume .*lr: run has 0.05, command has 0.1"):
        run_finetune(tmp_path / "ft", FineTune(epochs=1, batch_size=8, lr=0.1), 0, lambda e: e, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        run_finetune(tmp_path / "ft", settings, 0, lambda e: e)


def test_fewer_examples_than_a_batch_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"cannot fine-tune in .*ft: {N} training examples are fewer than one batch "
                                         "of 64"):
        run_finetune(tmp_path / "ft", FineTune(epochs=1, batch_size=64, lr=0.05), 0, lambda e: e)
    assert not (tmp_path / "ft").exists()
