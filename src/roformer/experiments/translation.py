"""§4.1: machine translation with RoPE (Table 1), RoFormer against the sinusoidal Transformer and the Shaw
relative-position Transformer, same data, vocabulary, model size, budget and seed.

Training follows the paper: Adam with betas (0.9, 0.98), the learning rate raised linearly from 1e-7 to its
peak and then decayed with the inverse square root of the step, label smoothing 0.1, batches of about
``max_tokens`` tokens of similar-length pairs. The final model is the average of the last 5 checkpoints.
Test sets are translated by beam search (beam 4, length penalty 0.6, at most source length + 50 tokens) and
scored by sacreBLEU on the detokenized output (the byte-level BPE decodes to the exact text).

``small`` trains on Multi30k En-De and tests on test2016 (and newstest2014, out of domain). ``paper`` has the
WMT14 base settings (37k shared BPE, 6+6 layers, 512 wide, ~25k tokens per batch, 100k steps, warm-up 4000)
but trains on the registry's parallel data, which does not include the WMT14 training corpus.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.padding import right_pad
from ..data.parallel import load_parallel, token_batches
from ..data.tokenizer import load_tokenizer, save_tokenizer, save_with_tokenizer, train_bpe
from ..io import atomic_write_text
from ..models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from ..report import markdown_table, mean_std, plot_seed_bands, seed_rows
from ..train import RunDirectory, average_checkpoints, is_main_process, list_checkpoints, preset_train_config
from ..train.losses import token_cross_entropy
from . import choose_preset, owns_run
from .seeds import SeedRun, train_seeds

__all__ = ["PRESETS", "SPECIALS", "run", "translate_lines", "bleu", "paired_bootstrap"]

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
VARIANTS = {"RoFormer": "rope", "Transformer (sinusoidal)": "sinusoidal", "Transformer + RPE (Shaw)": "shaw"}
# Table 1 of the paper, BLEU on WMT14 En-De newstest2014, quoted for reference from both versions (the journal
# version adds the Shaw RPE row)
PAPER_TABLE1 = {"Transformer-base": {"arXiv v5": "27.3", "Neurocomputing": "26.5"},
                "Transformer + RPE (Shaw)": {"arXiv v5": "—", "Neurocomputing": "26.8"},
                "RoFormer": {"arXiv v5": "27.5", "Neurocomputing": "27.5"}}

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, encoder_layers=1, decoder_layers=1, num_heads=2, intermediate_size=64),
                  vocab=400, train_pairs=400, max_tokens=800, max_len=64, test_sentences=12, news_sentences=8, seeds=2,
                  train=dict(max_steps=10, lr=1e-3, warmup_steps=4, eval_every=5, save_every=2, log_every=1)),
    "small": dict(model=dict(hidden_size=256, encoder_layers=3, decoder_layers=3, num_heads=4, intermediate_size=1024),
                  vocab=8000, train_pairs=None, max_tokens=2000, max_len=128, test_sentences=None,
                  news_sentences=300, seeds=3,
                  train=dict(max_steps=500, lr=7e-4, warmup_steps=150, eval_every=100, save_every=25,
                             log_every=20)),
    # paper (arXiv v5 §4.1, Transformer-base after Vaswani et al.): 6+6 layers x 512, 8 heads, FFN 2048, Adam
    # (0.9, 0.98), lr from 1e-7 to 5e-4 then inverse square root, label smoothing 0.1, beam 4, length penalty
    # 0.6, the average of the last 5 checkpoints. From Vaswani et al.'s base setting, not stated in the paper:
    # the 37k shared BPE, ~25k-token batches, 100k steps, warm-up 4000. Ours: max_len, evaluation and saving
    # cadence, bfloat16
    "paper": dict(model=dict(hidden_size=512, encoder_layers=6, decoder_layers=6, num_heads=8, intermediate_size=2048),
                  vocab=37000, train_pairs=None, max_tokens=25000, max_len=256, test_sentences=None,
                  news_sentences=None, seeds=3,
                  train=dict(max_steps=100_000, lr=5e-4, warmup_steps=4000, eval_every=5000, save_every=2000,
                             log_every=100, dtype="bfloat16")),
}
TRAIN_FIXED = dict(optimizer="adam", betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, schedule="inverse_sqrt",
                   keep_last=5)
LABEL_SMOOTHING = 0.1


def _encode(tok, texts: list[str], max_len: int, eos: int) -> list[list[int]]:
    """Token ids of each text, cut to ``max_len - 1`` tokens, then EOS."""
    return [e.ids[: max_len - 1] + [eos] for e in tok.encode_batch(texts, add_special_tokens=False)]


def _collate(src: list[list[int]], tgt: list[list[int]] | None, bos: int, pad: int) -> dict:
    """Right-padded sources with their mask; with targets (ending in EOS), decoder inputs BOS + target and labels
    target + EOS (-100 on padding)."""
    src_ids = right_pad(src, pad)
    batch = {"src_ids": src_ids, "src_mask": (src_ids != pad).long()}
    if tgt is not None:
        batch |= {"tgt_ids": right_pad([[bos] + t[:-1] for t in tgt], pad), "labels": right_pad(tgt, -100)}
    return batch


def translate_lines(model: Seq2SeqTransformer, tok, lines: list[str], beam_size: int = 4,
                    length_penalty: float = 0.6, batch_size: int = 64, max_source_tokens: int = 256) -> list[str]:
    """Translate each line. The rules for awkward input: an empty (or blank) line gives an empty line; a
    source longer than ``max_source_tokens`` tokens is cut to that many (EOS included) before translation;
    each output has at most (source tokens + 50) tokens."""
    c = model.config
    device = next(model.parameters()).device
    limit = max_source_tokens
    if c.position == "learned":
        limit = min(limit, c.max_positions)
    sources = _encode(tok, lines, limit, c.eos_token_id)
    todo = sorted((i for i, line in enumerate(lines) if line.strip()), key=lambda i: len(sources[i]))
    out = [""] * len(lines)
    model.eval()
    bar = tqdm(total=len(todo), desc=f"translating ({'greedy' if beam_size == 1 else f'beam {beam_size}'})",
               unit="sentence", disable=len(todo) < 2 * batch_size, dynamic_ncols=True)
    for s in range(0, len(todo), batch_size):
        rows = todo[s : s + batch_size]
        batch = _collate([sources[i] for i in rows], None, c.bos_token_id, c.pad_token_id)
        hyps = model.translate(batch["src_ids"].to(device), batch["src_mask"].to(device), beam_size, length_penalty)
        for i, ids in zip(rows, hyps, strict=True):
            out[i] = tok.decode(ids).strip()
        bar.update(len(rows))
    bar.close()
    return out


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU of detokenized text (sacreBLEU defaults: 13a tokenization, exp smoothing) and the signature."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return score.score, str(metric.get_signature())


def paired_bootstrap(systems: dict[str, list[str]], references: list[str], baseline: str,
                     resamples: int = 1000) -> dict[str, dict]:
    """sacreBLEU's paired bootstrap resampling over test sentences (the Moses test): for each system, its BLEU,
    the 95% interval of its resampled BLEU and the p-value of its difference from ``baseline``'s."""
    import sacrebleu
    from sacrebleu.significance import PairedTest

    named = [(baseline, systems[baseline])] + [(n, h) for n, h in systems.items() if n != baseline]
    # resampling seeded by sacreBLEU ($SACREBLEU_SEED, default 12345)
    test = PairedTest(named, {"BLEU": sacrebleu.metrics.BLEU()}, [references], test_type="bs", n_samples=resamples)
    _, scores = test()
    return {name: {"BLEU": r.score, "interval": [r.mean - r.ci, r.mean + r.ci], "p": r.p_value}
            for name, r in zip(scores["System"], scores["BLEU"], strict=True)}


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/translation", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    out, seed_list = Path(out), list(range(seeds or p["seeds"]))
    out.mkdir(parents=True, exist_ok=True)
    train_config = preset_train_config(p["train"], device, dtype, max_steps, **TRAIN_FIXED)
    data = load_parallel("multi30k", data_dir)
    news = load_parallel("newstest2014", data_dir)["test"][: p["news_sentences"]]
    train_pairs = data["train"][: p["train_pairs"]]
    test_pairs = data["test"][: p["test_sentences"]]
    if resume and (out / "tokenizer.json").is_file():
        tok = load_tokenizer(out)  # the vocabulary the checkpoints were trained with (BPE training is not
        # deterministic across processes: huggingface/tokenizers#1794)
    else:
        tok = train_bpe([s for pair in train_pairs for s in pair], p["vocab"], SPECIALS)
        save_tokenizer(tok, out)
    pad, bos, eos = (tok.token_to_id(t) for t in SPECIALS)
    src = _encode(tok, [s for s, _ in train_pairs], p["max_len"], eos)
    tgt = _encode(tok, [t for _, t in train_pairs], p["max_len"], eos)
    batches = token_batches(list(map(len, src)), list(map(len, tgt)), p["max_tokens"])
    valid = [_collate(_encode(tok, [s for s, _ in chunk], p["max_len"], eos),
                      _encode(tok, [t for _, t in chunk], p["max_len"], eos), bos, pad)
             for chunk in (data["validation"][i : i + 100] for i in range(0, len(data["validation"]), 100))]

    def batch_fn_for(seed: int):
        def batch_fn(step: int, micro: int) -> dict:
            epoch, i = divmod(step, len(batches))
            order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + epoch))
            rows = batches[int(order[i])]
            accum = train_config.grad_accum
            rows = rows[micro * len(rows) // accum : (micro + 1) * len(rows) // accum]
            return _collate([src[r] for r in rows], [tgt[r] for r in rows], bos, pad)
        return batch_fn

    def loss_fn(net, batch):
        out_ = net(batch["src_ids"], batch["tgt_ids"], batch["src_mask"], batch["labels"], LABEL_SMOOTHING)
        return out_.loss, (batch["labels"] != -100).sum()

    def eval_fn(net) -> dict:
        """Validation cross-entropy per target token (no label smoothing)."""
        total, count = 0.0, 0
        at = next(net.parameters()).device
        for b in valid:
            logits = net(b["src_ids"].to(at), b["tgt_ids"].to(at), b["src_mask"].to(at)).logits
            loss, n = token_cross_entropy(logits, b["labels"].to(at))
            total, count = total + loss.item() * int(n), count + int(n)
        return {"loss": total / count}

    def save_average(model, path: Path) -> None:
        """The model directory holds the average of the run's last 5 checkpoints, as the paper evaluates."""
        model.load_state_dict(average_checkpoints(list_checkpoints(path.parent / "checkpoints")[-5:]))
        save_with_tokenizer(model, tok, path)

    def variant(position: str):
        config = Seq2SeqConfig(vocab_size=tok.get_vocab_size(), position=position, pad_token_id=pad,
                               bos_token_id=bos, eos_token_id=eos, max_positions=max(p["max_len"], 512), **p["model"])
        return lambda seed: SeedRun(Seq2SeqTransformer(config), train_config,
                                    (batch_fn_for(seed), loss_fn, eval_fn), {"model": dataclasses.asdict(config)},
                                    save_average)

    trained = train_seeds({position: variant(position) for position in VARIANTS.values()}, out, resume, seed_list)
    if not is_main_process():
        return {}
    results = {name: [_decode(out / position / f"seed{seed}", tok, test_pairs, news, eval_fn, device, resume)
                      | {"train minutes": run_["final"]["minutes"], "validation loss (last)":
                         run_["final"]["validation_loss"]}
                      for seed, run_ in zip(seed_list, trained[position], strict=True)]
               for name, position in VARIANTS.items()}
    references = [t for _, t in test_pairs]
    bootstrap = [paired_bootstrap({name: (out / position / f"seed{seed}" / "test2016.hyp.de").read_text()
                                   .split("\n")[: len(references)] for name, position in VARIANTS.items()},
                                  references, "RoFormer") for seed in seed_list]
    atomic_write_text(out / "results.json", json.dumps({"runs": results, "paired_bootstrap": bootstrap}, indent=2))
    _write_report(out, p, preset, command, tok, train_pairs, test_pairs, news, batches, train_config, seed_list,
                  results, bootstrap)
    return results


def _decode(run_dir: Path, tok, test_pairs, news, eval_fn, device, resume: bool) -> dict:
    """BLEU of a run's (averaged) model: test2016 with beam 4 and greedy, newstest2014 with beam 4; the
    averaged model's validation loss. Kept in ``bleu.json`` and reused on resume."""
    with RunDirectory(run_dir, resume=resume) as owner:  # trained (or reused) by this command: the same run
        owner.begin({"decoding": {"test_sentences": len(test_pairs), "news_sentences": len(news), "beam": 4}})
        done = owner.result("bleu.json")
        if done is None:
            done = _translate_and_score(owner, tok, test_pairs, news, eval_fn, device)
            owner.write_json("bleu.json", done)
        return done


def _translate_and_score(owner: RunDirectory, tok, test_pairs, news, eval_fn, device) -> dict:
    model = Seq2SeqTransformer.from_pretrained(owner.path / "model").to(device).eval()
    started = time.perf_counter()
    with torch.no_grad():
        averaged = eval_fn(model)["loss"]
    test_hyps = translate_lines(model, tok, [s for s, _ in test_pairs])
    test_bleu, signature = bleu(test_hyps, [t for _, t in test_pairs])
    greedy = bleu(translate_lines(model, tok, [s for s, _ in test_pairs], beam_size=1), [t for _, t in test_pairs])[0]
    news_bleu = bleu(translate_lines(model, tok, [s for s, _ in news]), [t for _, t in news])[0]
    owner.write_text("test2016.hyp.de", "\n".join(test_hyps) + "\n")
    r = {"validation loss (avg of 5)": averaged, "BLEU test2016 (beam 4)": test_bleu, "BLEU test2016 (greedy)": greedy,
         "BLEU newstest2014 (beam 4)": news_bleu, "decode minutes": (time.perf_counter() - started) / 60,
         "parameters": sum(q.numel() for q in model.parameters()), "signature": signature}
    return r


def _write_report(out: Path, p: dict, preset: str, command: str, tok, train_pairs, test_pairs, news, batches,
                  train_config, seeds: list[int], results: dict, bootstrap: list[dict]) -> None:
    dirs = {name: [out / position / f"seed{s}" for s in seeds] for name, position in VARIANTS.items()}
    plot_seed_bands(dirs, out / "loss.png", key="eval/loss", ylabel="cross-entropy (nats / target token)",
                    title="Translation, Multi30k En-De: validation loss")
    rows = seed_rows({n: [r["BLEU test2016 (beam 4)"] for r in runs] for n, runs in results.items()}, "RoFormer",
                     "BLEU test2016 (beam 4)", digits=2, lower_is_better=False)
    for row, runs in zip(rows, results.values(), strict=True):
        for key in ("BLEU test2016 (greedy)", "validation loss (avg of 5)", "BLEU newstest2014 (beam 4)"):
            mean, std = mean_std([r[key] for r in runs])
            row[key] = f"{mean:.{3 if 'loss' in key else 2}f} ± {std:.{3 if 'loss' in key else 2}f}"
        row["train minutes"] = f"{mean_std([r['train minutes'] for r in runs])[0]:.1f}"
        row["parameters"] = runs[0]["parameters"]
    tests = [{"seed": seed, **{name: f"{b['BLEU']:.2f} [{b['interval'][0]:.2f}, {b['interval'][1]:.2f}]"
                               + ("" if name == "RoFormer" else f", p = {b['p']:.3f}") for name, b in bs.items()}}
             for seed, bs in zip(seeds, bootstrap, strict=True)]
    paper_rows = [{"model": n, **{f"{version}, Table 1": bleu for version, bleu in v.items()}}
                  for n, v in PAPER_TABLE1.items()]
    signature = next(iter(results.values()))[0]["signature"]
    news_note = f"its first {len(news)} segments" if p["news_sentences"] else "all 3,003 segments"
    text = [
        "# §4.1 Machine translation (Table 1)", "",
        f"Produced by: `{command or f'roformer experiment translation --preset {preset}'}`", "",
        f"Preset `{preset}`: encoder-decoder Transformer, {p['model']['encoder_layers']}+{p['model']['decoder_layers']}"
        f" layers, {p['model']['hidden_size']} wide, {p['model']['num_heads']} heads, FFN "
        f"{p['model']['intermediate_size']}, post-LN, tied embeddings; shared byte-level BPE of "
        f"{tok.get_vocab_size()} tokens learnt on the {len(train_pairs):,} Multi30k training pairs; batches of "
        f"about {p['max_tokens']} tokens ({len(batches)} per epoch), {train_config.max_steps} updates, Adam "
        f"(0.9, 0.98), lr 1e-7 -> {train_config.lr:g} over {train_config.warmup_steps} steps then inverse sqrt, "
        f"label smoothing {LABEL_SMOOTHING}; the model is the average of the last 5 checkpoints (every "
        f"{train_config.save_every} updates). Seeds {', '.join(map(str, seeds))}: a seed sets initialisation and "
        f"batch order, the same for every model. BLEU: test2016 ({len(test_pairs)} sentences) and newstest2014 "
        f"({news_note}, out of domain for a model trained on image captions), beam 4, length penalty 0.6.", "",
        markdown_table(rows, list(rows[0])), "",
        "The interval of the difference is a Student-t 95% interval of the mean per-seed difference against "
        f"RoFormer (paired by seed). sacreBLEU signature: `{signature}`", "",
        "Paired bootstrap resampling over the test2016 sentences (sacreBLEU, 1000 resamples; each model's BLEU "
        "[95% interval], and the p-value of its difference from RoFormer of the same seed):", "",
        markdown_table(tests, list(tests[0])), "",
        "The paper's Table 1 (BLEU, WMT14 En-De newstest2014, Transformer-base scale; quoted for reference, not "
        "comparable in data or scale):", "", markdown_table(paper_rows, list(paper_rows[0])), "",
        "![loss](loss.png)", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(text))
