"""The ``roformer`` command: argument parsing only; each verb calls a recipe."""

from __future__ import annotations

import argparse
import inspect
import math
import os
import signal
import sys
from pathlib import Path

from .errors import InvalidArgument, RoformerError

DEBUG_ENV = "ROFORMER_DEBUG"


class UsageError(InvalidArgument):
    """A mistake in what the user asked for, reported as one line."""


class Terminated(BaseException):
    """SIGTERM (a scheduler's or ``kill``'s stop), raised where the process is, as Ctrl-C raises KeyboardInterrupt:
    every file is written atomically, so the run keeps its last checkpoint and resumes from it."""


def _raise_terminated(signum, frame):
    raise Terminated


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one line every other failure gets (the usage is one --help away)."""

    def error(self, message: str):
        print(f"roformer: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _number(kind, low=None, high=None, low_open=False, finite=True):
    """An argparse type: a number of ``kind`` within [low, high] (``low_open``: strictly above low)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if finite and isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if low_open else 'at least'} {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be at most {high}")
        return value
    return parse


POSITIVE_INT, NONNEGATIVE_FLOAT = _number(int, 1), _number(float, 0.0)


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this PyTorch build or machine has no CUDA device; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no MPS device here; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: unsupported device type; use cpu, cuda, cuda:N or mps")
    return text


def _utf8(text: str, what: str = "the text") -> str:
    """A command-line argument that must be text: Python gives undecodable bytes as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = text[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 "
                                         f"(byte 0x{byte.hex()} at {e.start}); give it in UTF-8") from None
    return text


def _writable_parent(text: str, path: Path) -> None:
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {existing} is a file, so no directory can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: {existing} is not writable")


def _out_file(text: str) -> str:
    """An output file: not a directory, in a place this process can write to (checked before any work)."""
    path = Path(_utf8(text, "the path"))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name, e.g. {path / 'model.onnx'}")
    _writable_parent(text, path)
    return text


def _out_dir(text: str) -> str:
    """An output directory: absent (it is created), or an existing directory this process can write to."""
    path = Path(_utf8(text, "the path"))
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if existing == path and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a directory")
    if existing != path and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {existing} is a file, so no directory can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: {existing} is not writable")
    return text


def _input_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is {'a directory' if Path(text).is_dir() else 'not a file'}")
    return text


def _decay(args: argparse.Namespace) -> None:
    from .experiments import decay

    out = decay.run(args.dim, args.max_distance, args.base, args.out)
    bound = (out / "decay.csv").read_text().splitlines()
    print(f"wrote {out / 'decay.csv'} and {out / 'decay.png'}")
    print(f"relative upper bound: distance 0 -> {bound[1].split(',')[1]}, "
          f"distance {args.max_distance} -> {bound[-1].split(',')[1]}")


def _command_line() -> str:
    """The command as typed, for the 'Produced by' line of a report (empty when not run as `roformer`)."""
    return "roformer " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("roformer") else ""


def _train(args: argparse.Namespace) -> None:
    from .experiments import char_lm

    command = _command_line()
    summary = char_lm.run(args.preset, args.data_dir, args.out, args.resume, args.device, args.dtype,
                          args.max_steps, args.data, command=command)
    if summary.get("final"):
        final = summary["final"]
        print(f"validation bits per character: {final['validation_bpc']:.4f} after {final['steps']} steps "
              f"({final['train_minutes']:.1f} min); model in {args.out}/model, report in {args.out}/report.md")
        print(f"sample:\n{summary['sample']}")


def _generate(args: argparse.Namespace) -> None:
    from .experiments.char_lm import generate_text
    from .models import RoFormerForCausalLM

    if not args.prompt:
        raise UsageError("--prompt is empty: give at least one character to continue")
    model = RoFormerForCausalLM.from_pretrained(args.model).to(args.device).eval()
    if model.config.vocab_size != 256:
        raise InvalidArgument(f"{args.model} is not a byte-level model (vocab size {model.config.vocab_size})")
    generate_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed,
                  stream=lambda text: print(text, end="", flush=True))
    print()


def _fill_mask(args: argparse.Namespace) -> None:
    from .experiments.mlm import fill_mask

    for i, candidates in enumerate(fill_mask(args.model, args.text, args.top_k)):
        print(f"[MASK] {i + 1}: " + ", ".join(f"{token} ({p:.3f})" for token, p in candidates))


def _report(args: argparse.Namespace) -> None:
    from .report import compare_runs

    out = compare_runs(args.runs, args.out, title=args.title)
    print(f"wrote {out} and {out.parent / 'curves.png'}")


def _pretrain(args: argparse.Namespace) -> None:
    from .experiments.mlm import pretrain

    r = pretrain(args.position, args.corpus, args.preset, args.data_dir, args.out, args.resume, args.device,
                 args.dtype, args.max_steps)
    if r:
        print(f"validation MLM loss {r['loss']:.4f}, accuracy {r['accuracy']:.1%}, MRR {r['mrr']:.4f}; model and "
              f"tokenizer in {Path(args.out) / 'model'}")


def _finetune(args: argparse.Namespace) -> None:
    from .data.glue import TASKS
    from .experiments.glue import finetune_task

    tasks = list(TASKS) if args.task == "all" else args.task.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task {', '.join(unknown)}; use one of {', '.join(TASKS)}, a comma list or all")
    absent = []
    lrs = [_number(float, 0.0, low_open=True)(v) for v in args.lrs.split(",")] if args.lrs else None
    for task in tasks:
        r = finetune_task(args.model, task, args.preset, args.data_dir, Path(args.out) / task, args.resume,
                          args.device, args.dtype, args.max_steps, lrs, args.seeds)
        if "absent" in r:
            print(f"{task}: skipped, data absent: {r['absent']}")
            absent.append(task)
            continue
        print(f"{task}: {r['metric']} {r['mean']:.2f} ± {r['std']:.2f} at lr {r['best_lr']:g} "
              f"(grid means: " + ", ".join(f"{lr}: {sum(v) / len(v):.2f}" for lr, v in r["grid"].items())
              + f"); best model in {Path(args.out) / task / 'model'}")
    if absent and (args.task != "all" or len(absent) == len(tasks)):
        raise UsageError(f"no data for {', '.join(absent)}: see the message above for where to get it")


def _translate(args: argparse.Namespace) -> None:
    from .data.tokenizer import load_tokenizer
    from .experiments.translation import translate_lines
    from .models.seq2seq import Seq2SeqTransformer

    model = Seq2SeqTransformer.from_pretrained(args.model).to(args.device)
    tok = load_tokenizer(args.model)
    where = args.input or "standard input"
    stdin = getattr(sys.stdin, "buffer", None)  # an embedding program may give a text stream
    data = Path(args.input).read_bytes() if args.input else stdin.read() if stdin else sys.stdin.read().encode()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line}); give the "
                         "sentences in UTF-8") from None
    beam = 1 if args.greedy else args.beam
    for line in translate_lines(model, tok, lines, beam, args.length_penalty, args.batch_size,
                                args.max_source_tokens):
        print(line)


def _export(args: argparse.Namespace) -> None:
    from .export import export_model

    r = export_model(args.model, args.out, args.format, args.check_length)
    print(f"wrote {r['file']} ({r['head']}, {r['format']}, dynamic batch and sequence); checked on "
          f"{r['checked on']}: max abs difference {r['max abs difference']:.2e}")


EXPERIMENTS = ("performer_lm", "pe_compare", "extrapolation", "mlm", "glue", "translation", "chinese", "optimizers",
               "gpt_downstream")


def _experiment(args: argparse.Namespace) -> None:
    import importlib

    recipe = importlib.import_module(f"roformer.experiments.{args.name}")
    out = args.out or f"runs/{args.name}"
    command = _command_line()
    extra = {"models": args.models} if args.models else {}
    if args.seeds is not None:
        extra["seeds"] = args.seeds
    accepted = inspect.signature(recipe.run).parameters
    for option in extra:
        if option not in accepted:
            raise UsageError(f"--{option} does not apply to experiment {args.name}")
    recipe.run(args.preset, args.data_dir, out, args.resume, args.device, args.dtype, args.max_steps,
               command=command, **extra)
    print(f"report: {out}/report.md")
    print((Path(out) / "report.md").read_text())


def _add_common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--preset", default="small", choices=("smoke", "small", "paper"))
    p.add_argument("--data-dir", default=None, help="local data mirror (default: $ROFORMER_DATA_DIR)")
    p.add_argument("--out", default=out, type=_out_dir, help="run directory")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                     "(or reuse it when finished); it must have been started with the same settings and data")
    how.add_argument("--overwrite", action="store_true", help="delete the run found in --out and start afresh "
                     "(without --resume or --overwrite, a directory that holds a run is refused)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", type=_device)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="autocast dtype")
    p.add_argument("--max-steps", type=POSITIVE_INT, default=None, help="override the preset's number of updates")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roformer", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("decay", help="RoPE's long-term decay bound (§3.4.3, Fig. 2): CSV + PNG")
    p.add_argument("--dim", type=_number(int, 2), default=128, help="rotary dimension d (even)")
    p.add_argument("--max-distance", type=_number(int, 1, 1_000_000), default=256)
    p.add_argument("--base", type=_number(float, 1.0, low_open=True), default=10000.0, help="theta base, above 1")
    p.add_argument("--out", default="runs/decay", type=_out_dir, help="output directory")
    p.set_defaults(func=_decay)

    p = verbs.add_parser("train", help="train a character-level causal RoFormer LM (enwik8) and report bpc")
    _add_common(p, "runs/enwik8")
    p.add_argument("--data", default=None, choices=("enwik8", "tinyshakespeare"), help="default: enwik8")
    p.set_defaults(func=_train)

    p = verbs.add_parser("experiment", help="run one of the paper's experiments and write its report")
    p.add_argument("name", choices=EXPERIMENTS,
                   help="performer_lm (§4.4) | pe_compare (§4.6-4.7) | extrapolation (length) | mlm (§4.2) | "
                   "glue (§4.3, after mlm) | "
                   "translation (§4.1) | chinese (§4.5) | optimizers (§4.8, AdamW vs Amos) | "
                   "gpt_downstream (§4.7 Fig. 6)")
    _add_common(p, None)
    p.add_argument("--seeds", type=POSITIVE_INT, default=None, help="seeds per variant (default: the preset's)")
    p.add_argument("--models", default=None, help="glue: the mlm experiment's output with bert/ and roformer/ "
                   "(default reports/mlm); extrapolation: a pe_compare output whose models to evaluate")
    p.set_defaults(func=_experiment)

    p = verbs.add_parser("pretrain", help="pre-train a masked LM (WordPiece, packing, 80/10/10 masking, AdamW)")
    p.add_argument("--position", default="rope", help="rope (RoFormer) | learned (the BERT baseline) | ...")
    p.add_argument("--corpus", default="enwiki", help="enwiki, or a text file of blank-line separated documents")
    _add_common(p, "runs/pretrain")
    p.set_defaults(func=_pretrain)

    p = verbs.add_parser("finetune", help="fine-tune a saved encoder on GLUE tasks over a learning-rate x seed grid")
    p.add_argument("--task", required=True, help="sst2 | mrpc | stsb | qnli | qqp | mnli, a comma list, or all")
    p.add_argument("--model", required=True, help="saved encoder directory with its tokenizer (ours or HuggingFace)")
    _add_common(p, "runs/finetune")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (default: the preset's)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=None, help="seeds per learning rate (default: the preset's)")
    p.set_defaults(func=_finetune)

    p = verbs.add_parser("translate", help="translate lines from a file or stdin with a saved encoder-decoder")
    p.add_argument("--model", default="reports/translation/rope/seed0/model",
                   help="saved model directory with tokenizer")
    p.add_argument("--input", default=None, type=_input_file, help="text file, one sentence per line (default: stdin)")
    p.add_argument("--beam", type=POSITIVE_INT, default=4, help="beam size")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (beam 1)")
    p.add_argument("--length-penalty", type=NONNEGATIVE_FLOAT, default=0.6, help="GNMT length penalty alpha (>= 0)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="sentences per batch")
    p.add_argument("--max-source-tokens", type=POSITIVE_INT, default=256, help="longer sources are cut to this many "
                   "tokens")
    p.add_argument("--device", default="cpu", type=_device)
    p.set_defaults(func=_translate)

    p = verbs.add_parser("generate", help="sample text from a trained byte-level causal LM")
    p.add_argument("--model", default="runs/enwik8/model", help="saved model directory")
    p.add_argument("--prompt", default="The history of ", type=_utf8)
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=300)
    p.add_argument("--temperature", type=NONNEGATIVE_FLOAT, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=POSITIVE_INT, default=40, help="sample from the k most likely bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", type=_device)
    p.set_defaults(func=_generate)

    p = verbs.add_parser("fill-mask", help="show a masked LM's predictions for each [MASK] in a sentence")
    p.add_argument("text", type=_utf8, help='e.g. "the capital of france is [MASK] ."')
    p.add_argument("--model", default="reports/mlm/roformer/seed0/model", help="saved model directory with "
                   "tokenizer")
    p.add_argument("--top-k", type=POSITIVE_INT, default=5)
    p.set_defaults(func=_fill_mask)

    p = verbs.add_parser("export", help="export a saved RoFormer (any head) to ONNX or torch.export, checked")
    p.add_argument("--model", required=True, help="saved model directory (ours or HuggingFace's)")
    p.add_argument("--format", default="onnx", choices=("onnx", "torch"), help="onnx (onnxruntime) | torch (.pt2)")
    p.add_argument("--out", required=True, type=_out_file, help="output file, e.g. model.onnx")
    p.add_argument("--check-length", type=POSITIVE_INT, default=300, help="tokens per row of the check batch")
    p.set_defaults(func=_export)

    p = verbs.add_parser("report", help="overlay several runs' curves and tabulate their final metrics")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="runs/report", type=_out_dir)
    p.add_argument("--title", default="Comparison")
    p.set_defaults(func=_report)
    return parser


def _resume_hint(args: argparse.Namespace) -> str:
    if getattr(args, "resume", None) is None:
        return ""
    words = sys.argv[1:] if sys.argv[0].endswith("roformer") else []
    return f"; continue with: roformer {' '.join(words + ([] if args.resume else ['--resume']))}" if words else \
        "; add --resume to the same command to continue"


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Every failure ends as one line ``roformer: error: ...``: exit 2 for a problem with the input or
    the files (a :class:`~roformer.errors.RoformerError` or an ``OSError``), 1 for any other exception (a bug),
    130 for Ctrl-C, 143 for SIGTERM; ``--debug`` or ``ROFORMER_DEBUG=1`` shows the traceback
    instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per weight file loaded or saved: noise between our lines
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding program): it keeps its own handling
        return _run(args)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _call(args) -> None:
    """The verb, holding its run directory (``--out`` of a verb that trains) for the whole command: locked against a
    second process, and with ``--overwrite`` the run found there is replaced."""
    if getattr(args, "overwrite", None) is None:
        return args.func(args)
    from .train.run import RunDirectory

    out = args.out or f"runs/{args.name}"
    with RunDirectory(out, resume=args.resume, overwrite=args.overwrite):
        args.func(args)


def _run(args) -> int:
    if args.debug or os.environ.get(DEBUG_ENV):
        _call(args)
        return 0
    try:
        _call(args)
    except KeyboardInterrupt:
        print(f"\nroformer: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"roformer: terminated (SIGTERM){_resume_hint(args)}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (RoformerError, OSError, argparse.ArgumentTypeError) as e:  # the user's input or files: not a bug
        message = str(e)
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {e.strerror or message}"
        print(f"roformer: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not a user mistake: still one line, and how to get the details
        print(f"roformer: error: internal error {type(e).__name__}: {e} (rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
