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

import dataclasses
import functools
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.corpora import load_articles
from ..data.tokenizer import check_tokenizer, load_tokenizer, save_tokenizer, save_with_tokenizer, train_wordpiece
from ..errors import InvalidArgument, MissingFile
from ..io import fingerprint, read_text
from ..models import RoFormerConfig, RoFormerForMaskedLM
from ..report import markdown_table, mean_std, plot_seed_bands, seed_rows
from ..train import RunDirectory, Trainer, is_main_process, preset_train_config
from ..train.mlm import document_ids, masked_lm_functions, packed_sequences
from . import choose_preset, owns_run
from .seeds import SeedRun, run_dirs, train_seeds

VARIANTS = {"bert": "learned", "roformer": "rope"}

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                  vocab=500, articles=300, max_len=64, batch_size=8, eval_sequences=16, seeds=2,
                  train=dict(max_steps=6, lr=1e-3, warmup_steps=2, eval_every=3, log_every=1)),
    "small": dict(model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  vocab=8000, articles=None, max_len=128, batch_size=32, eval_sequences=256, seeds=3,
                  train=dict(max_steps=250, lr=5e-4, warmup_steps=25, eval_every=25, log_every=10)),
    # paper (arXiv v5 §4.2): BERT-base size, batch 64, length 512, 100k steps, AdamW lr 1e-5; ours: the
    # vocabulary size, warm-up, linear decay, evaluation cadence, bfloat16 (and the corpus: the registry's
    # Wikipedia sample, not BookCorpus + Wikipedia)
    "paper": dict(model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                  vocab=30000, articles=None, max_len=512, batch_size=64, eval_sequences=2000, seeds=3,
                  train=dict(max_steps=100_000, lr=1e-5, warmup_steps=1000, eval_every=2000, log_every=100,
                             schedule="linear", dtype="bfloat16")),
}


def _documents(corpus: str, data_dir, limit: int | None) -> dict[str, list[str]]:
    """``enwiki`` (the registry's Wikipedia sample) or a UTF-8 text file whose documents are separated by blank
    lines (1 in 100, by crc32 of the text, held out for validation)."""
    if corpus == "enwiki":
        return load_articles("enwiki", data_dir, limit)
    path = Path(corpus)
    if not path.is_file():
        raise MissingFile(f"corpus {corpus!r} is neither 'enwiki' nor a text file")
    docs = [d.strip() for d in re.split(r"\n\s*\n", read_text(path)) if d.strip()]
    splits = {"train": [], "validation": []}
    for d in docs:
        splits["validation" if zlib.crc32(d.encode()) % 100 == 0 else "train"].append(d)
    if not splits["validation"] or not splits["train"]:
        raise InvalidArgument(f"{corpus}: {len(docs)} documents (blank-line separated) are too few to hold 1% out; "
                              "give a larger corpus")
    return {k: v[:limit] if limit else v for k, v in splits.items()}


def prepare(p: dict, corpus: str, data_dir, run: RunDirectory) -> tuple:
    """The WordPiece vocabulary (reused on resume) and the packed training and validation sequences. The run
    records the corpus before the vocabulary is written, and the vocabulary once it is known, so a resume on
    another corpus, or with another vocabulary, is refused before anything is changed."""
    docs = _documents(corpus, data_dir, p["articles"])
    run.begin({"corpus": corpus, "corpus_data": fingerprint(docs["train"]), "vocab": p["vocab"]})
    if run.resume and (run.path / "tokenizer.json").is_file():
        tok = load_tokenizer(run.path)  # the vocabulary the checkpoints were trained with (training it is not
        # deterministic: huggingface/tokenizers#1794)
    else:
        tok = train_wordpiece(docs["train"], p["vocab"])
        save_tokenizer(tok, run.path)
    run.begin({"tokenizer": fingerprint(sorted(tok.get_vocab().items()))})
    train = packed_sequences(tok, document_ids(tok, docs["train"]), p["max_len"])
    valid = tuple(t[: p["eval_sequences"]]
                  for t in packed_sequences(tok, document_ids(tok, docs["validation"]), p["max_len"]))
    return tok, train, valid


