"""Runs as a subprocess of the tests: `python train_helper.py MODE OUT [...]`.

kill-at STEP  : a smoke char-LM run that SIGKILLs itself when asked for the batch of STEP (a real kill)
resume        : the same run, resumed from its last checkpoint
full          : the same run, uninterrupted
ddp / single  : a tiny dropout-free LM for the DDP equivalence test (launched by torchrun for ddp)
"""

import os
import signal
import sys
from pathlib import Path

# run as a script, this file's directory leads sys.path, and tests/kernels would shadow the `kernels` package
# transformers imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from roformer.experiments import char_lm  # noqa: E402
from roformer.models import RoFormerConfig, RoFormerForCausalLM  # noqa: E402
from roformer.train import TrainConfig, Trainer  # noqa: E402


def char_lm_run(out, resume=False, kill_at=None):
    if kill_at is not None:
        original = Trainer.fit

        def fit(self, resume=False):
            batch_fn = self.batch_fn

            def killing_batch_fn(step, micro):
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return batch_fn(step, micro)

            self.batch_fn = killing_batch_fn
            return original(self, resume)

        Trainer.fit = fit
    char_lm.run("smoke", out=out, resume=resume)


def tiny_setup():
    """A tiny dropout-free causal LM on a learnable stream: (model, batch_fn, loss_fn)."""
    torch.manual_seed(0)
    model = RoFormerForCausalLM(RoFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                               attention_probs_dropout_prob=0.0, pad_token_id=None))
    data = torch.arange(4096) % 50  # learnable: each token is the previous one plus 1

    def batch_fn(step, micro):
        g = torch.Generator().manual_seed(step * 2 + micro)
        starts = torch.randint(0, 4096 - 17, (8,), generator=g)
        return {"x": torch.stack([data[s : s + 17] for s in starts.tolist()])}

    def loss_fn(net, batch):
        x = batch["x"]
        logits = net(x[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()), x[:, 1:].numel()

    return model, batch_fn, loss_fn


def tiny_lm_run(out):
    model, batch_fn, loss_fn = tiny_setup()
    config = TrainConfig(max_steps=6, grad_accum=2, lr=1e-2, log_every=1, progress=False, clip_grad_norm=1.0)
    Trainer(model, config, out, batch_fn, loss_fn).fit()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "kill-at":
        char_lm_run(out, kill_at=int(sys.argv[3]))
    elif mode == "resume":
        char_lm_run(out, resume=True)
    elif mode == "full":
        char_lm_run(out)
    elif mode in ("ddp", "single"):
        tiny_lm_run(out)
    else:
        raise SystemExit(f"unknown mode {mode}")
