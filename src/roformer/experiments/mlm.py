"""§4.2: masked-language-model pre-training, BERT against RoFormer (Fig. 3 left).

Both are the same post-LayerNorm encoder, with the same WordPiece vocabulary (uncased, learnt on the training
articles), data, masking, seed and budget; BERT adds learned absolute position embeddings to the input,
RoFormer rotates queries and keys instead. Sequences pack consecutive articles up to the maximum length;
15% of the tokens are predicted (80% [MASK], 10% random, 10% kept). Each model is saved as a
HuggingFace-compatible directory with its tokenizer (the RoFormer one loads into
``transformers.RoFormerForMaskedLM``). Paper settings (``paper`` preset): batch 64, max length 512, 100k steps,
AdamW lr 1e-5.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.corpora import load_articles
from ..data.tokenizer import check_tokenizer, load_tokenizer, save_tokenizer, train_wordpiece
from ..models import RoFormerConfig, RoFormerForMaskedLM
from ..report import markdown_table, plot_curves
from ..train import Trainer, is_main_process, preset_train_config
from ..train.mlm import masked_lm_functions, packed_sequences

VARIANTS = {"bert": "learned", "roformer": "rope"}

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                  vocab=500, articles=300, max_len=64, batch_size=8, eval_sequences=16,
                  train=dict(max_steps=6, lr=1e-3, warmup_steps=2, eval_every=3, log_every=1)),
    "small": dict(model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  vocab=8000, articles=None, max_len=128, batch_size=32, eval_sequences=256,
                  train=dict(max_steps=250, lr=5e-4, warmup_steps=25, eval_every=25, log_every=10)),
    "paper": dict(model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                  vocab=30000, articles=None, max_len=512, batch_size=64, eval_sequences=2000,
                  train=dict(max_steps=100_000, lr=1e-5, warmup_steps=1000, eval_every=2000, log_every=100,
                             schedule="linear", dtype="bfloat16")),
}


def run(preset: str = "small", data_dir=None, out: str | Path = "reports/mlm", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "") -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_config = preset_train_config(p["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    articles = load_articles("enwiki", data_dir, p["articles"])
    train_docs, valid_docs = articles["train"], articles["validation"]
    if resume and (out / "tokenizer.json").is_file():
        tok = load_tokenizer(out)  # the vocabulary the checkpoints were trained with (training it is not
        # deterministic: huggingface/tokenizers#1794)
    else:
        tok = train_wordpiece(train_docs, p["vocab"])
        save_tokenizer(tok, out)
    vocab = tok.get_vocab_size()
    train_ids, train_mask = packed_sequences(tok, train_docs, p["max_len"])
    valid_ids, valid_mask = packed_sequences(tok, valid_docs, p["max_len"])
    valid_ids, valid_mask = valid_ids[: p["eval_sequences"]], valid_mask[: p["eval_sequences"]]
    batch_fn, loss_fn, eval_fn = masked_lm_functions(tok, (train_ids, train_mask), (valid_ids, valid_mask),
                                                     p["batch_size"], train_config)

    results = {}
    for name, position in VARIANTS.items():
        config = RoFormerConfig(vocab_size=vocab, max_position_embeddings=p["max_len"], position=position,
                                pad_token_id=tok.token_to_id("[PAD]"), **p["model"])
        torch.manual_seed(train_config.seed)
        model = RoFormerForMaskedLM(config)
        started = time.perf_counter()
        final = Trainer(model, train_config, out / name, batch_fn, loss_fn, eval_fn).fit(resume=resume)
        if not is_main_process():
            continue
        model.save_pretrained(out / name / "model")
        save_tokenizer(tok, out / name / "model")
        results[name] = {"validation MLM loss": final["loss"], "validation MLM accuracy": final["accuracy"],
                         "minutes": (time.perf_counter() - started) / 60,
                         "parameters": sum(q.numel() for q in model.parameters())}
    if not is_main_process():
        return results
    rows = [{"model": f"{name} ({VARIANTS[name]} positions)", **r} for name, r in results.items()]
    plot_curves({n: out / n for n in results}, out / "mlm_loss.png", keys=("loss", "eval/loss"),
                title="MLM pre-training: BERT vs RoFormer (Fig. 3 left)", ylabel="MLM loss (nats / masked token)")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    text = [
        "# §4.2 MLM pre-training: BERT vs RoFormer", "",
        f"Produced by: `{command or f'roformer experiment mlm --preset {preset}'}`", "",
        f"Preset `{preset}`: post-LayerNorm encoder, {p['model']['num_hidden_layers']} layers, "
        f"{p['model']['hidden_size']} wide, {p['model']['num_attention_heads']} heads; uncased WordPiece of {vocab} "
        f"tokens learnt on the training articles; {len(train_ids):,} packed training sequences of up to "
        f"{p['max_len']} tokens; batch {p['batch_size']}, {train_config.max_steps} updates, AdamW lr "
        f"{train_config.lr:g}; validation: {len(valid_ids)} held-out sequences with a fixed masking.", "",
        markdown_table(rows, list(rows[0])), "", "![MLM loss](mlm_loss.png)", "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return results


def fill_mask(model_dir: str | Path, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in ``text``: the ``top_k`` most likely tokens and their probabilities."""
    tok = load_tokenizer(model_dir)
    model = RoFormerForMaskedLM.from_pretrained(model_dir).eval()
    check_tokenizer(tok, model.config.vocab_size, model.config.pad_token_id, model_dir, required=("[MASK]",))
    mask_id = tok.token_to_id("[MASK]")
    enc = tok.encode(text)
    ids = torch.tensor([enc.ids])
    positions = (ids[0] == mask_id).nonzero().flatten().tolist()
    if not positions:
        raise ValueError(f"no [MASK] in {text!r}")
    with torch.no_grad():
        probs = model(ids).logits[0].softmax(-1)
    return [[(tok.id_to_token(i), probs[p, i].item()) for i in probs[p].topk(top_k).indices.tolist()]
            for p in positions]
