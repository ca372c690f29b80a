"""Length extrapolation: the paper's abstract sells RoPE on "the flexibility of sequence length"; its conclusion
admits RoPE "cannot effectively extrapolate past the sequence length" the way ALiBi does. This measures both.

Identical small decoders (the ``pe_compare`` settings) are trained at length L with each position encoding:
none (NoPE), learned absolute, sinusoidal, T5 bias, ALiBi, RoPE, several seeds each. Each is evaluated on the
same held-out tokens at L, 2L, 4L, 8L and 16L, two ways: non-overlapping windows (every window starts from no
context) and a sliding window (windows of the evaluation length every E/2 tokens, each token scored once with
at least E/2 tokens of context; Press et al.'s evaluation). Learned absolute positions have no embedding past
L: those cells are "n/a". For RoPE also, with no training: position interpolation (linear), NTK-aware scaling
of the base, dynamic NTK and YaRN, each with factor E/L; and after a short fine-tune at 4L (the regime of the
position-interpolation and YaRN papers), whose cost is stated.

``--models DIR`` reuses the models of a ``pe_compare`` run with the same preset (``DIR/<variant>/seed<k>/model``)
instead of training them again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from ..io import atomic_write_text
from ..models.decoder import DecoderConfig, DecoderLM
from ..report import markdown_table, mean_std, read_metrics
from ..train import is_main_process, preset_train_config
from ..train.lm import sliding_window_loss, stream_loss
from . import choose_preset, owns_run, pe_compare
from .lm_compare import train_variants

VARIANTS = ("none", "learned", "sinusoidal", "t5", "alibi", "rope")
FACTORS = (1, 2, 4, 8, 16)
PRESETS = {
    "smoke": dict(base="smoke", factors=(1, 2, 4), seeds=1, finetune_steps=2, finetune_factor=2),
    "small": dict(base="small", factors=FACTORS, seeds=3, finetune_steps=30, finetune_factor=4),
    # ours (the paper has no extrapolation experiment): pe_compare's paper-size decoders, a longer fine-tune
    "paper": dict(base="paper", factors=FACTORS, seeds=3, finetune_steps=400, finetune_factor=4),
}


def scalings(factor: float, seq_len: int, head_dim: int) -> dict[str, dict | None]:
    """The RoPE variants evaluated with no training at ``factor`` x the training length (None: plain RoPE)."""
    if factor == 1:
        return {"rope": None}
    original = {"original_max_position_embeddings": seq_len}
    return {"rope": None,
            "rope + linear (PI)": {"rope_type": "linear", "factor": factor},
            "rope + NTK (base x factor^(d/(d-2)))": {"rope_theta": 10000.0 * factor ** (head_dim / (head_dim - 2))},
            "rope + dynamic NTK": {"rope_type": "dynamic", "factor": factor, **original},
            "rope + YaRN": {"rope_type": "yarn", "factor": factor, **original}}


def with_scaling(model: DecoderLM, parameters: dict | None) -> DecoderLM:
    """The same weights under another RoPE scaling (``rope_theta`` alone: another base)."""
    if parameters is None:
        return model
    config = dataclasses.replace(model.config, rope_parameters=parameters)
    scaled = DecoderLM(config)
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def evaluate(model: DecoderLM, valid: torch.Tensor, seq_len: int, factor: int) -> dict[str, float | None]:
    if model.config.position == "learned" and factor > 1:
        return {"non-overlapping": None, "sliding": None}  # no embedding past the training length
    length = seq_len * factor
    model.eval()
    return {"non-overlapping": stream_loss(model, valid, length, batch_size=max(1, 16 // factor)),
            "sliding": sliding_window_loss(model, valid, length, length // 2, batch_size=max(1, 8 // factor))}


@owns_run
def run(preset: str = "small", data_dir=None, out: str | Path = "runs/extrapolation", resume: bool = False,
        device: str = "cpu", dtype: str | None = None, max_steps: int | None = None, command: str = "",
        seeds: int | None = None, models: str | None = None) -> dict:
    p = choose_preset(PRESETS, preset)
    base = pe_compare.PRESETS[p["base"]]
    out, seed_list, seq_len = Path(out), list(range(seeds or p["seeds"])), base["seq_len"]
    out.mkdir(parents=True, exist_ok=True)
    factors = p["factors"]
    source = Path(models) if models else out
    train, valid = pe_compare.encode_corpus({**base, "eval_tokens": seq_len * max(factors) * 4}, data_dir, source,
                                            resume=True)
    configs = {name: DecoderConfig(vocab_size=base["vocab"], position=name, max_positions=seq_len, dropout=0.0,
                                   **base["model"]) for name in VARIANTS}
    train_config = preset_train_config(base["train"], device, dtype, max_steps, save_every=0, keep_last=1)
    if not models:  # train here; with --models, read the pe_compare run's saved models
        train_variants(configs, train, valid[: base["eval_tokens"] + 1], seq_len, base["batch_size"], train_config,
                       out, resume, seed_list)
    if not is_main_process():
        return {}
    head_dim = base["model"]["hidden_size"] // base["model"]["num_heads"]
    results: dict[str, dict] = {}  # method -> factor -> mode -> [loss per seed]
    costs = []  # (tokens, training minutes) per fine-tune
    for seed in seed_list:
        cache = out / "evaluations" / f"seed{seed}.json"  # a seed's evaluations, reused on --resume
        key = {"factors": list(factors), "finetune_steps": p["finetune_steps"], "finetune_factor": p["finetune_factor"]}
        saved = json.loads(cache.read_text()) if resume and cache.is_file() else {}
        if saved.get("key") != key:
            scores: dict[str, dict] = {}
            for name in VARIANTS:
                model = DecoderLM.from_pretrained(source / name / f"seed{seed}" / "model").to(device).eval()
                for factor in factors:
                    methods = scalings(factor, seq_len, head_dim) if name == "rope" else {name: None}
                    for method, parameters in methods.items():
                        scores.setdefault(method, {})[str(factor)] = evaluate(with_scaling(model, parameters), valid,
                                                                              seq_len, factor)
            finetuned = finetune_rope(source / "rope" / f"seed{seed}" / "model", train, valid, p, base, train_config,
                                      out / "finetune" / f"seed{seed}", resume, head_dim)
            saved = {"key": key, "scores": scores | finetuned}
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(saved, indent=2))
        for method, by_factor in saved["scores"].items():
            for factor, modes in by_factor.items():
                for mode, loss in modes.items():
                    results.setdefault(method, {}).setdefault(int(factor), {}).setdefault(mode, []).append(loss)
        costs += [finetune_cost(out / "finetune" / f"seed{seed}" / slug,
                                p["finetune_steps"] * finetune_batch(base, at) * seq_len * at)
                  for _, at, slug in finetunes(p, base, head_dim).values()]
    atomic_write_text(out / "results.json", json.dumps({"results": results, "finetune_costs": costs}, indent=2))
    write_report(results, costs, p, base, seed_list, out,
                 command or f"roformer experiment extrapolation --preset {preset}")
    return results


def finetunes(p: dict, base: dict, head_dim: int) -> dict[str, tuple[dict | None, int, str]]:
    """The fine-tunes: RoPE under each scaling at finetune_factor x L, and the control, plain RoPE at L;
    {name: (scaling, length factor, run directory name)}."""
    factor = p["finetune_factor"]
    runs = {f"{method}, fine-tuned at {factor}L": (parameters, factor, method.split(" (")[0])
            for method, parameters in scalings(factor, base["seq_len"], head_dim).items()}
    runs["rope, fine-tuned at 1L (control)"] = (None, 1, "rope-1L")
    return {name: (parameters, at, slug.replace(" + ", "-").replace(" ", "-"))
            for name, (parameters, at, slug) in runs.items()}


def finetune_rope(model_dir: Path, train, valid, p: dict, base: dict, train_config, run_dir: Path, resume: bool,
                  head_dim: int) -> dict:
    """RoPE fine-tuned for a few updates at finetune_factor x L under each scaling, then evaluated there; and,
    as the control, plain RoPE fine-tuned for as many updates at L (is it the length or the extra training?),
    evaluated at L and at finetune_factor x L."""
    from ..train import Trainer
    from ..train.lm import next_token_loss, window_batches

    factor, seq_len = p["finetune_factor"], base["seq_len"]
    scores = {}
    for name, (parameters, at, slug) in finetunes(p, base, head_dim).items():
        model = with_scaling(DecoderLM.from_pretrained(model_dir), parameters).train()
        config = dataclasses.replace(train_config, max_steps=p["finetune_steps"], warmup_steps=0, eval_every=0,
                                     lr=train_config.lr * 0.1, schedule="constant")
        batch_fn = window_batches(train, seq_len * at, finetune_batch(base, at), config.seed)
        Trainer(model, config, run_dir / slug, batch_fn, next_token_loss, desc=f"fine-tune {name}").fit(resume)
        scores[name] = {str(f): evaluate(model, valid, seq_len, f) for f in sorted({1, factor} if at == 1 else {at})}
    return scores


def finetune_batch(base: dict, at: int) -> int:
    """Windows per fine-tuning batch at ``at`` x L: the pre-training batch's tokens."""
    return max(1, base["batch_size"] // at)


def finetune_cost(run_dir: Path, tokens: int) -> tuple[int, float]:
    """(tokens, training minutes) of a fine-tune, the minutes from its logged throughput (so that a resumed
    run keeps the cost measured by the process that trained it)."""
    rates = [r["tokens_per_s"] for r in read_metrics(run_dir) if "tokens_per_s" in r]
    return tokens, tokens / (sum(rates) / len(rates)) / 60


def _cell(values: list) -> str:
    if not values:
        return "—"  # not evaluated (a scaling at factor 1 is plain RoPE; fine-tuned models at their length only)
    if values[0] is None:
        return "n/a"  # learned absolute positions past L
    mean, std = mean_std([math.exp(v) for v in values])
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def write_report(results: dict, costs: list, p: dict, base: dict, seeds: list[int], out: Path, command: str) -> None:
    from ..report import plot_lines

    factors, seq_len = p["factors"], base["seq_len"]
    pretraining = base["train"]["max_steps"] * base["batch_size"] * seq_len
    tokens = costs[0][0]
    minutes = sorted(m for _, m in costs)
    lines = ["# Length extrapolation: perplexity against evaluation length", "", f"Produced by: `{command}`", "",
             f"Decoders of the pe_compare `{p['base']}` preset trained at L = {seq_len} tokens, seeds "
             f"{', '.join(map(str, seeds))}; perplexity (mean ± std over seeds) on the same held-out tokens. "
             f"Fine-tuning: {p['finetune_steps']} updates at {p['finetune_factor']}L, batch "
             f"{finetune_batch(base, p['finetune_factor'])}, lr x0.1, constant: {tokens:,} tokens, "
             f"{100 * tokens / pretraining:.0f}% of the {pretraining:,} tokens of pre-training; training took "
             f"{minutes[len(minutes) // 2]:.1f} minutes (median; {minutes[0]:.1f} to {minutes[-1]:.1f}, from the "
             "logged throughput, on CPU cores shared with other runs). The control is plain RoPE fine-tuned with "
             "the same updates and tokens at L.", "",
             "Non-overlapping windows: the held-out tokens cut into windows of the evaluation length, each from no "
             "context. Sliding windows: windows of the evaluation length every half window, each token scored once "
             "with at least half a window of context (Press et al.'s evaluation); from 2L on, every scored token "
             "but those of the first window sits at or beyond the training length.", ""]
    for mode in ("non-overlapping", "sliding"):
        rows = [{"method": method, **{f"{f}L = {f * seq_len}": _cell(by_factor.get(f, {}).get(mode, []))
                                      for f in factors}} for method, by_factor in results.items()]
        lines += [f"## {mode} windows", "", markdown_table(rows, list(rows[0])), ""]
        ratios = []  # per seed, against the same trained model at L
        for method, by_factor in results.items():
            reference = results["rope" if method.startswith("rope") else method][1][mode]
            if "fine-tuned" in method or method == "learned":  # learned: no perplexity past L
                continue
            ratios.append({"method": method, **{
                f"{f}L": "{:.3f} ± {:.3f}".format(*mean_std([math.exp(a - b) for a, b in
                                                             zip(by_factor[f][mode], reference, strict=True)]))
                for f in factors if f > 1 and by_factor.get(f, {}).get(mode, [None])[0] is not None}})
        lines += [f"Perplexity relative to the same model at L ({mode}; mean ± std over seeds of the per-seed "
                  "ratio; RoPE's scalings against plain RoPE at L):", "", markdown_table(ratios, list(ratios[0])), ""]
        curves = {method: [(f * seq_len, math.exp(mean_std(v[mode])[0])) for f, v in sorted(by_factor.items())
                           if v[mode] and v[mode][0] is not None] for method, by_factor in results.items()}
        plot_lines(curves, out / f"perplexity_{mode}.png", xlabel="evaluation length (tokens, log scale)",
                   ylabel="perplexity (log scale)", title=f"Perplexity against evaluation length ({mode} windows)")
        lines += [f"![{mode}](perplexity_{mode}.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
