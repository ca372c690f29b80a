"""§4.5: Chinese long text. Word-level RoFormer pre-trained in stages of growing and shrinking length (Table 4),
then fine-tuned at maximum input lengths 512 and 1024 against a character-level BERT and a word-level BERT
(WoBERT), both with learned absolute positions, at 512 (Table 5), on two tasks:

- CAIL2019-SCM case matching (the paper's task). A triplet (A, B, C) has B closer to A than C. One encoder
  scores a pair, s(X, Y) = w . h_[CLS] of ``[CLS] X [SEP] Y [SEP]`` (cut longest-first to the maximum
  length); training minimises the cross-entropy of softmax(s(A, B), s(A, C)) towards B; a triplet is right
  when s(A, B) > s(A, C). Split by document (``load_scm``): small.
- THUCNews long-document classification (ours, for the 512 vs 1024 question on a cleaner and larger test):
  ``[CLS] article [SEP]`` cut to the maximum length, 10 classes, split by article.

Pre-training is masked language modelling on the registry's Chinese corpus (both tasks kept out). Each stage
resumes from the previous stage's weights with its own maximum length, batch size and number of steps (and its
own checkpoints, so an interrupted schedule resumes inside the stage it reached). Every fine-tuning runs with
several seeds (head initialisation, dropout and data order); models are compared on the same test examples by
McNemar's exact test, seed by seed. Since RoPE has no maximum length, the RoFormer fine-tuned at 512 is also
evaluated at 1024; it was pre-trained at 1024 (stage 3), so this is not extrapolation past pre-training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.chinese import Articles, Triplets, correct_per_example, load_chinese_documents, load_scm, load_thucnews
from ..data.tokenizer import ChineseTokenizer, load_tokenizer, save_tokenizer, save_with_tokenizer
from ..io import atomic_write_text, fingerprint
from ..models import RoFormerConfig, RoFormerForMaskedLM, RoFormerForSequenceClassification
from ..report import markdown_table, mcnemar, mean_std, plot_curves
from ..train import RunDirectory, Trainer, is_main_process, preset_train_config
from ..train.finetune import FineTune, finetune
from ..train.mlm import document_ids, masked_lm_functions, packed_sequences
from . import choose_preset, owns_run

__all__ = ["PRESETS", "PAPER_TABLE4", "PAPER_TABLE5", "run"]

PRESETS = {
    "smoke": dict(model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                  vocab=3000, char_vocab=1500, documents=40, eval_sequences=8,
                  stages=[(64, 8, 4), (128, 4, 2)], baseline_stages=[(32, 8, 4), (64, 4, 2)],
                  pretrain=dict(lr=1e-3, warmup_steps=1, log_every=1),
                  lengths=(64, 128), baseline_length=64, limits=(16, 8, 8), seeds=2,
                  match=dict(epochs=1, batch_size=4, lr=1e-4), classify=dict(epochs=1, batch_size=8, lr=1e-4)),
    "small": dict(model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  vocab=12000, char_vocab=6000, documents=None, eval_sequences=64,
                  stages=[(128, 16, 100), (512, 4, 30), (1024, 2, 15)],
                  baseline_stages=[(128, 16, 100), (512, 4, 45)],
                  pretrain=dict(lr=5e-4, warmup_steps=20, log_every=10),
                  lengths=(512, 1024), baseline_length=512, limits=(None, None, None), seeds=3,
                  # classify, chosen on BERT's validation accuracy: lr 1e-4 x 2 epochs stayed at chance (9%);
                  # 1e-3 x 5 epochs reached 43% on seed 0 and collapsed to one class on seeds 1 and 2;
                  # 3e-4 x 5 epochs reached 77% on seed 1
                  match=dict(epochs=2, batch_size=8, lr=1e-4), classify=dict(epochs=5, batch_size=16, lr=3e-4)),
    # paper (arXiv v5 §4.5): the stages of Table 4, base-size encoders, lengths 512 / 1024 and the BERT / WoBERT
    # baselines at 512 are the paper's; vocabulary sizes, learning rates, warm-up, fine-tuning epochs and batch
    # sizes, seeds and the baselines' pre-training schedule are ours (the paper does not state them)
    "paper": dict(model=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                  vocab=50000, char_vocab=21128, documents=None, eval_sequences=1000,
                  stages=[(512, 256, 200_000), (1536, 256, 12_500), (256, 256, 120_000), (128, 512, 80_000),
                          (1536, 256, 10_000), (512, 512, 30_000)],
                  baseline_stages=[(512, 256, 200_000)],
                  pretrain=dict(lr=1e-5, warmup_steps=1000, log_every=100, dtype="bfloat16"),
                  lengths=(512, 1024), baseline_length=512, limits=(None, None, None), seeds=3,
                  match=dict(epochs=5, batch_size=16, lr=2e-5), classify=dict(epochs=3, batch_size=32, lr=2e-5)),
}

# the paper's figures (arXiv v5), quoted for reference: Table 4 (stage, loss, MLM accuracy), Table 5
PAPER_TABLE4 = [(1, 512, 256, "200k", "1.73", "65.0%"), (2, 1536, 256, "12.5k", "1.61", "66.8%"),
                (3, 256, 256, "120k", "1.75", "64.6%"), (4, 128, 512, "80k", "1.83", "63.4%"),
                (5, 1536, 256, "10k", "1.58", "67.4%"), (6, 512, 512, "30k", "1.66", "66.2%")]
PAPER_TABLE5 = {"BERT-512": ("64.13%", "67.77%"), "WoBERT-512": ("64.07%", "68.10%"),
                "RoFormer-512": ("64.13%", "68.29%"), "RoFormer-1024": ("66.07%", "69.79%")}
# the pre-trained encoders: (vocabulary level, position encoding)
ENCODERS = {"roformer": ("word", "rope"), "wobert": ("word", "learned"), "bert": ("char", "learned")}


def _pretrain(name: str, tok, docs: dict, stages, config: RoFormerConfig, p: dict, out: Path, device, dtype,
              resume: bool) -> tuple[Path, list[dict]]:
    """Multi-stage MLM: stage i starts from stage i-1's saved model. Returns the last model dir and per-stage
    results."""
    results, previous, ids = [], None, None
    data = {"corpus": fingerprint(docs["train"]), "tokenizer": fingerprint(list(tok.vocab))}
    for i, (max_len, batch_size, steps) in enumerate(stages, start=1):
        stage_dir = out / name / f"stage{i}"
        train_config = preset_train_config({**p["pretrain"], "max_steps": steps, "eval_every": 0}, device, dtype,
                                           save_every=max(1, steps // 4), keep_last=1)
        identity = {"model": config.settings(), "stage": i, "max_len": max_len, "batch_size": batch_size, **data}
        with RunDirectory(stage_dir, resume=resume) as owner:
            owner.begin(identity, dataclasses.asdict(train_config))
            recorded = owner.result("summary.json")  # a finished stage of this run
            if recorded:
                if (stage_dir / "model" / "config.json").is_file():
                    results.append(recorded)
                    previous = stage_dir / "model"
                    continue
                # the weights are not kept with the report (a fresh clone has only its summary): the stage trains
                # again and must end at the loss and accuracy it recorded
                print(f"{stage_dir}: its model is missing; training the stage again", flush=True)
            if ids is None:  # word segmentation is the slow part: once for all the stages that still train
                ids = {split: document_ids(tok, docs[split]) for split in ("train", "validation")}
            train = packed_sequences(tok, ids["train"], max_len)
            valid = tuple(t[: p["eval_sequences"]] for t in packed_sequences(tok, ids["validation"], max_len))
            batch_fn, loss_fn, eval_fn = masked_lm_functions(tok, train, valid, batch_size, train_config)
            torch.manual_seed(train_config.seed)
            model = (RoFormerForMaskedLM.from_pretrained_as_new(previous) if previous else RoFormerForMaskedLM(config))
            started = time.perf_counter()
            final = Trainer(model, train_config, stage_dir, batch_fn, loss_fn, eval_fn,
                            desc=f"{stage_dir.parent.name} stage {i} (length {max_len})", identity=identity
                            ).fit(resume=resume, recorded=recorded and {"loss": recorded["MLM loss"],
                                                                        "accuracy": recorded["MLM accuracy"]})
            if not is_main_process():
                continue
            owner.save_directory("model", functools.partial(save_with_tokenizer, model, tok))
            # a stage trained again to its recorded end (fit checked it) keeps its record
            r = recorded or {"stage": i, "max length": max_len, "batch size": batch_size, "steps": steps,
                             "MLM loss": final["loss"], "MLM accuracy": final["accuracy"],
                             "minutes": (time.perf_counter() - started) / 60}
            owner.write_json("summary.json", r)
            results.append(r)
            previous = stage_dir / "model"
    return previous, results


def _finetune(model_dir: Path, task: dict, max_len: int, m: dict, seed: int, run_dir: Path, device, dtype,
              resume: bool, eval_lengths: tuple[int, ...]) -> dict:
    """Fine-tune on ``task`` (its train / validation / test data) at ``max_len`` with ``seed``
    (:func:`roformer.train.finetune.finetune`); the accuracy and the per-example results on validation and test
    at each evaluation length."""
    train = task["train"]

    def loss_fn(net, batch):
        targets = batch.pop("targets")
        scores = train.scores(net, batch)
        return F.cross_entropy(scores, targets.to(scores.device)), len(scores)

    def eval_fn(net) -> dict:
        correct = correct_per_example(net, task["validation"], max_len)
        return {"accuracy": 100.0 * sum(correct) / len(correct)}

    def finish(model, final: dict, owner) -> dict:
        model.eval()
        out = {}
        with torch.no_grad():
            for split in ("validation", "test"):
                for n in eval_lengths:
                    correct = correct_per_example(model, task[split], n)
                    out[f"{split} @{n}"] = 100.0 * sum(correct) / len(correct)
                    out[f"{split} correct @{n}"] = correct
        return out

    identity = {"model": str(model_dir), "max_len": max_len, "eval_lengths": list(eval_lengths),
                **{split: fingerprint([d.ids, d.targets(list(range(len(d)))).tolist()]) for split, d in task.items()}}
    return finetune(
        run_dir, identity, FineTune(m["epochs"], m["batch_size"], m["lr"], log_every=5), seed,
        make_model=lambda: RoFormerForSequenceClassification.from_pretrained_as_new(model_dir,
                                                                                    num_labels=train.num_labels),
        examples=len(train), make_batch=lambda rows: {**train.batch(rows, max_len), "targets": train.targets(rows)},
        loss_fn=loss_fn, eval_fn=eval_fn, order_seed=lambda epoch: 1000 * seed + epoch, finish=finish,
        result_file="summary.json", device=device, dtype=dtype, resume=resume,
        desc=f"{run_dir.parent.parent.name} {run_dir.parent.name} {run_dir.name}")


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/chinese", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    if max_steps:  # shortens every pre-training stage (smoke checks of a preset)
        p = {**p, "stages": [(n, b, min(s, max_steps)) for n, b, s in p["stages"]],
             "baseline_stages": [(n, b, min(s, max_steps)) for n, b, s in p["baseline_stages"]]}
    out, seed_list = Path(out), list(range(seeds or p["seeds"]))
    out.mkdir(parents=True, exist_ok=True)
    docs = load_chinese_documents(data_dir, p["documents"])
    rows = {"scm": load_scm(data_dir), "thucnews": load_thucnews(data_dir)}
    rows = {task: {k: v[:n] if n else v for (k, v), n in zip(splits.items(), p["limits"], strict=True)}
            for task, splits in rows.items()}
    started = time.perf_counter()
    toks = {}
    for level, size in (("word", p["vocab"]), ("char", p["char_vocab"])):
        name = "roformer" if level == "word" else "bert"  # where each vocabulary has always been saved
        if resume and (out / name / "vocab.txt").is_file():  # else trained again: the runs' fingerprints check it
            toks[level] = load_tokenizer(out / name)
        else:
            toks[level] = ChineseTokenizer.train(docs["train"], size, level == "word")
            save_tokenizer(toks[level], out / name)
    tokenizer_minutes = (time.perf_counter() - started) / 60
    short, long_ = p["lengths"]
    pretrained, stages = {}, {}
    for name, (level, position) in ENCODERS.items():
        schedule = p["stages"] if position == "rope" else p["baseline_stages"]
        config = RoFormerConfig(vocab_size=toks[level].get_vocab_size(), position=position,
                                max_position_embeddings=long_ if position == "rope" else p["baseline_length"],
                                **p["model"])
        pretrained[name], stages[name] = _pretrain(name, toks[level], docs, schedule, config, p, out, device, dtype,
                                                   resume)
    if not is_main_process():
        return {}
    classes = sorted({label for split in rows["thucnews"].values() for label, _ in split})
    data = {level: {"scm": {k: Triplets(tok, v) for k, v in rows["scm"].items()},
                    "thucnews": {k: Articles(tok, v, classes) for k, v in rows["thucnews"].items()}}
            for level, tok in toks.items()}
    base = p["baseline_length"]
    runs = {  # row -> (pre-trained model, fine-tuning length, evaluation lengths)
        f"BERT-{base} (char, learned positions)": ("bert", base, (base,)),
        f"WoBERT-{base} (word, learned positions)": ("wobert", base, (base,)),
        f"RoFormer-{short} (word, RoPE)": ("roformer", short, (short, long_)),
        f"RoFormer-{long_} (word, RoPE)": ("roformer", long_, (long_,)),
    }
    results = {"stages": stages, "tokenizer minutes": tokenizer_minutes, "tasks": {}}
    for task in ("scm", "thucnews"):
        settings = p["match" if task == "scm" else "classify"]
        results["tasks"][task] = {
            row: [_finetune(pretrained[name], data[ENCODERS[name][0]][task], length, settings, seed,
                            out / task / f"{name}-{length}" / f"seed{seed}", device, dtype, resume, lengths)
                  for seed in seed_list]
            for row, (name, length, lengths) in runs.items()}
    atomic_write_text(out / "results.json", json.dumps(results))
    _write_report(out, p, command or f"roformer experiment chinese --preset {preset}", toks, docs, data, results,
                  runs, seed_list)
    return results


TASK_TEXT = {
    "scm": ("CAIL2019-SCM case matching (Table 5)", "triplets", "split by document (no document of a validation "
            "or test triplet is in a training triplet; the triplets that cross the partition are dropped); a "
            "triplet is right when s(A, B) > s(A, C) (chance: 50%)"),
    "thucnews": ("THUCNews long-document classification (ours)", "articles", "10 classes, split by article "
                 "(crc32); chance: about 10%"),
}


def _write_report(out: Path, p: dict, command: str, toks: dict, docs: dict, data: dict, results: dict,
                  runs: dict, seeds: list[int]) -> None:
    stages = results["stages"]
    plot_curves({f"{name} stage {r['stage']} (len {r['max length']})": out / name / f"stage{r['stage']}"
                 for name in stages for r in stages[name]}, out / "pretraining.png", keys=("loss",),
                title="Chinese MLM pre-training, stage by stage (each curve restarts its step count)",
                ylabel="MLM loss (nats / masked token)")
    stage_rows = [{"model": name, **r} for name in stages for r in stages[name]]
    paper4 = [dict(zip(("stage", "max length", "batch size", "steps", "MLM loss", "MLM accuracy"), r, strict=True))
              for r in PAPER_TABLE4]
    text = [
        "# §4.5 Chinese long text: multi-stage pre-training, CAIL2019-SCM and THUCNews (Tables 4-5)", "",
        f"Produced by: `{command}`", "",
        f"Encoders of {p['model']['num_hidden_layers']} layers, {p['model']['hidden_size']} wide. RoFormer: jieba "
        f"word-level vocabulary of {toks['word'].get_vocab_size()} tokens (words + characters, unknown words split "
        "into characters), RoPE. WoBERT: the same word-level vocabulary with learned absolute positions. BERT: a "
        f"character vocabulary of {toks['char'].get_vocab_size()}, learned absolute positions. The baselines have "
        f"at most {p['baseline_length']} positions. Pre-training corpus: {len(docs['train']):,} training / "
        f"{len(docs['validation']):,} validation documents (CJRC legal, zh-Wikipedia, FewCLUE unlabelled, three "
        "classical novels; both fine-tuning tasks kept out).", "",
        "## Pre-training stages (Table 4)", "",
        "Each stage starts from the previous stage's weights; loss and accuracy are on held-out documents packed "
        "at the stage's length, with a fixed masking.", "",
        markdown_table(stage_rows, list(stage_rows[0])), "",
        "The paper's Table 4 (arXiv v5; RoFormer, Chinese base model), quoted for reference:", "",
        markdown_table(paper4, list(paper4[0])), "", "![pre-training](pretraining.png)", "",
    ]
    short, long_ = p["lengths"]
    base = p["baseline_length"]
    names = list(runs)
    cells = {(row, at): row for row in names for at in runs[row][2]}  # (row, evaluated at) -> its runs' row
    pairs = [((names[2], short), (names[0], base)), ((names[2], short), (names[1], base)),
             ((names[1], base), (names[0], base)), ((names[3], long_), (names[2], short)),
             ((names[2], long_), (names[2], short))]
    for task, per_row in results["tasks"].items():
        title, unit, how = TASK_TEXT[task]
        counts = {split: len(d) for split, d in data["word"][task].items()}
        lengths = sorted(len(ids) for ids in (data["word"][task]["train"].ids if task == "thucnews" else
                                              [t for row in data["word"][task]["train"].ids for t in row]))
        m = p["match" if task == "scm" else "classify"]
        se = 100 * (0.25 / counts["test"]) ** 0.5
        table = []
        for (row, at) in cells:
            val = [r[f"validation @{at}"] for r in per_row[row]]
            test = [r[f"test @{at}"] for r in per_row[row]]
            table.append({"model": row, "evaluated at length": at,
                          "validation % (mean ± std)": "{:.1f} ± {:.1f}".format(*mean_std(val)),
                          "test % (mean ± std)": "{:.1f} ± {:.1f}".format(*mean_std(test)),
                          "test % per seed": ", ".join(f"{v:.1f}" for v in test)})
        tests = []
        for (a, at_a), (b, at_b) in pairs:
            row = {"A": f"{a} @{at_a}", "B": f"{b} @{at_b}"}
            for i, seed in enumerate(seeds):
                only_a, only_b, pvalue = mcnemar(per_row[a][i][f"test correct @{at_a}"],
                                                 per_row[b][i][f"test correct @{at_b}"])
                shown = f"{pvalue:.2f}" if pvalue >= 0.01 else f"{pvalue:.1e}"  # never a bare 0.00
                row[f"seed {seed}: only A / only B right, p"] = f"{only_a} / {only_b}, p = {shown}"
            tests.append(row)
        text += [
            f"## {title}", "",
            f"{counts['train']} / {counts['validation']} / {counts['test']} {unit} (train / validation / test), "
            f"{how}. Word-level length: median {lengths[len(lengths) // 2]} tokens per text. Fine-tuning: "
            f"{m['epochs']} epochs, batch {m['batch_size']}, lr {m['lr']:g}, linear decay, seeds "
            f"{', '.join(map(str, seeds))} (a seed sets the head's initialisation, dropout and data order). With "
            f"{counts['test']} test {unit}, the standard error of one accuracy is up to {se:.1f} points.", "",
            markdown_table(table, list(table[0])), "",
            f"McNemar's exact test on the shared test {unit}, seed by seed (A and B fine-tuned with the same seed):",
            "", markdown_table(tests, list(tests[0])), "",
        ]
        if task == "scm":
            paper5 = [{"model": m_, "validation": v, "test": t} for m_, (v, t) in PAPER_TABLE5.items()]
            text += ["The paper's Table 5 (arXiv v5; its own split of the full data set), quoted for reference:", "",
                     markdown_table(paper5, ["model", "validation", "test"]), ""]
    text += [f"`{names[2]}` evaluated at {long_} is the model fine-tuned at {short} given longer inputs; it was "
             f"pre-trained at lengths up to {max(n for n, _, _ in p['stages'])}, so this is not extrapolation past "
             "the pre-training length.", ""]
    atomic_write_text(out / "report.md", "\n".join(text))
