"""§4.5: Chinese long text. Word-level RoFormer pre-trained in stages of growing and shrinking length (Table 4),
then fine-tuned on CAIL2019-SCM case matching at maximum input lengths 512 and 1024, against a character-level
BERT with learned absolute positions at 512 (Table 5).

Pre-training is masked language modelling on the registry's Chinese corpus (CAIL2019-SCM kept out). Each
stage resumes from the previous stage's weights with its own maximum length, batch size and number of steps
(and its own checkpoints, so an interrupted schedule resumes inside the stage it reached).

Matching: a triplet (A, B, C) has B closer to A than C. One encoder scores a pair, s(X, Y) = w . h_[CLS] of
``[CLS] X [SEP] Y [SEP]`` (cut longest-first to the maximum length); training minimises the cross-entropy of
softmax(s(A, B), s(A, C)) towards B, and accuracy is the share of triplets with s(A, B) > s(A, C). Since RoPE
has no maximum length, the RoFormer fine-tuned at 512 is also evaluated at 1024.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.chinese import load_chinese_documents, load_scm
from ..data.padding import right_pad
from ..data.tokenizer import ChineseTokenizer, load_tokenizer, save_tokenizer
from ..models import RoFormerConfig, RoFormerForMaskedLM, RoFormerForSequenceClassification
from ..report import markdown_table, plot_curves
from ..train import TrainConfig, Trainer, is_main_process, preset_train_config
from ..train.mlm import document_ids, masked_lm_functions, packed_sequences
from . import choose_preset

__all__ = ["PRESETS", "PAPER_TABLE4", "PAPER_TABLE5", "pair_ids", "run"]

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                  vocab=3000, char_vocab=1500, documents=40, eval_sequences=8,
                  stages=[(64, 8, 4), (128, 4, 2)], baseline_stages=[(32, 8, 4), (64, 4, 2)],
                  pretrain=dict(lr=1e-3, warmup_steps=1, log_every=1),
                  lengths=(64, 128), baseline_length=64, triplets=(16, 8, 8),
                  match=dict(epochs=1, batch_size=4, lr=1e-4)),
    "small": dict(model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  vocab=12000, char_vocab=6000, documents=None, eval_sequences=64,
                  stages=[(128, 16, 100), (512, 4, 30), (1024, 2, 15)],
                  baseline_stages=[(128, 16, 100), (512, 4, 45)],
                  pretrain=dict(lr=5e-4, warmup_steps=20, log_every=10),
                  lengths=(512, 1024), baseline_length=512, triplets=(None, None, None),
                  match=dict(epochs=2, batch_size=8, lr=1e-4)),
    "paper": dict(model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                  vocab=50000, char_vocab=21128, documents=None, eval_sequences=1000,
                  # Table 4 of the paper: (maximum length, batch size, steps) per stage
                  stages=[(512, 256, 200_000), (1536, 256, 12_500), (256, 256, 120_000), (128, 512, 80_000),
                          (1536, 256, 10_000), (512, 512, 30_000)],
                  baseline_stages=[(512, 256, 200_000)],
                  pretrain=dict(lr=1e-5, warmup_steps=1000, log_every=100, dtype="bfloat16"),
                  lengths=(512, 1024), baseline_length=512, triplets=(None, None, None),
                  match=dict(epochs=5, batch_size=16, lr=2e-5)),
}

# the paper's figures, quoted for reference: Table 4 (stage, loss, MLM accuracy), Table 5 (validation, test)
PAPER_TABLE4 = [(1, 512, 256, "200k", "1.73", "65.0%"), (2, 1536, 256, "12.5k", "1.61", "66.8%"),
                (3, 256, 256, "120k", "1.75", "64.6%"), (4, 128, 512, "80k", "1.83", "63.4%"),
                (5, 1536, 256, "10k", "1.58", "67.4%"), (6, 512, 512, "30k", "1.66", "66.2%")]
PAPER_TABLE5 = {"BERT-512": ("64.13%", "67.77%"), "WoBERT-512": ("64.07%", "68.10%"),
                "RoFormer-512": ("64.13%", "68.29%"), "RoFormer-1024": ("66.07%", "69.79%")}


def pair_ids(a: list[int], b: list[int], max_len: int, cls: int, sep: int) -> tuple[list[int], list[int]]:
    """``[CLS] a [SEP] b [SEP]`` and its segment ids, cut longest-first (a token off the end of the longer text
    until the pair fits ``max_len``)."""
    room = max_len - 3
    if room < 2:
        raise ValueError(f"max_len {max_len} leaves no room for two texts")
    la, lb = len(a), len(b)
    while la + lb > room:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    ids = [cls] + a[:la] + [sep] + b[:lb] + [sep]
    return ids, [0] * (la + 2) + [1] * (lb + 1)


class Triplets:
    """Tokenized (A, B, C) triplets; ``batch`` builds the 2n pairs (A, B), (A, C) at a maximum length."""

    def __init__(self, tok, rows: list[tuple[str, str, str]]):
        encoded = tok.encode_batch([t for row in rows for t in row], add_special_tokens=False)
        self.ids = [tuple(encoded[3 * i + j].ids for j in range(3)) for i in range(len(rows))]
        self.cls, self.sep, self.pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: list[int], max_len: int) -> dict:
        pairs = [pair_ids(self.ids[r][0], self.ids[r][k], max_len, self.cls, self.sep) for r in rows for k in (1, 2)]
        ids = right_pad([p for p, _ in pairs], self.pad)
        types = right_pad([t for _, t in pairs], 0)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": (ids != self.pad).long()}


def _pair_scores(net, batch: dict) -> torch.Tensor:
    """(n, 2): s(A, B) and s(A, C) per triplet."""
    return net(**batch).logits.float().view(-1, 2)


def matching_accuracy(net, data: Triplets, max_len: int, batch_size: int = 8) -> float:
    device = next(net.parameters()).device
    correct = 0
    for s in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in data.batch(list(range(s, min(s + batch_size, len(data)))),
                                                          max_len).items()}
        scores = _pair_scores(net, batch)
        correct += int((scores[:, 0] > scores[:, 1]).sum())
    return 100.0 * correct / len(data)


def _pretrain(name: str, tok, docs: dict, stages, config: RoFormerConfig, p: dict, out: Path, device, dtype,
              resume: bool) -> tuple[Path, list[dict]]:
    """Multi-stage MLM: stage i starts from stage i-1's saved model. Returns the last model dir and per-stage
    results."""
    results, previous, ids = [], None, None
    for i, (max_len, batch_size, steps) in enumerate(stages, start=1):
        stage_dir = out / name / f"stage{i}"
        train_config = preset_train_config({**p["pretrain"], "max_steps": steps, "eval_every": 0}, device, dtype,
                                           save_every=max(1, steps // 4), keep_last=1)
        done = stage_dir / "summary.json"
        if resume and done.is_file():
            results.append(json.loads(done.read_text()))
            previous = stage_dir / "model"
            continue
        if ids is None:  # word segmentation is the slow part: once for all the stages that still train
            ids = {split: document_ids(tok, docs[split]) for split in ("train", "validation")}
        train = packed_sequences(tok, ids["train"], max_len)
        valid = tuple(t[: p["eval_sequences"]] for t in packed_sequences(tok, ids["validation"], max_len))
        batch_fn, loss_fn, eval_fn = masked_lm_functions(tok, train, valid, batch_size, train_config)
        torch.manual_seed(train_config.seed)
        model = (RoFormerForMaskedLM.from_pretrained(previous) if previous else RoFormerForMaskedLM(config))
        started = time.perf_counter()
        final = Trainer(model, train_config, stage_dir, batch_fn, loss_fn, eval_fn,
                        desc=f"{stage_dir.parent.name} stage {i} (length {max_len})").fit(resume=resume)
        if not is_main_process():
            continue
        model.save_pretrained(stage_dir / "model")
        save_tokenizer(tok, stage_dir / "model")
        r = {"stage": i, "max length": max_len, "batch size": batch_size, "steps": steps, "MLM loss": final["loss"],
             "MLM accuracy": final["accuracy"], "minutes": (time.perf_counter() - started) / 60}
        done.write_text(json.dumps(r, indent=2))
        results.append(r)
        previous = stage_dir / "model"
    return previous, results


def _finetune(model_dir: Path, scm: dict[str, Triplets], max_len: int, p: dict, run_dir: Path, device, dtype,
              resume: bool, eval_lengths: tuple[int, ...]) -> dict:
    m = p["match"]
    steps_per_epoch = max(1, len(scm["train"]) // m["batch_size"])
    total = m["epochs"] * steps_per_epoch
    config = TrainConfig(max_steps=total, lr=m["lr"], schedule="linear", warmup_steps=max(1, total // 10),
                         min_lr_ratio=0.0, eval_every=steps_per_epoch, save_every=steps_per_epoch, keep_last=1,
                         log_every=5, device=device, dtype=dtype or "float32")
    torch.manual_seed(config.seed)
    model = RoFormerForSequenceClassification.from_pretrained(model_dir, num_labels=1)

    def batch_fn(step: int, micro: int) -> dict:
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(len(scm["train"]), generator=torch.Generator().manual_seed(epoch))
        return scm["train"].batch(order[i * m["batch_size"] : (i + 1) * m["batch_size"]].tolist(), max_len)

    def loss_fn(net, batch):
        scores = _pair_scores(net, batch)
        return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device)), len(scores)

    def eval_fn(net) -> dict:
        return {"accuracy": matching_accuracy(net, scm["validation"], max_len)}

    Trainer(model, config, run_dir, batch_fn, loss_fn, eval_fn, desc=f"matching {run_dir.name}").fit(resume=resume)
    model.eval()
    with torch.no_grad():
        out = {f"validation @{n}": matching_accuracy(model, scm["validation"], n) for n in eval_lengths}
        out |= {f"test @{n}": matching_accuracy(model, scm["test"], n) for n in eval_lengths}
    (run_dir / "summary.json").write_text(json.dumps(out, indent=2))
    return out


def run(preset: str = "small", data_dir=None, out: str | Path = "runs/chinese", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "") -> dict:
    p = choose_preset(PRESETS, preset)
    if max_steps:  # shortens every pre-training stage (smoke checks of a preset)
        p = {**p, "stages": [(n, b, min(s, max_steps)) for n, b, s in p["stages"]],
             "baseline_stages": [(n, b, min(s, max_steps)) for n, b, s in p["baseline_stages"]]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = load_chinese_documents(data_dir, p["documents"])
    scm_rows = load_scm(data_dir)
    scm_rows = {k: v[:n] if n else v for (k, v), n in zip(scm_rows.items(), p["triplets"], strict=True)}
    started = time.perf_counter()
    toks = {}
    for name, word_level, size in (("roformer", True, p["vocab"]), ("bert", False, p["char_vocab"])):
        if resume and (out / name / "tokenizer_config.json").is_file():
            toks[name] = load_tokenizer(out / name)
        else:
            toks[name] = ChineseTokenizer.train(docs["train"], size, word_level)
            save_tokenizer(toks[name], out / name)
    tokenizer_minutes = (time.perf_counter() - started) / 60
    longest = max(p["lengths"])
    variants = {
        "roformer": (RoFormerConfig(vocab_size=toks["roformer"].get_vocab_size(), position="rope",
                                    max_position_embeddings=longest, **p["model"]), p["stages"]),
        "bert": (RoFormerConfig(vocab_size=toks["bert"].get_vocab_size(), position="learned",
                                max_position_embeddings=p["baseline_length"], **p["model"]), p["baseline_stages"]),
    }
    pretrained, stages = {}, {}
    for name, (config, schedule) in variants.items():
        pretrained[name], stages[name] = _pretrain(name, toks[name], docs, schedule, config, p, out, device, dtype,
                                                   resume)
    if not is_main_process():
        return {}
    scm = {name: {k: Triplets(toks[name], v) for k, v in scm_rows.items()} for name in toks}
    short, long_ = p["lengths"]
    runs = {  # row -> (pre-trained model, fine-tuning length, evaluation lengths)
        f"BERT-{p['baseline_length']} (char, learned positions)": ("bert", p["baseline_length"],
                                                                   (p["baseline_length"],)),
        f"RoFormer-{short} (word, RoPE)": ("roformer", short, (short, long_)),
        f"RoFormer-{long_} (word, RoPE)": ("roformer", long_, (long_,)),
    }
    matching = {}
    for row, (name, length, eval_lengths) in runs.items():
        run_dir = out / "matching" / f"{name}-{length}"
        done = run_dir / "summary.json"
        if resume and done.is_file():
            matching[row] = json.loads(done.read_text())
            continue
        matching[row] = _finetune(pretrained[name], scm[name], length, p, run_dir, device, dtype,
                                  resume, eval_lengths)
    results = {"stages": stages, "matching": matching, "tokenizer minutes": tokenizer_minutes}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _write_report(out, p, preset, command, toks, docs, scm, stages, matching, runs)
    return results


def _write_report(out: Path, p: dict, preset: str, command: str, toks: dict, docs: dict, scm: dict,
                  stages: dict, matching: dict, runs: dict) -> None:
    plot_curves({f"{name} stage {r['stage']} (len {r['max length']})": out / name / f"stage{r['stage']}"
                 for name in stages for r in stages[name]}, out / "pretraining.png", keys=("loss",),
                title="Chinese MLM pre-training, stage by stage (each curve restarts its step count)",
                ylabel="MLM loss (nats / masked token)")
    stage_rows = [{"model": name, **r} for name in stages for r in stages[name]]
    paper4 = [dict(zip(("stage", "max length", "batch size", "steps", "MLM loss", "MLM accuracy"), r, strict=True))
              for r in PAPER_TABLE4]
    match_rows = []
    for row, r in matching.items():
        for key, value in r.items():
            split, at = key.split(" @")
            match_rows.append({"model": row, "evaluated at length": int(at), "split": split, "accuracy %": value})
    table5 = {}
    for row in match_rows:
        cell = table5.setdefault((row["model"], row["evaluated at length"]), {})
        cell[row["split"]] = row["accuracy %"]
    table5_rows = [{"model": m, "evaluated at length": at, "validation accuracy %": c["validation"],
                    "test accuracy %": c["test"]} for (m, at), c in table5.items()]
    paper5 = [{"model": m, "validation": v, "test": t} for m, (v, t) in PAPER_TABLE5.items()]
    lengths = {name: sorted(len(ids) for row in scm[name]["train"].ids for ids in row) for name in scm}
    median = {name: v[len(v) // 2] for name, v in lengths.items()}
    counts = {split: len(triplets) for split, triplets in next(iter(scm.values())).items()}
    m, n_test = p["match"], counts["test"]
    text = [
        "# §4.5 Chinese long text: multi-stage pre-training and CAIL2019-SCM (Tables 4-5)", "",
        f"Produced by: `{command or f'roformer experiment chinese --preset {preset}'}`", "",
        f"Preset `{preset}`: encoders of {p['model']['num_hidden_layers']} layers, {p['model']['hidden_size']} wide. "
        f"RoFormer: jieba word-level vocabulary of {toks['roformer'].get_vocab_size()} tokens (words + characters, "
        f"unknown words split into characters), RoPE. BERT baseline: character vocabulary of "
        f"{toks['bert'].get_vocab_size()}, learned absolute positions (at most {p['baseline_length']}). Pre-training "
        f"corpus: {len(docs['train']):,} training / {len(docs['validation']):,} validation documents "
        f"(CJRC legal, zh-Wikipedia, THUCNews, FewCLUE unlabelled, three classical novels; CAIL2019-SCM kept out).",
        "",
        "## Pre-training stages (Table 4)", "",
        "Each stage starts from the previous stage's weights; loss and accuracy are on held-out documents packed "
        "at the stage's length, with a fixed masking.", "",
        markdown_table(stage_rows, list(stage_rows[0])), "",
        "The paper's Table 4 (arXiv v5; RoFormer, Chinese base model), quoted for reference:", "",
        markdown_table(paper4, list(paper4[0])), "", "![pre-training](pretraining.png)", "",
        "## CAIL2019-SCM (Table 5)", "",
        f"{counts['train']} / {counts['validation']} / {counts['test']} triplets (the 500 of the "
        f"public sample, 6:2:2 after a seeded shuffle); documents have a median of {median['roformer']} word-level "
        f"and {median['bert']} character-level tokens, so a pair needs about twice that. Fine-tuning: "
        f"{m['epochs']} epochs, batch {m['batch_size']} triplets, lr {m['lr']:g}, one seed; the accuracy is the "
        f"share of triplets with s(A, B) > s(A, C) (chance: 50%). With {n_test} test triplets one triplet is "
        f"{100 / n_test:.1f} points and the standard error of an accuracy near 70% is about "
        f"{100 * (0.7 * 0.3 / n_test) ** 0.5:.1f} points.", "",
        markdown_table(table5_rows, list(table5_rows[0])), "",
        f"The row `{list(runs)[1]}` evaluated at {max(p['lengths'])} is the model fine-tuned at "
        f"{min(p['lengths'])} given longer inputs than it was fine-tuned on (RoPE has no maximum length).", "",
        "The paper's Table 5 (arXiv v5), quoted for reference:", "",
        markdown_table(paper5, ["model", "validation", "test"]), "",
    ]
    (out / "report.md").write_text("\n".join(text))
