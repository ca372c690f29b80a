"""Export a saved RoFormer (any head) for serving: ONNX through ``torch.onnx.export(dynamo=True)``, or a
``torch.export`` program, both with dynamic batch and sequence axes, and checked after export against the eager
model on a batch longer than the one traced (onnxruntime runs the ONNX file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import InvalidArgument
from .io import read_json
from .kernels.rotary import rotary_reference
from .models import roformer as heads

__all__ = ["load_any_head", "export_model", "FORMATS"]

FORMATS = ("onnx", "torch")
OUTPUTS = {"RoFormerModel": ("last_hidden_state",), "RoFormerForQuestionAnswering": ("start_logits", "end_logits")}


def load_any_head(model_dir: str | Path) -> nn.Module:
    """The head named in config.json's ``architectures`` (as ``transformers`` writes it), or the bare encoder."""
    config = read_json(Path(model_dir) / "config.json", expect=dict) if Path(model_dir, "config.json").is_file() else {}
    name = (config.get("architectures") or ["RoFormerModel"])[0]
    cls = getattr(heads, name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, heads.RoFormerPreTrainedModel)):
        raise InvalidArgument(f"{model_dir}: architecture {name!r} is not a RoFormer head this package knows")
    return cls.from_pretrained(model_dir).eval()


class _Exported(nn.Module):
    """The head's forward with tensors in and a tuple of tensors out (what exporters take)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...], with_types: bool):
        super().__init__()
        self.model, self.outputs, self.with_types = model, outputs, with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        out = self.model(input_ids, attention_mask, token_type_ids) if self.with_types else \
            self.model(input_ids, attention_mask)
        return tuple(getattr(out, name) for name in self.outputs)


def _inputs(vocab: int, shape: tuple[int, ...], with_types: bool, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[0, ..., shape[-1] // 2 :] = 0  # one padded row, so the mask path is traced and checked
    return (ids, mask, torch.zeros_like(ids)) if with_types else (ids, mask)


def export_model(model_dir: str | Path, out: str | Path, fmt: str = "onnx", check_length: int = 300) -> dict:
    """Export ``model_dir`` to ``out``; returns what was checked: the largest absolute difference to the eager
    model on a (3, check_length) batch (the export traced (2, 16)), which must stay below 1e-4."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    model = load_any_head(model_dir)
    name = type(model).__name__
    outputs = OUTPUTS.get(name, ("logits",))
    with_types = name != "RoFormerForCausalLM"
    wrapped = _Exported(model, outputs, with_types).eval()
    choices = (2,) if name == "RoFormerForMultipleChoice" else ()
    example = _inputs(model.config.vocab_size, (2, *choices, 16), with_types, 0)
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=1 << 16)
    axes = {0: batch, len(choices) + 1: seq}
    dynamic = tuple(axes for _ in example)
    names = ["input_ids", "attention_mask", "token_type_ids"][: len(example)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check = _inputs(model.config.vocab_size, (3, *choices, check_length), with_types, 1)
    with torch.no_grad():
        expected = wrapped(*check)
        if fmt == "onnx":
            import onnxruntime

            # ONNX has no rotation op: roformer::rotary is written out as its reference formula (Eq. 34)
            program = torch.export.export(wrapped, example, dynamic_shapes=dynamic).run_decompositions(
                {torch.ops.roformer.rotary.default: rotary_reference})
            torch.onnx.export(program, f=str(out), dynamo=True, input_names=names, output_names=list(outputs),
                              verbose=False)
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = session.run(None, {n: t.numpy() for n, t in zip(names, check, strict=True)})
            got = [torch.from_numpy(g) for g in got]
        else:
            program = torch.export.export(wrapped, example, dynamic_shapes=dynamic)
            torch.export.save(program, str(out))
            got = torch.export.load(str(out)).module()(*check)
    difference = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
    if not difference < 1e-4:
        raise InvalidArgument(f"the exported {fmt} model differs from the eager one by {difference:.2e} on a "
                              f"{check_length}-token batch: not exported correctly")
    report = {"model": str(model_dir), "head": name, "format": fmt, "file": str(out), "inputs": names,
              "outputs": list(outputs), "dynamic axes": "batch, sequence",
              "checked on": f"batch 3 x {check_length} tokens (traced at 2 x 16)", "max abs difference": difference}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(report, indent=2))
    return report