def encoder_run(position: str, tok, train, valid, p: dict, train_config) -> Callable[[int], SeedRun]:
    """A masked-LM encoder with ``position`` encoding as a variant of :func:`.seeds.train_seeds`: the seed sets
    its initialisation and the batches and masks it sees. Its model directory gets the tokenizer too."""

    def make(seed: int) -> SeedRun:
        config = RoFormerConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=p["max_len"],
                                position=position, pad_token_id=tok.token_to_id("[PAD]"), **p["model"])
        seed_config = dataclasses.replace(train_config, seed=seed)
        functions = masked_lm_functions(tok, train, valid, p["batch_size"], seed_config)

        return SeedRun(RoFormerForMaskedLM(config), seed_config, functions, {"model": config.settings()},
                       lambda model, path: save_with_tokenizer(model, tok, path))

    return make


def pretrain(position: str = "rope", corpus: str = "enwiki", preset: str = "small", data_dir=None,
             out: str | Path = "runs/pretrain", resume: bool = False, device: str = "cpu", dtype: str | None = None,
             max_steps: int | None = None) -> dict:
    """One masked LM (``position="rope"``: RoFormer; ``"learned"``: the BERT baseline) on ``corpus``, saved with
    its tokenizer in ``out/model`` (a HuggingFace-compatible directory)."""
    p, out = choose_preset(PRESETS, preset), Path(out)
    train_config = preset_train_config(p["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    with RunDirectory(out, resume=resume) as owner:
        owner.begin({"recipe": "pretrain", "preset": preset, "position": position})
        prepared = prepare(p, corpus, data_dir, owner)
        torch.manual_seed(train_config.seed)
        run = encoder_run(position, *prepared, p, train_config)(train_config.seed)
        final = Trainer(run.model, run.config, out, *run.functions, desc=f"MLM {position}",
                        identity=run.identity).fit(resume=resume)
        owner.save_directory("model", functools.partial(run.save, run.model))
    return final


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/mlm", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    out, seed_list = Path(out), list(range(seeds or p["seeds"]))
    train_config = preset_train_config(p["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    with RunDirectory(out, resume=resume) as owner:  # held and begun by @owns_run
        tok, train, valid = prepare(p, "enwiki", data_dir, owner)
        results = train_seeds({name: encoder_run(position, tok, train, valid, p, train_config)
                               for name, position in VARIANTS.items()}, out, resume, seed_list)
        if is_main_process():
            _write_report(owner, results, seed_list, tok, train, valid, p, train_config, preset, command)
    return results


def saved_encoder_seeds(out: Path) -> list[int]:
    """The pre-training seeds of a finished ``run`` in ``out``, whose encoders are saved in
    ``out``/<variant>/seed<k>/model: the same seeds for every variant, each with its model (weights are not
    committed: a report's are trained again by ``--resume``)."""
    found = {name: sorted(int(d.name[4:]) for d in (out / name).glob("seed*") if d.name[4:].isdigit())
             for name in VARIANTS}
    if not any(found.values()):
        raise MissingFile(f"no pre-training runs in {out} (looked for " + " and ".join(f"{name}/seed<k>" for name
                          in VARIANTS) + f"): run `roformer experiment mlm --out {out}` first (or pass --models)")
    if found["bert"] != found["roformer"]:
        raise MissingFile(f"{out} holds BERT seeds {found['bert']} but RoFormer seeds {found['roformer']}: they are "
                          f"compared seed by seed; complete the run with `roformer experiment mlm --out {out} "
                          "--resume`")
    for name, seeds in found.items():
        for seed in seeds:
            if not (out / name / f"seed{seed}" / "model" / "config.json").is_file():
                raise MissingFile(f"no pre-trained model in {out / name / f'seed{seed}' / 'model'} (weights are not "
                                  f"committed): train it again with `roformer experiment mlm --out {out} --resume`")
    return found["roformer"]


def _write_report(owner: RunDirectory, results: dict, seed_list: list[int], tok, train, valid, p: dict,
                  train_config, preset: str, command: str) -> None:
    out = owner.path
    rows = encoder_rows(results, "roformer")
    for row in rows:
        row["variant"] = f"{row['variant']} ({VARIANTS[row['variant']]} positions)"
    dirs = run_dirs(out, results, seed_list)
    plot_seed_bands(dirs, out / "mlm_loss.png", key="eval/loss", ylabel="MLM loss (nats / masked token)",
                    title="MLM pre-training: BERT vs RoFormer, validation loss (Fig. 3 left)")
    plot_seed_bands(dirs, out / "mlm_training_loss.png", key="loss", ylabel="MLM loss (nats / masked token)",
                    title="MLM pre-training: training loss")
    owner.write_json("results.json", {"rows": rows, "runs": results})
    text = [
        "# §4.2 MLM pre-training: BERT vs RoFormer", "",
        f"Produced by: `{command or f'roformer experiment mlm --preset {preset}'}`", "",
        f"Preset `{preset}`: post-LayerNorm encoder, {p['model']['num_hidden_layers']} layers, "
        f"{p['model']['hidden_size']} wide, {p['model']['num_attention_heads']} heads; uncased WordPiece of "
        f"{tok.get_vocab_size()} tokens learnt on the training articles; {len(train[0]):,} packed training "
        f"sequences of up to {p['max_len']} tokens; batch {p['batch_size']}, {train_config.max_steps} updates, "
        f"AdamW lr {train_config.lr:g}; seeds {', '.join(map(str, seed_list))} (a seed sets initialisation, "
        f"batches and masks, the same for both models); validation: {len(valid[0])} held-out sequences with a "
        "fixed masking.", "",
        markdown_table(rows, list(rows[0])), "",
        "The interval is a Student-t 95% interval of the mean per-seed difference against RoFormer (paired by "
        "seed). MRR: mean reciprocal rank of the masked tokens.", "",
        "![MLM loss](mlm_loss.png)", "", "![MLM training loss](mlm_training_loss.png)", "",
    ]
    owner.write_text("report.md", "\n".join(text))


def encoder_rows(results: dict[str, list[dict]], reference: str) -> list[dict]:
    """Table rows of masked-LM runs: validation loss with paired differences against ``reference``
    (:func:`seed_rows`), then accuracy and MRR (mean ± std), parameters and minutes per run."""
    final = {name: [r["final"] for r in runs] for name, runs in results.items()}
    rows = seed_rows({name: [f["validation_loss"] for f in runs] for name, runs in final.items()}, reference,
                     "validation MLM loss")
    for row, runs in zip(rows, final.values(), strict=True):
        for metric in ("accuracy", "mrr"):
            mean, std = mean_std([f[f"validation_{metric}"] for f in runs])
            row[f"{'MRR' if metric == 'mrr' else metric} (mean ± std)"] = f"{mean:.4f} ± {std:.4f}"
        row["parameters"] = runs[0]["parameters"]
        row["minutes per run"] = f"{mean_std([f['minutes'] for f in runs])[0]:.1f}"
    return rows


def fill_mask(model_dir: str | Path, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in ``text``: the ``top_k`` most likely tokens and their probabilities."""
    model = RoFormerForMaskedLM.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    check_tokenizer(tok, model.config.vocab_size, model.config.pad_token_id, model_dir, required=("[MASK]",))
    if not 1 <= top_k <= model.config.vocab_size:
        raise InvalidArgument(f"top_k must be from 1 to the vocabulary size {model.config.vocab_size}, got {top_k}")
    mask_id = tok.token_to_id("[MASK]")
    enc = tok.encode(text)
    ids = torch.tensor([enc.ids])
    positions = (ids[0] == mask_id).nonzero().flatten().tolist()
    if not positions:
        raise InvalidArgument(f"no [MASK] in {text!r}")
    with torch.no_grad():
        probs = model(ids).logits[0].softmax(-1)
    return [[(tok.id_to_token(i), probs[p, i].item()) for i in probs[p].topk(top_k).indices.tolist()]
            for p in positions]
