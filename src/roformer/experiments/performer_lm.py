"""§4.4: Performer with and without RoPE, character-level language modelling on enwik8 (Fig. 3 right).

Both models are the same pre-LayerNorm decoder with FAVOR+ linear attention (causal, Eq. 18); the baseline
adds learned absolute position embeddings to the input (as Performer does), the other uses RoPE inside the
linear attention exactly as Eq. 19 and no absolute positions. Each seed sets the initialisation, the random
features and the data order, the same for both variants; the report gives mean ± std over seeds and the paired
per-seed difference. Paper settings (``paper`` preset): 12 layers, 768 wide, 12 heads, lr 1e-4, batch 128,
length 1024; the paper gives no step count, warm-up or feature count: those values are ours.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.corpora import byte_tensor, load_bytes_corpus
from ..io import atomic_write_text
from ..models.decoder import DecoderConfig
from ..report import markdown_table, mean_std, plot_seed_bands, seed_rows
from ..train import is_main_process, preset_train_config
from . import choose_preset, owns_run
from .lm_compare import train_variants
from .seeds import run_dirs

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_layers=1, num_heads=2, num_features=16), seq_len=64,
                  batch_size=4, eval_bytes=2048, seeds=2,
                  train=dict(max_steps=6, lr=3e-3, warmup_steps=2, eval_every=3, log_every=1)),
    "small": dict(model=dict(hidden_size=256, num_layers=4, num_heads=4, num_features=64), seq_len=512,
                  batch_size=8, eval_bytes=65536, seeds=3,
                  train=dict(max_steps=400, lr=1e-3, warmup_steps=40, eval_every=50, log_every=10)),
    # paper (arXiv v5 §4.4): 12 layers x 768, 12 heads, lr 1e-4, batch 128, length 1024; ours: the features,
    # steps, warm-up, evaluation cadence, bfloat16
    "paper": dict(model=dict(hidden_size=768, num_layers=12, num_heads=12, num_features=256), seq_len=1024,
                  batch_size=128, eval_bytes=5_000_000, seeds=3,
                  train=dict(max_steps=100_000, lr=1e-4, warmup_steps=1000, eval_every=2000, log_every=100,
                             dtype="bfloat16")),
}


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/performer_lm", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    train_config = preset_train_config(p["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    corpus = load_bytes_corpus("enwik8", data_dir)
    train, valid = byte_tensor(corpus["train"]), byte_tensor(corpus["validation"][: p["eval_bytes"] + 1])
    base = dict(vocab_size=256, attention="linear", feature_map="favor", dropout=0.0, max_positions=p["seq_len"],
                **p["model"])
    variants = {"performer": DecoderConfig(**base, position="learned"),
                "performer+rope": DecoderConfig(**base, position="rope")}
    out, seed_list = Path(out), list(range(seeds or p["seeds"]))
    results = train_variants(variants, train, valid, p["seq_len"], p["batch_size"], train_config, out, resume,
                             seed_list)
    if not is_main_process():
        return results
    bpc = {name: [r["final"]["validation_loss"] / math.log(2) for r in runs] for name, runs in results.items()}
    rows = seed_rows(bpc, "performer+rope", "validation bpc")
    for row, runs in zip(rows, results.values(), strict=True):
        row["parameters"] = runs[0]["final"]["parameters"]
        row["minutes per run"] = f"{mean_std([r['final']['minutes'] for r in runs])[0]:.1f}"
    dirs = run_dirs(out, results, seed_list)
    plot_seed_bands(dirs, out / "training_loss.png", key="loss",
                    title="Performer on enwik8: training loss with and without RoPE (Fig. 3 right)")
    plot_seed_bands(dirs, out / "validation_loss.png", key="eval/loss",
                    title="Performer on enwik8: validation loss")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "validation_bpc": bpc}, indent=2))
    text = [
        "# §4.4 Performer with and without RoPE on enwik8", "",
        f"Produced by: `{command or f'roformer experiment performer_lm --preset {preset}'}`", "",
        f"Preset `{preset}`: {p['model']['num_layers']} layers, {p['model']['hidden_size']} wide, "
        f"{p['model']['num_heads']} heads, causal FAVOR+ with {p['model']['num_features']} features per head "
        f"(redrawn every {base.get('redraw_interval', 1000)} training steps"
        f"{', so never within this run' if train_config.max_steps < 1000 else ''}), no dropout, "
        f"sequence length {p['seq_len']}, batch {p['batch_size']}, "
        f"{train_config.max_steps} updates, AdamW lr {train_config.lr:g} with warm-up and cosine decay, "
        f"seeds {', '.join(map(str, seed_list))} (a seed sets initialisation, random features and data order, "
        "the same for both variants). Validation: the first "
        f"{p['eval_bytes']:,} bytes of the validation split (the registry's 90/5/5 split of the mirror's enwik8 "
        "prefix).", "",
        markdown_table(rows, list(rows[0])), "",
        "The interval is a Student-t 95% interval of the mean per-seed difference (paired by seed).", "",
        "![training loss](training_loss.png)", "", "![validation loss](validation_loss.png)", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(text))
    return results
