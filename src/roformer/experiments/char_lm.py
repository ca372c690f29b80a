"""A character-level (byte-level) causal RoFormer language model, the README's main job.

Data: enwik8 (or tinyshakespeare) from the registry, split as the registry states. Training batches are
random windows drawn with a generator seeded by the step, so the step is the data position. Validation:
bits per character over non-overlapping windows of ``seq_len`` bytes at the start of the validation split.
The trained model is saved as a HuggingFace-compatible directory with its byte tokenizer.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from ..data.corpora import byte_tensor, load_bytes_corpus
from ..data.tokenizer import byte_tokenizer, save_with_tokenizer
from ..models import RoFormerConfig, RoFormerForCausalLM
from ..report import write_run_report
from ..train import RunDirectory, TrainConfig, Trainer, is_main_process, preset_train_config
from ..train.lm import next_token_loss, stream_loss, window_batches
from . import choose_preset


@dataclass
class CharLMConfig:
    data: str = "enwik8"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1
    seq_len: int = 256
    batch_size: int = 16  # sequences per update (global)
    eval_bytes: int = 65536  # validation bytes scored (the start of the validation split)
    sample_prompt: str = "The history of "
    sample_bytes: int = 300
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, dict] = {
    # seconds: used by the tests
    "smoke": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seq_len=64, batch_size=8,
                  eval_bytes=4096, sample_bytes=40,
                  train=dict(max_steps=30, lr=3e-3, warmup_steps=5, eval_every=10, save_every=10, log_every=5)),
    # a few minutes on a 2-core CPU: the README's main job
    "small": dict(train=dict(max_steps=250, lr=2e-3, warmup_steps=25, eval_every=50, save_every=50,
                             log_every=10)),
    # a 12-layer, 512-wide model as in character-level Transformer LMs, for GPUs
    "paper": dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048, seq_len=512,
                  batch_size=32, eval_bytes=5_000_000,
                  train=dict(max_steps=200_000, lr=6e-4, warmup_steps=2000, eval_every=5000, save_every=5000,
                             log_every=100, dtype="bfloat16")),
}


def build_config(preset: str, device: str = "cpu", dtype: str | None = None, max_steps: int | None = None
                 ) -> CharLMConfig:
    values = dict(choose_preset(PRESETS, preset))
    train = preset_train_config(values.pop("train"), device, dtype, max_steps)
    return CharLMConfig(**values, train=train)


def model_config(c: CharLMConfig) -> RoFormerConfig:
    return RoFormerConfig(
        vocab_size=256, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size, hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout, max_position_embeddings=c.seq_len, pad_token_id=None,
        type_vocab_size=1, is_decoder=True,
    )


def bits_per_character(model, data: torch.Tensor, seq_len: int) -> float:
    """Mean negative log2-likelihood per predicted byte over non-overlapping windows of ``seq_len + 1``."""
    return stream_loss(model, data, seq_len) / math.log(2)


def run(preset: str = "small", data_dir=None, out: str | Path = "runs/enwik8", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, data: str | None = None,
        command: str = "") -> dict:
    c = build_config(preset, device, dtype, max_steps)
    if data:
        c = dataclasses.replace(c, data=data)
    with RunDirectory(out, resume=resume) as owner:  # locked, and refused if it holds another run, before any work
        owner.begin({"preset": preset, "data": c.data})
        return _train(c, preset, data_dir, owner, resume, command)


def _train(c: CharLMConfig, preset: str, data_dir, owner: RunDirectory, resume: bool, command: str) -> dict:
    corpus = load_bytes_corpus(c.data, data_dir)
    train, valid = byte_tensor(corpus["train"]), byte_tensor(corpus["validation"])[: c.eval_bytes + 1]
    torch.manual_seed(c.train.seed)
    model = RoFormerForCausalLM(model_config(c))

    def eval_fn(net) -> dict:
        bpc = bits_per_character(net, valid, c.seq_len)
        return {"bpc": bpc, "loss": bpc * math.log(2)}

    started = time.perf_counter()
    batch_fn = window_batches(train, c.seq_len, c.batch_size, c.train.seed, c.train.grad_accum)
    identity = {"preset": preset, "data": c.data, "model": dataclasses.asdict(model_config(c))}
    final = Trainer(model, c.train, owner.path, batch_fn, next_token_loss, eval_fn, desc=f"{c.data} {preset}",
                    identity=identity).fit(resume=resume)
    if not is_main_process():
        return final
    model.eval()
    owner.save_directory("model", functools.partial(save_with_tokenizer, model, byte_tokenizer()))
    sample = generate_text(model, c.sample_prompt, c.sample_bytes, seed=c.train.seed)
    summary = {
        "final": {"validation_bpc": final.get("bpc"), "steps": c.train.max_steps,
                  "train_minutes": (time.perf_counter() - started) / 60,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "config": dataclasses.asdict(c),
        "sample": sample,
    }
    owner.write_json("summary.json", summary)
    write_run_report(owner.path, f"Character-level RoFormer LM on {c.data} ({preset})", command or
                     f"roformer train --preset {preset}",
                     notes=f"## Sample (temperature 0.8, top-k 40)\n\n```\n{sample}\n```")
    return summary


class _ByteStreamer(BaseStreamer):
    """A ``transformers`` streamer for a byte-level model: each new byte to ``stream`` as soon as it completes a
    UTF-8 character (generate gives the prompt first; it was streamed already)."""

    def __init__(self, stream):
        self.stream, self.prompt_seen = stream, False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.stream(self.decoder.decode(bytes(value.flatten().tolist())))

    def end(self) -> None:
        self.stream(self.decoder.decode(b"", final=True))


def generate_text(model, prompt: str, n_bytes: int, temperature: float = 0.8, top_k: int | None = 40,
                  seed: int = 0, stream=None) -> str:
    """Continue ``prompt`` by ``n_bytes`` bytes through transformers' ``generate``: sampled from
    softmax(logits / temperature) over the ``top_k`` most likely (greedy when ``temperature == 0``), with the
    global RNG seeded by ``seed`` inside and restored after; undecodable bytes shown as U+FFFD. ``stream``, if
    given, receives the prompt and then the text as it is generated (complete UTF-8 characters only)."""
    ids = torch.tensor([list(prompt.encode("utf-8"))], device=next(model.parameters()).device)
    if stream is not None:
        stream(prompt)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0} if temperature > 0 else \
        {"do_sample": False}
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_bytes,
                             streamer=None if stream is None else _ByteStreamer(stream), **sampling)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
