"""§4.6-4.7: position encodings compared on a GPT-style language model (Table 6, Fig. 4).

Learned absolute positions (GPT/BERT), T5's relative bias and RoPE, plus sinusoidal (Vaswani), ALiBi and NoPE as
extra rows, in otherwise identical pre-LayerNorm decoders trained on the English Wikipedia sample with a
byte-level BPE vocabulary learnt on its training split. Each seed sets initialisation and data order, the same
for every variant. The report gives validation loss (mean ± std over seeds, and the paired per-seed difference
against RoPE), the validation curves with their spread, and how many updates RoPE needed (mean curve) to reach
each baseline's mean final validation loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.corpora import load_articles
from ..data.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from ..io import atomic_write_text
from ..models.decoder import DecoderConfig
from ..report import markdown_table, mean_std, plot_seed_bands, seed_rows
from ..train import is_main_process, preset_train_config
from . import choose_preset, owns_run
from .lm_compare import eval_curve, steps_to_reach, train_variants
from .seeds import run_dirs

VARIANTS = ("learned", "t5", "rope", "sinusoidal", "alibi", "none")  # the paper's three, then extra rows

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_layers=1, num_heads=2), vocab=300, articles=200, seq_len=32,
                  batch_size=4, eval_tokens=1024, seeds=2,
                  train=dict(max_steps=6, lr=3e-3, warmup_steps=2, eval_every=3, log_every=1)),
    "small": dict(model=dict(hidden_size=256, num_layers=4, num_heads=4), vocab=4096, articles=None, seq_len=256,
                  batch_size=16, eval_tokens=32768, seeds=3,
                  train=dict(max_steps=200, lr=1e-3, warmup_steps=20, eval_every=20, log_every=10)),
    # ours throughout: a GPT-2-small-size decoder and a budget for GPUs (the Neurocomputing §4.6 settings are
    # not taken over)
    "paper": dict(model=dict(hidden_size=768, num_layers=12, num_heads=12), vocab=32000, articles=None,
                  seq_len=1024, batch_size=64, eval_tokens=2_000_000, seeds=3,
                  train=dict(max_steps=100_000, lr=3e-4, warmup_steps=2000, eval_every=2000, log_every=100,
                             dtype="bfloat16")),
}

SEPARATOR = "<|endoftext|>"


def encode_corpus(preset: dict, data_dir, out: Path, resume: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BPE learnt on the training articles (saved in ``out``, and reused on resume: training it again would
    give another vocabulary, huggingface/tokenizers#1794); both splits as one id stream each, articles
    separated by an end-of-text token."""
    articles = load_articles("enwiki", data_dir, preset["articles"])
    train_docs, valid_docs = articles["train"], articles["validation"]
    if resume and (out / "tokenizer.json").is_file():
        tok = load_tokenizer(out)
    else:
        tok = train_bpe(train_docs, preset["vocab"], special_tokens=[SEPARATOR])
        save_tokenizer(tok, out)
    sep = tok.token_to_id(SEPARATOR)

    def stream(docs):
        ids = []
        for enc in tok.encode_batch(docs):
            ids.extend(enc.ids)
            ids.append(sep)
        return torch.tensor(ids, dtype=torch.int32)

    return stream(train_docs), stream(valid_docs)[: preset["eval_tokens"] + 1]


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/pe_compare", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        variants: tuple[str, ...] = VARIANTS, seeds: int | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    out, seed_list = Path(out), list(range(seeds or p["seeds"]))
    out.mkdir(parents=True, exist_ok=True)
    train_config = preset_train_config(p["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    train, valid = encode_corpus(p, data_dir, out, resume)
    configs = {name: DecoderConfig(vocab_size=p["vocab"], position=name, max_positions=p["seq_len"], dropout=0.0,
                                   **p["model"]) for name in variants}
    results = train_variants(configs, train, valid, p["seq_len"], p["batch_size"], train_config, out, resume,
                             seed_list)
    if not is_main_process():
        return results
    losses = {name: [r["final"]["validation_loss"] for r in runs] for name, runs in results.items()}
    dirs = run_dirs(out, results, seed_list)
    rope_curve = []
    if "rope" in results:  # the mean over seeds of RoPE's validation curve
        curves = [eval_curve(d) for d in dirs["rope"]]
        rope_curve = [(step, mean_std([c[i][1] for c in curves])[0]) for i, (step, _) in enumerate(curves[0])]
    rows = seed_rows(losses, "rope", "validation loss")
    for row, (name, runs) in zip(rows, results.items(), strict=True):
        mean_loss = mean_std(losses[name])[0]
        reach = steps_to_reach(rope_curve, mean_loss) if rope_curve and name != "rope" else None
        row["parameters"] = runs[0]["final"]["parameters"]
        row["RoPE (mean curve) reaches this mean loss at step"] = "" if name == "rope" else (reach or "not reached")
        row["minutes per run"] = f"{mean_std([r['final']['minutes'] for r in runs])[0]:.1f}"
    plot_seed_bands(dirs, out / "validation_loss.png", key="eval/loss",
                    title="Position encodings on a GPT-style LM (Wikipedia sample): validation loss (Fig. 4)")
    plot_seed_bands(dirs, out / "training_loss.png", key="loss",
                    title="Position encodings on a GPT-style LM: training loss")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "validation_loss": losses}, indent=2))
    text = [
        "# §4.6-4.7 Position encodings on a GPT-style language model", "",
        f"Produced by: `{command or f'roformer experiment pe_compare --preset {preset}'}`", "",
        f"Preset `{preset}`: pre-LayerNorm decoder, {p['model']['num_layers']} layers, {p['model']['hidden_size']} "
        f"wide, {p['model']['num_heads']} heads, no dropout; byte-level BPE of {p['vocab']} tokens learnt on the "
        f"training articles; windows of {p['seq_len']} tokens, batch {p['batch_size']}, {train_config.max_steps} "
        f"updates, AdamW lr {train_config.lr:g}, warm-up then cosine decay; seeds {', '.join(map(str, seed_list))} "
        "(a seed sets initialisation and data order, the same for every variant). Validation: the first "
        f"{len(valid) - 1:,} tokens of the held-out articles (crc32(title) % 100 == 0), {len(train):,} training "
        "tokens in all.", "",
        markdown_table(rows, list(rows[0])), "",
        "The interval is a Student-t 95% interval of the mean per-seed difference against RoPE (paired by seed).",
        "", "![validation loss](validation_loss.png)", "", "![training loss](training_loss.png)", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(text))
    return results
